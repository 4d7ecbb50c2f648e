/*
 * loadgen.h — the load generator's parts, one file each by role (main.c says
 * what the tool does):
 *
 *   main.c    the options, the threads' start and join, the report
 *   http.c    a minimal HTTP/1.1 client: one keep-alive connection per thread
 *   orders.c  the order threads: POST /orders, retries with the same key
 *   sales.c   the sales thread: sale.completed through the broker, confirmed
 *   e2e.c     end to end: the backlog sampler and POST -> CONFIRMED latencies
 *
 * The run's settings (lg_opt) and start times are written by main before any
 * thread starts and only read after; lg_stopping is the stop flag, a C11
 * atomic that SIGINT / SIGTERM set and every thread reads, as is the
 * sampler's done; the counters shared between threads are updated with
 * __atomic builtins.
 */
#ifndef ORDERSUITE_LOADGEN_H
#define ORDERSUITE_LOADGEN_H

#include "mq.h"
#include "uuid.h"

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_CONNS           1024
#define MAX_TARGETS         8            /* order-apis in -u */
#define RESP_MAX            (256 * 1024) /* the largest answer read */
#define MAX_BACKLOG_SAMPLES 4096         /* one a second: over an hour */

typedef struct {
    char key[64]; /* the Idempotency-Key made: <tag>-<n>, at most 41 + 1 + 20 bytes */
    char id[UUID_STR_LEN];
    int64_t sent_us; /* wall clock, first attempt */
} accepted;

typedef struct {
    int64_t *lat_us; /* one per answered request */
    size_t nlat, caplat;
    accepted *acc;
    size_t nacc, capacc;
    long by_class[6]; /* 1xx..5xx answers, [0] = no answer */
    long retries, lost;
    int target;                      /* the order-api this thread posts to now (index) */
    long failovers;                  /* times it moved to the next one */
    long replayed;                   /* retries answered 200: the order an earlier try made */
    long acc_by_target[MAX_TARGETS]; /* orders accepted by each */
} tstats;

/* An order-api to post to (-u). */
typedef struct {
    char host[64]; /* an IPv4 address (localhost is made 127.0.0.1); a longer
                      host than 63 bytes in the URL is an error */
    int port;
} lg_target;

typedef struct {
    lg_target targets[MAX_TARGETS]; /* -u: thread i starts on targets[i % ntargets] */
    int ntargets;
    int conns;
    long orders;     /* -n */
    double duration; /* -d */
    double rate;     /* -r */
    const char *tag;
    long sales;
    double retry_s;
    double e2e_s;
    const char *ids_path;
    const char *json_path;
    const char *token; /* API_TOKEN */
    const char *skus[8];
    int nskus;
    int lines;
} lg_options;

extern lg_options lg_opt;
extern int64_t lg_start_mono; /* ms, util_now_ms */
extern int64_t lg_start_wall; /* us, util_wall_us */
extern atomic_int lg_stopping;
extern long lg_accepted_total; /* atomic: accepted orders so far, for the sampler */

/* ------------------------------------------------------------- http.c */

/* A connection to t (TCP_NODELAY, 15 s send and receive timeouts), or -1. */
int lg_dial(const lg_target *t);

/* Sends all n bytes; 0 or -1. */
int lg_send_all(int fd, const char *p, size_t n);

/* Reads one response into buf (cap bytes); returns the status code, -1 on a
 * broken connection or an answer without Content-Length or larger than buf.
 * *body points into buf; *close_after is set when the server said
 * Connection: close. */
int lg_read_response(int fd, char *buf, size_t cap, char **body, size_t *blen, int *close_after);

/* ----------------------------------------------------------- orders.c */

/* Posts orders until the run is over; arg is the thread's tstats. */
void *lg_order_thread(void *arg);

/* ------------------------------------------------------------ sales.c */

typedef struct {
    char (*ids)[UUID_STR_LEN];
    long n, sent, failed;
    char err[MQ_ERR_LEN];
} sales_state;

/* Publishes ss->n sales spread over the run; arg is a sales_state. */
void *lg_sales_thread(void *arg);

/* -------------------------------------------------------------- e2e.c */

typedef struct {
    long t_ms, backlog;
} sample;

typedef struct {
    PGconn *db;
    sample s[MAX_BACKLOG_SAMPLES];
    int n;
    atomic_int done; /* set by main, read by the sampler thread */
} sampler;

typedef struct {
    long completed, confirmed, rejected, cancelled, expired, other;
    int64_t *e2e_us;
    size_t ne2e;
    double completed_per_s, first_to_last_s;
    int timed_out;
} e2e_result;

/* Samples the backlog (accepted, not final) once a second until done. */
void *lg_sampler_thread(void *arg);

/* Waits up to lg_opt.e2e_s for every accepted order to be final, then reads
 * the timelines into er (er->e2e_us malloc'd, sorted). 0 or -1. */
int lg_e2e(PGconn *db, PGconn *mail_db, accepted *acc, size_t nacc, e2e_result *er);

/* Least-squares slope of the backlog after the first 10 s, per second; the
 * largest backlog in *max_backlog. */
double lg_backlog_slope(const sampler *sm, double *max_backlog);

/* qsort order of int64_t, and the p-th percentile of sorted v in ms. */
int lg_cmp_i64(const void *a, const void *b);
double lg_pct(const int64_t *v, size_t n, double p);

#endif
