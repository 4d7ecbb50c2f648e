/*
 * testutil.h — helpers shared by the Check suites: required environment,
 * bounded polling, SQL against the real database, and starting/stopping the
 * real executables. Defined in files by role: testutil.c (the core, services
 * and tools), testutil_sql.c, testutil_http.c, testutil_amqp.c,
 * testutil_events.c.
 */
#ifndef ORDERSUITE_TESTUTIL_H
#define ORDERSUITE_TESTUTIL_H

#include "events.h"
#include "mq.h"

#include <amqp.h>
#include <check.h>
#include <stdint.h>
#include <sys/types.h>

/* The value of an environment variable the suite needs (set by
 * scripts/run-tests.sh); fails the test when it is missing. */
/* An order-api client for suites that start order-api themselves: give it
 * TU_API_TOKENS in its environment and send TU_API_AUTH with each request
 * (the hash is the SHA-256 of the token, as scripts/api-token.sh writes it). */
#define TU_API_TOKEN "tests-suite-token-Qw3Er5Ty7Ui9"
#define TU_API_AUTH  "Authorization: Bearer " TU_API_TOKEN
#define TU_API_TOKENS                                                                              \
    "API_TOKENS=tests c767501eacd1b4c5f67e0b32970a4922e4ebdd33a6c64810f77bf9f017dab212"

const char *tu_env(const char *name);

/* Polls cond(arg) every 20 ms until it returns non-zero or timeout_ms passes.
 * Returns 1 when the condition held, 0 on timeout. */
int tu_poll(int timeout_ms, int (*cond)(void *arg), void *arg);

/* Runs sql (with text params) on a fresh connection to url and returns the
 * first column of the first row as a malloc'd string ("" for no rows, NULL
 * for SQL NULL); fails the test on any error. */
char *tu_sql(const char *url, const char *sql, int nparams, const char *const *params);

/* Same, returning the value as an integer (fails on NULL / no rows). */
long long tu_sql_int(const char *url, const char *sql, int nparams, const char *const *params);

/* Runs sql and returns 0, or -1 with "SQLSTATE: message" in err. */
int tu_sql_try(const char *url, const char *sql, char *err, size_t errlen);

/* Starts an executable with extra environment entries ("K=V", NULL-ended),
 * stdout/stderr appended to logpath. Returns the pid; fails the test if the
 * fork or exec fails. */
pid_t tu_spawn(const char *path, char *const argv[], const char *const *env, const char *logpath);

/* Sends sig to pid and waits up to timeout_ms for it to exit; returns its
 * wait status, or -1 if it did not exit (it is then SIGKILLed). */
int tu_stop(pid_t pid, int sig, int timeout_ms);

/* ------------------------------------------------ services under test
 * One way for a suite to run one of the project's executables: tu_svc_start
 * with the settings it needs, tu_svc_stop_ok when done. Each failure (it
 * exits before it is ready, it is not ready in time, it does not stop
 * cleanly) fails the test with the tail of what this start wrote to its log.
 */

/* How to start a service. Only exe is required. */
typedef struct {
    const char *exe;         /* a name in ORDERSUITE_BIN, or a path with a '/' */
    const char *amqp_env;    /* AMQP_URL=$amqp_env (e.g. "INVENTORY_AMQP_URL"); NULL: none */
    const char *db_env;      /* DATABASE_URL=$db_env (e.g. "INVENTORY_DATABASE_URL"); NULL: none */
    const char *const *env;  /* more "K=V" entries, NULL-ended; they override the defaults
                                (LOG_LEVEL=info, METRICS_PORT=0) and the two URLs */
    char *const *argv;       /* NULL: { exe's base name, NULL } */
    const char *log;         /* ORDERSUITE_VAR/log/tests/<log>.log, or a path with a '/';
                                NULL: the exe's name */
    const char *ready_queue; /* ready once this queue has a consumer, on the broker at
                                ready_amqp_env (NULL: TEST_AMQP_URL) */
    const char *ready_amqp_env;
    const char *ready_url; /* ready once GET of this URL answers 200 */
    int ready_ms;          /* bound of the wait for both; 0: 30000 */
} tu_svc_opts;

/* A started service. */
typedef struct {
    pid_t pid;             /* 0 once stopped */
    char name[64];         /* exe's base name, for messages */
    char log[512];         /* its log file */
    long log_from;         /* the log's size before the start: where its output begins */
    char ready_queue[128]; /* copied from the options ("": not asked for) */
    char ready_amqp_env[64];
    char ready_url[256];
    int ready_ms;
} tu_svc;

/* Starts the service described by o (output appended to its log) without
 * waiting; fails the test if it cannot be started, or when a value does not
 * fit tu_svc's buffers (63 bytes of name, 511 of log path, 127 of queue,
 * 255 of URL; 1187 of AMQP or database URL; 24 entries in env). */
void tu_svc_spawn(tu_svc *s, const tu_svc_opts *o);

/* Waits (bounded by its ready_ms) until s is ready as its options say; fails
 * the test, with its log, when it exits first or is not ready in time. */
void tu_svc_await(tu_svc *s);

/* tu_svc_spawn, then tu_svc_await. */
void tu_svc_start(tu_svc *s, const tu_svc_opts *o);

/* SIGTERM, up to 20 s for it to exit; returns its wait status, or -1 when it
 * had to be killed. A stopped service (pid 0) returns 0. */
int tu_svc_stop(tu_svc *s);

/* Waits up to timeout_ms for s to exit by itself and returns its wait
 * status; fails the test, with its log, when it is still running then. */
int tu_svc_wait(tu_svc *s, int timeout_ms);

/* tu_svc_stop, and fails the test, with its log, unless it exited with 0. */
void tu_svc_stop_ok(tu_svc *s);

/* Fails the test with msg and the tail of what s wrote to its log. */
void tu_svc_fail(const tu_svc *s, const char *msg);

/* The project's mail catcher (tools/mailcatcher/mailcatcher.py): a real
 * SMTP server, with an HTTP API at http on what it holds. */
typedef struct {
    tu_svc svc;
    int smtp, http; /* the ports it listens on */
} tu_catcher;

/* Starts the mail catcher on smtp_port and http_port (0: a port the system
 * picks), refusing mail to refuse (NULL: none), its output appended to log
 * (as tu_svc_opts' log; NULL: "mailcatcher"), and waits up to 15 s until
 * both of its servers listen; fails the test, with its log, otherwise. */
tu_catcher tu_catcher_start(int smtp_port, int http_port, const char *refuse, const char *log);

/* Stops it (SIGTERM, up to 10 s); fails the test when it had to be killed. */
void tu_catcher_stop(tu_catcher *c);

/* Lock requests on relation rel (e.g. "orders.outbox") not granted, of
 * mode (e.g. "ExclusiveLock"; NULL: any), as OWNER_DATABASE_URL sees them. */
long tu_lock_waiters(const char *rel, const char *mode);

/* Polls until tu_lock_waiters(rel, mode) is at least 1, for at most ms;
 * returns 1 when it is, 0 on timeout. */
int tu_await_lock_waiter(int ms, const char *rel, const char *mode);

/* Runs one of the project's tools to its end, started as tu_svc_spawn
 * starts a service (o: the same options; the ready_* ones are not used): a
 * URL reaches it through its environment (amqp_env, db_env), never its
 * command line or a shell's. Returns its exit code; when out is not NULL,
 * *out is what it wrote on stdout (malloc'd, caller frees); its stderr is
 * appended to its log. Fails the test, with its log, when it has not exited
 * within TU_TOOL_MS (it is killed), a signal ended it, or it wrote more than
 * TU_TOOL_OUT_MAX bytes on stdout. */
#define TU_TOOL_MS      60000
#define TU_TOOL_OUT_MAX (4 << 20)
int tu_tool(const tu_svc_opts *o, char **out);

/* The value of the first line of a Prometheus text page that starts with
 * series (a metric's name, with its labels or the start of them); -1 when
 * there is none. */
double tu_metric_sample(const char *page, const char *series);

/* The same on base's /metrics page (base: "http://127.0.0.1:PORT"); -1 also
 * when no page came. */
double tu_metric(const char *base, const char *series);

/* How many lines of the file at path contain a and b (NULL: any line); 0
 * when there is no such file. */
long tu_file_count(const char *path, const char *a, const char *b);

/* A count query (one optional text parameter) on OWNER_DATABASE_URL. */
long tu_count(const char *sql, const char *param);

/* Polls tu_count(sql, param) until it equals want, for at most ms; fails the
 * test with the last value seen when it does not. */
void tu_await_count(int ms, const char *sql, const char *param, long want);

/* An HTTP request with libcurl. headers: NULL-terminated "Name: value"
 * lines (may be NULL). Returns the status code (0 when no response came, or
 * its body or its headers were over TU_HTTP_MAX bytes) and, when body_out is
 * not NULL, the response body (malloc'd, caller frees). */
#define TU_HTTP_MAX (16 << 20)
long tu_http(const char *method, const char *url, const char *const *headers, const char *body,
             size_t len, char **body_out);

/* The same, also returning the response headers (raw, malloc'd). */
long tu_http_h(const char *method, const char *url, const char *const *headers, const char *body,
               size_t len, char **body_out, char **headers_out);

/* A publisher (confirm mode) connected to the broker at the URL in the
 * environment variable url_env, publishing as app_id; fails the test when it
 * cannot connect. Free with mq_free. */
mq_conn *tu_publisher(const char *url_env, const char *app_id);

/* A raw rabbitmq-c connection (for what mq_conn does not do: a consumer
 * that holds a message, a method the broker must refuse) as the user of
 * the URL in url_env, logged in, channel 1 open; fails the test when it
 * cannot. End it with amqp_connection_close and amqp_destroy_connection. */
amqp_connection_state_t tu_amqp_open(const char *url_env);

/* Messages ready in queue and (when consumers is not NULL) its consumer
 * count, on the broker at the URL in url_env; -1 when the queue does not
 * exist or the broker does not answer. */
long tu_queue_counts(const char *url_env, const char *queue, int *consumers);

/* Empties each queue of queues (NULL-ended) on the broker at the URL in
 * url_env; fails the test when one cannot be purged. */
void tu_purge(const char *url_env, const char *const *queues);

/* Runs `rabbitmqctl VERB` against the project's node (stop_app, start_app);
 * fails the test when it fails. */
void tu_broker(const char *verb);

/* Runs `pg_ctl VERB` against the project's cluster and waits for it (e.g.
 * "stop -m fast", "start"); returns system()'s status (0: done). It does
 * not fail the test itself: a caller that stopped the server starts it
 * again before it asserts anything. */
int tu_postgres(const char *verb);

/* A sale.completed at store of one line (quantity of sku at unit_price, in
 * EUR), paid now, with a new sale id (free with ev_free). */
void tu_sale(ev_event *ev, const char *store, const char *sku, int64_t quantity,
             int64_t unit_price);

/* A valid event of type t with fixed ids (free with ev_free). */
void tu_sample_event(ev_type t, ev_event *ev);

/* Runs every test of s (forking, as Check does by default), prints Check's
 * summary, and returns the process exit code: 0 when all passed. */
int tu_run(Suite *s);

#endif
