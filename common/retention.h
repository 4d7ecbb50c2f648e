/*
 * retention.h — how long a consumer keeps its inbox, and the background task
 * that deletes what is older.
 *
 * The inbox (worker.h) holds the message_id of every message a service has
 * processed, so that a copy that comes back has no second effect. A copy can
 * come back only for so long: a duplicate waiting in a retry tier (at most
 * the sum of RETRY_DELAYS_MS), or in the DLQ until an operator replays it
 * (replay keeps the message_id; DLQ_REPLAY_HOURS is how long the operators
 * promise to take at most, 168 by default). So a row older than
 * INBOX_RETENTION_HOURS (336 by default) is deleted, and a service refuses to
 * start with a window shorter than DLQ_REPLAY_HOURS plus the retry tiers
 * (rounded up to the hour): retention_check says why.
 *
 * The task is a thread with its own database connection. Every
 * RETENTION_EVERY_S (60) it deletes expired rows RETENTION_BATCH (500) at a
 * time, each batch its own short statement (autocommit) that skips rows
 * another session holds (FOR UPDATE SKIP LOCKED), so it never holds a lock a
 * consumer waits for for long and never waits on one; then it reads the
 * sizes of the inbox and the outbox (pg_total_relation_size). What it did is
 * in retention_get_stats and /metrics.
 *
 * The outbox keeps no history: the relay deletes a row once the broker has
 * confirmed it (outbox.h), and a parked row stays until an operator puts it
 * back (`dlq outbox replay`). Nothing here deletes outbox rows.
 */
#ifndef ORDERSUITE_RETENTION_H
#define ORDERSUITE_RETENTION_H

#include "db.h"
#include "mq.h"

#include <stdint.h>

/* The shortest inbox window, in hours, for the retry tiers (ms, as
 * worker_parse_tiers fills them; 0 ends them) and the DLQ replay promise:
 * replay_hours plus the tiers' sum rounded up to the hour. */
long retention_min_hours(const int tiers[MQ_MAX_TIERS], long replay_hours);

/* 0 when hours is at least retention_min_hours(tiers, replay_hours); else -1
 * with err naming the variables and the bound. */
int retention_check(long hours, const int tiers[MQ_MAX_TIERS], long replay_hours, char *err,
                    size_t errlen);

typedef struct retention retention;

typedef struct {
    const char *database_url;
    const char *service;         /* for the connection's application_name */
    long inbox_hours;            /* INBOX_RETENTION_HOURS, checked by retention_check */
    long batch;                  /* rows per DELETE; 0 = 500 */
    long every_s;                /* seconds between rounds; 0 = 60 */
    const db_timeouts *timeouts; /* NULL: statement 10 s, lock 1 s */
} retention_opts;

/* Starts the task (it connects, and reconnects, by itself). NULL with err
 * when out of memory or the thread cannot start. */
retention *retention_start(const retention_opts *o, char *err, size_t errlen);

/* Stops the task (the batch in hand ends first) and frees r. NULL: no-op. */
void retention_stop(retention *r);

typedef struct {
    int64_t last_cleanup; /* wall clock (s) the last round ended; 0: none yet */
    int64_t last_deleted; /* inbox rows that round deleted */
    uint64_t deleted;     /* inbox rows deleted since start */
    uint64_t failures;    /* rounds the database failed */
    int64_t inbox_bytes;  /* pg_total_relation_size at the last round; -1: unknown */
    int64_t outbox_bytes; /* the same for the outbox */
} retention_stats;

/* A copy of r's figures (all zero, sizes -1, for NULL). */
void retention_get_stats(retention *r, retention_stats *out);

/* Appends the figures to *text (malloc'd, as metrics_render returns it) in
 * Prometheus form for service; *text is replaced (freed) on success. 0, or
 * -1 when out of memory (*text unchanged). */
int retention_render(retention *r, const char *service, char **text);

#endif
