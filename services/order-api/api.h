/*
 * api.h — order-api's HTTP side (api.c), shared with main.c.
 */
#ifndef ORDER_API_H
#define ORDER_API_H

#include "db.h"
#include "events.h"
#include "http.h"

#include <stddef.h>

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

/* The route table of the API. */
const http_route *api_routes(size_t *n);

/* Why a request body was refused: the HTTP status (400 or 422), the field
 * (JSON path, "" for the whole body) and a sentence. */
typedef struct {
    int status;
    char field[64];
    char detail[EV_ERR_LEN];
} api_problem;

/* Decodes a POST /orders body into ev (an order.placed without prices or
 * order id yet) and checks it against the contract. 0, or -1 with p filled;
 * ev_free(ev) either way. Pure: no database, for tests and the fuzzer. */
int api_decode_order(const char *body, size_t len, ev_event *ev, api_problem *p);

/* Frees a pool thread's database connection (http_opts.thread_exit). */
void api_thread_exit(void *db);

#endif
