/*
 * order-api — the order HTTP API, and the keeper of each order's status.
 *
 * The HTTP side (routes.c, its files in api.h) runs on a libmicrohttpd thread pool; the main thread
 * runs the shared worker runtime, consuming inventory.* and billing.* events
 * to move an order's status forward (never back):
 *
 *   inventory.reserved      PENDING                            → RESERVED
 *   billing.invoiced        PENDING, RESERVED                  → CONFIRMED, and
 *                                                                order.confirmed (email's mail)
 *   inventory.rejected      PENDING                            → REJECTED
 *   billing.payment_failed  PENDING, RESERVED                  → PAYMENT_FAILED
 *   inventory.released      PENDING, RESERVED, PAYMENT_FAILED  → CANCELLED
 *   (the deadline, saga.c)  PENDING, RESERVED                  → EXPIRED
 *
 * A late or repeated event finds the order past its "from" states and
 * changes nothing. Each change adds a row to the order's timeline. The
 * handlers are set handlers: a batch's events of one type move all their
 * orders, timeline rows included, in one statement.
 * ORDER_TIMEOUT_S (900; 0 turns it off; at most 30 days) is the deadline:
 * an order still PENDING, RESERVED or PAYMENT_FAILED that long after its creation becomes
 * EXPIRED and order.expired goes out, which the other services compensate
 * (saga.c).
 *
 * POST /orders hands each order it accepts to the writer (writer.c), which
 * commits the orders that arrive together in one statement:
 * ORDER_BATCH_MAX (64, 1-1000) orders at most, and a request waits at most
 * ORDER_WRITE_TIMEOUT_MS (25000) for its commit before a 503; it must be more
 * than DB_STATEMENT_TIMEOUT_MS plus the connect timeout, or order-api does
 * not start.
 *
 * POST /orders prices an order from a cache of the catalog's rows
 * (pricing.c), dropped on every catalog change (a NOTIFY from a trigger), off
 * while its LISTEN connection is down, and serving no row longer than
 * PRICE_CACHE_MAX_AGE_MS (30000, 0-3600000; 0: no cache, every order reads
 * the catalog) after it was read.
 *
 * ORDER_PLACED_VERSION (1) is the order.placed schema version it writes
 * (upcast.h; 1 or 2): 2 only once every reader of order.placed reads 2.
 *
 * GET /orders/{id}/events streams an order's status changes (sse.c):
 * SSE_MAX_STREAMS (512) per instance, SSE_CLIENT_MAX_STREAMS (32) per
 * client, a comment every SSE_KEEPALIVE_MS (15000), a stream ended after
 * SSE_IDLE_TIMEOUT_MS (300000) without a status change.
 *
 * API_TOKENS (required; usually API_TOKENS_FILE, a file holding the value)
 * lists each client's bearer tokens as SHA-256 hashes (scripts/api-token.sh);
 * it is read once, at start. Only running reads these (a cfg_group of
 * WORKER_RUN): --declare-topology reads the worker's AMQP_URL and nothing of
 * the API's.
 *
 * GET /products/{sku}/availability asks inventory over the broker and waits
 * at most AVAILABILITY_TIMEOUT_MS (2000, 1-60000) for its answer
 * (availability.c).
 *
 * The API shares the worker runtime's HTTP server (HTTP_PORT, default 8080;
 * see worker.h for the other HTTP settings) with /healthz and /readyz (a 503
 * there says only "not ready"); those and /metrics answer, without a token
 * and without the API, on the operations listener OPS_PORT (default 9100; 0
 * turns it off) on OPS_BIND (127.0.0.1), so probes and scrapers can stay off
 * the API's address.
 */
#include "api.h"
#include "cfg.h"
#include "log.h"
#include "upcast.h"
#include "worker.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define API_STR_(x) #x
#define API_STR(x)  API_STR_(x)

/* What an event says of its order: the id (NULL: not an order's, e.g. a
 * POS sale's invoice), and the reason or the invoice it adds (NULL: none). */
static const char *order_of(const ev_event *ev, const char **reason, const char **invoice_id,
                            char num[24])
{
    *reason = *invoice_id = NULL;
    num[0] = '\0';
    switch (ev->type) {
    case EV_INVENTORY_RESERVED:
        return ev->u.inventory_reserved.order_id;
    case EV_BILLING_INVOICED:
        if (!ev->u.billing_invoiced.order_id[0])
            return NULL;
        *invoice_id = ev->u.billing_invoiced.invoice_id;
        snprintf(num, 24, "%lld", (long long)ev->u.billing_invoiced.invoice_number);
        return ev->u.billing_invoiced.order_id;
    case EV_INVENTORY_REJECTED:
        *reason = ev->u.inventory_rejected.reason;
        return ev->u.inventory_rejected.order_id;
    case EV_BILLING_PAYMENT_FAILED:
        *reason = ev->u.billing_payment_failed.reason;
        return ev->u.billing_payment_failed.order_id;
    case EV_INVENTORY_RELEASED:
        return ev->u.inventory_released.order_id;
    default:
        return NULL;
    }
}

/* Moves each order of the set to `to` if it is in one of `from`
 * ("{PENDING,RESERVED}") and adds its timeline row, all in ONE statement;
 * an order past `from` (a late or repeated event) is left as it is. The
 * states are a column of x (MATERIALIZED, so the planner cannot fold them
 * back into a constant): the orders are found by their ids through the
 * primary key. Given `status = ANY($7)` the planner took the status index
 * (PENDING looks rare to its statistics between runs) and, under load,
 * read every pending order once per batch: 19 ms a statement where this
 * takes well under one. */
static mq_result advance_set(db_conn *db, const worker_msg *m, size_t n, const char *to,
                             const char *from, int *moved_out, char *err, size_t errlen)
{
    db_array c[5];
    const char *p[7];
    PGresult *r = NULL;
    size_t rows = 0;
    int rc = DB_OK;

    for (int k = 0; k < 5; k++)
        db_array_init(&c[k]);
    for (size_t i = 0; i < n; i++) {
        const char *reason, *invoice_id, *id;
        char num[24];
        if (!(id = order_of(m[i].ev, &reason, &invoice_id, num)))
            continue; /* a POS sale's invoice */
        db_array_add(&c[0], id);
        db_array_add(&c[1], reason);
        db_array_add(&c[2], invoice_id);
        db_array_add(&c[3], num[0] ? num : NULL);
        db_array_add(&c[4], m[i].env->message_id);
        rows++;
    }
    for (int k = 0; k < 5; k++) {
        if (!(p[k] = db_array_text(&c[k])))
            rc = DB_ERR_TRANSIENT;
    }
    p[5] = to;
    p[6] = from;
    if (rc != DB_OK)
        snprintf(err, errlen, "out of memory");
    else if (rows > 0)
        rc = db_execp(db, "st_advance_set",
                      "WITH x AS MATERIALIZED (SELECT *, $7::text[] AS from_states FROM"
                      "   unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::uuid[])"
                      "   AS x(id, reason, invoice_id, invoice_number, message_id)),"
                      " u AS (UPDATE orders o SET status = $6::text, updated_at = now(),"
                      "   reason = coalesce(x.reason, o.reason),"
                      "   invoice_id = coalesce(x.invoice_id, o.invoice_id),"
                      "   invoice_number = coalesce(x.invoice_number, o.invoice_number)"
                      "   FROM x WHERE o.id = x.id AND o.status = ANY(x.from_states)"
                      "   RETURNING o.id, x.message_id),"
                      " t AS (INSERT INTO order_timeline (order_id, status, message_id)"
                      "   SELECT id, $6::text, message_id FROM u ON CONFLICT DO NOTHING)"
                      " SELECT id::text FROM u",
                      7, p, &r, err, errlen);
    for (int k = 0; k < 5; k++)
        db_array_release(&c[k]);
    if (rc != DB_OK)
        return worker_db_result(rc);
    for (size_t i = 0; r && i < n; i++) { /* what became of each, for the log */
        const char *reason, *invoice_id, *id;
        char num[24];
        int moved = 0;
        if (!(id = order_of(m[i].ev, &reason, &invoice_id, num)))
            continue;
        for (int k = 0; k < PQntuples(r) && !moved; k++)
            moved = strcasecmp(PQgetvalue(r, k, 0), id) == 0;
        for (size_t e = 0; moved && e < i; e++) { /* the order's first event of the set */
            const char *r2, *i2, *id2;
            char n2[24];
            if ((id2 = order_of(m[e].ev, &r2, &i2, n2)) && strcasecmp(id2, id) == 0)
                moved = 0;
        }
        if (moved_out)
            moved_out[i] = moved;
        if (moved)
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id, "order %s is %s",
                      id, to);
        else
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                      "%s: order %s is unknown or already past %s; status unchanged",
                      m[i].env->type, id, from);
    }
    PQclear(r);
    return MQ_DONE;
}

/* The set handlers, one per event: the route table lists them in the
 * order the statuses are reached, so a batch that holds an order's
 * reservation and its invoice moves it through RESERVED to CONFIRMED. */
static mq_result on_reserved(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                             size_t errlen)
{
    (void)w;
    return advance_set(db, m, n, "RESERVED", "{PENDING}", NULL, err, errlen);
}

/* CONFIRMED, and order.confirmed for each order it moved, in the same
 * transaction: the confirmation the customer is told of comes from here, not
 * from billing.invoiced, so that it follows order-api's decision. An order
 * whose deadline passed while billing invoiced it is EXPIRED here (the row
 * lock orders the two): it gets no order.confirmed, its invoice is void
 * (order.expired at billing) and its one mail is the expiry's. */
static mq_result on_invoiced(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                             size_t errlen)
{
    int *moved = calloc(n, sizeof(*moved));
    ev_event *ev = calloc(n, sizeof(*ev));
    worker_out *outs = calloc(n, sizeof(*outs));
    size_t nout = 0;
    mq_result res;
    int rc;

    if (!moved || !ev || !outs) {
        snprintf(err, errlen, "out of memory");
        res = MQ_RETRY;
        goto out;
    }
    res = advance_set(db, m, n, "CONFIRMED", "{PENDING,RESERVED}", moved, err, errlen);
    for (size_t i = 0; res == MQ_DONE && i < n; i++) {
        const billing_invoiced *b = &m[i].ev->u.billing_invoiced;
        order_confirmed *c = &ev[nout].u.order_confirmed;
        if (!moved[i])
            continue;
        ev_init(&ev[nout], EV_ORDER_CONFIRMED);
        memcpy(c->order_id, b->order_id, sizeof(c->order_id));
        memcpy(c->customer_email, b->customer_email, sizeof(c->customer_email));
        memcpy(c->invoice_id, b->invoice_id, sizeof(c->invoice_id));
        c->invoice_number = b->invoice_number;
        memcpy(c->currency, b->currency, sizeof(c->currency));
        c->amount = b->amount;
        c->tax = b->tax;
        outs[nout].cause = &m[i];
        outs[nout].ev = &ev[nout];
        nout++;
    }
    if (res == MQ_DONE && (rc = worker_emit_all(w, db, outs, nout, err, errlen)) != DB_OK)
        res = worker_db_result(rc);
out:
    free(moved);
    free(ev);
    free(outs);
    return res;
}

static mq_result on_rejected(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                             size_t errlen)
{
    (void)w;
    return advance_set(db, m, n, "REJECTED", "{PENDING}", NULL, err, errlen);
}

static mq_result on_payment_failed(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                                   size_t errlen)
{
    (void)w;
    return advance_set(db, m, n, "PAYMENT_FAILED", "{PENDING,RESERVED}", NULL, err, errlen);
}

static mq_result on_released(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                             size_t errlen)
{
    (void)w;
    return advance_set(db, m, n, "CANCELLED", "{PENDING,RESERVED,PAYMENT_FAILED}", NULL, err,
                       errlen);
}

int main(int argc, char **argv)
{
    static const worker_route routes[] = {
        {EV_INVENTORY_RESERVED, NULL, on_reserved},
        {EV_BILLING_INVOICED, NULL, on_invoiced},
        {EV_INVENTORY_REJECTED, NULL, on_rejected},
        {EV_BILLING_PAYMENT_FAILED, NULL, on_payment_failed},
        {EV_INVENTORY_RELEASED, NULL, on_released},
    };
    char *db_url = NULL, *tokens = NULL, *board_clients = NULL;
    char err[CFG_ERR_LEN];
    long batch_max = 0, write_ms = 0, price_age_ms = 0, placed_version = 1, avail_ms = 0;
    api_saga saga = {.batch = API_SAGA_BATCH};
    long sse_max = 0, sse_client_max = 0, sse_idle = 0, sse_ka = 0;
    const cfg_spec specs[] = {
        {"DATABASE_URL", CFG_STR, NULL, 0, 0, &db_url},
        {"API_TOKENS", CFG_STR, NULL, 0, 0, &tokens},
        {"ORDER_BATCH_MAX", CFG_LONG, API_STR(API_BATCH_MAX_DEFAULT), 1, 1000, &batch_max},
        {"ORDER_WRITE_TIMEOUT_MS", CFG_LONG, API_STR(API_WRITE_WAIT_DEFAULT), 100, 600000,
         &write_ms},
        {"PRICE_CACHE_MAX_AGE_MS", CFG_LONG, API_STR(API_PRICE_AGE_DEFAULT), 0, 3600000,
         &price_age_ms},
        /* The order.placed schema written (upcast.h): 1 until every reader
         * of order.placed reads 2 (README: readers first, then writers). */
        {"ORDER_PLACED_VERSION", CFG_LONG, "1", 1, ev_version_latest(EV_ORDER_PLACED),
         &placed_version},
        {"ORDER_TIMEOUT_S", CFG_LONG, API_STR(API_ORDER_TIMEOUT_DEFAULT), 0, 2592000,
         &saga.timeout_s},
        {"AVAILABILITY_TIMEOUT_MS", CFG_LONG, API_STR(API_AVAILABILITY_TIMEOUT_DEFAULT), 1, 60000,
         &avail_ms},
        {"SSE_MAX_STREAMS", CFG_LONG, API_STR(API_SSE_MAX_DEFAULT), 1, 100000, &sse_max},
        {"SSE_CLIENT_MAX_STREAMS", CFG_LONG, API_STR(API_SSE_CLIENT_MAX_DEFAULT), 1, 100000,
         &sse_client_max},
        {"SSE_IDLE_TIMEOUT_MS", CFG_LONG, API_STR(API_SSE_IDLE_DEFAULT), 100, 86400000, &sse_idle},
        {"SSE_KEEPALIVE_MS", CFG_LONG, API_STR(API_SSE_KEEPALIVE_DEFAULT), 100, 3600000, &sse_ka}};
    const size_t nspecs = sizeof(specs) / sizeof(specs[0]);
    const cfg_group settings[] = {{specs, nspecs, WORKER_RUN}};
    const unsigned mode = worker_mode(argc, argv);
    api_ctx ctx = {0};
    worker_def def = {.service = ORDER_SERVICE,
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .http_cls = &ctx,
                      .http_thread_exit = api_thread_exit,
                      .port_var = "HTTP_PORT",
                      .default_port = 8080,
                      .ops_port_var = "OPS_PORT",
                      .ops_default_port = 9100,
                      .rpc_client = &ctx.rpc,
                      .metrics_more = api_prices_metrics};
    int rc;

    def.http_routes = api_routes(&def.n_http_routes);
    log_init(ORDER_SERVICE, LOG_INFO);
    /* Before any thread (the writer, the price cache and the event-stream
     * hub start below): the span exporter (otel.c) uses libcurl. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        return 1;
    }
    if (cfg_load_mode(settings, 1, mode, err, sizeof(err)) < 0)
        goto config_error;
    if (mode == WORKER_RUN) {
        /* The API's own connections (one per HTTP thread) use DATABASE_URL
         * too; the worker runtime reads and checks the rest. */
        api_writer_opts wo = {.database_url = db_url,
                              .timeouts = &ctx.timeouts,
                              .batch_max = (int)batch_max,
                              .wait_ms = (int)write_ms};
        if (api_tokens_parse(tokens, &ctx.tokens, &ctx.ntokens, err, sizeof(err)) < 0 ||
            /* Who may read the queue depths (GET /board/queues): unset or
             * empty, nobody (cfg_raw: a CFG_STR may not be empty). */
            cfg_raw("BOARD_CLIENTS", &board_clients, err, sizeof(err)) < 0 ||
            api_board_clients_check(board_clients ? board_clients : "", err, sizeof(err)) < 0 ||
            worker_db_timeouts(&ctx.timeouts, err, sizeof(err)) < 0 ||
            api_write_wait_check(write_ms, ctx.timeouts.statement_ms, db_connect_timeout_ms(db_url),
                                 err, sizeof(err)) < 0)
            goto config_error;
        log_info("%zu API tokens", ctx.ntokens);
        ctx.board_clients = board_clients ? board_clients : "";
        ctx.database_url = db_url;
        ctx.placed_version = (int)placed_version;
        log_info("order.placed written in schema version %ld", placed_version);
        ctx.availability_timeout_ms = avail_ms;
        if (!(ctx.writer = api_writer_start(&wo, err, sizeof(err)))) {
            log_error("%s", err);
            rc = 1;
            goto out;
        }
        log_info("orders written in batches of up to %ld, a request waiting at most %ld ms",
                 batch_max, write_ms);
        {
            api_prices_opts po = {
                .database_url = db_url, .timeouts = &ctx.timeouts, .max_age_ms = price_age_ms};
            err[0] = '\0';
            ctx.prices = api_prices_start(&po, err, sizeof(err));
            if (!ctx.prices && price_age_ms > 0) {
                log_error("%s", err);
                api_writer_stop(ctx.writer);
                rc = 1;
                goto out;
            }
            if (ctx.prices)
                log_info("catalog prices cached, each for at most %ld ms", price_age_ms);
            else
                log_info("no price cache (PRICE_CACHE_MAX_AGE_MS=0): every order reads its "
                         "prices");
        }
        if (saga.timeout_s > 0) {
            def.app = &saga;
            def.due = api_expire_due;
            def.due_batch = saga.batch;
            log_info("an order not final %ld s after its creation expires", saga.timeout_s);
        } else {
            log_info("ORDER_TIMEOUT_S=0: orders never expire");
        }
        {
            api_sse_opts so = {.database_url = db_url,
                               .timeouts = &ctx.timeouts,
                               .max_streams = (int)sse_max,
                               .client_max_streams = (int)sse_client_max,
                               .idle_ms = sse_idle,
                               .keepalive_ms = sse_ka};
            if (!(ctx.sse = api_sse_start(&so, err, sizeof(err)))) {
                log_error("%s", err);
                api_writer_stop(ctx.writer);
                api_prices_stop(ctx.prices);
                rc = 1;
                goto out;
            }
        }
    }
    rc = worker_main(&def, argc, argv);
    /* The HTTP server has stopped: no request hands the writer an order now,
     * and it is done with every event stream. */
    api_writer_stop(ctx.writer);
    api_prices_stop(ctx.prices);
    api_sse_stop(ctx.sse);
    goto out;
config_error:
    log_error("configuration: %s", err);
    rc = 1;
out:
    free(ctx.tokens);
    cfg_free_groups(settings, 1);
    free(board_clients);
    curl_global_cleanup();
    return rc;
}
