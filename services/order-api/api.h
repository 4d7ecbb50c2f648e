/*
 * api.h — order-api's HTTP side, shared with main.c, the unit tests and the
 * fuzzer; a section per file:
 *
 *   routes.c       the route table and the handlers (POST /orders step by step)
 *   auth.c         API_TOKENS and the bearer token of a request
 *   decode.c       a POST /orders body into an order, checked against the contract
 *   pricing.c      catalog prices and the total, overflow checked
 *   idempotency.c  Idempotency-Key: its form, the earlier order, the decision
 *   store.c        the order's write and its one document (GET and the 201)
 */
#ifndef ORDER_API_H
#define ORDER_API_H

#include "db.h"
#include "events.h"
#include "http.h"

#include <stddef.h>
#include <stdint.h>

#define ORDER_SERVICE "order-api" /* queue, outbox channel, app_id */

#define API_CLIENT_MAX 64  /* a client id: 1-64 of A-Z a-z 0-9 . _ - */
#define API_TOKEN_MAX  512 /* a bearer token's length, at most */

/* One line of API_TOKENS: a client and the SHA-256 of one of its tokens. */
typedef struct {
    char client[API_CLIENT_MAX + 1];
    unsigned char hash[32];
} api_token;

typedef struct {
    const char *database_url;
    db_timeouts timeouts; /* for the job threads' connections */
    api_token *tokens;    /* from api_tokens_load */
    size_t ntokens;
} api_ctx;

/* ------------------------------------------------------------- auth.c */

/* Parses API_TOKENS (the value, or the content of API_TOKENS_FILE): lines
 * "CLIENT SHA256-HEX" (scripts/api-token.sh writes them), blank lines and
 * #-comments skipped. 0 with *out (malloc'd, the caller frees it) and
 * *n >= 1; -1 with err naming the line when one is malformed or there is no
 * token at all. */
int api_tokens_parse(const char *text, api_token **out, size_t *n, char *err, size_t errlen);

/* The client an Authorization header value ("Bearer <token>") belongs to,
 * or NULL for a missing, malformed or unknown token. Compares the token's
 * SHA-256 with every stored hash in constant time. Pure, for tests. */
const char *api_authenticate(const api_ctx *ctx, const char *authorization);

/* The request's client, or NULL with a 401 (WWW-Authenticate: Bearer) in
 * out. */
const char *api_client_of(http_req *r, const api_ctx *ctx, http_resp *out);

/* ----------------------------------------------------------- decode.c */

/* Why a request body was refused: the HTTP status (400 or 422), the field
 * (JSON path, "" for the whole body) and a sentence. */
typedef struct {
    int status;
    char field[EV_ERR_LEN]; /* as long as the contract's error it may come from */
    char detail[EV_ERR_LEN];
} api_problem;

/* Fills p (status, field, detail with fmt and arg) and returns -1. */
int api_fail(api_problem *p, int status, const char *field, const char *fmt, const char *arg);

/* Decodes a POST /orders body into ev (an order.placed without prices or
 * order id yet) and checks it against the contract. 0, or -1 with p filled;
 * ev_free(ev) either way. Pure: no database, for tests and the fuzzer. */
int api_decode_order(const char *body, size_t len, ev_event *ev, api_problem *p);

/* Reads a POST /orders body into o (its lines without prices): JSON, known
 * fields only, the types. 0, or -1 with p. */
int api_decode_request(const char *body, size_t len, order_placed *o, api_problem *p);

/* The contract's validation of ev (an order.placed), its errors named as the
 * request names them ("items[2].quantity"). 0, or -1 with p (422). */
int api_validate(const ev_event *ev, api_problem *p);

/* 1 when a Content-Type value is application/json (parameters allowed). */
int api_json_content_type(const char *ct);

/* ---------------------------------------------------------- pricing.c */

/* A catalog row. */
typedef struct {
    const char *sku;
    int64_t price; /* minor units */
    const char *currency;
} api_price;

/* Sets each line's unit price from the catalog rows cat[0..n) and o's total.
 * 0; -1 with p: 422 for a SKU not in the catalog or sold in another currency
 * than o's, 500 for a catalog price outside the contract (0..EV_PRICE_MAX) or
 * a total that would overflow. A total past EV_TOTAL_MAX is left for
 * api_validate. Pure. */
int api_price_lines(order_placed *o, const api_price *cat, size_t n, api_problem *p);

/* api_price_lines with the catalog rows of o's SKUs from the database. 0; -1
 * with p, or with *dbrc != DB_OK and err when the query failed. */
int api_price_order(db_conn *db, order_placed *o, api_problem *p, int *dbrc, char *err,
                    size_t errlen);

/* ------------------------------------------------------ idempotency.c */

#define API_IDEM_KEY_MAX 200 /* an Idempotency-Key: 1-200 printable ASCII characters */

/* 1 when k is a usable Idempotency-Key. */
int api_idem_key_valid(const char *k);

/* The client's earlier order with the same key: 1 with its id and *same (the
 * body was the same), 0 when none, -1 with *dbrc and err on a database
 * error. */
int api_idem_find(db_conn *db, const char *client, const char *key, const char *body,
                  char id[UUID_STR_LEN], int *same, int *dbrc, char *err, size_t errlen);

typedef enum {
    API_IDEM_NEW,      /* no earlier order: place this one */
    API_IDEM_REPLAY,   /* the same request again: answer with the earlier order */
    API_IDEM_CONFLICT, /* the key with another body: 409 */
} api_idem_decision;

/* What to do given api_idem_find's result (found 0 or 1) and same. Pure. */
api_idem_decision api_idem_decide(int found, int same);

/* ------------------------------------------------------------ store.c */

/* The one query of an order's document by id ($1) and client ($2): the
 * same document the 201 of POST /orders carries (both end in one builder). */
extern const char api_order_doc_sql[];

/* Writes the order (validated, priced) of client in one statement: the
 * order, its lines, its first timeline entry and the order.placed outbox
 * row; key and body (may be NULL) for idempotency. *doc (malloc'd) is its
 * document. Returns DB_OK or a db error code with err. */
int api_store(db_conn *db, const ev_event *ev, const char *client, const char *key,
              const char *body, char **doc, char *err, size_t errlen);

/* ----------------------------------------------------------- routes.c */

/* The route table of the API. */
const http_route *api_routes(size_t *n);

/* Frees a pool thread's database connection (http_opts.thread_exit). */
void api_thread_exit(void *db);

#endif
