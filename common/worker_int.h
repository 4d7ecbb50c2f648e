/*
 * worker_int.h — what the files of the worker runtime share, and services
 * never see: the body of the opaque worker and the functions one
 * worker*.c file calls in another (prefix worker__). Services include
 * worker.h only.
 *
 * The files:
 *   worker.c          configuration, the topology, startup and shutdown
 *                     (worker_main)
 *   worker_dispatch.c a batch of deliveries: decoding, the inbox, the
 *                     handlers, one transaction, the fallback
 *   worker_http.c     the readiness probe and the HTTP pages (/healthz,
 *                     /readyz, /metrics) on the main and operations
 *                     listeners
 */
#ifndef ORDERSUITE_WORKER_INT_H
#define ORDERSUITE_WORKER_INT_H

#include "outbox.h"
#include "trace.h"
#include "worker.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

struct worker {
    const worker_def *def;
    db_conn *db;
    metrics *metrics;
    mq_conn *cons;
    outbox_relay *relay;
    struct retention *retention; /* the inbox's retention task (retention.h) */
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
    int crash_after_commit;      /* test-only: exit between COMMIT and ack */
    long delivery_limit;         /* DELIVERY_LIMIT: handled at most this many times */
    volatile sig_atomic_t *stop; /* the process's: SIGTERM / SIGINT set it */
    /* The HTTP listeners (worker_http.c). */
    http_server *srv, *ops_srv;
    http_route *routes;       /* the main listener's: the pages, then def's */
    http_route ops_routes[3]; /* the operations listener's: the pages */
    /* Request/reply (worker_rpc.c). */
    mq_rpc_client *rpc_client;
    pthread_t rpc_thread;
    int rpc_running;
    int rpc_serving; /* atomic: the thread consumes its requests (mq_rpc_server_opts.serving) */
    volatile sig_atomic_t rpc_stop;
    db_conn *rpc_db;
    char *rpc_amqp_url;
    long rpc_prefetch;
    int heartbeat_s;
};

/* ----------------------------------------------------- worker_dispatch.c */

/* The batch handler given to mq_consume_batches (ctx: the worker). */
void worker__dispatch_batch(const mq_delivery *d, size_t n, mq_result *res,
                            char (*errs)[MQ_ERR_LEN], void *ctx);

/* -------------------------------------------------------- worker_span.c */

/* Starts sp, the process span of d (the child of the context d carries, or
 * a new trace's root), and makes it the thread's current context; returns
 * the context before (for worker__span_end). */
const trace_ctx *worker__span_begin(worker *w, const mq_delivery *d, trace_span *sp);

/* Ends sp with d's result r (err: why, when not MQ_DONE) and, when
 * tx_start_ns > 0, its "db transaction" child from tx_start_ns to now
 * (committed or rolled back); puts prev back as the current context. */
void worker__span_end(const mq_delivery *d, trace_span *sp, int64_t tx_start_ns, int committed,
                      mq_result r, const char *err, const trace_ctx *prev);

/* ---------------------------------------------------------- worker_rpc.c */

/* Starts what def asks of request/reply: the client (into def->rpc_client)
 * and the answering thread with its own database connection to db_url.
 * 0, or -1 with err. */
int worker__rpc_start(worker *w, const char *amqp_url, const char *db_url, const db_timeouts *t,
                      char *err, size_t errlen);

/* Stops the answering thread and the client (no-ops when not started). */
void worker__rpc_stop(worker *w);

/* --------------------------------------------------------- worker_http.c */

/* Starts the probe thread on its own connection to db_url. 0, or -1 with
 * err. */
int worker__probe_start(worker *w, const char *db_url, char *err, size_t errlen);

/* Stops and joins the probe (a no-op when it never started). */
void worker__probe_stop(worker *w);

/* The listeners' settings, as worker_main reads them (a port 0 turns its
 * listener off). */
typedef struct {
    long port, threads, max_body, timeout_s, conn_limit, per_ip, queue_max, queue_deadline_ms;
    char *bind;
    long ops_port;
    char *ops_bind;
} worker__http_cfg;

/* Starts the main listener (the pages and def's routes) and the operations
 * listener (the pages alone), each when its port is not 0. 0, or -1 with
 * err naming the port's variable. */
int worker__http_start(worker *w, const worker__http_cfg *c, char *err, size_t errlen);

/* Stops both listeners (first at shutdown: their pages read the relay and
 * the consumer). */
void worker__http_stop(worker *w);

#endif
