/*
 * worker_http.c — the worker's readiness and pages (see worker.h): a probe
 * thread with its own database connection reads the outbox backlog once a
 * second; /healthz, /readyz and /metrics answer from memory (atomics) on
 * libmicrohttpd's threads, whatever the database does, on the main
 * listener and the operations listener (a main port that carries an API
 * gets /healthz and a /readyz without detail only).
 */
#include "worker_int.h"
#include "log.h"
#include "retention.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_EVERY_MS 1000
#define PROBE_FRESH_MS 3000 /* readiness needs an answer to the probe this recent */

/* Once a second: does the database answer (statement_timeout 1 s), and how
 * big and how old is the outbox backlog? count(*) reads the outbox, which
 * the relay keeps near empty; at a 100 000-row backlog it is a few ms. */
static void *probe_main(void *arg)
{
    worker *w = arg;
    char err[DB_ERR_LEN];
    PGresult *res;

    while (!atomic_load(&w->probe_stop)) {
        if (db_ensure(w->probe_db, err, sizeof(err)) == DB_OK &&
            db_execp(w->probe_db, "ready_probe",
                     "SELECT count(*) FILTER (WHERE parked_at IS NULL) AS n,"
                     " count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,"
                     " coalesce(extract(epoch FROM now() - min(created_at)"
                     " FILTER (WHERE parked_at IS NULL)), 0)::bigint AS age FROM outbox",
                     0, NULL, &res, err, sizeof(err)) == DB_OK) {
            __atomic_store_n(&w->outbox_rows, strtoll(db_get(res, 0, "n"), NULL, 10),
                             __ATOMIC_RELAXED);
            __atomic_store_n(&w->outbox_parked, strtoll(db_get(res, 0, "parked"), NULL, 10),
                             __ATOMIC_RELAXED);
            __atomic_store_n(&w->outbox_age_s, strtoll(db_get(res, 0, "age"), NULL, 10),
                             __ATOMIC_RELAXED);
            __atomic_store_n(&w->probe_ok_ms, util_now_ms(), __ATOMIC_RELEASE);
            PQclear(res);
        } else {
            log_debug("readiness probe: %s", err);
        }
        util_sleep_ms_atomic(PROBE_EVERY_MS, &w->probe_stop);
    }
    return NULL;
}

int worker__probe_start(worker *w, const char *db_url, char *err, size_t errlen)
{
    /* Short limits: a probe that waits is an answer ("not ready"). */
    const db_timeouts t = {.statement_ms = 1000, .lock_ms = 1000, .idle_tx_ms = 10000};
    char app[96];

    snprintf(app, sizeof(app), "%s-probe", w->def->service);
    w->probe_db = db_new(db_url, app);
    if (!w->probe_db) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    db_set_timeouts(w->probe_db, &t);
    if (pthread_create(&w->probe, NULL, probe_main, w) != 0) {
        snprintf(err, errlen, "cannot start the readiness probe thread");
        return -1;
    }
    w->probe_running = 1;
    return 0;
}

void worker__probe_stop(worker *w)
{
    if (w->probe_running) {
        atomic_store(&w->probe_stop, 1);
        pthread_join(w->probe, NULL);
        w->probe_running = 0;
    }
    db_free(w->probe_db);
    w->probe_db = NULL;
}

static void gauges(worker *w, metrics_gauges *g, int *relay_connected)
{
    outbox_relay_stats rs;
    mq_stats ms;
    int64_t ok_ms = __atomic_load_n(&w->probe_ok_ms, __ATOMIC_ACQUIRE);
    outbox_relay_get_stats(w->relay, &rs);
    g->outbox_pending = __atomic_load_n(&w->outbox_rows, __ATOMIC_RELAXED);
    g->outbox_oldest_age_s = __atomic_load_n(&w->outbox_age_s, __ATOMIC_RELAXED);
    g->outbox_parked = __atomic_load_n(&w->outbox_parked, __ATOMIC_RELAXED);
    g->outbox_relay_failures = rs.failures;
    mq_get_stats(w->cons, &ms);
    g->deliveries_acked = ms.acked;
    g->ack_frames = ms.ack_frames;
    g->broker_connected = mq_is_connected(w->cons);
    g->database_connected = ok_ms > 0 && util_now_ms() - ok_ms <= PROBE_FRESH_MS;
    if (relay_connected)
        *relay_connected = rs.connected;
}

static void healthz(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    (void)cls;
    http_json(out, 200, strdup("{\"status\":\"ok\"}"));
}

/* 200 only when the consumer and the relay are connected, the database
 * answered the probe in the last PROBE_FRESH_MS, the outbox backlog is
 * under READY_MAX_OUTBOX rows and READY_MAX_OUTBOX_AGE_S seconds, the
 * request/reply server (of a service with rpc_routes) consumes, and the
 * service's own check (worker_def.ready), if any, says ready. The 503 says
 * which (detail set) on the operations listener and a worker's metrics
 * port; on a port that carries an API (readyz_public) it says only "not
 * ready": the backlog and connections are not the API clients' business. */
static void ready_answer(worker *w, int detail_set, http_resp *out)
{
    metrics_gauges g;
    int relay = 0, app_ok;
    char detail[448], why[192] = "";
    gauges(w, &g, &relay);
    app_ok = !w->def->ready || w->def->ready(w->def->app, why, sizeof(why));
    /* A service that answers requests is not ready while its thread does
     * not consume them (a refused permission, the broker lost, its
     * database not yet connected): askers would wait for their deadline. */
    if (app_ok && w->def->n_rpc_routes && !__atomic_load_n(&w->rpc_serving, __ATOMIC_RELAXED)) {
        app_ok = 0;
        snprintf(why, sizeof(why), "request/reply server not serving");
    }
    if (!g.broker_connected || !relay || !g.database_connected ||
        g.outbox_pending > w->ready_max_outbox ||
        g.outbox_oldest_age_s > w->ready_max_outbox_age_s || !app_ok) {
        if (!detail_set) {
            http_problem(out, 503, "Service Unavailable", "not ready", NULL);
            return;
        }
        snprintf(detail, sizeof(detail),
                 "consumer %s, relay %s, database %s, outbox backlog %lld rows (limit %ld), "
                 "oldest %lld s (limit %ld)%s%s",
                 g.broker_connected ? "up" : "down", relay ? "up" : "down",
                 g.database_connected ? "answering" : "not answering", (long long)g.outbox_pending,
                 w->ready_max_outbox, (long long)g.outbox_oldest_age_s, w->ready_max_outbox_age_s,
                 app_ok ? "" : "; ", app_ok ? "" : why);
        http_problem(out, 503, "Service Unavailable", detail, NULL);
        return;
    }
    http_json(out, 200, strdup("{\"status\":\"ready\"}"));
}

static void readyz(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    ready_answer(cls, 1, out);
}

static void readyz_public(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    ready_answer(cls, 0, out);
}

/* The room worker_def.metrics_more has. */
#define WORKER_METRICS_MORE 2048

static void metrics_page(http_req *r, void *cls, http_resp *out)
{
    worker *w = cls;
    metrics_gauges g;
    char *text;
    (void)r;
    gauges(w, &g, NULL);
    text = metrics_render(w->metrics, &g);
    if (text && retention_render(w->retention, w->def->service, &text) < 0) {
        free(text);
        text = NULL;
    }
    if (text && w->def->metrics_more) {
        size_t have = strlen(text);
        char *more = realloc(text, have + WORKER_METRICS_MORE);
        if (more) {
            text = more;
            w->def->metrics_more(w->def->http_cls, text + have, WORKER_METRICS_MORE);
        } else {
            free(text);
            text = NULL;
        }
    }
    if (!text) {
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    http_respond(out, 200, "text/plain; version=0.0.4", text);
}

/* Puts "var: " before err (the listener's port variable), cutting err's
 * end when both do not fit; returns -1. */
static int prefix_err(const char *var, char *err, size_t errlen)
{
    size_t pre = strlen(var) + 2, len = strlen(err);
    if (pre >= errlen)
        return -1;
    if (pre + len >= errlen)
        len = errlen - pre - 1;
    memmove(err + pre, err, len);
    err[pre + len] = '\0';
    memcpy(err, var, pre - 2);
    memcpy(err + pre - 2, ": ", 2);
    return -1;
}

/* The pages, answered from memory on MHD's threads: on the operations
 * listener and a worker's metrics port. */
static const http_route pages[] = {{"GET", "/healthz", 0, healthz, NULL, 1},
                                   {"GET", "/readyz", 0, readyz, NULL, 1},
                                   {"GET", "/metrics", 0, metrics_page, NULL, 1}};
#define NPAGES (sizeof(pages) / sizeof(pages[0]))
/* A port that carries an API: the probes for existing health checks,
 * without readiness detail, and no metrics (the business's counts are not
 * its clients'); those are on the operations listener. */
static const http_route api_pages[] = {{"GET", "/healthz", 0, healthz, NULL, 1},
                                       {"GET", "/readyz", 0, readyz_public, NULL, 1}};

int worker__http_start(worker *w, const worker__http_cfg *c, char *err, size_t errlen)
{
    const worker_def *def = w->def;
    http_opts ho;

    if (c->port > 0) {
        const http_route *mine = def->n_http_routes ? api_pages : pages;
        size_t nmine = def->n_http_routes ? sizeof(api_pages) / sizeof(api_pages[0]) : NPAGES;
        size_t n = nmine + def->n_http_routes;
        w->routes = calloc(n, sizeof(*w->routes));
        if (!w->routes) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < nmine; i++) {
            w->routes[i] = mine[i];
            w->routes[i].cls = w;
        }
        for (size_t i = 0; i < def->n_http_routes; i++) {
            w->routes[nmine + i] = def->http_routes[i];
            w->routes[nmine + i].cls = def->http_cls;
        }
        memset(&ho, 0, sizeof(ho));
        ho.port = (int)c->port;
        ho.bind = c->bind;
        ho.threads = (int)c->threads;
        ho.max_body = (size_t)c->max_body;
        ho.conn_timeout_s = (int)c->timeout_s;
        ho.conn_limit = (int)c->conn_limit;
        ho.per_ip_limit = (int)c->per_ip;
        ho.queue_max = (int)c->queue_max;
        ho.queue_deadline_ms = (int)c->queue_deadline_ms;
        ho.routes = w->routes;
        ho.nroutes = n;
        ho.cls = w;
        ho.thread_exit = def->http_thread_exit;
        w->srv = http_start(&ho, err, errlen);
        if (!w->srv)
            return prefix_err(def->port_var ? def->port_var : "METRICS_PORT", err, errlen);
        log_info("http on %s:%ld (%s)", c->bind, c->port,
                 def->n_http_routes ? "/healthz /readyz and the API" : "/healthz /readyz /metrics");
    }
    if (c->ops_port > 0) {
        for (size_t i = 0; i < NPAGES; i++) {
            w->ops_routes[i] = pages[i];
            w->ops_routes[i].cls = w;
        }
        memset(&ho, 0, sizeof(ho));
        ho.port = (int)c->ops_port;
        ho.bind = c->ops_bind;
        ho.threads = 2;
        ho.max_body = 1024;
        ho.conn_timeout_s = (int)c->timeout_s;
        ho.conn_limit = (int)c->conn_limit;
        ho.per_ip_limit = (int)c->per_ip;
        ho.routes = w->ops_routes;
        ho.nroutes = NPAGES;
        ho.cls = w;
        w->ops_srv = http_start(&ho, err, errlen);
        if (!w->ops_srv)
            return prefix_err(def->ops_port_var ? def->ops_port_var : "OPS_PORT", err, errlen);
        log_info("operations http on %s:%ld (/healthz /readyz /metrics)", c->ops_bind, c->ops_port);
    }
    return 0;
}

void worker__http_stop(worker *w)
{
    http_stop(w->ops_srv);
    http_stop(w->srv);
    w->ops_srv = w->srv = NULL;
    free(w->routes);
    w->routes = NULL;
}
