/*
 * testutil.h — helpers shared by the Check suites: required environment,
 * bounded polling, SQL against the real database, and starting/stopping the
 * real executables.
 */
#ifndef ORDERSUITE_TESTUTIL_H
#define ORDERSUITE_TESTUTIL_H

#include "events.h"
#include "mq.h"

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

/* An HTTP request with libcurl. headers: NULL-terminated "Name: value"
 * lines (may be NULL). Returns the status code (0 when no response came) and,
 * when body_out is not NULL, the response body (malloc'd, caller frees). */
long tu_http(const char *method, const char *url, const char *const *headers, const char *body,
             size_t len, char **body_out);

/* The same, also returning the response headers (raw, malloc'd). */
long tu_http_h(const char *method, const char *url, const char *const *headers, const char *body,
               size_t len, char **body_out, char **headers_out);

/* A publisher (confirm mode) connected to the broker at the URL in the
 * environment variable url_env, publishing as app_id; fails the test when it
 * cannot connect. Free with mq_free. */
mq_conn *tu_publisher(const char *url_env, const char *app_id);

/* Messages ready in queue and (when consumers is not NULL) its consumer
 * count, on the broker at the URL in url_env; -1 when the queue does not
 * exist or the broker does not answer. */
long tu_queue_counts(const char *url_env, const char *queue, int *consumers);

/* Runs `rabbitmqctl VERB` against the project's node (stop_app, start_app);
 * fails the test when it fails. */
void tu_broker(const char *verb);

/* A valid event of type t with fixed ids (free with ev_free). */
void tu_sample_event(ev_type t, ev_event *ev);

/* Runs every test of s (forking, as Check does by default), prints Check's
 * summary, and returns the process exit code: 0 when all passed. */
int tu_run(Suite *s);

#endif
