/*
 * metrics.h — counters and a latency histogram in Prometheus text format.
 *
 * One metrics object per process, shared by its threads (a mutex guards it).
 * Counters are per {kind, routing key}; the handler duration histogram is per
 * service. Gauges (outbox backlog, connection state) are read at render time
 * from a callback.
 */
#ifndef ORDERSUITE_METRICS_H
#define ORDERSUITE_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    M_CONSUMED = 0,  /* handed to a handler */
    M_DUPLICATE,     /* acked without effect: already in the inbox */
    M_RETRIED,       /* sent to a retry tier */
    M_DEAD_LETTERED, /* sent to the DLQ */
    M_PUBLISHED,     /* confirmed by the broker (outbox relay, pos) */
    M_REDELIVERED,   /* delivered again by the broker (redelivered flag) */
    M_RPC_SENT,      /* requests asked (mq_rpc.h) */
    M_RPC_TIMED_OUT, /* requests whose deadline passed without a reply */
    M_RPC_LATE,      /* replies dropped: nobody waited for them any more */
    M_RPC_ANSWERED,  /* requests answered (the answering side) */
    M__KINDS
} metric_kind;

typedef struct metrics metrics;

/* Limits: counters for METRICS_MAX_KEYS - 1 routing keys, then one "other"
 * for every key seen after them; a key is kept to METRICS_LABEL_MAX - 1
 * bytes, and keys equal that far share a counter. */
#define METRICS_MAX_KEYS  64
#define METRICS_LABEL_MAX 128

typedef struct {
    int64_t outbox_pending; /* -1 = unknown */
    int64_t outbox_oldest_age_s;
    int64_t outbox_parked;          /* rows the broker refused too often, kept aside */
    uint64_t outbox_relay_failures; /* relay rounds that failed; it backed off after each */
    uint64_t deliveries_acked;      /* deliveries the consumer acked */
    uint64_t ack_frames;            /* basic.ack frames that acked them (multiple-acks) */
    int broker_connected;           /* 1 / 0 */
    int database_connected;         /* 1 / 0 */
} metrics_gauges;

/* Returns NULL when out of memory. metrics_free(NULL) is a no-op. */
metrics *metrics_new(const char *service, const char *version);
void metrics_free(metrics *m);

/* Adds n to the counter of kind for routing_key. m may be NULL (no-op). */
void metrics_count(metrics *m, metric_kind kind, const char *routing_key, uint64_t n);

/* Records one handler run of `seconds`. m may be NULL. */
void metrics_observe(metrics *m, double seconds);
/* n observations of the same duration (a batch: its time divided by n). */
void metrics_observe_n(metrics *m, double seconds, size_t n);

/* The Prometheus text exposition (malloc'd; caller frees), or NULL. */
char *metrics_render(metrics *m, const metrics_gauges *g);

/* The current value of a counter (tests). */
uint64_t metrics_get(metrics *m, metric_kind kind, const char *routing_key);

#endif
