/*
 * retention.c — the inbox's window and the task that keeps it (see
 * retention.h): a thread, its own connection, small autocommit DELETEs.
 */
#include "retention.h"
#include "log.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_PER_HOUR    3600000LL
#define BATCH_PAUSE_MS 20 /* between two batches of one round: the consumers' turn */

struct retention {
    retention_opts o;
    db_timeouts timeouts;
    db_conn *db;
    pthread_t thread;
    atomic_int stop;
    pthread_mutex_t lock;
    retention_stats stats;
};

long retention_min_hours(const int tiers[MQ_MAX_TIERS], long replay_hours)
{
    long long ms = 0;
    for (int i = 0; i < MQ_MAX_TIERS && tiers[i] > 0; i++)
        ms += tiers[i];
    return replay_hours + (long)((ms + MS_PER_HOUR - 1) / MS_PER_HOUR);
}

int retention_check(long hours, const int tiers[MQ_MAX_TIERS], long replay_hours, char *err,
                    size_t errlen)
{
    long min = retention_min_hours(tiers, replay_hours);
    if (hours >= min)
        return 0;
    snprintf(err, errlen,
             "INBOX_RETENTION_HOURS=%ld is shorter than a message may come back: it must be at"
             " least DLQ_REPLAY_HOURS (%ld) plus the retry tiers of RETRY_DELAYS_MS rounded up"
             " to the hour (%ld), %ld",
             hours, replay_hours, min - replay_hours, min);
    return -1;
}

static void set_round(retention *r, int64_t deleted, int64_t inbox, int64_t outbox)
{
    pthread_mutex_lock(&r->lock);
    r->stats.last_cleanup = util_wall_us() / 1000000;
    r->stats.last_deleted = deleted;
    r->stats.deleted += (uint64_t)deleted;
    r->stats.inbox_bytes = inbox;
    r->stats.outbox_bytes = outbox;
    pthread_mutex_unlock(&r->lock);
}

/* One round: expired rows in batches until a batch comes back short (or
 * stop), then the sizes. 0, or -1 with err (what was deleted stays so). */
static int round_once(retention *r, int64_t *deleted, char *err, size_t errlen)
{
    char hours[24], batch[24];
    const char *p[] = {hours, batch};
    PGresult *res = NULL;
    int64_t inbox, outbox;
    long n;

    snprintf(hours, sizeof(hours), "%ld", r->o.inbox_hours);
    snprintf(batch, sizeof(batch), "%ld", r->o.batch);
    *deleted = 0;
    do {
        /* The subquery reads the processed_at index; SKIP LOCKED passes a
         * row a consumer's transaction holds instead of waiting for it. */
        if (db_execp(r->db, "retention_inbox",
                     "DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM inbox"
                     " WHERE processed_at < now() - make_interval(hours => $1::int)"
                     " LIMIT $2::int FOR UPDATE SKIP LOCKED)",
                     2, p, &res, err, errlen) != DB_OK)
            return -1;
        n = strtol(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        *deleted += n;
        if (n >= r->o.batch)
            util_sleep_ms_atomic(BATCH_PAUSE_MS, &r->stop);
    } while (n >= r->o.batch && !atomic_load(&r->stop));
    if (db_execp(r->db, "retention_sizes",
                 "SELECT pg_total_relation_size('inbox') AS inbox,"
                 " pg_total_relation_size('outbox') AS outbox",
                 0, NULL, &res, err, errlen) != DB_OK)
        return -1;
    inbox = strtoll(db_get(res, 0, "inbox"), NULL, 10);
    outbox = strtoll(db_get(res, 0, "outbox"), NULL, 10);
    PQclear(res);
    set_round(r, *deleted, inbox, outbox);
    return 0;
}

static void *retention_main(void *arg)
{
    retention *r = arg;
    char err[DB_ERR_LEN];
    int64_t deleted;

    while (!atomic_load(&r->stop)) {
        if (db_ensure(r->db, err, sizeof(err)) != DB_OK ||
            round_once(r, &deleted, err, sizeof(err)) < 0) {
            /* The next round tries again; the consumers never wait for it. */
            log_warn("inbox retention: %s", err);
            pthread_mutex_lock(&r->lock);
            r->stats.failures++;
            pthread_mutex_unlock(&r->lock);
        } else if (deleted > 0) {
            log_info("inbox retention: %lld rows older than %ld h deleted", (long long)deleted,
                     r->o.inbox_hours);
        }
        util_sleep_ms_atomic(r->o.every_s * 1000, &r->stop);
    }
    return NULL;
}

retention *retention_start(const retention_opts *o, char *err, size_t errlen)
{
    retention *r = calloc(1, sizeof(*r));
    char app[96];

    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->o = *o;
    if (r->o.batch <= 0)
        r->o.batch = 500;
    if (r->o.every_s <= 0)
        r->o.every_s = 60;
    if (o->timeouts)
        r->timeouts = *o->timeouts;
    else
        r->timeouts = (db_timeouts){.statement_ms = 10000, .lock_ms = 1000, .idle_tx_ms = 10000};
    r->stats.inbox_bytes = r->stats.outbox_bytes = -1;
    snprintf(app, sizeof(app), "%s-retention", o->service);
    r->db = db_new(o->database_url, app);
    if (!r->db) {
        snprintf(err, errlen, "out of memory");
        free(r);
        return NULL;
    }
    db_set_timeouts(r->db, &r->timeouts);
    pthread_mutex_init(&r->lock, NULL);
    if (pthread_create(&r->thread, NULL, retention_main, r) != 0) {
        snprintf(err, errlen, "cannot start the inbox retention thread");
        pthread_mutex_destroy(&r->lock);
        db_free(r->db);
        free(r);
        return NULL;
    }
    return r;
}

void retention_stop(retention *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, 1);
    pthread_join(r->thread, NULL);
    pthread_mutex_destroy(&r->lock);
    db_free(r->db);
    free(r);
}

void retention_get_stats(retention *r, retention_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->inbox_bytes = out->outbox_bytes = -1;
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    *out = r->stats;
    pthread_mutex_unlock(&r->lock);
}

int retention_render(retention *r, const char *service, char **text)
{
    retention_stats s;
    char *out = NULL;
    int n;

    retention_get_stats(r, &s);
    n = asprintf(&out,
                 "%s"
                 "# HELP ordersuite_table_bytes Size of the service's messaging tables"
                 " (pg_total_relation_size at the last retention round; -1: not read yet).\n"
                 "# TYPE ordersuite_table_bytes gauge\n"
                 "ordersuite_table_bytes{service=\"%s\",table=\"inbox\"} %lld\n"
                 "ordersuite_table_bytes{service=\"%s\",table=\"outbox\"} %lld\n"
                 "# HELP ordersuite_inbox_cleanup_timestamp_seconds When the last inbox"
                 " retention round ended (0: none yet).\n"
                 "# TYPE ordersuite_inbox_cleanup_timestamp_seconds gauge\n"
                 "ordersuite_inbox_cleanup_timestamp_seconds{service=\"%s\"} %lld\n"
                 "# HELP ordersuite_inbox_cleanup_last_rows Inbox rows the last round deleted.\n"
                 "# TYPE ordersuite_inbox_cleanup_last_rows gauge\n"
                 "ordersuite_inbox_cleanup_last_rows{service=\"%s\"} %lld\n"
                 "# HELP ordersuite_inbox_deleted_rows_total Inbox rows deleted past"
                 " INBOX_RETENTION_HOURS.\n"
                 "# TYPE ordersuite_inbox_deleted_rows_total counter\n"
                 "ordersuite_inbox_deleted_rows_total{service=\"%s\"} %llu\n"
                 "# HELP ordersuite_inbox_cleanup_failures_total Retention rounds the database"
                 " failed.\n"
                 "# TYPE ordersuite_inbox_cleanup_failures_total counter\n"
                 "ordersuite_inbox_cleanup_failures_total{service=\"%s\"} %llu\n",
                 *text, service, (long long)s.inbox_bytes, service, (long long)s.outbox_bytes,
                 service, (long long)s.last_cleanup, service, (long long)s.last_deleted, service,
                 (unsigned long long)s.deleted, service, (unsigned long long)s.failures);
    if (n < 0)
        return -1;
    free(*text);
    *text = out;
    return 0;
}
