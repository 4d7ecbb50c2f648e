/*
 * worker.c — the shared runtime of consuming services (see worker.h):
 * configuration (which settings each mode reads), the topology, and
 * worker_main, which starts the probe, the outbox relay and the HTTP
 * listeners, consumes until SIGTERM / SIGINT, and stops them in order.
 * The batches are worker_dispatch.c's; the pages worker_http.c's.
 */
#include "worker_int.h"
#include "otel.h"
#include "cfg.h"
#include "log.h"
#include "metrics.h"
#include "retention.h"
#include "util.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop_flag; /* SIGTERM, SIGINT */

#ifndef ORDERSUITE_VERSION
#define ORDERSUITE_VERSION "dev"
#endif

void *worker_app(worker *w)
{
    return w->def->app;
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

int worker_delivery_limit(const char *service, long *limit, char *err, size_t errlen)
{
    char name[MQ_NAME_LEN + 16], def[24];
    long all = 20;
    const cfg_spec a[] = {{"DELIVERY_LIMIT", CFG_LONG, "20", 1, 1000, &all}};
    const cfg_spec one[] = {{name, CFG_LONG, def, 1, 1000, limit}};
    size_t n = 0;

    if (cfg_load(a, 1, err, errlen) < 0)
        return -1;
    /* <NAME>_DELIVERY_LIMIT: the service's name in capitals, '-' as '_' (as
     * scripts/suite.sh's up_name, which make migrate uses). */
    for (const char *s = service; *s && n < MQ_NAME_LEN; s++)
        name[n++] = *s == '-' ? '_' : (char)toupper((unsigned char)*s);
    snprintf(name + n, sizeof(name) - n, "_DELIVERY_LIMIT");
    snprintf(def, sizeof(def), "%ld", all);
    return cfg_load(one, 1, err, errlen);
}

void worker_topology(const worker_def *def, const char **keys, const int *tiers, mq_topology *topo)
{
    size_t nk = 0;
    /* One route per event type at most: keys holds EV__COUNT + 1. */
    assert(def->nroutes <= EV__COUNT);
    memset(topo, 0, sizeof(*topo));
    for (size_t i = 0; i < def->nroutes && nk < EV__COUNT; i++) {
        assert(!def->routes[i].fn != !def->routes[i].set); /* exactly one entry point */
        keys[nk++] = ev_routing_key(def->routes[i].type);
    }
    keys[nk] = NULL;
    topo->queue = def->service;
    topo->keys = keys;
    memcpy(topo->retry_ms, tiers, sizeof(topo->retry_ms));
}

/* Splits bound (spaces) into list (n + 1 entries, NULL-ended), in place in
 * buf. 0, or -1 with err. */
static int split_bound(char *buf, const char **list, size_t n, char *err, size_t errlen)
{
    size_t k = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (k == n) {
            snprintf(err, errlen, "BOUND_KEYS: more than %zu keys", n);
            return -1;
        }
        if (strlen(t) >= MQ_NAME_LEN || strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                                                  "vwxyz0123456789._-") != strlen(t)) {
            snprintf(err, errlen, "BOUND_KEYS: \"%.64s\" is not a routing key", t);
            return -1;
        }
        list[k++] = t;
    }
    list[k] = NULL;
    return 0;
}

int worker_declare_topology(const worker_def *def, const char *amqp_url, const int *tiers,
                            const char *bound, char *err, size_t errlen)
{
    const char *keys[EV__COUNT + 1], *was[WORKER_BOUND_MAX + 1];
    char *buf = strdup(bound ? bound : "");
    mq_topology topo;
    mq_opts o = {.url = amqp_url, .app_id = def->service};
    mq_conn *c;
    int rc;

    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (split_bound(buf, was, WORKER_BOUND_MAX, err, errlen) < 0) {
        free(buf);
        return -1;
    }
    worker_topology(def, keys, tiers, &topo);
    c = mq_new(&o);
    if (!c) {
        snprintf(err, errlen, "AMQP_URL is not an AMQP URL, or out of memory");
        free(buf);
        return -1;
    }
    rc = mq_connect_retry(c, 0, 30000, NULL, err, errlen);
    /* Run by `make migrate` as the administrator: the shared exchanges too. */
    if (rc == MQ_OK)
        rc = mq_declare_exchanges(c, err, errlen);
    if (rc == MQ_OK)
        rc = mq_migrate_topology(c, &topo, was, err, errlen); /* an older version's queue anew */
    if (rc == MQ_OK && def->n_rpc_routes > 0) {
        const char *rk[WORKER_RPC_MAX + 1];
        size_t n = 0;
        for (; n < def->n_rpc_routes && n < WORKER_RPC_MAX; n++)
            rk[n] = def->rpc_routes[n].key;
        rk[n] = NULL;
        rc = mq_rpc_declare(c, def->service, rk, err, errlen); /* its request queue */
    }
    mq_free(c);
    free(buf);
    return rc == MQ_OK ? 0 : -1;
}

unsigned worker_mode(int argc, char **argv)
{
    return argc > 1 && strcmp(argv[1], "--declare-topology") == 0 ? WORKER_DECLARE : WORKER_RUN;
}

int worker_main(const worker_def *def, int argc, char **argv)
{
    char *amqp_url = NULL, *db_url = NULL, *level = NULL, *tiers = NULL, *bound = NULL;
    long prefetch = 64, heartbeat = 30, batch = 64, park_after = 5, park_min_age = 30,
         sweep_ms = 1000, rpc_prefetch = 16, inbox_hours = 336, replay_hours = 168, ret_batch = 500,
         ret_every = 60;
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
        {"OUTBOX_SWEEP_MS", CFG_LONG, "1000", 10, 3600000, &sweep_ms},
        {"RPC_PREFETCH", CFG_LONG, "16", 1, 1000, &rpc_prefetch},
        /* The inbox's window (retention.h), checked against the tiers below. */
        {"INBOX_RETENTION_HOURS", CFG_LONG, "336", 1, 876000, &inbox_hours},
        {"DLQ_REPLAY_HOURS", CFG_LONG, "168", 0, 87600, &replay_hours},
        {"RETENTION_BATCH", CFG_LONG, "500", 1, 100000, &ret_batch},
        {"RETENTION_EVERY_S", CFG_LONG, "60", 1, 86400, &ret_every},
    };
    worker w;
    mq_conn *cons = NULL, *pub = NULL;
    outbox_relay *relay = NULL;
    log_level lvl;
    int rc = 1;
    long ready_max = 10000, ready_max_age = 60;
    worker__http_cfg hc = {0};
    int tier_ms[MQ_MAX_TIERS];
    int declare_only = worker_mode(argc, argv) == WORKER_DECLARE;
    db_timeouts dbt;

    char default_port[16];
    const cfg_spec hspecs[] = {
        {def->port_var ? def->port_var : "METRICS_PORT", CFG_LONG, default_port, 0, 65535,
         &hc.port},
        {"HTTP_BIND", CFG_STR, "127.0.0.1", 0, 0, &hc.bind},
        {"HTTP_THREADS", CFG_LONG, "4", 1, 256, &hc.threads},
        {"MAX_BODY_BYTES", CFG_LONG, "65536", 1024, 16777216, &hc.max_body},
        {"HTTP_TIMEOUT_S", CFG_LONG, "10", 1, 3600, &hc.timeout_s},
        {"HTTP_CONN_LIMIT", CFG_LONG, "1000", 1, 100000, &hc.conn_limit},
        {"HTTP_PER_IP_LIMIT", CFG_LONG, "200", 1, 100000, &hc.per_ip},
        {"HTTP_QUEUE_MAX", CFG_LONG, "256", 1, 100000, &hc.queue_max},
        {"HTTP_QUEUE_DEADLINE_MS", CFG_LONG, "5000", 1, 3600000, &hc.queue_deadline_ms},
        {"READY_MAX_OUTBOX", CFG_LONG, "10000", 1, 1000000000, &ready_max},
        {"READY_MAX_OUTBOX_AGE_S", CFG_LONG, "60", 1, 86400, &ready_max_age},
    };
    const size_t nh = sizeof(hspecs) / sizeof(hspecs[0]);
    char ops_default[16];
    const cfg_spec ospecs[] = {
        {def->ops_port_var ? def->ops_port_var : "OPS_PORT", CFG_LONG, ops_default, 0, 65535,
         &hc.ops_port},
        {"OPS_BIND", CFG_STR, "127.0.0.1", 0, 0, &hc.ops_bind},
    };
    const size_t no = def->ops_port_var ? sizeof(ospecs) / sizeof(ospecs[0]) : 0;
    /* The worker's settings and the modes that read them. */
    const cfg_group settings[] = {
        {specs, sizeof(specs) / sizeof(specs[0]), WORKER_RUN | WORKER_DECLARE},
        {rspecs, sizeof(rspecs) / sizeof(rspecs[0]), WORKER_RUN},
        {hspecs, nh, WORKER_RUN},
        {ospecs, no, WORKER_RUN},
    };
    const size_t nsettings = sizeof(settings) / sizeof(settings[0]);

    snprintf(default_port, sizeof(default_port), "%d", def->default_port);
    snprintf(ops_default, sizeof(ops_default), "%d", def->ops_default_port);
    log_init(def->service, LOG_INFO);
    memset(&w, 0, sizeof(w));
    w.def = def;
    w.stop = &stop_flag;
    if (argc > 1 && !declare_only) {
        fprintf(stderr,
                "usage: %s [--declare-topology]\n(configuration comes from the environment)\n",
                argv[0]);
        return 2;
    }
    if (cfg_load_mode(settings, nsettings, worker_mode(argc, argv), err, sizeof(err)) < 0)
        goto config_error;
    w.ready_max_outbox = ready_max;
    w.ready_max_outbox_age_s = ready_max_age;
    if (!declare_only && worker_db_timeouts(&dbt, err, sizeof(err)) < 0)
        goto config_error;
    if (!declare_only &&
        worker_delivery_limit(def->service, &w.delivery_limit, err, sizeof(err)) < 0)
        goto config_error;
    if (log_parse_level(level, &lvl) < 0) {
        snprintf(err, sizeof(err), "LOG_LEVEL=\"%.32s\" must be debug, info, warn or error", level);
        goto config_error;
    }
    log_init(def->service, lvl);
    if (worker_parse_tiers(tiers, tier_ms, err, sizeof(err)) < 0)
        goto config_error;
    if (!declare_only && retention_check(inbox_hours, tier_ms, replay_hours, err, sizeof(err)) < 0)
        goto config_error;
    if (mq_check_url(amqp_url, err, sizeof(err)) < 0) {
        memmove(err + 10, err, strlen(err) + 1);
        memcpy(err, "AMQP_URL: ", 10);
        goto config_error;
    }
    if (!declare_only && otel_init(def->service, err, sizeof(err)) < 0)
        goto config_error;
    w.crash_after_commit = crash_flag;
    worker_topology(def, w.keys, tier_ms, &w.topo);
    if (declare_only) {
        /* What make migrate adds: the keys the work queue is bound with now
         * (unset when none; see worker_declare_topology). */
        if (cfg_raw("BOUND_KEYS", &bound, err, sizeof(err)) < 0)
            goto config_error;
        rc = worker_declare_topology(def, amqp_url, tier_ms, bound, err, sizeof(err));
        free(bound);
        if (rc < 0)
            log_error("declaring the topology: %s", err);
        else
            log_info("topology of %s declared", def->service);
        cfg_free_groups(settings, nsettings);
        return rc < 0 ? 1 : 0;
    }

    util_stop_on_signals(&stop_flag);
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
                                .sweep_ms = (int)sweep_ms,
                                .park_after = (int)park_after,
                                .park_min_age_s = (int)park_min_age,
                                .due = def->due,
                                .due_arg = def->app,
                                .due_batch = def->due_batch};
        if (otel_start(err, sizeof(err)) < 0) {
            log_error("%s", err);
            goto out;
        }
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
        if (worker__probe_start(&w, db_url, err, sizeof(err)) < 0) {
            log_error("%s", err);
            goto out;
        }
        relay = outbox_relay_start(&ro, err, sizeof(err));
        if (!relay) {
            log_error("%s", err);
            goto out;
        }
        w.relay = relay;
        w.heartbeat_s = (int)heartbeat;
        w.rpc_prefetch = rpc_prefetch;
        if (worker__rpc_start(&w, amqp_url, db_url, &dbt, err, sizeof(err)) < 0) {
            log_error("%s", err);
            goto out;
        }
        {
            retention_opts eo = {.database_url = db_url,
                                 .service = def->service,
                                 .inbox_hours = inbox_hours,
                                 .batch = ret_batch,
                                 .every_s = ret_every};
            if (!(w.retention = retention_start(&eo, err, sizeof(err)))) {
                log_error("%s", err);
                goto out;
            }
        }
    }
    if (worker__http_start(&w, &hc, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out;
    }
    log_info("%s started: queue %s, %zu routes, prefetch %ld", def->service, def->service,
             def->nroutes, prefetch);
    if (mq_consume_batches(cons, pub, worker__dispatch_batch, (size_t)batch, &w, NULL, &stop_flag,
                           err, sizeof(err)) < 0) {
        log_error("stopping: %s", err);
        goto out;
    }
    log_info("stopping: flushing the outbox");
    rc = 0;
out:
    /* HTTP first: its handlers read the relay and the consumer. */
    worker__http_stop(&w);
    worker__rpc_stop(&w); /* after HTTP: its requests ask through the client */
    worker__probe_stop(&w);
    outbox_relay_stop(relay, 10000);
    retention_stop(w.retention);
    otel_stop(0); /* last: the relay's publish spans are in its queue */
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
