/*
 * api.h — order-api's HTTP side, shared with main.c, the unit tests and the
 * fuzzer; a section per file:
 *
 *   routes.c       the route table and the handlers (POST /orders step by step)
 *   auth.c         API_TOKENS and the bearer token of a request
 *   decode.c       a POST /orders body into an order, checked against the contract
 *   pricing.c      catalog prices and the total, overflow checked
 *   idempotency.c  Idempotency-Key: its form, the earlier order, the decision
 *   store.c        the write of a batch of orders and an order's one document
 *                  (GET and the 201)
 *   writer.c       group commit: the thread that writes the accepted orders
 *                  in batches and answers each request after the commit
 *   saga.c         the order's deadline: overdue orders become EXPIRED
 *   availability.c GET /products/{sku}/availability, asked of inventory over
 *                  the broker (request/reply)
 *   sse.c          GET /orders/{id}/events: an order's status changes as
 *                  Server-Sent Events, from a LISTEN thread
 */
#ifndef ORDER_API_H
#define ORDER_API_H

#include "db.h"
#include "events.h"
#include "http.h"
#include "mq_rpc.h"

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

typedef struct api_writer api_writer;
typedef struct api_prices api_prices;
typedef struct api_sse api_sse;

typedef struct {
    const char *database_url;
    db_timeouts timeouts; /* for the job threads' connections */
    api_token *tokens;    /* from api_tokens_load */
    size_t ntokens;
    api_writer *writer;           /* writes the orders POST /orders accepts (writer.c) */
    api_prices *prices;           /* the price cache (pricing.c); NULL: off */
    int placed_version;           /* ORDER_PLACED_VERSION: the order.placed schema written */
    mq_rpc_client *rpc;           /* asks inventory (availability.c); set by the worker runtime */
    long availability_timeout_ms; /* AVAILABILITY_TIMEOUT_MS: the deadline of each ask */
    api_sse *sse;                 /* holds the event streams (sse.c) */
    const char *board_clients;    /* BOARD_CLIENTS: who may read GET /board/queues */
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

/* BOARD_CLIENTS, the clients that may read the queue depths (GET
 * /board/queues): "" (none) or client ids (API_TOKENS' characters, 1 to
 * API_CLIENT_MAX) separated by commas. 0, or -1 with err naming it. Pure. */
int api_board_clients_check(const char *list, char *err, size_t errlen);

/* 1 when client is one of list's (a checked BOARD_CLIENTS), else 0. Pure. */
int api_board_allows(const char *list, const char *client);

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

/* The price cache: the catalog rows orders have read, dropped on every
 * catalog change (a NOTIFY on orders_products, migration 0013), off while
 * its LISTEN connection is down, and never serving a row more than
 * max_age_ms after its read began (pricing.c says why that is enough). */

#define API_PRICE_AGE_DEFAULT 30000 /* PRICE_CACHE_MAX_AGE_MS */

typedef struct {
    const char *database_url;
    const db_timeouts *timeouts; /* for its LISTEN connection; may be NULL */
    long max_age_ms;             /* PRICE_CACHE_MAX_AGE_MS; 0: no cache */
} api_prices_opts;

typedef struct {
    uint64_t hits;   /* orders priced from the cache */
    uint64_t misses; /* orders that read the catalog */
    uint64_t drops;  /* dropped on a notification */
    uint64_t losses; /* dropped and turned off: the LISTEN connection was lost */
    uint64_t fulls;  /* dropped because it was full (PRICE_FILL, 768 SKUs, pricing.c) */
} api_prices_stats;

/* Starts the cache and its listener thread (which connects by itself, and
 * again after a loss; the cache serves nothing until it listens). NULL when
 * o->max_age_ms is 0 (no cache: not an error, err untouched) or with err when
 * out of memory or the thread cannot start. */
api_prices *api_prices_start(const api_prices_opts *o, char *err, size_t errlen);

/* Stops the listener and frees c. The HTTP server must be stopped first.
 * NULL: no-op. */
void api_prices_stop(api_prices *c);

void api_prices_get_stats(api_prices *c, api_prices_stats *out);

/* The cache's own logic, without its listener thread (api_prices_start uses
 * them; check_units_api tests them): a cache of max_age_ms that serves
 * nothing until api_prices_set_listening(c, 1) (NULL when out of memory;
 * api_prices_free(NULL) is a no-op); a notification's drop; and a catalog
 * read's two ends: what api_price_read_begins saw (1 when the cache listens)
 * must be unchanged at api_price_read_ends for its rows to fill the cache,
 * each row then serving until at + max_age_ms. At PRICE_FILL (768) SKUs a
 * new one drops the cache whole first (counted: fulls). */
api_prices *api_prices_new(long max_age_ms);
void api_prices_free(api_prices *c);
void api_prices_set_listening(api_prices *c, int on);
void api_prices_changed(api_prices *c);
int api_price_read_begins(api_prices *c, uint64_t *gen, int64_t *at);
void api_price_read_ends(api_prices *c, uint64_t gen, int64_t at, const api_price *cat, size_t n);

/* s as Prometheus counters (README "Price cache"), in buf (len bytes). */
void api_prices_metrics_text(const api_prices_stats *s, char *buf, size_t len);

/* worker_def.metrics_more for order-api: the price cache's counters from
 * cls, an api_ctx (nothing when it has no cache). */
void api_prices_metrics(void *cls, char *buf, size_t len);

/* Prices o from the cache c (NULL: no cache) when every one of its SKUs is
 * there and fresh: 1 (o priced), -1 with p (api_price_lines refused it); 0
 * when any is missing (o unchanged: read the catalog, api_price_order). */
int api_price_cached(api_prices *c, order_placed *o, api_problem *p);

/* api_price_lines with the catalog rows of o's SKUs from the database, which
 * then fill the cache c (NULL: none). 0; -1 with p, or with *dbrc != DB_OK
 * and err when the query failed. */
int api_price_order(api_prices *c, db_conn *db, order_placed *o, api_problem *p, int *dbrc,
                    char *err, size_t errlen);

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

struct cJSON;

/* The one query of an order's document by id ($1) and client ($2): the
 * same document the 201 of POST /orders carries (both end in one builder). */
extern const char api_order_doc_sql[];

/* The order (validated, priced) of client as one order of a write: a new
 * message id and its order.placed event in schema version (upcast.h), key
 * and the SHA-256 of body for idempotency (body unused without a key). The
 * caller cJSON_Delete()s it. NULL with err when out of memory or the event
 * cannot be made. */
struct cJSON *api_store_row(const ev_event *ev, int version, const char *client, const char *key,
                            const char *body, char *err, size_t errlen);

/* What the write did with one order. */
typedef struct {
    char *doc;                  /* written: its document (malloc'd, the caller frees) */
    char earlier[UUID_STR_LEN]; /* not written, its key used: the earlier order, "" unseen */
    int same;                   /* that earlier order's request body was this one's */
} api_stored;

/* Writes rows[0..n) (api_store_row's) in ONE statement, so in one
 * transaction: the orders, their lines, their first timeline entries and
 * their order.placed outbox rows; wakes the relay after the commit. An order
 * whose client already used its Idempotency-Key is not written (nothing of
 * it). DB_OK when it committed, with out[i] for rows[i]: doc (NULL only when
 * out of memory, or when not written), or, for a key already used, earlier
 * (its id when the statement saw it; "" when the key was taken by a
 * transaction that committed after the statement began or by another row
 * of rows: look it up, api_idem_find) and same; else DB_ERR /
 * DB_ERR_TRANSIENT with err and nothing written. */
int api_store(db_conn *db, struct cJSON *const *rows, size_t n, api_stored *out, char *err,
              size_t errlen);

/* ----------------------------------------------------------- writer.c */

#define API_BATCH_MAX_DEFAULT  64    /* ORDER_BATCH_MAX: orders in one write, at most */
#define API_WRITE_WAIT_DEFAULT 25000 /* ORDER_WRITE_TIMEOUT_MS: a request's wait, at most */

typedef struct {
    const char *database_url;
    const db_timeouts *timeouts; /* for the writer's connection */
    int batch_max;               /* orders per statement, >= 1 */
    int wait_ms;                 /* the longest a request waits for its write */
} api_writer_opts;

/* Starts the writer thread (it connects when it first writes). NULL with
 * err when out of memory or the thread cannot start. */
api_writer *api_writer_start(const api_writer_opts *o, char *err, size_t errlen);

/* Writes what is still queued, stops the thread, frees w. The HTTP server
 * must be stopped first (no request may still hand it an order). NULL: no-op. */
void api_writer_stop(api_writer *w);

#define API_WRITE_TIMEOUT  (-3) /* api_writer_store: no answer within wait_ms */
#define API_WRITE_KEY_USED (-4) /* api_writer_store: the client used the key before */

/* The client's earlier order with an Idempotency-Key. */
typedef struct {
    char id[UUID_STR_LEN]; /* "": the write did not see it (look it up: api_idem_find) */
    int same;              /* its request body was the same */
} api_earlier;

/* Hands row (api_store_row's; the writer takes it over, even on failure) to
 * the writer and waits, at most opts.wait_ms, for the commit of the write that
 * holds it. DB_OK with *doc (malloc'd); API_WRITE_KEY_USED with *earlier when
 * not written because its client had used its key (nothing of it written);
 * else DB_ERR / DB_ERR_TRANSIENT with
 * err and sqlstate (the SQLSTATE of the statement that failed for this
 * order, "" when none), or API_WRITE_TIMEOUT with err when the wait ran out:
 * an order still queued is then withdrawn (never written); one the writer
 * had begun to write may yet be stored (its commit is not known here). */
int api_writer_store(api_writer *w, struct cJSON *row, char **doc, api_earlier *earlier,
                     char sqlstate[6], char *err, size_t errlen);

/* The batch fallback: after the write of a batch of n orders ended with rc
 * (DB_OK or a db error) and sqlstate (its statement's, "" when none), 1 when
 * its orders are written again one per statement: a permanent error, DB_ERR,
 * or a lock wait, 55P03 / 40P01, which may be one order's own (a same-key
 * INSERT held by another session), of a batch of more than one (one order's
 * fault must not fail the others); 0 when rc stands for all of them
 * (written; the database away or slow, any other DB_ERR_TRANSIENT: each
 * gets that error; a lone order: the outcome is already its own). Pure. */
int api_batch_falls_back(int rc, const char *sqlstate, size_t n);

/* ORDER_WRITE_TIMEOUT_MS (wait_ms) against the writer connection's limits:
 * 0 when wait_ms is more than statement_ms (DB_STATEMENT_TIMEOUT_MS) plus
 * connect_ms (db_connect_timeout_ms); else -1 with err, a configuration
 * error (also when either limit is off, 0 / -1: the writer's statement
 * could then outlast any wait). Pure. */
int api_write_wait_check(long wait_ms, long statement_ms, long connect_ms, char *err,
                         size_t errlen);

/* What the writer did so far (logs and tests). */
typedef struct {
    uint64_t writes;    /* statements that wrote a batch */
    uint64_t orders;    /* orders written */
    uint64_t largest;   /* the most orders one statement wrote */
    uint64_t fallbacks; /* batches written again one order at a time */
} api_writer_stats;

void api_writer_get_stats(api_writer *w, api_writer_stats *out);

/* -------------------------------------------------------------- sse.c */

#define API_SSE_MAX_DEFAULT        512    /* SSE_MAX_STREAMS: streams one instance holds */
#define API_SSE_CLIENT_MAX_DEFAULT 32     /* SSE_CLIENT_MAX_STREAMS: of one client (token) */
#define API_SSE_IDLE_DEFAULT       300000 /* SSE_IDLE_TIMEOUT_MS: no status change for this long */
#define API_SSE_KEEPALIVE_DEFAULT  15000  /* SSE_KEEPALIVE_MS: a comment this often */

typedef struct {
    const char *database_url;    /* for the LISTEN connection */
    const db_timeouts *timeouts; /* its limits */
    int max_streams;             /* >= 1 */
    int client_max_streams;      /* >= 1 */
    long idle_ms;
    long keepalive_ms;
} api_sse_opts;

/* Starts the thread that LISTENs for timeline changes and feeds the streams
 * (it connects by itself, and again after losing the database). NULL with
 * err when out of memory or it cannot start. */
api_sse *api_sse_start(const api_sse_opts *o, char *err, size_t errlen);

/* Stops the thread and frees h. The HTTP server must be stopped first (it
 * is then done with every stream). NULL: no-op. */
void api_sse_stop(api_sse *h);

/* GET /orders/{id}/events for client (authenticated); rest is the path after
 * "/orders/", ending in "/events"; db is the job thread's connection. 200
 * text/event-stream, 204 when Last-Event-ID is the final entry's, 400 for a
 * malformed Last-Event-ID, 404 for no such order of client's, 429 / 503
 * (Retry-After) past SSE_CLIENT_MAX_STREAMS / SSE_MAX_STREAMS, 503 when the
 * database is away. */
void api_sse_get(http_req *r, const api_ctx *ctx, db_conn *db, const char *client, const char *rest,
                 http_resp *out);

/* 1 for a status an order never leaves (CONFIRMED, REJECTED, CANCELLED,
 * EXPIRED):
 * a stream ends after it. Pure. */
int api_status_final(const char *status);

/* A Last-Event-ID value: NULL (absent) is 0, from the first entry; 1-18
 * digits are the entry's seq. 0 with *out, -1 when malformed. Pure. */
int api_last_event_id(const char *v, long long *out);

typedef enum {
    API_SSE_ADMIT,
    API_SSE_CLIENT_FULL, /* 429: the client holds max_client streams */
    API_SSE_FULL,        /* 503: the instance holds max_total streams */
} api_sse_admission;

/* Whether one more stream is admitted, given the instance's and the
 * client's open streams. Pure. */
api_sse_admission api_sse_admit(int total, int of_client, int max_total, int max_client);

/* ----------------------------------------------------------- routes.c */

/* The route table of the API. */
const http_route *api_routes(size_t *n);

/* Frees a pool thread's database connection (http_opts.thread_exit). */
void api_thread_exit(void *db);

/* ------------------------------------------------------------------ saga.c */

#define API_ORDER_TIMEOUT_DEFAULT 900 /* ORDER_TIMEOUT_S: 15 minutes */
#define API_SAGA_BATCH            200 /* orders expired per transaction */

typedef struct {
    long timeout_s; /* ORDER_TIMEOUT_S: an order still open this long after its creation expires */
    int batch;      /* orders expired per call */
} api_saga;

/* The outbox relay's scheduled work (outbox_relay_opts.due, arg an
 * api_saga): in db's open transaction, moves up to batch orders that are
 * PENDING, RESERVED or PAYMENT_FAILED timeout_s after their creation to EXPIRED (timeline
 * row, reason) and adds an order.expired for each to the outbox. Returns the
 * number expired, or DB_ERR / DB_ERR_TRANSIENT with err. */
int api_expire_due(db_conn *db, void *arg, char *err, size_t errlen);

/* The reason an expired order carries, for timeout_s, into out: 0, or -1
 * when it does not fit out or the contract's EV_TEXT_MAX. Pure. */
int api_saga_reason(long timeout_s, char *out, size_t outlen);

/* ----------------------------------------------------- availability.c */

#define API_AVAILABILITY_TIMEOUT_DEFAULT 2000 /* ms */

/* The SKU of a path rest "{sku}/availability" into sku: 0, or -1 when rest
 * is not of that form or sku is not a SKU. Pure. */
int api_availability_sku(const char *rest, char sku[EV_SKU_MAX + 1]);

/* GET /products/{sku}/availability (its route in routes.c). */
void api_get_availability(http_req *r, void *cls, http_resp *out);

/* ------------------------------------------------------------ board.c */

/* GET /: the live order board (board.html), no token needed. */
void api_get_board(http_req *r, void *cls, http_resp *out);
/* GET /board.css and GET /board.js: the page's style and script. */
void api_get_board_css(http_req *r, void *cls, http_resp *out);
void api_get_board_js(http_req *r, void *cls, http_resp *out);
/* GET /favicon.ico: 204 (the board has no icon; not a 404 in the console). */
void api_get_board_favicon(http_req *r, void *cls, http_resp *out);
/* GET /board/queues: every service's queue and DLQ depth, from the broker. */
void api_get_board_queues(http_req *r, void *cls, http_resp *out);

#endif
