/*
 * outbox.c — the transactional outbox and its relay (see outbox.h).
 */
#include "outbox.h"
#include "log.h"
#include "mq.h"
#include "upcast.h"
#include "trace.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* The relays of this process, woken after a commit that added outbox rows.
 * (NOTIFY would do it too, but PostgreSQL serializes the commits of all
 * notifying transactions on one lock: at a few hundred commits a second
 * that lock, not the disk, sets the pace.) Writers in other processes are
 * found by the timer sweep, or wake the relay with NOTIFY <service>_outbox. */
#define MAX_RELAYS 8
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static int wake_fds[MAX_RELAYS];
static int nwake;

static void wake_relays(void)
{
    uint64_t one = 1;
    pthread_mutex_lock(&wake_lock);
    for (int i = 0; i < nwake; i++)
        (void)!write(wake_fds[i], &one, sizeof(one)); /* full counter: already awake */
    pthread_mutex_unlock(&wake_lock);
}

static void wake_register(int fd, int add)
{
    pthread_mutex_lock(&wake_lock);
    if (add && nwake < MAX_RELAYS) {
        wake_fds[nwake++] = fd;
    } else if (!add) {
        for (int i = 0; i < nwake; i++) {
            if (wake_fds[i] == fd)
                wake_fds[i] = wake_fds[--nwake];
        }
    }
    pthread_mutex_unlock(&wake_lock);
}

struct outbox_relay {
    outbox_relay_opts o;
    char *db_url, *amqp_url, *service;
    char channel[96];
    pthread_t thread;
    int wake_fd;     /* eventfd: a local commit added rows */
    atomic_int stop; /* set by outbox_relay_stop on another thread, after flush_ms */
    int flush_ms;
    pthread_mutex_t lock;
    outbox_relay_stats stats;
    db_timeouts timeouts;
    int has_timeouts;
};

int outbox_row(const ev_event *ev, const char *causation_id, char message_id[UUID_STR_LEN],
               char **body, char *err, size_t errlen)
{
    return outbox_row_version(ev, causation_id, EV_SCHEMA_VERSION, message_id, body, err, errlen);
}

int outbox_row_version(const ev_event *ev, const char *causation_id, int version,
                       char message_id[UUID_STR_LEN], char **body, char *err, size_t errlen)
{
    *body = ev_to_json_version(ev, causation_id, version, err, errlen);
    if (!*body)
        return DB_ERR;
    if (uuid_v4(message_id) < 0) {
        free(*body);
        *body = NULL;
        snprintf(err, errlen, "outbox: no randomness for a message id");
        return DB_ERR_TRANSIENT;
    }
    return DB_OK;
}

void outbox_wake(void)
{
    wake_relays();
}

int outbox_add(db_conn *db, const char *service, const ev_event *ev, const char *correlation_id,
               const char *causation_id, char message_id_out[UUID_STR_LEN], char *err,
               size_t errlen)
{
    char id[UUID_STR_LEN], tp[TRACE_PARENT_LEN];
    const trace_ctx *tc = trace_current();
    char *body;
    const char *p[7];
    int rc;

    (void)service;
    if (!correlation_id || !uuid_valid(correlation_id)) {
        snprintf(err, errlen, "outbox: correlation_id must be a UUID");
        return DB_ERR;
    }
    if ((rc = outbox_row(ev, causation_id, id, &body, err, errlen)) != DB_OK)
        return rc;
    p[0] = id;
    p[1] = ev_routing_key(ev->type);
    p[2] = correlation_id;
    p[3] = causation_id && *causation_id ? causation_id : NULL;
    p[4] = body;
    /* The span that writes the row (the handler's, trace_current): the
     * relay's publish span is its child. */
    p[5] = p[6] = NULL;
    if (trace_valid(tc)) {
        trace_format(tc, tp);
        p[5] = tp;
        p[6] = tc->state[0] ? tc->state : NULL;
    }
    rc = db_execp(db, "outbox_add",
                  "INSERT INTO outbox (message_id, routing_key, correlation_id, causation_id, body,"
                  " traceparent, tracestate) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                  7, p, NULL, err, errlen);
    free(body);
    if (rc == DB_OK)
        rc = db_after_commit(db, wake_relays, err, errlen); /* not on a rollback */
    if (rc == DB_OK && message_id_out)
        memcpy(message_id_out, id, UUID_STR_LEN);
    return rc;
}

int outbox_add_all(db_conn *db, const outbox_msg *msgs, size_t n, char *err, size_t errlen)
{
    db_array col[7];
    const char *p[7];
    int rc = DB_OK;

    if (n == 0)
        return DB_OK;
    for (int c = 0; c < 7; c++)
        db_array_init(&col[c]);
    for (size_t i = 0; i < n && rc == DB_OK; i++) {
        char id[UUID_STR_LEN], *body;
        const char *cause = msgs[i].causation_id;
        if (!msgs[i].correlation_id || !uuid_valid(msgs[i].correlation_id)) {
            snprintf(err, errlen, "outbox: correlation_id must be a UUID");
            rc = DB_ERR;
            break;
        }
        if ((rc = outbox_row(msgs[i].ev, cause, id, &body, err, errlen)) != DB_OK)
            break;
        db_array_add(&col[0], id);
        db_array_add(&col[1], ev_routing_key(msgs[i].ev->type));
        db_array_add(&col[2], msgs[i].correlation_id);
        db_array_add(&col[3], cause && *cause ? cause : NULL);
        db_array_add(&col[4], body);
        free(body);
        /* As outbox_add: the relay's publish span is the writer's child. */
        if (trace_valid(msgs[i].trace)) {
            char tp[TRACE_PARENT_LEN];
            trace_format(msgs[i].trace, tp);
            db_array_add(&col[5], tp);
            db_array_add(&col[6], msgs[i].trace->state[0] ? msgs[i].trace->state : NULL);
        } else {
            db_array_add(&col[5], NULL);
            db_array_add(&col[6], NULL);
        }
    }
    for (int c = 0; c < 7 && rc == DB_OK; c++) {
        if (!(p[c] = db_array_text(&col[c]))) {
            snprintf(err, errlen, "outbox: out of memory");
            rc = DB_ERR_TRANSIENT;
        }
    }
    if (rc == DB_OK)
        rc = db_execp(db, "outbox_add_all",
                      "INSERT INTO outbox (message_id, routing_key, correlation_id, causation_id,"
                      " body, traceparent, tracestate) SELECT a, b, c, d, e, f, g FROM"
                      " unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],"
                      " $6::text[], $7::text[]) WITH ORDINALITY AS m(a, b, c, d, e, f, g, i)"
                      " ORDER BY i",
                      7, p, NULL, err, errlen);
    if (rc == DB_OK)
        rc = db_after_commit(db, wake_relays, err, errlen); /* not on a rollback */
    for (int c = 0; c < 7; c++)
        db_array_release(&col[c]);
    return rc;
}

/* ----------------------------------------------------------------- relay */

static void set_stats(outbox_relay *r, uint64_t published, int failed, int64_t pending,
                      int64_t oldest, int connected)
{
    pthread_mutex_lock(&r->lock);
    r->stats.published += published;
    r->stats.failures += (uint64_t)failed;
    if (pending >= 0) {
        r->stats.pending = pending;
        r->stats.oldest_age_s = oldest;
    }
    r->stats.connected = connected;
    pthread_mutex_unlock(&r->lock);
}

void outbox_relay_get_stats(outbox_relay *r, outbox_relay_stats *out)
{
    pthread_mutex_lock(&r->lock);
    *out = r->stats;
    pthread_mutex_unlock(&r->lock);
}

static int done_ok(const int *status, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += status[i] == MQ_OK;
    return k;
}

/* The publish span of one outbox row (OpenTelemetry messaging conventions):
 * a child of the span that wrote the row (its traceparent column), so that
 * an order is one trace, and linked to it as well, the row having waited
 * in between; a root when the row has none (a writer without a context).
 * Its context goes out in the message's headers (tp). */
static void publish_span(trace_span *s, mq_msg *m, const char *row_tp, const char *row_ts,
                         char tp[TRACE_PARENT_LEN])
{
    trace_ctx writer;
    char name[TRACE_NAME_MAX];
    int has = trace_parse(row_tp, row_ts, &writer) == 0;

    snprintf(name, sizeof(name), "publish %.80s", m->routing_key);
    trace_span_start(s, name, TRACE_KIND_PRODUCER, has ? &writer : NULL);
    if (has)
        trace_span_link(s, &writer);
    trace_span_str(s, "messaging.system", "rabbitmq");
    trace_span_str(s, "messaging.operation.type", "send");
    trace_span_str(s, "messaging.operation.name", "publish");
    trace_span_str(s, "messaging.destination.name", MQ_EXCHANGE);
    trace_span_str(s, "messaging.rabbitmq.destination.routing_key", m->routing_key);
    trace_span_str(s, "messaging.message.id", m->message_id);
    trace_span_str(s, "messaging.message.conversation_id", m->correlation_id);
    if (!trace_valid(&s->ctx))
        return;
    trace_format(&s->ctx, tp);
    m->traceparent = tp;
    m->tracestate = s->ctx.state;
}

/* Claims up to `batch` pending rows, publishes them, deletes the acked ones.
 * Returns the number of rows claimed, or -1 when the broker or the database
 * failed (what was claimed stays pending). */
static int sweep(outbox_relay *r, db_conn *db, mq_conn *mq)
{
    char err[DB_ERR_LEN], batch[16];
    PGresult *res = NULL;
    const char *p[1];
    mq_msg *msgs = NULL;
    trace_span *spans = NULL;
    char(*tps)[TRACE_PARENT_LEN] = NULL;
    int *status = NULL, n, rc = -1, mrc;
    char(*replies)[MQ_REPLY_LEN] = NULL;
    size_t idlen = 0;
    char *ids = NULL;
    uint64_t done = 0;

    snprintf(batch, sizeof(batch), "%d", r->o.batch);
    p[0] = batch;
    if (db_begin(db, err, sizeof(err)) != DB_OK)
        goto fail;
    if (db_execp(
            db, "outbox_claim",
            "SELECT id, message_id, routing_key, correlation_id, body, schema_version, traceparent,"
            " tracestate,"
            " extract(epoch from created_at)::bigint AS ts,"
            " extract(epoch from now() - created_at)::bigint AS age"
            " FROM outbox WHERE parked_at IS NULL ORDER BY id LIMIT $1"
            " FOR UPDATE SKIP LOCKED",
            1, p, &res, err, sizeof(err)) != DB_OK)
        goto fail;
    n = PQntuples(res);
    if (n == 0) {
        PQclear(res);
        db_rollback(db);
        set_stats(r, 0, 0, 0, 0, 1);
        return 0;
    }
    msgs = calloc((size_t)n, sizeof(*msgs));
    status = calloc((size_t)n, sizeof(*status));
    replies = calloc((size_t)n, sizeof(*replies));
    ids = malloc((size_t)n * 21 + 3);
    spans = calloc((size_t)n, sizeof(*spans));
    tps = calloc((size_t)n, sizeof(*tps));
    if (!msgs || !status || !replies || !ids || !spans || !tps) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        msgs[i].routing_key = db_get(res, i, "routing_key");
        msgs[i].message_id = db_get(res, i, "message_id");
        msgs[i].correlation_id = db_get(res, i, "correlation_id");
        msgs[i].body = db_get(res, i, "body");
        msgs[i].len = strlen(msgs[i].body);
        msgs[i].timestamp = strtoll(db_get(res, i, "ts"), NULL, 10);
        msgs[i].schema_version = atoi(db_get(res, i, "schema_version")); /* 1.. (a CHECK) */
        publish_span(&spans[i], &msgs[i], db_get(res, i, "traceparent"),
                     db_get(res, i, "tracestate"), tps[i]);
    }
    mrc = mq_publish_batch_replies(mq, msgs, (size_t)n, status, replies, err, sizeof(err));
    for (int i = 0; i < n; i++) {
        if (status[i] != MQ_OK)
            trace_span_fail(&spans[i], replies[i][0] ? replies[i] : "not confirmed");
        trace_span_end(&spans[i], msgs[i].correlation_id);
    }
    if (mrc != MQ_OK)
        log_error("outbox relay: publishing failed: %s", err);
    /* Rows the broker refused one by one while the connection stayed up.
     * Returned (no queue bound for the key): this row's problem; count the
     * return and, after park_after returns and park_min_age_s since the
     * first, park it; no backoff for the others. Nacked (the broker refuses
     * for now, e.g. a full queue): note it, count nothing, and back off
     * below like for a broker that is away. */
    if (mrc != MQ_OK && mq_is_connected(mq)) {
        int refused_only = 1, nacked = 0;
        for (int i = 0; i < n; i++) {
            if (status[i] != MQ_OK && status[i] != MQ_ERR_RETURNED && status[i] != MQ_ERR_NACKED)
                refused_only = 0;
            nacked += status[i] == MQ_ERR_NACKED;
        }
        for (int i = 0; refused_only && i < n; i++) {
            const char *q[4];
            char limit[16], age[16], why[MQ_REPLY_LEN + 16];
            if (status[i] == MQ_OK)
                continue;
            snprintf(limit, sizeof(limit), "%d", r->o.park_after);
            snprintf(age, sizeof(age), "%d", r->o.park_min_age_s);
            q[0] = db_get(res, i, "id");
            if (status[i] == MQ_ERR_NACKED) {
                q[1] = "basic.nack";
                if (db_execp(db, "outbox_nacked",
                             "UPDATE outbox SET last_error = $2"
                             " WHERE id = $1::bigint",
                             2, q, NULL, err, sizeof(err)) != DB_OK)
                    goto fail;
                continue;
            }
            /* The broker's reply code and text, e.g. "312 NO_ROUTE". */
            snprintf(why, sizeof(why), "basic.return%s%s", replies[i][0] ? " " : "", replies[i]);
            q[1] = why;
            q[2] = limit;
            q[3] = age;
            if (db_execp(db, "outbox_returned",
                         "UPDATE outbox SET attempts = attempts + 1, last_error = $2,"
                         " refused_since = coalesce(refused_since, now()),"
                         " parked_at = CASE WHEN attempts + 1 >= $3::int AND now() -"
                         " coalesce(refused_since, now()) >= make_interval(secs => $4::int)"
                         " THEN now() END"
                         " WHERE id = $1::bigint",
                         4, q, NULL, err, sizeof(err)) != DB_OK)
                goto fail;
        }
        if (nacked > 0) {
            /* A new channel for the next attempt. RabbitMQ 3.10's quorum
             * queue client in a channel that published while the queue
             * elected a new leader (a cluster node killed) can go on
             * nacking every publish for minutes, while a new channel is
             * accepted at once (make chaos's cluster scenario). */
            mq_disconnect(mq);
        }
        if (refused_only && !nacked) {
            log_warn("outbox relay: the broker returned %d of %d row(s) (%s); a row is parked "
                     "after %d returns and %d s",
                     n - (int)done_ok(status, n), n, err, r->o.park_after, r->o.park_min_age_s);
            mrc = MQ_OK; /* the broker is fine: no backoff */
        }
    }
    /* Delete what the broker has; the rest stays pending. */
    ids[idlen++] = '{';
    for (int i = 0; i < n; i++) {
        if (status[i] != MQ_OK)
            continue;
        idlen += (size_t)sprintf(ids + idlen, "%s%s", done ? "," : "", db_get(res, i, "id"));
        done++;
    }
    ids[idlen++] = '}';
    ids[idlen] = '\0';
    if (done > 0) {
        p[0] = ids;
        if (db_execp(db, "outbox_delete", "DELETE FROM outbox WHERE id = ANY($1::bigint[])", 1, p,
                     NULL, err, sizeof(err)) != DB_OK)
            goto fail;
    }
    if (db_commit(db, err, sizeof(err)) != DB_OK) {
        /* Published but still pending: they will go again, and the
         * consumers' inboxes absorb the duplicates. */
        goto fail;
    }
    set_stats(r, done, mrc != MQ_OK, n - (int64_t)done, strtoll(db_get(res, 0, "age"), NULL, 10),
              mq_is_connected(mq));
    rc = mrc == MQ_OK ? n : -1;
    goto out;
fail:
    if (rc < 0 && err[0])
        log_error("outbox relay: %s", err);
    db_rollback(db);
    set_stats(r, 0, 1, -1, 0, 0);
out:
    PQclear(res);
    free(msgs);
    free(status);
    free(replies);
    free(ids);
    free(spans);
    free(tps);
    return rc;
}

#define OUTBOX_DUE_LOCK_WAIT "'250ms'" /* see outbox.h, due */

/* The scheduled work (o.due) in a transaction of its own: a failure is
 * logged and counted, and never holds back publishing. Returns what it did,
 * or -1. */
static int run_due(outbox_relay *r, db_conn *db)
{
    char err[DB_ERR_LEN] = "";
    int n;

    if (db_begin(db, err, sizeof(err)) != DB_OK)
        goto fail;
    /* A table an operator holds (LOCK TABLE) must not hold up publishing:
     * the scheduled work gives up its lock waits quickly and tries again at
     * the next sweep. */
    if (db_exec(db, "SET LOCAL lock_timeout = " OUTBOX_DUE_LOCK_WAIT, 0, NULL, NULL, err,
                sizeof(err)) != DB_OK)
        goto fail;
    n = r->o.due(db, r->o.due_arg, err, sizeof(err));
    if (n < 0)
        goto fail;
    if (db_commit(db, err, sizeof(err)) != DB_OK)
        goto fail;
    pthread_mutex_lock(&r->lock);
    r->stats.due_done += (uint64_t)n;
    pthread_mutex_unlock(&r->lock);
    return n;
fail:
    log_error("outbox relay: scheduled work: %s", err);
    db_rollback(db);
    pthread_mutex_lock(&r->lock);
    r->stats.due_failures++;
    pthread_mutex_unlock(&r->lock);
    return -1;
}

/* Waits up to ms for a local commit (the eventfd) or a NOTIFY on db.
 * Returns -1 when the connection broke. */
static int wait_wake(outbox_relay *r, db_conn *db, int ms)
{
    PGconn *pg = db_pg(db);
    PGnotify *n;
    uint64_t v;
    struct pollfd fds[2];
    int sock = pg ? PQsocket(pg) : -1;

    if (sock < 0)
        return -1;
    fds[0] = (struct pollfd){.fd = sock, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = r->wake_fd, .events = POLLIN};
    if (poll(fds, 2, ms) < 0 && errno != EINTR)
        return -1;
    if (fds[1].revents & POLLIN)
        (void)!read(r->wake_fd, &v, sizeof(v));
    if (!PQconsumeInput(pg))
        return -1;
    while ((n = PQnotifies(pg)) != NULL)
        PQfreemem(n);
    return PQstatus(pg) == CONNECTION_OK ? 0 : -1;
}

static int relay_connect(outbox_relay *r, db_conn *db, char *err, size_t errlen)
{
    char sql[160];
    char *ident;
    if (db_connect(db, err, errlen) != DB_OK)
        return -1;
    ident = PQescapeIdentifier(db_pg(db), r->channel, strlen(r->channel));
    if (!ident) {
        snprintf(err, errlen, "escape: %s", PQerrorMessage(db_pg(db)));
        return -1;
    }
    /* LISTEN takes an identifier, not a parameter; it is escaped by libpq. */
    snprintf(sql, sizeof(sql), "LISTEN %s", ident);
    PQfreemem(ident);
    return db_exec(db, sql, 0, NULL, NULL, err, errlen) == DB_OK ? 0 : -1;
}

static void *relay_main(void *arg)
{
    outbox_relay *r = arg;
    mq_opts mo = {.url = r->amqp_url, .app_id = r->service, .metrics = r->o.metrics};
    db_conn *db = db_new(r->db_url, "outbox-relay");
    mq_conn *mq = mq_new(&mo);
    backoff b;
    char err[DB_ERR_LEN];
    int64_t flush_deadline = -1, due_next = 0;

    backoff_init(&b, 200, 10000);
    if (!db || !mq) {
        log_error("outbox relay: out of memory");
        goto out;
    }
    if (r->has_timeouts)
        db_set_timeouts(db, &r->timeouts);
    for (;;) {
        int n;
        if (atomic_load(&r->stop) && flush_deadline < 0)
            flush_deadline = util_now_ms() + r->flush_ms;
        if (flush_deadline >= 0 && util_now_ms() > flush_deadline)
            break;
        if (!db_pg(db) || PQstatus(db_pg(db)) != CONNECTION_OK) {
            if (relay_connect(r, db, err, sizeof(err)) < 0) {
                set_stats(r, 0, 1, -1, 0, 0);
                log_warn("outbox relay: database: %s", err);
                util_sleep_ms_atomic(backoff_next(&b), flush_deadline >= 0 ? NULL : &r->stop);
                continue;
            }
        }
        if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK) {
            set_stats(r, 0, 1, -1, 0, 0);
            log_warn("outbox relay: broker: %s", err);
            util_sleep_ms_atomic(backoff_next(&b), flush_deadline >= 0 ? NULL : &r->stop);
            continue;
        }
        /* Scheduled work on the timer only, not on every wake-up: a busy
         * writer wakes the relay hundreds of times a second. Not while
         * stopping: what falls due then is the next start's. */
        if (r->o.due && flush_deadline < 0 && util_now_ms() >= due_next) {
            int d = run_due(r, db);
            due_next =
                r->o.due_batch > 0 && d >= r->o.due_batch ? 0 : util_now_ms() + r->o.sweep_ms;
        }
        n = sweep(r, db, mq);
        if (n < 0) {
            util_sleep_ms_atomic(backoff_next(&b), flush_deadline >= 0 ? NULL : &r->stop);
            continue;
        }
        backoff_reset(&b);
        if (n >= r->o.batch)
            continue; /* more waiting: no pause */
        if (flush_deadline >= 0)
            break; /* stopping, and nothing is left */
        mq_tick(mq);
        if (wait_wake(r, db, r->o.sweep_ms) < 0)
            continue; /* reconnects at the top */
    }
out:
    mq_free(mq);
    db_free(db);
    return NULL;
}

/* Frees what outbox_relay_start allocated (r may be half built, or NULL). */
static void relay_free(outbox_relay *r)
{
    if (!r)
        return;
    free(r->db_url);
    free(r->amqp_url);
    free(r->service);
    free(r);
}

outbox_relay *outbox_relay_start(const outbox_relay_opts *o, char *err, size_t errlen)
{
    outbox_relay *r = calloc(1, sizeof(*r));
    if (!r)
        goto oom;
    r->o = *o;
    if (o->timeouts) {
        r->timeouts = *o->timeouts;
        r->has_timeouts = 1;
    }
    r->o.timeouts = NULL; /* copied: the caller's may go */
    r->o.batch = o->batch > 0 ? o->batch : 200;
    r->o.sweep_ms = o->sweep_ms > 0 ? o->sweep_ms : 1000;
    r->o.park_after = o->park_after > 0 ? o->park_after : 5;
    r->o.park_min_age_s = o->park_min_age_s > 0 ? o->park_min_age_s : 0;
    r->db_url = strdup(o->database_url);
    r->amqp_url = strdup(o->amqp_url);
    r->service = strdup(o->service);
    if (!r->db_url || !r->amqp_url || !r->service)
        goto oom;
    snprintf(r->channel, sizeof(r->channel), "%s_outbox", o->service);
    r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->wake_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        relay_free(r);
        return NULL;
    }
    wake_register(r->wake_fd, 1);
    pthread_mutex_init(&r->lock, NULL);
    if (pthread_create(&r->thread, NULL, relay_main, r) != 0) {
        snprintf(err, errlen, "cannot start the outbox relay thread");
        wake_register(r->wake_fd, 0);
        close(r->wake_fd);
        pthread_mutex_destroy(&r->lock);
        relay_free(r);
        return NULL;
    }
    return r;
oom:
    relay_free(r);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void outbox_relay_stop(outbox_relay *r, int timeout_ms)
{
    if (!r)
        return;
    r->flush_ms = timeout_ms;
    atomic_store(&r->stop, 1);
    wake_relays();
    pthread_join(r->thread, NULL);
    wake_register(r->wake_fd, 0);
    close(r->wake_fd);
    pthread_mutex_destroy(&r->lock);
    relay_free(r);
}
