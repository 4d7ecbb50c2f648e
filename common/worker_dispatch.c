/*
 * worker_dispatch.c — what the worker does with a batch of deliveries (see
 * worker.h): each is checked and decoded without the database (prepare),
 * then all go in ONE transaction: their inbox rows in one statement (a
 * message_id already there is a duplicate: acked, its handler not run), the
 * new ones handed to their routes' handlers (a set handler gets all of its
 * type at once); one COMMIT, then the acks. When anything in the batch
 * fails, the transaction is rolled back and each delivery is handled again
 * in its own (worker_batch_fate_of decides). Also the helpers handlers call
 * (worker_emit, worker_emit_all, worker_db_result, worker_claim).
 */
#include "worker_int.h"
#include "log.h"
#include "upcast.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DB_WAIT_MS 10000 /* how long a delivery waits for the database before a retry */

mq_result worker_db_result(int status)
{
    return status == DB_ERR_TRANSIENT ? MQ_RETRY : MQ_REJECT;
}

mq_result worker_claim(db_conn *db, const char *name, const char *sql, int nparams,
                       const char *const *params, PGresult **res, char *err, size_t errlen,
                       const ev_envelope *env, const char *fmt, ...)
{
    va_list ap;
    int rc = db_execp(db, name, sql, nparams, params, res, err, errlen);

    if (rc != DB_OK) {
        *res = NULL;
        return worker_db_result(rc);
    }
    if (PQntuples(*res) > 0)
        return MQ_DONE;
    PQclear(*res);
    *res = NULL;
    if (!fmt)
        return MQ_DONE;
    va_start(ap, fmt);
    log_vwrite(LOG_INFO, env->correlation_id, env->message_id, fmt, ap);
    va_end(ap);
    return MQ_DONE;
}

int worker_emit(worker *w, db_conn *db, const ev_envelope *cause, const ev_event *ev, char *err,
                size_t errlen)
{
    return outbox_add(db, w->def->service, ev, cause->correlation_id, cause->message_id, NULL, err,
                      errlen);
}

int worker_emit_all(worker *w, db_conn *db, const worker_out *outs, size_t n, char *err,
                    size_t errlen)
{
    outbox_msg *m;
    int rc;

    (void)w;
    if (n == 0)
        return DB_OK;
    if (!(m = calloc(n, sizeof(*m)))) {
        snprintf(err, errlen, "out of memory");
        return DB_ERR_TRANSIENT;
    }
    for (size_t i = 0; i < n; i++) {
        m[i].ev = outs[i].ev;
        m[i].correlation_id = outs[i].cause->env->correlation_id;
        m[i].causation_id = outs[i].cause->env->message_id;
        m[i].trace = outs[i].cause->trace;
    }
    rc = outbox_add_all(db, m, n, err, errlen);
    free(m);
    return rc;
}

/* Waits (bounded) for the database to come back; 0 when it is up. */
static int wait_for_db(worker *w, char *err, size_t errlen)
{
    backoff b;
    int64_t end = util_now_ms() + DB_WAIT_MS;
    backoff_init(&b, 100, 2000);
    while (db_ensure(w->db, err, errlen) != DB_OK) {
        if (*w->stop || util_now_ms() > end)
            return -1;
        util_sleep_ms(backoff_next(&b), w->stop);
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
        snprintf(err, errlen, "undecodable: routing key %.64s... is longer than %d bytes",
                 d->routing_key, EV_KEY_MAX);
        return MQ_REJECT;
    }
    /* The records that name the sender keep it (email.messages.cause_app):
     * cut, it would name another. */
    if (copy_cut(env->app_id, sizeof(env->app_id), d->app_id)) {
        snprintf(err, errlen, "undecodable: app_id %.64s... is longer than %d bytes", d->app_id,
                 EV_APP_ID_MAX);
        return MQ_REJECT;
    }
    copy_cut(env->message_id, sizeof(env->message_id), d->message_id);
    copy_cut(env->correlation_id, sizeof(env->correlation_id), d->correlation_id);
    env->timestamp = d->timestamp;
    env->schema_version = d->schema_version;
    env->attempt = d->attempt;
    return MQ_DONE;
}

/* A delivery decoded and matched to its route. */
typedef struct {
    ev_envelope env;
    ev_event ev;
    const worker_route *route;
    int fresh;       /* its inbox row is new: its handler runs */
    trace_span span; /* its process span, on the batch path */
    int traced;      /* span was started */
} prepared;

/* Checks and decodes d without the database. MQ_DONE when it can be applied
 * (p->ev must then be freed), MQ_REJECT with err when it never can. */
static mq_result prepare(worker *w, const mq_delivery *d, prepared *p, char *err, size_t errlen)
{
    ev_type t;
    char derr[EV_ERR_LEN];

    p->route = NULL;
    p->traced = 0;
    /* First, before anything that could crash on it: a message the broker
     * has handed out DELIVERY_LIMIT times already (returned each time: a
     * worker that died on it, a consumer gone) goes to the DLQ unhandled. */
    if (d->delivery_count >= w->delivery_limit) {
        snprintf(err, errlen, "delivered %d times before, DELIVERY_LIMIT is %ld", d->delivery_count,
                 w->delivery_limit);
        return MQ_REJECT;
    }
    if (!uuid_valid(d->message_id)) {
        snprintf(err, errlen, "undecodable: message_id is missing or not a UUID");
        return MQ_REJECT;
    }
    if (ev_type_from_key(d->routing_key, &t) < 0) {
        snprintf(err, errlen, "undecodable: unknown routing key %s", d->routing_key);
        return MQ_REJECT;
    }
    /* Every version of the event's schema is read (an older one upcast to
     * the latest, upcast.h); another is refused, naming the versions known. */
    if (ev_version_check(t, d->schema_version, derr, sizeof(derr)) < 0) {
        snprintf(err, errlen, "undecodable: %s", derr);
        return MQ_REJECT;
    }
    for (size_t i = 0; i < w->def->nroutes; i++) {
        if (w->def->routes[i].type == t)
            p->route = &w->def->routes[i];
    }
    if (!p->route) {
        snprintf(err, errlen, "no handler for %s in %s", d->routing_key, w->def->service);
        return MQ_REJECT;
    }
    if (worker_envelope_of(d, &p->env, err, errlen) != MQ_DONE)
        return MQ_REJECT;
    if (ev_from_json_version(t, d->schema_version, d->body, d->len, &p->ev, p->env.causation_id,
                             derr, sizeof(derr)) < 0) {
        snprintf(err, errlen, "undecodable: %s", derr);
        return MQ_REJECT;
    }
    return MQ_DONE;
}

/* Inserts the inbox rows of deliveries idx[0..k) in ONE statement and marks
 * p[i].fresh for those it inserted; the others were processed before (or
 * come twice in this batch: the first is fresh): duplicates. DB_OK or the
 * db status with err. */
static int inbox_claim(worker *w, const mq_delivery *d, prepared *p, const size_t *idx, size_t k,
                       char *err, size_t errlen)
{
    db_array ids, keys;
    const char *params[2];
    PGresult *res = NULL;
    int rc;

    db_array_init(&ids);
    db_array_init(&keys);
    for (size_t j = 0; j < k; j++) {
        db_array_add(&ids, d[idx[j]].message_id);
        db_array_add(&keys, d[idx[j]].routing_key);
        p[idx[j]].fresh = 0;
    }
    params[0] = db_array_text(&ids);
    params[1] = db_array_text(&keys);
    if (!params[0] || !params[1]) {
        snprintf(err, errlen, "out of memory");
        rc = DB_ERR_TRANSIENT;
    } else {
        rc = db_execp(w->db, "inbox_add_all",
                      "INSERT INTO inbox (message_id, routing_key)"
                      " SELECT * FROM unnest($1::uuid[], $2::text[])"
                      " ON CONFLICT (message_id) DO NOTHING RETURNING message_id::text",
                      2, params, &res, err, errlen);
    }
    /* Each row returned is one new message_id: its first delivery here. */
    for (int r = 0; rc == DB_OK && r < PQntuples(res); r++) {
        const char *id = PQgetvalue(res, r, 0);
        for (size_t j = 0; j < k; j++) {
            if (!p[idx[j]].fresh && strcasecmp(d[idx[j]].message_id, id) == 0) {
                p[idx[j]].fresh = 1;
                break;
            }
        }
    }
    PQclear(res);
    db_array_release(&ids);
    db_array_release(&keys);
    return rc;
}

/* In the open transaction: the inbox rows of deliveries idx[0..k) (of a
 * batch of n), then the handlers of the new ones in order of arrival, each
 * run of consecutive deliveries of one route together. Returns MQ_DONE,
 * or the first failure with its reason in err. Frees every p[idx[j]].ev. */
static mq_result apply_all(worker *w, const mq_delivery *d, prepared *p, const size_t *idx,
                           size_t k, size_t n, char *err, size_t errlen)
{
    worker_msg *msgs = calloc(k, sizeof(*msgs));
    mq_result r = MQ_DONE;
    int rc;

    if (!msgs) {
        snprintf(err, errlen, "out of memory");
        r = MQ_RETRY;
        goto out;
    }
    if ((rc = inbox_claim(w, d, p, idx, k, err, errlen)) != DB_OK) {
        r = worker_db_result(rc);
        goto out;
    }
    for (size_t j = 0; j < k; j++) {
        if (p[idx[j]].fresh)
            continue;
        metrics_count(w->metrics, M_DUPLICATE, d[idx[j]].routing_key, 1);
        log_write(LOG_INFO, p[idx[j]].env.correlation_id, p[idx[j]].env.message_id,
                  "%s already processed; acking the duplicate", d[idx[j]].routing_key);
    }
    /* In order of arrival, also across event types (an order.expired that
     * came before a late inventory.reserved must be applied first): a run
     * of consecutive new deliveries of one route is one set, or its
     * messages one by one. */
    for (size_t j = 0; j < k && r == MQ_DONE;) {
        const worker_route *route;
        size_t m = 0;
        if (!p[idx[j]].fresh) {
            j++;
            continue;
        }
        route = p[idx[j]].route;
        for (; j < k && r == MQ_DONE; j++) {
            prepared *q = &p[idx[j]];
            if (!q->fresh)
                continue;
            if (q->route != route)
                break;
            /* The message's own span (the batch path's), else the current
             * one (alone: dispatch_one's). */
            msgs[m].env = &q->env;
            msgs[m].ev = &q->ev;
            msgs[m++].trace = q->traced ? &q->span.ctx : trace_current();
            if (route->fn) {
                const trace_ctx *prev = trace_set_current(msgs[m - 1].trace);
                r = route->fn(w, w->db, &q->env, &q->ev, err, errlen);
                /* Logged in the message's context: the line names its trace. */
                if (r != MQ_DONE && n > 1)
                    log_write(LOG_INFO, q->env.correlation_id, q->env.message_id,
                              "%s failed in a batch of %zu (%s); applying them one by one",
                              d[idx[j]].routing_key, n, err);
                trace_set_current(prev);
            }
        }
        if (route->set && m > 0 && (r = route->set(w, w->db, msgs, m, err, errlen)) != MQ_DONE &&
            n > 1) {
            /* One line per message of the set, in its context: a set spans
             * several traces, and each message's trace must say why its
             * delivery is applied again alone (at most BATCH_MAX lines). */
            for (size_t i = 0; i < m; i++) {
                const trace_ctx *prev = trace_set_current(msgs[i].trace);
                log_write(LOG_INFO, msgs[i].env->correlation_id, msgs[i].env->message_id,
                          "a set of %zu %s failed in a batch of %zu (%s); applying them one by one",
                          m, ev_routing_key(route->type), n, err);
                trace_set_current(prev);
            }
        }
    }
out:
    for (size_t j = 0; j < k; j++)
        ev_free(&p[idx[j]].ev);
    free(msgs);
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

/* One delivery in its own transaction; *tx_ns is when it began (0: none),
 * *committed 1 after its COMMIT. */
static mq_result dispatch_one_tx(worker *w, const mq_delivery *d, int64_t *tx_ns, int *committed,
                                 char *err, size_t errlen)
{
    prepared p;
    const size_t only = 0;
    mq_result r = prepare(w, d, &p, err, errlen);
    int rc;

    if (r != MQ_DONE)
        return r;
    if (wait_for_db(w, err, errlen) < 0) {
        ev_free(&p.ev);
        return MQ_RETRY;
    }
    *tx_ns = trace_now_ns();
    if ((rc = db_begin(w->db, err, errlen)) != DB_OK) {
        db_rollback(w->db);
        ev_free(&p.ev);
        return worker_db_result(rc);
    }
    r = apply_all(w, d, &p, &only, 1, 1, err, errlen);
    if (r != MQ_DONE) {
        db_rollback(w->db);
        return r;
    }
    if ((rc = db_commit(w->db, err, errlen)) != DB_OK) {
        db_rollback(w->db);
        return worker_db_result(rc);
    }
    *committed = 1;
    crash_point(w, p.env.correlation_id, p.env.message_id);
    log_write(LOG_DEBUG, p.env.correlation_id, p.env.message_id, "%s processed", d->routing_key);
    return MQ_DONE;
}

/* dispatch_one_tx inside its process span (worker_span.c). */
static mq_result dispatch_one(worker *w, const mq_delivery *d, char *err, size_t errlen)
{
    trace_span sp;
    const trace_ctx *prev = worker__span_begin(w, d, &sp);
    int64_t tx_ns = 0;
    int committed = 0;
    mq_result r = dispatch_one_tx(w, d, &tx_ns, &committed, err, errlen);
    worker__span_end(d, &sp, tx_ns, committed, r, err, prev);
    return r;
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
void worker__dispatch_batch(const mq_delivery *d, size_t n, mq_result *res,
                            char (*errs)[MQ_ERR_LEN], void *ctx)
{
    worker *w = ctx;
    prepared *p = NULL;
    size_t *idx = NULL;
    int64_t t0 = util_wall_us();
    size_t ok = 0, i;
    char err[MQ_ERR_LEN];
    int db_up, committed = 0, begun = 0;
    int64_t tx_ns = 0;

    for (i = 0; i < n; i++) {
        metrics_count(w->metrics, M_CONSUMED, d[i].routing_key, 1);
        if (d[i].redelivered)
            metrics_count(w->metrics, M_REDELIVERED, d[i].routing_key, 1);
    }
    if (n > 1) {
        p = calloc(n, sizeof(*p));
        idx = calloc(n, sizeof(*idx));
    }
    if (!p || !idx) {
        for (i = 0; i < n; i++)
            res[i] = dispatch_one(w, &d[i], errs[i], MQ_ERR_LEN);
        goto out;
    }
    /* Every delivery's process span starts first, before its checks (one
     * refused is dead-lettered: its span says why, in its trace) and before
     * the transaction (its "db transaction" child starts after it); a
     * handler's events are children of their message's span
     * (worker_msg.trace). */
    for (i = 0; i < n; i++) {
        trace_set_current(worker__span_begin(w, &d[i], &p[i].span));
        res[i] = prepare(w, &d[i], &p[i], errs[i], MQ_ERR_LEN);
        if (res[i] == MQ_DONE) {
            idx[ok++] = i;
            p[i].traced = 1;
        } else {
            worker__span_end(&d[i], &p[i].span, 0, 0, res[i], errs[i], trace_current());
        }
    }
    if (ok == 0)
        goto out;
    db_up = wait_for_db(w, err, sizeof(err)) == 0;
    tx_ns = trace_now_ns();
    begun = db_up && db_begin(w->db, err, sizeof(err)) == DB_OK;
    if (begun && apply_all(w, d, p, idx, ok, n, err, sizeof(err)) == MQ_DONE)
        committed = db_commit(w->db, err, sizeof(err)) == DB_OK;
    else if (!begun)
        for (i = 0; i < ok; i++)
            ev_free(&p[idx[i]].ev); /* not applied: retried, or handled again on its own below */
    if (db_up && !committed)
        db_rollback(w->db);
    if (committed) {
        crash_point(w, p[idx[ok - 1]].env.correlation_id, p[idx[ok - 1]].env.message_id);
        log_write(LOG_DEBUG, NULL, NULL, "%zu messages processed in one transaction", ok);
    }
    /* Each applied delivery's process span, with the batch's transaction as
     * its child; one rolled back is handled again below in a span of its
     * own. */
    for (i = 0; i < n; i++) {
        if (p[i].traced && begun)
            worker__span_end(&d[i], &p[i].span, tx_ns, committed, committed ? MQ_DONE : MQ_RETRY,
                             committed ? NULL : "the batch was rolled back; handled alone",
                             trace_current());
        else if (p[i].traced) /* the database away: retried later (a BEGIN refused: tried) */
            worker__span_end(&d[i], &p[i].span, db_up ? tx_ns : 0, 0, MQ_RETRY, err,
                             trace_current());
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
    free(idx);
    metrics_observe_n(w->metrics, (double)(util_wall_us() - t0) / 1e6 / (double)n, n);
}
