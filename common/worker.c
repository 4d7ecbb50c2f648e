/*
 * worker.c — the shared runtime of consuming services (see worker.h).
 */
#include "worker.h"
#include "cfg.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DB_WAIT_MS 10000 /* how long a delivery waits for the database before a retry */

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

#ifndef ORDERSUITE_VERSION
#define ORDERSUITE_VERSION "dev"
#endif

struct worker {
    const worker_def *def;
    db_conn *db;
    metrics *metrics;
    mq_conn *cons;
    outbox_relay *relay;
    long ready_max_outbox;
    long ready_max_outbox_age_s;
    /* The readiness probe: a thread with its own connection that reads the
     * outbox backlog once a second. The HTTP threads read its results
     * (atomics) and never wait on the database themselves. */
    pthread_t probe;
    int probe_running;
    atomic_int probe_stop; /* set by the main thread, read by the probe's */
    db_conn *probe_db;
    int64_t probe_ok_ms;   /* when the database last answered the probe */
    int64_t outbox_rows;   /* unpublished outbox rows at that time */
    int64_t outbox_age_s;  /* age of the oldest of them */
    int64_t outbox_parked; /* parked rows (not in the backlog) */
    const char *keys[EV__COUNT + 1];
    mq_topology topo;
    int crash_after_commit; /* test-only: exit between COMMIT and ack */
};

void *worker_app(worker *w)
{
    return w->def->app;
}

mq_result worker_db_result(int status)
{
    return status == DB_ERR_TRANSIENT ? MQ_RETRY : MQ_REJECT;
}

int worker_emit(worker *w, db_conn *db, const ev_envelope *cause, const ev_event *ev, char *err,
                size_t errlen)
{
    return outbox_add(db, w->def->service, ev, cause->correlation_id, cause->message_id, NULL, err,
                      errlen);
}

int worker_parse_tiers(const char *s, int ms[MQ_MAX_TIERS], char *err, size_t errlen)
{
    int n = 0;
    const char *p = s;
    memset(ms, 0, sizeof(int) * MQ_MAX_TIERS);
    while (*p) {
        char *end;
        long v;
        errno = 0;
        v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > 86400000 || (n > 0 && v <= ms[n - 1]) ||
            n == MQ_MAX_TIERS || (*end != ',' && *end != '\0')) {
            snprintf(err, errlen,
                     "RETRY_DELAYS_MS=\"%.64s\" must be up to %d ascending delays in ms, "
                     "comma-separated (e.g. 1000,10000,60000)",
                     s, MQ_MAX_TIERS);
            return -1;
        }
        ms[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int worker_db_timeouts(db_timeouts *t, char *err, size_t errlen)
{
    const cfg_spec specs[] = {
        {"DB_STATEMENT_TIMEOUT_MS", CFG_LONG, "15000", 0, 3600000, &t->statement_ms},
        {"DB_LOCK_TIMEOUT_MS", CFG_LONG, "5000", 0, 3600000, &t->lock_ms},
        {"DB_IDLE_TX_TIMEOUT_MS", CFG_LONG, "60000", 0, 3600000, &t->idle_tx_ms},
    };
    return cfg_load(specs, sizeof(specs) / sizeof(specs[0]), err, errlen);
}

/* Waits (bounded) for the database to come back; 0 when it is up. */
static int wait_for_db(worker *w, char *err, size_t errlen)
{
    backoff b;
    int64_t end = util_now_ms() + DB_WAIT_MS;
    backoff_init(&b, 100, 2000);
    while (db_ensure(w->db, err, errlen) != DB_OK) {
        if (stop_flag || util_now_ms() > end)
            return -1;
        util_sleep_ms(backoff_next(&b), &stop_flag);
    }
    return 0;
}

/* Copies src into dst (size bytes), cut to fit; returns 1 when it was cut. */
static int copy_cut(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    int cut = n >= size;
    if (cut)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return cut;
}

mq_result worker_envelope_of(const mq_delivery *d, ev_envelope *env, char *err, size_t errlen)
{
    memset(env, 0, sizeof(*env));
    /* The ids are checked whole, before they are copied: a UUID with more
     * after it must not pass as the UUID it starts with. */
    if (!uuid_valid(d->message_id)) {
        snprintf(err, errlen, "undecodable: message_id is missing or not a UUID");
        return MQ_REJECT;
    }
    if (!uuid_valid(d->correlation_id)) {
        snprintf(err, errlen, "undecodable: correlation_id is missing or not a UUID");
        return MQ_REJECT;
    }
    if (copy_cut(env->type, sizeof(env->type), d->routing_key)) {
        snprintf(err, errlen, "undecodable: routing key %.64s... is too long", d->routing_key);
        return MQ_REJECT;
    }
    copy_cut(env->message_id, sizeof(env->message_id), d->message_id);
    copy_cut(env->correlation_id, sizeof(env->correlation_id), d->correlation_id);
    /* Only for logs and the records that name the sender: cut to fit. */
    copy_cut(env->app_id, sizeof(env->app_id), d->app_id);
    env->timestamp = d->timestamp;
    env->schema_version = d->schema_version;
    env->attempt = d->attempt;
    return MQ_DONE;
}

/* A delivery decoded and matched to its handler. */
typedef struct {
    ev_envelope env;
    ev_event ev;
    worker_fn fn;
} prepared;

/* Checks and decodes d without the database. MQ_DONE when it can be applied
 * (p->ev must then be freed), MQ_REJECT with err when it never can. */
static mq_result prepare(worker *w, const mq_delivery *d, prepared *p, char *err, size_t errlen)
{
    ev_type t;
    char derr[EV_ERR_LEN];

    p->fn = NULL;
    if (!uuid_valid(d->message_id)) {
        snprintf(err, errlen, "undecodable: message_id is missing or not a UUID");
        return MQ_REJECT;
    }
    if (d->schema_version != EV_SCHEMA_VERSION) {
        snprintf(err, errlen, "undecodable: schema_version %d is not supported (want %d)",
                 d->schema_version, EV_SCHEMA_VERSION);
        return MQ_REJECT;
    }
    if (ev_type_from_key(d->routing_key, &t) < 0) {
        snprintf(err, errlen, "undecodable: unknown routing key %s", d->routing_key);
        return MQ_REJECT;
    }
    for (size_t i = 0; i < w->def->nroutes; i++) {
        if (w->def->routes[i].type == t)
            p->fn = w->def->routes[i].fn;
    }
    if (!p->fn) {
        snprintf(err, errlen, "no handler for %s in %s", d->routing_key, w->def->service);
        return MQ_REJECT;
    }
    if (worker_envelope_of(d, &p->env, err, errlen) != MQ_DONE)
        return MQ_REJECT;
    if (ev_from_json(t, d->body, d->len, &p->ev, p->env.causation_id, derr, sizeof(derr)) < 0) {
        snprintf(err, errlen, "undecodable: %s", derr);
        return MQ_REJECT;
    }
    return MQ_DONE;
}

/* In the open transaction: the inbox row, then the handler (skipped for a
 * message already processed). Frees p->ev. */
static mq_result apply(worker *w, const mq_delivery *d, prepared *p, char *err, size_t errlen)
{
    const char *params[] = {d->message_id, d->routing_key};
    PGresult *res = NULL;
    mq_result r;
    int rc = db_execp(w->db, "inbox_add",
                      "INSERT INTO inbox (message_id, routing_key) VALUES ($1, $2)"
                      " ON CONFLICT (message_id) DO NOTHING",
                      2, params, &res, err, errlen);
    if (rc != DB_OK) {
        ev_free(&p->ev);
        return worker_db_result(rc);
    }
    if (strcmp(PQcmdTuples(res), "0") == 0) {
        PQclear(res);
        ev_free(&p->ev);
        metrics_count(w->metrics, M_DUPLICATE, d->routing_key, 1);
        log_write(LOG_INFO, p->env.correlation_id, p->env.message_id,
                  "%s already processed; acking the duplicate", d->routing_key);
        return MQ_DONE;
    }
    PQclear(res);
    r = p->fn(w, w->db, &p->env, &p->ev, err, errlen);
    ev_free(&p->ev);
    return r;
}

static void crash_point(worker *w, const char *correlation_id, const char *message_id)
{
    if (w->crash_after_commit) {
        log_write(LOG_WARN, correlation_id, message_id,
                  "CRASH_AFTER_COMMIT: exiting between COMMIT and ack");
        _exit(3);
    }
}

/* One delivery in its own transaction. */
static mq_result dispatch_one(worker *w, const mq_delivery *d, char *err, size_t errlen)
{
    prepared p;
    mq_result r = prepare(w, d, &p, err, errlen);
    int rc;

    if (r != MQ_DONE)
        return r;
    if (wait_for_db(w, err, errlen) < 0) {
        ev_free(&p.ev);
        return MQ_RETRY;
    }
    if ((rc = db_begin(w->db, err, errlen)) != DB_OK) {
        db_rollback(w->db);
        ev_free(&p.ev);
        return worker_db_result(rc);
    }
    r = apply(w, d, &p, err, errlen);
    if (r != MQ_DONE) {
        db_rollback(w->db);
        return r;
    }
    if ((rc = db_commit(w->db, err, errlen)) != DB_OK) {
        db_rollback(w->db);
        return worker_db_result(rc);
    }
    crash_point(w, p.env.correlation_id, p.env.message_id);
    log_write(LOG_DEBUG, p.env.correlation_id, p.env.message_id, "%s processed", d->routing_key);
    return MQ_DONE;
}

worker_batch_fate worker_batch_fate_of(mq_result decoded, int db_up, int committed)
{
    if (decoded != MQ_DONE)
        return WORKER_BATCH_KEEP;
    if (!db_up)
        return WORKER_BATCH_RETRY;
    return committed ? WORKER_BATCH_ACK : WORKER_BATCH_ALONE;
}

/* Several deliveries in one transaction: one COMMIT (one WAL flush) for all.
 * If any of them fails, the transaction is rolled back and each is handled
 * again in its own, so one bad message never holds back the others and
 * nothing is acked that was not committed (worker_batch_fate_of decides). */
static void dispatch_batch(const mq_delivery *d, size_t n, mq_result *res, char (*errs)[MQ_ERR_LEN],
                           void *ctx)
{
    worker *w = ctx;
    prepared *p = NULL;
    int64_t t0 = util_wall_us();
    size_t ok = 0, i, last = 0;
    char err[MQ_ERR_LEN];
    int fallback = 0, db_up, committed = 0;

    for (i = 0; i < n; i++) {
        metrics_count(w->metrics, M_CONSUMED, d[i].routing_key, 1);
        if (d[i].redelivered)
            metrics_count(w->metrics, M_REDELIVERED, d[i].routing_key, 1);
    }
    if (n > 1)
        p = calloc(n, sizeof(*p));
    if (!p) {
        for (i = 0; i < n; i++)
            res[i] = dispatch_one(w, &d[i], errs[i], MQ_ERR_LEN);
        goto out;
    }
    for (i = 0; i < n; i++) {
        res[i] = prepare(w, &d[i], &p[i], errs[i], MQ_ERR_LEN);
        ok += res[i] == MQ_DONE;
    }
    if (ok == 0)
        goto out;
    db_up = wait_for_db(w, err, sizeof(err)) == 0;
    if (db_up && db_begin(w->db, err, sizeof(err)) != DB_OK)
        fallback = 1;
    for (i = 0; i < n; i++) {
        if (res[i] != MQ_DONE)
            continue;
        if (!db_up || fallback) {
            ev_free(&p[i].ev); /* not applied: retried, or handled again on its own below */
            continue;
        }
        if (apply(w, &d[i], &p[i], errs[i], MQ_ERR_LEN) != MQ_DONE) {
            fallback = 1;
            log_write(LOG_INFO, p[i].env.correlation_id, p[i].env.message_id,
                      "%s failed in a batch of %zu (%s); applying them one by one",
                      d[i].routing_key, n, errs[i]);
        }
        last = i;
    }
    if (db_up && !fallback)
        committed = db_commit(w->db, err, sizeof(err)) == DB_OK;
    if (db_up && !committed)
        db_rollback(w->db);
    if (committed) {
        crash_point(w, p[last].env.correlation_id, p[last].env.message_id);
        log_write(LOG_DEBUG, NULL, NULL, "%zu messages processed in one transaction", ok);
    }
    for (i = 0; i < n; i++) {
        switch (worker_batch_fate_of(res[i], db_up, committed)) {
        case WORKER_BATCH_ACK:
        case WORKER_BATCH_KEEP:
            break;
        case WORKER_BATCH_RETRY:
            /* As for one message: the database is away; retry each later. */
            res[i] = MQ_RETRY;
            snprintf(errs[i], MQ_ERR_LEN, "%s", err);
            break;
        case WORKER_BATCH_ALONE:
            res[i] = dispatch_one(w, &d[i], errs[i], MQ_ERR_LEN);
            break;
        }
    }
out:
    free(p);
    metrics_observe_n(w->metrics, (double)(util_wall_us() - t0) / 1e6 / (double)n, n);
}

/* ---------------------------------------------------- health and metrics */

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

static int probe_start(worker *w, const char *db_url, char *err, size_t errlen)
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

static void probe_stop(worker *w)
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
    int64_t ok_ms = __atomic_load_n(&w->probe_ok_ms, __ATOMIC_ACQUIRE);
    outbox_relay_get_stats(w->relay, &rs);
    g->outbox_pending = __atomic_load_n(&w->outbox_rows, __ATOMIC_RELAXED);
    g->outbox_oldest_age_s = __atomic_load_n(&w->outbox_age_s, __ATOMIC_RELAXED);
    g->outbox_parked = __atomic_load_n(&w->outbox_parked, __ATOMIC_RELAXED);
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
 * under READY_MAX_OUTBOX rows and READY_MAX_OUTBOX_AGE_S seconds, and the
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

static void metrics_page(http_req *r, void *cls, http_resp *out)
{
    worker *w = cls;
    metrics_gauges g;
    char *text;
    (void)r;
    gauges(w, &g, NULL);
    text = metrics_render(w->metrics, &g);
    if (!text) {
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    http_respond(out, 200, "text/plain; version=0.0.4", text);
}

void worker_topology(const worker_def *def, const char **keys, const int *tiers, mq_topology *topo)
{
    size_t nk = 0;
    /* One route per event type at most: keys holds EV__COUNT + 1. */
    assert(def->nroutes <= EV__COUNT);
    memset(topo, 0, sizeof(*topo));
    for (size_t i = 0; i < def->nroutes && nk < EV__COUNT; i++)
        keys[nk++] = ev_routing_key(def->routes[i].type);
    keys[nk] = NULL;
    topo->queue = def->service;
    topo->keys = keys;
    memcpy(topo->retry_ms, tiers, sizeof(topo->retry_ms));
}

int worker_declare_topology(const worker_def *def, const char *amqp_url, const int *tiers,
                            char *err, size_t errlen)
{
    const char *keys[EV__COUNT + 1];
    mq_topology topo;
    mq_opts o = {.url = amqp_url, .app_id = def->service};
    mq_conn *c;
    int rc;

    worker_topology(def, keys, tiers, &topo);
    c = mq_new(&o);
    if (!c) {
        snprintf(err, errlen, "AMQP_URL is not an AMQP URL, or out of memory");
        return -1;
    }
    rc = mq_connect_retry(c, 0, 30000, NULL, err, errlen);
    /* Run by `make migrate` as the administrator: the shared exchanges too. */
    if (rc == MQ_OK)
        rc = mq_declare_exchanges(c, err, errlen);
    if (rc == MQ_OK)
        rc = mq_migrate_topology(c, &topo, err, errlen); /* an older version's queue anew */
    mq_free(c);
    return rc == MQ_OK ? 0 : -1;
}

int worker_main(const worker_def *def, int argc, char **argv)
{
    char *amqp_url = NULL, *db_url = NULL, *level = NULL, *tiers = NULL;
    long prefetch = 64, heartbeat = 30, batch = 64, park_after = 5, park_min_age = 30;
    int crash_flag = 0;
    char err[CFG_ERR_LEN + MQ_ERR_LEN];
    /* What declaring the topology needs: the broker and the retry tiers. */
    const cfg_spec specs[] = {
        {"AMQP_URL", CFG_STR, NULL, 0, 0, &amqp_url},
        {"LOG_LEVEL", CFG_STR, "info", 0, 0, &level},
        {"RETRY_DELAYS_MS", CFG_STR, "1000,10000,60000", 0, 0, &tiers},
    };
    /* What running needs besides: the database and the consumer's knobs. */
    const cfg_spec rspecs[] = {
        {"DATABASE_URL", CFG_STR, NULL, 0, 0, &db_url},
        {"PREFETCH", CFG_LONG, "64", 1, 10000, &prefetch},
        {"HEARTBEAT_S", CFG_LONG, "30", 1, 600, &heartbeat},
        {"CRASH_AFTER_COMMIT", CFG_BOOL, "false", 0, 0, &crash_flag},
        {"BATCH_MAX", CFG_LONG, "64", 1, 256, &batch},
        {"OUTBOX_PARK_AFTER", CFG_LONG, "5", 1, 1000000, &park_after},
        {"OUTBOX_PARK_MIN_AGE_S", CFG_LONG, "30", 0, 604800, &park_min_age},
    };
    worker w;
    mq_conn *cons = NULL, *pub = NULL;
    outbox_relay *relay = NULL;
    log_level lvl;
    struct sigaction sa;
    int rc = 1;
    long port = 0, http_threads = 4, max_body = 65536, http_timeout = 10, conn_limit = 1000,
         per_ip = 200, ready_max = 10000, ready_max_age = 60, queue_max = 256,
         queue_deadline = 5000;
    char *bind = NULL, *ops_bind = NULL;
    long ops_port = 0;
    http_server *srv = NULL, *ops_srv = NULL;
    http_route ops_routes[3]; /* the operations listener's, alive as long as it */
    http_route *routes = NULL;
    int tier_ms[MQ_MAX_TIERS];
    int declare_only = argc > 1 && strcmp(argv[1], "--declare-topology") == 0;
    db_timeouts dbt;

    char default_port[16];
    const cfg_spec hspecs[] = {
        {def->port_var ? def->port_var : "METRICS_PORT", CFG_LONG, default_port, 0, 65535, &port},
        {"HTTP_BIND", CFG_STR, "127.0.0.1", 0, 0, &bind},
        {"HTTP_THREADS", CFG_LONG, "4", 1, 256, &http_threads},
        {"MAX_BODY_BYTES", CFG_LONG, "65536", 1024, 16777216, &max_body},
        {"HTTP_TIMEOUT_S", CFG_LONG, "10", 1, 3600, &http_timeout},
        {"HTTP_CONN_LIMIT", CFG_LONG, "1000", 1, 100000, &conn_limit},
        {"HTTP_PER_IP_LIMIT", CFG_LONG, "200", 1, 100000, &per_ip},
        {"HTTP_QUEUE_MAX", CFG_LONG, "256", 1, 100000, &queue_max},
        {"HTTP_QUEUE_DEADLINE_MS", CFG_LONG, "5000", 1, 3600000, &queue_deadline},
        {"READY_MAX_OUTBOX", CFG_LONG, "10000", 1, 1000000000, &ready_max},
        {"READY_MAX_OUTBOX_AGE_S", CFG_LONG, "60", 1, 86400, &ready_max_age},
    };
    const size_t nh = sizeof(hspecs) / sizeof(hspecs[0]);
    char ops_default[16];
    const cfg_spec ospecs[] = {
        {def->ops_port_var ? def->ops_port_var : "OPS_PORT", CFG_LONG, ops_default, 0, 65535,
         &ops_port},
        {"OPS_BIND", CFG_STR, "127.0.0.1", 0, 0, &ops_bind},
    };
    const size_t no = def->ops_port_var ? sizeof(ospecs) / sizeof(ospecs[0]) : 0;
    /* The worker's settings and the modes that read them. */
    enum { RUN = 1, DECLARE = 2 };
    const cfg_group settings[] = {
        {specs, sizeof(specs) / sizeof(specs[0]), RUN | DECLARE},
        {rspecs, sizeof(rspecs) / sizeof(rspecs[0]), RUN},
        {hspecs, nh, RUN},
        {ospecs, no, RUN},
    };
    const size_t nsettings = sizeof(settings) / sizeof(settings[0]);

    snprintf(default_port, sizeof(default_port), "%d", def->default_port);
    snprintf(ops_default, sizeof(ops_default), "%d", def->ops_default_port);
    log_init(def->service, LOG_INFO);
    memset(&w, 0, sizeof(w));
    w.def = def;
    if (argc > 1 && !declare_only) {
        fprintf(stderr,
                "usage: %s [--declare-topology]\n(configuration comes from the environment)\n",
                argv[0]);
        return 2;
    }
    if (cfg_load_mode(settings, nsettings, declare_only ? DECLARE : RUN, err, sizeof(err)) < 0)
        goto config_error;
    w.ready_max_outbox = ready_max;
    w.ready_max_outbox_age_s = ready_max_age;
    if (!declare_only && worker_db_timeouts(&dbt, err, sizeof(err)) < 0)
        goto config_error;
    if (log_parse_level(level, &lvl) < 0) {
        snprintf(err, sizeof(err), "LOG_LEVEL=\"%.32s\" must be debug, info, warn or error", level);
        goto config_error;
    }
    log_init(def->service, lvl);
    if (worker_parse_tiers(tiers, tier_ms, err, sizeof(err)) < 0)
        goto config_error;
    if (mq_check_url(amqp_url, err, sizeof(err)) < 0) {
        memmove(err + 10, err, strlen(err) + 1);
        memcpy(err, "AMQP_URL: ", 10);
        goto config_error;
    }
    w.crash_after_commit = crash_flag;
    worker_topology(def, w.keys, tier_ms, &w.topo);
    if (declare_only) {
        rc = worker_declare_topology(def, amqp_url, tier_ms, err, sizeof(err));
        if (rc < 0)
            log_error("declaring the topology: %s", err);
        else
            log_info("topology of %s declared", def->service);
        cfg_free_groups(settings, nsettings);
        return rc < 0 ? 1 : 0;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    {
        mq_opts co = {.url = amqp_url,
                      .app_id = def->service,
                      .topo = &w.topo,
                      .prefetch = (int)prefetch,
                      .heartbeat_s = (int)heartbeat};
        mq_opts po = {.url = amqp_url, .app_id = def->service, .heartbeat_s = (int)heartbeat};
        outbox_relay_opts ro = {.database_url = db_url,
                                .amqp_url = amqp_url,
                                .service = def->service,
                                .timeouts = &dbt,
                                .park_after = (int)park_after,
                                .park_min_age_s = (int)park_min_age};
        w.metrics = metrics_new(def->service, ORDERSUITE_VERSION);
        co.metrics = po.metrics = ro.metrics = w.metrics;
        cons = mq_new(&co);
        pub = mq_new(&po);
        w.cons = cons;
        w.db = db_new(db_url, def->service);
        if (!cons || !pub || !w.db || !w.metrics) {
            log_error("out of memory, or AMQP_URL is not an AMQP URL");
            goto out;
        }
        db_set_timeouts(w.db, &dbt);
        if (db_connect_retry(w.db, -1, &stop_flag, err, sizeof(err)) == DB_ERR) {
            log_error("DATABASE_URL: %s", err);
            goto out;
        }
        if (probe_start(&w, db_url, err, sizeof(err)) < 0) {
            log_error("%s", err);
            goto out;
        }
        relay = outbox_relay_start(&ro, err, sizeof(err));
        if (!relay) {
            log_error("%s", err);
            goto out;
        }
        w.relay = relay;
    }
    if (port > 0) {
        /* Quick: answered from memory, on MHD's threads, whatever the
         * database does. */
        static const http_route own[] = {{"GET", "/healthz", 0, healthz, NULL, 1},
                                         {"GET", "/readyz", 0, readyz, NULL, 1},
                                         {"GET", "/metrics", 0, metrics_page, NULL, 1}};
        /* A port that carries an API: the probes for existing health
         * checks, without readiness detail, and no metrics (the business's
         * counts are not its clients'); those are on the operations
         * listener. */
        static const http_route api_own[] = {{"GET", "/healthz", 0, healthz, NULL, 1},
                                             {"GET", "/readyz", 0, readyz_public, NULL, 1}};
        const http_route *mine = def->n_http_routes ? api_own : own;
        size_t nmine = def->n_http_routes ? 2 : 3;
        size_t n = nmine + def->n_http_routes;
        http_opts ho;
        routes = calloc(n, sizeof(*routes));
        if (!routes) {
            log_error("out of memory");
            goto out;
        }
        for (size_t i = 0; i < nmine; i++) {
            routes[i] = mine[i];
            routes[i].cls = &w;
        }
        for (size_t i = 0; i < def->n_http_routes; i++) {
            routes[nmine + i] = def->http_routes[i];
            routes[nmine + i].cls = def->http_cls;
        }
        memset(&ho, 0, sizeof(ho));
        ho.port = (int)port;
        ho.bind = bind;
        ho.threads = (int)http_threads;
        ho.max_body = (size_t)max_body;
        ho.conn_timeout_s = (int)http_timeout;
        ho.conn_limit = (int)conn_limit;
        ho.per_ip_limit = (int)per_ip;
        ho.queue_max = (int)queue_max;
        ho.queue_deadline_ms = (int)queue_deadline;
        ho.routes = routes;
        ho.nroutes = n;
        ho.cls = &w;
        ho.thread_exit = def->http_thread_exit;
        srv = http_start(&ho, err, sizeof(err));
        if (!srv) {
            log_error("%s: %s", hspecs[0].name, err);
            goto out;
        }
        log_info("http on %s:%ld (%s)", bind, port,
                 def->n_http_routes ? "/healthz /readyz and the API" : "/healthz /readyz /metrics");
    }
    if (ops_port > 0) {
        /* The operations listener: the quick routes alone (routes[0..2],
         * set above only when the main server runs, so made here again). */
        static const http_route own[] = {{"GET", "/healthz", 0, healthz, NULL, 1},
                                         {"GET", "/readyz", 0, readyz, NULL, 1},
                                         {"GET", "/metrics", 0, metrics_page, NULL, 1}};
        http_opts ho;
        for (size_t i = 0; i < 3; i++) {
            ops_routes[i] = own[i];
            ops_routes[i].cls = &w;
        }
        memset(&ho, 0, sizeof(ho));
        ho.port = (int)ops_port;
        ho.bind = ops_bind;
        ho.threads = 2;
        ho.max_body = 1024;
        ho.conn_timeout_s = (int)http_timeout;
        ho.conn_limit = (int)conn_limit;
        ho.per_ip_limit = (int)per_ip;
        ho.routes = ops_routes;
        ho.nroutes = 3;
        ho.cls = &w;
        ops_srv = http_start(&ho, err, sizeof(err));
        if (!ops_srv) {
            log_error("%s: %s", ospecs[0].name, err);
            goto out;
        }
        log_info("operations http on %s:%ld (/healthz /readyz /metrics)", ops_bind, ops_port);
    }
    log_info("%s started: queue %s, %zu routes, prefetch %ld", def->service, def->service,
             def->nroutes, prefetch);
    if (mq_consume_batches(cons, pub, dispatch_batch, (size_t)batch, &w, NULL, &stop_flag, err,
                           sizeof(err)) < 0) {
        log_error("stopping: %s", err);
        goto out;
    }
    log_info("stopping: flushing the outbox");
    rc = 0;
out:
    /* HTTP first: its handlers read the relay and the consumer. */
    http_stop(ops_srv);
    http_stop(srv);
    free(routes);
    probe_stop(&w);
    outbox_relay_stop(relay, 10000);
    mq_free(cons);
    mq_free(pub);
    db_free(w.db);
    metrics_free(w.metrics);
    cfg_free_groups(settings, nsettings);
    if (rc == 0)
        log_info("stopped");
    return rc;
config_error:
    log_error("configuration: %s", err);
    cfg_free_groups(settings, nsettings);
    return 1;
}
