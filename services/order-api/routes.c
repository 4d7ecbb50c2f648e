/*
 * routes.c — order-api's HTTP handlers and their route table.
 *
 *   POST /orders        place an order (prices from the catalog), 201 + Location
 *   GET  /orders/{id}   the order, its lines, invoice and status timeline
 *   GET  /orders/{id}/events  its status changes as Server-Sent Events (sse.c)
 *   GET  /orders        a page: ?status=&limit=&after=<id>
 *   GET  /products      the catalog
 *   GET  /products/{sku}/availability  stock now, asked of inventory (availability.c)
 *   GET  /              the live order board, a page that holds no token (board.c)
 *   GET  /board/queues  every service's queue and DLQ depth (board.c)
 * (/healthz and /readyz come from the worker runtime and need no token;
 * /metrics is on the operations listener only.)
 *
 * Every route here but the public catalog (GET /products) and the board's
 * page (GET /) needs
 * "Authorization: Bearer <token>"; the token's client
 * (API_TOKENS or API_TOKENS_FILE, hashes only) owns the orders it places, and a client reads,
 * lists and replays (Idempotency-Key) only its own. Anything else is a 401
 * with WWW-Authenticate: Bearer, or a 404 for another client's order.
 *
 * Each pool thread has its own database connection. POST /orders reads here
 * as its steps: the client (auth.c), the body (decode.c), the prices
 * (pricing.c: from its cache, without a round trip, when it has them), the
 * write and its document (store.c), committed by the writer with the orders
 * that arrived together (writer.c); the write finds an earlier order with
 * the same Idempotency-Key itself (store.c, idempotency.c), so an order
 * whose prices are cached costs one round trip, its batch's (a replay two:
 * the write, then the earlier order's document). Documents are
 * built by PostgreSQL (json_build_object).
 */
#include "api.h"
#include "cfg.h"
#include "db.h"
#include "events.h"
#include "log.h"
#include "trace.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void api_thread_exit(void *db)
{
    db_free(db);
}

/* 503 with Retry-After: the database is down; the client should come back. */
static void db_unavailable(http_resp *out)
{
    http_problem(out, 503, "Service Unavailable", "the database is unavailable; retry later", NULL);
    http_add_header(out, "Retry-After", "2");
}

/* The job thread's connection, connected; NULL (and a 503 in out) when the
 * database is unreachable. */
static db_conn *thread_db(http_req *r, const api_ctx *ctx, http_resp *out)
{
    http_server *s = http_server_of(r);
    db_conn *db = http_thread_local(s);
    char err[DB_ERR_LEN];

    if (!db) {
        db = db_new(ctx->database_url, ORDER_SERVICE);
        if (!db) {
            http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
            return NULL;
        }
        db_set_timeouts(db, &ctx->timeouts);
        http_set_thread_local(s, db);
    }
    if (db_ensure(db, err, sizeof(err)) != DB_OK) {
        log_warn("database unavailable: %s", err);
        db_unavailable(out);
        return NULL;
    }
    return db;
}

static void db_failure(http_resp *out, int rc, const char *err)
{
    log_error("database: %s", err);
    if (rc == DB_ERR_TRANSIENT) {
        db_unavailable(out);
    } else {
        http_problem(out, 500, "Internal Server Error", "the request could not be stored", NULL);
    }
}

/* Runs a query returning one text column `doc`; 200 with it, 404 when no row. */
static void respond_doc(http_req *r, const api_ctx *ctx, http_resp *out, const char *name,
                        const char *sql, int n, const char *const *p, int status)
{
    db_conn *db = thread_db(r, ctx, out);
    PGresult *res;
    char err[DB_ERR_LEN];
    int rc;

    if (!db)
        return;
    rc = db_execp(db, name, sql, n, p, &res, err, sizeof(err));
    if (rc != DB_OK) {
        db_failure(out, rc, err);
        return;
    }
    if (PQntuples(res) == 0 || !db_get(res, 0, "doc"))
        http_problem(out, 404, "Not Found", "no such order", NULL);
    else
        http_json(out, status, strdup(db_get(res, 0, "doc")));
    PQclear(res);
}

/* ---------------------------------------------------------- POST /orders */

static void replay(http_req *r, const api_ctx *ctx, http_resp *out, const char *client,
                   const char *id)
{
    const char *p[] = {id, client};
    respond_doc(r, ctx, out, "api_doc", api_order_doc_sql, 2, p, 200);
    http_add_header(out, "Idempotent-Replayed", "true");
    snprintf(out->location, sizeof(out->location), "/orders/%s", id);
}

/* Answers with the client's earlier order (a replay) or a 409, as d says;
 * 0 for API_IDEM_NEW (nothing answered). */
static int answer_earlier(http_req *r, const api_ctx *ctx, http_resp *out, const char *client,
                          const char *id, api_idem_decision d)
{
    if (d == API_IDEM_REPLAY)
        replay(r, ctx, out, client, id);
    else if (d == API_IDEM_CONFLICT)
        http_problem(out, 409, "Conflict",
                     "this Idempotency-Key was used with another request body", NULL);
    return d != API_IDEM_NEW;
}

/* The answer to a request whose key its client used before, when the write
 * did not see the earlier order (it committed after the write began): it is
 * looked up now, after the commit. */
static void answer_key_used(http_req *r, const api_ctx *ctx, http_resp *out, const char *client,
                            const char *key, const char *body, const api_earlier *e)
{
    char err[DB_ERR_LEN], id[UUID_STR_LEN];
    db_conn *db;
    int found, same = 0, rc = DB_OK;

    if (e->id[0]) {
        answer_earlier(r, ctx, out, client, e->id, api_idem_decide(1, e->same));
        return;
    }
    if (!(db = thread_db(r, ctx, out)))
        return;
    found = api_idem_find(db, client, key, body, id, &same, &rc, err, sizeof(err));
    if (found < 0)
        db_failure(out, rc, err);
    else if (found == 0) /* taken, then gone: nothing was written for this request */
        db_failure(out, DB_ERR_TRANSIENT, "the Idempotency-Key's order vanished; retry");
    else
        answer_earlier(r, ctx, out, client, id, api_idem_decide(1, same));
}

static void post_order(http_req *r, void *cls, http_resp *out)
{
    const api_ctx *ctx = cls;
    const char *key = http_header(r, "Idempotency-Key");
    const char *body, *client;
    size_t len;
    api_problem prob = {0};
    api_earlier earlier;
    ev_event ev;
    order_placed *o = &ev.u.order_placed;
    db_conn *db = NULL;
    char err[DB_ERR_LEN], existing[UUID_STR_LEN], sqlstate[6], *doc = NULL;
    struct cJSON *row;
    trace_span tx;
    int rc = DB_OK, same = 0, priced;

    ev_init(&ev, EV_ORDER_PLACED);
    if (!(client = api_client_of(r, ctx, out)))
        return;
    if (!api_json_content_type(http_header(r, "Content-Type"))) {
        http_problem(out, 415, "Unsupported Media Type", "send Content-Type: application/json",
                     NULL);
        return;
    }
    if (key && !api_idem_key_valid(key)) {
        http_problem(out, 400, "Bad Request",
                     "Idempotency-Key must be 1-200 printable ASCII characters", NULL);
        return;
    }
    if (uuid_v4(o->order_id) < 0) {
        http_problem(out, 503, "Service Unavailable", "no randomness for an order id", NULL);
        goto out;
    }
    body = http_body(r, &len);
    if (api_decode_request(body, len, o, &prob) < 0 || api_validate(&ev, &prob) < 0)
        goto problem;
    /* The prices: from the cache when it has them all (no round trip), else
     * from the catalog. The key is not looked up here: the write finds it. */
    priced = api_price_cached(ctx->prices, o, &prob);
    if (priced == 0) {
        if (!(db = thread_db(r, ctx, out)))
            goto out;
        priced = api_price_order(ctx->prices, db, o, &prob, &rc, err, sizeof(err)) < 0 ? -1 : 1;
        if (rc != DB_OK)
            goto db_error;
    }
    if (priced < 0 || api_validate(&ev, &prob) < 0) /* e.g. a total past the contract */
        goto refused;
    if (!(row = api_store_row(&ev, ctx->placed_version, client, key, body, err, sizeof(err)))) {
        rc = DB_ERR;
        goto db_error;
    }
    /* The writer commits it, with the orders that came with it (writer.c):
     * the wait for that commit is the request's "db transaction" span. */
    trace_span_start(&tx, "db transaction", TRACE_KIND_CLIENT, trace_current());
    trace_span_str(&tx, "db.system.name", "postgresql");
    trace_span_str(&tx, "db.operation.name", "INSERT orders (group commit)");
    rc = api_writer_store(ctx->writer, row, &doc, &earlier, sqlstate, err, sizeof(err));
    if (rc != DB_OK)
        trace_span_fail(&tx, err);
    trace_span_end(&tx, o->order_id);
    if (rc == API_WRITE_TIMEOUT) {
        log_warn("%s", err);
        http_problem(out, 503, "Service Unavailable",
                     "the order could not be written in time; retry later (with the same "
                     "Idempotency-Key)",
                     NULL);
        http_add_header(out, "Retry-After", "2");
        goto out;
    }
    if (rc == API_WRITE_KEY_USED) {
        answer_key_used(r, ctx, out, client, key, body, &earlier);
        goto out;
    }
    if (rc != DB_OK)
        goto db_error;
    log_write(LOG_INFO, o->order_id, NULL, "order %s placed: %zu lines, total %lld %s", o->order_id,
              o->lines.n, (long long)o->total, o->currency);
    http_json(out, 201, doc);
    snprintf(out->location, sizeof(out->location), "/orders/%s", o->order_id);
    goto out;
refused:
    /* Priced, it cannot be placed. A key used before answers first (a replay,
     * or a 409), as when it was looked up before the prices: an earlier order
     * stands even if the catalog has changed since. */
    if (key) {
        int found;
        if (!db && !(db = thread_db(r, ctx, out)))
            goto out;
        found = api_idem_find(db, client, key, body, existing, &same, &rc, err, sizeof(err));
        if (found < 0)
            goto db_error;
        if (answer_earlier(r, ctx, out, client, existing, api_idem_decide(found, same)))
            goto out;
    }
    if (prob.status == 500) {
        http_problem(out, 500, "Internal Server Error", prob.detail, NULL);
        goto out;
    }
problem:
    http_problem(out, prob.status, prob.status == 400 ? "Bad Request" : "Unprocessable Content",
                 prob.detail, prob.field[0] ? prob.field : NULL);
    goto out;
db_error:
    db_failure(out, rc, err);
out:
    ev_free(&ev);
}

/* ------------------------------------------------------------ the GETs */

static void get_order(http_req *r, void *cls, http_resp *out)
{
    const char *id = http_path_rest(r);
    const char *client = api_client_of(r, cls, out);
    const char *p[] = {id, client};
    size_t n = strlen(id);
    if (!client)
        return;
    if (n > 7 && strcmp(id + n - 7, "/events") == 0) {
        db_conn *db = thread_db(r, cls, out);
        http_set_route(r, "/orders/{id}/events");
        if (db)
            api_sse_get(r, cls, db, client, id, out);
        return;
    }
    if (!uuid_valid(id)) {
        http_problem(out, 404, "Not Found", "not an order id", NULL);
        return;
    }
    /* Another client's order is "no such order", like one that does not exist. */
    respond_doc(r, cls, out, "api_doc", api_order_doc_sql, 2, p, 200);
}

static void list_orders(http_req *r, void *cls, http_resp *out)
{
    static const char *const statuses[] = {"PENDING",        "RESERVED",  "CONFIRMED", "REJECTED",
                                           "PAYMENT_FAILED", "CANCELLED", "EXPIRED",   NULL};
    const char *status = http_query(r, "status");
    const char *limit = http_query(r, "limit");
    const char *after = http_query(r, "after");
    const char *client = api_client_of(r, cls, out);
    long n = 20;
    char lim[24], err[128];
    const char *p[4];
    int ok = !status;

    if (!client)
        return;
    for (const char *const *s = statuses; status && *s; s++)
        ok |= strcmp(*s, status) == 0;
    if (!ok) {
        http_problem(out, 422, "Unprocessable Content",
                     "status must be one of PENDING, RESERVED, CONFIRMED, REJECTED, "
                     "PAYMENT_FAILED, CANCELLED, EXPIRED",
                     "status");
        return;
    }
    if (limit) {
        if (cfg_parse_long("limit", limit, 1, 100, &n, err, sizeof(err)) < 0) {
            http_problem(out, 422, "Unprocessable Content", err, "limit");
            return;
        }
    }
    if (after && !uuid_valid(after)) {
        http_problem(out, 422, "Unprocessable Content", "after must be an order id", "after");
        return;
    }
    p[0] = status;
    p[1] = util_i64(lim, n);
    p[2] = after;
    p[3] = client;
    respond_doc(r, cls, out, "api_list",
                "SELECT json_build_object('orders', coalesce(json_agg(json_build_object("
                " 'id', x.id, 'status', x.status, 'customer_id', x.customer_id,"
                " 'total_minor', x.total_minor, 'currency', x.currency,"
                " 'created_at', x.created_at) ORDER BY x.created_at, x.id), '[]'),"
                " 'next', CASE WHEN count(*) = $2::int THEN"
                " (array_agg(x.id ORDER BY x.created_at DESC, x.id DESC))[1] END)::text AS doc"
                " FROM (SELECT id, status, customer_id, total_minor, currency, created_at"
                " FROM orders WHERE client_id = $4 AND ($1::text IS NULL OR status = $1)"
                " AND ($3::uuid IS NULL OR (created_at, id) >"
                " (SELECT created_at, id FROM orders WHERE id = $3::uuid AND client_id = $4))"
                " ORDER BY created_at, id LIMIT $2::int) x",
                4, p, 200);
}

/* The public catalog: no token needed (the tills read it, see pos). */
static void get_products(http_req *r, void *cls, http_resp *out)
{
    respond_doc(r, cls, out, "api_products",
                "SELECT coalesce(json_agg(json_build_object('sku', sku, 'name', name,"
                " 'price_minor', price_minor, 'currency', currency) ORDER BY sku), '[]')::text"
                " AS doc FROM products",
                0, NULL, 200);
}

/* Not quick: they query the database, so they run on the HTTP job threads. */
static const http_route routes[] = {
    {"POST", "/orders", 0, post_order, NULL, 0},
    {"GET", "/orders", 0, list_orders, NULL, 0},
    {"GET", "/orders/", 1, get_order, NULL, 0},
    {"GET", "/products", 0, get_products, NULL, 0},
    {"GET", "/products/", 1, api_get_availability, NULL, 0},
    {"GET", "/", 0, api_get_board, NULL, 1},
    {"GET", "/board.css", 0, api_get_board_css, NULL, 1},
    {"GET", "/board.js", 0, api_get_board_js, NULL, 1},
    {"GET", "/favicon.ico", 0, api_get_board_favicon, NULL, 1},
    {"GET", "/board/queues", 0, api_get_board_queues, NULL, 0},
};

const http_route *api_routes(size_t *n)
{
    *n = sizeof(routes) / sizeof(routes[0]);
    return routes;
}
