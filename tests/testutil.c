/*
 * testutil.c — see testutil.h.
 *
 * One file (over 600 lines) on purpose: it is the one helper library every
 * suite links (environment, polling, SQL, starting a service, HTTP, sample
 * events), each function documented in testutil.h.
 */
#include "testutil.h"
#include "events.h"
#include "util.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *tu_env(const char *name)
{
    const char *v = getenv(name);
    ck_assert_msg(v && *v, "%s is not set: run the suites through 'make test'", name);
    return v;
}

int tu_poll(int timeout_ms, int (*cond)(void *arg), void *arg)
{
    int64_t end = util_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return 1;
        if (util_now_ms() > end)
            return 0;
        util_sleep_ms(20, NULL);
    }
}

static PGresult *run(const char *url, const char *sql, int nparams, const char *const *params,
                     PGconn **out)
{
    PGconn *c = PQconnectdb(url);
    PGresult *r;
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    /* Without parameters, the simple protocol: several statements may run. */
    r = nparams ? PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    *out = c;
    return r;
}

char *tu_sql(const char *url, const char *sql, int nparams, const char *const *params)
{
    PGconn *c;
    PGresult *r = run(url, sql, nparams, params, &c);
    char *v;
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK,
                  "%s: %s", sql, PQresultErrorMessage(r));
    if (PQntuples(r) == 0 || PQnfields(r) == 0)
        v = strdup("");
    else if (PQgetisnull(r, 0, 0))
        v = NULL;
    else
        v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

long long tu_sql_int(const char *url, const char *sql, int nparams, const char *const *params)
{
    char *v = tu_sql(url, sql, nparams, params);
    long long n;
    ck_assert_msg(v && *v, "%s: no value", sql);
    n = strtoll(v, NULL, 10);
    free(v);
    return n;
}

int tu_sql_try(const char *url, const char *sql, char *err, size_t errlen)
{
    PGconn *c;
    PGresult *r = run(url, sql, 0, NULL, &c);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(err, errlen, "%s: %s", st ? st : "?", PQresultErrorMessage(r));
    }
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}

/* tu_spawn, with stdout to out_fd instead of the log when out_fd >= 0. */
static pid_t spawn(const char *path, char *const argv[], const char *const *env,
                   const char *logpath, int out_fd)
{
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork failed");
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(out_fd >= 0 ? out_fd : fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        execv(path, argv);
        fprintf(stderr, "exec %s failed\n", path);
        _exit(127);
    }
    return pid;
}

pid_t tu_spawn(const char *path, char *const argv[], const char *const *env, const char *logpath)
{
    return spawn(path, argv, env, logpath, -1);
}

int tu_stop(pid_t pid, int sig, int timeout_ms)
{
    int64_t end = util_now_ms() + timeout_ms;
    int status;
    kill(pid, sig);
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        if (util_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        util_sleep_ms(10, NULL);
    }
}

/* ------------------------------------------------ services under test */

enum { TU_SVC_ENV_MAX = 24, TU_SVC_TAIL = 2000 };

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Fails the test when snprintf's result k did not fit its buffer of cap. */
static void fits(int k, size_t cap, const char *what)
{
    ck_assert_msg(k >= 0 && (size_t)k < cap, "%s: longer than the test's %zu bytes", what, cap);
}

/* tu_svc_spawn, with the service's stdout to out_fd when out_fd >= 0. */
static void svc_spawn(tu_svc *s, const tu_svc_opts *o, int out_fd)
{
    /* The child's copies are what it puts into its environment. */
    char urls[2][1200], path[512];
    const char *env[TU_SVC_ENV_MAX + 1];
    const char *base = strrchr(o->exe, '/');
    char *argv0[] = {NULL, NULL};
    int n = 0;

    base = base ? base + 1 : o->exe;
    memset(s, 0, sizeof(*s));
    fits(snprintf(s->name, sizeof(s->name), "%s", base), sizeof(s->name), "the name");
    if (o->log && strchr(o->log, '/'))
        fits(snprintf(s->log, sizeof(s->log), "%s", o->log), sizeof(s->log), "the log");
    else
        fits(snprintf(s->log, sizeof(s->log), "%s/log/tests/%s.log", tu_env("ORDERSUITE_VAR"),
                      o->log ? o->log : base),
             sizeof(s->log), "the log");
    s->log_from = file_size(s->log);
    fits(snprintf(s->ready_queue, sizeof(s->ready_queue), "%s",
                  o->ready_queue ? o->ready_queue : ""),
         sizeof(s->ready_queue), "ready_queue");
    fits(snprintf(s->ready_amqp_env, sizeof(s->ready_amqp_env), "%s",
                  o->ready_amqp_env ? o->ready_amqp_env : "TEST_AMQP_URL"),
         sizeof(s->ready_amqp_env), "ready_amqp_env");
    fits(snprintf(s->ready_url, sizeof(s->ready_url), "%s", o->ready_url ? o->ready_url : ""),
         sizeof(s->ready_url), "ready_url");
    s->ready_ms = o->ready_ms > 0 ? o->ready_ms : 30000;
    if (strchr(o->exe, '/'))
        fits(snprintf(path, sizeof(path), "%s", o->exe), sizeof(path), "the path");
    else
        fits(snprintf(path, sizeof(path), "%s/%s", tu_env("ORDERSUITE_BIN"), o->exe), sizeof(path),
             "the path");

    env[n++] = "LOG_LEVEL=info";
    env[n++] = "METRICS_PORT=0";
    if (o->amqp_env) {
        fits(snprintf(urls[0], sizeof(urls[0]), "AMQP_URL=%s", tu_env(o->amqp_env)),
             sizeof(urls[0]), o->amqp_env);
        env[n++] = urls[0];
    }
    if (o->db_env) {
        fits(snprintf(urls[1], sizeof(urls[1]), "DATABASE_URL=%s", tu_env(o->db_env)),
             sizeof(urls[1]), o->db_env);
        env[n++] = urls[1];
    }
    for (const char *const *e = o->env; e && *e; e++) {
        ck_assert_msg(n < TU_SVC_ENV_MAX, "%s: more than %d environment entries", s->name,
                      TU_SVC_ENV_MAX);
        env[n++] = *e;
    }
    env[n] = NULL;
    argv0[0] = (char *)base;
    s->pid = spawn(path, o->argv ? o->argv : argv0, env, s->log, out_fd);
}

void tu_svc_spawn(tu_svc *s, const tu_svc_opts *o)
{
    svc_spawn(s, o, -1);
}

/* The ready_url answers 200. */
static int svc_answers(void *arg)
{
    return tu_http("GET", arg, NULL, NULL, 0, NULL) == 200;
}

/* The ready_queue has a consumer. */
static int svc_consumes(const tu_svc *s)
{
    int consumers = 0;
    return tu_queue_counts(s->ready_amqp_env, s->ready_queue, &consumers) >= 0 && consumers > 0;
}

/* One readiness check of s; -1 when it has exited (its status kept out:
 * the caller fails). */
static int svc_ready(tu_svc *s)
{
    int status;
    if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
        s->pid = 0;
        return -1;
    }
    if (*s->ready_url && !svc_answers(s->ready_url))
        return 0;
    if (*s->ready_queue && !svc_consumes(s))
        return 0;
    return 1;
}

void tu_svc_await(tu_svc *s)
{
    int64_t end = util_now_ms() + s->ready_ms;
    char msg[512]; /* holds the name, the URL and the queue whole */
    int r;
    while ((r = svc_ready(s)) == 0 && util_now_ms() < end)
        util_sleep_ms(20, NULL);
    if (r == 1)
        return;
    if (r < 0)
        snprintf(msg, sizeof(msg), "%s exited before it was ready", s->name);
    else
        snprintf(msg, sizeof(msg), "%s was not ready within %d ms (%s %s)", s->name, s->ready_ms,
                 s->ready_url, s->ready_queue);
    if (s->pid > 0)
        tu_svc_stop(s);
    tu_svc_fail(s, msg);
}

void tu_svc_start(tu_svc *s, const tu_svc_opts *o)
{
    tu_svc_spawn(s, o);
    tu_svc_await(s);
}

int tu_svc_stop(tu_svc *s)
{
    int st;
    if (s->pid <= 0)
        return 0;
    st = tu_stop(s->pid, SIGTERM, 20000);
    s->pid = 0;
    return st;
}

int tu_svc_wait(tu_svc *s, int timeout_ms)
{
    int64_t end = util_now_ms() + timeout_ms;
    char msg[128];
    int st;
    while (waitpid(s->pid, &st, WNOHANG) == 0) {
        if (util_now_ms() > end) {
            snprintf(msg, sizeof(msg), "%s did not exit within %d ms", s->name, timeout_ms);
            tu_svc_stop(s);
            tu_svc_fail(s, msg);
        }
        util_sleep_ms(20, NULL);
    }
    s->pid = 0;
    return st;
}

void tu_svc_stop_ok(tu_svc *s)
{
    char msg[128];
    int st = tu_svc_stop(s);
    if (st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return;
    snprintf(msg, sizeof(msg), "%s did not stop cleanly (status %d)", s->name, st);
    tu_svc_fail(s, msg);
}

void tu_svc_fail(const tu_svc *s, const char *msg)
{
    char tail[TU_SVC_TAIL + 1];
    size_t n = 0;
    long from = s->log_from, size = file_size(s->log);
    FILE *f = fopen(s->log, "r");

    if (size - from > TU_SVC_TAIL)
        from = size - TU_SVC_TAIL;
    if (f && fseek(f, from, SEEK_SET) == 0)
        n = fread(tail, 1, TU_SVC_TAIL, f);
    if (f)
        fclose(f);
    tail[n] = '\0';
    /* The whole tail on stderr (the suite's .stderr file), a shorter one in
     * Check's message. */
    fprintf(stderr, "--- %s: %s; the end of %s:\n%s\n---\n", s->name, msg, s->log, tail);
    ck_abort_msg("%s; %s ends: %s", msg, s->log, n > 600 ? tail + n - 600 : tail);
}

static int file_exists(void *arg)
{
    struct stat st;
    return stat(arg, &st) == 0;
}

tu_catcher tu_catcher_start(int smtp_port, int http_port, const char *refuse, const char *log)
{
    char ready[512], path[512], sport[16], hport[16], text[256];
    char *argv[10];
    tu_svc_opts o = {.exe = path, .argv = argv, .log = log ? log : "mailcatcher"};
    tu_catcher c;
    size_t k = 0;
    int n = 0;
    FILE *f;
    cJSON *j;

    fits(snprintf(ready, sizeof(ready), "%s/log/tests/mailcatcher.%d.ready",
                  tu_env("ORDERSUITE_VAR"), (int)getpid()),
         sizeof(ready), "the ready file");
    fits(snprintf(path, sizeof(path), "%s/tools/mailcatcher/mailcatcher.py",
                  tu_env("ORDERSUITE_ROOT")),
         sizeof(path), "the path");
    snprintf(sport, sizeof(sport), "%d", smtp_port);
    snprintf(hport, sizeof(hport), "%d", http_port);
    unlink(ready);
    argv[n++] = path;
    argv[n++] = "--smtp-port";
    argv[n++] = sport;
    argv[n++] = "--http-port";
    argv[n++] = hport;
    argv[n++] = "--ready-file";
    argv[n++] = ready;
    if (refuse) {
        argv[n++] = "--refuse";
        argv[n++] = (char *)refuse;
    }
    argv[n] = NULL;
    tu_svc_spawn(&c.svc, &o);
    /* It writes the ready file once both servers listen. */
    if (!tu_poll(15000, file_exists, ready)) {
        tu_svc_stop(&c.svc);
        tu_svc_fail(&c.svc, "the mail catcher did not start");
    }
    f = fopen(ready, "r");
    ck_assert_msg(f != NULL, "%s: %s", ready, strerror(errno));
    k = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[k] = '\0';
    unlink(ready);
    j = cJSON_Parse(text);
    ck_assert_msg(j && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "smtp")) &&
                      cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "http")),
                  "bad ready file: %s", text);
    c.smtp = cJSON_GetObjectItemCaseSensitive(j, "smtp")->valueint;
    c.http = cJSON_GetObjectItemCaseSensitive(j, "http")->valueint;
    cJSON_Delete(j);
    return c;
}

void tu_catcher_stop(tu_catcher *c)
{
    int st = c->svc.pid > 0 ? tu_stop(c->svc.pid, SIGTERM, 10000) : 0;
    c->svc.pid = 0;
    ck_assert_msg(st >= 0, "the mail catcher did not stop");
}

long tu_lock_waiters(const char *rel, const char *mode)
{
    const char *p[] = {rel, mode};
    return (long)tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                            "SELECT count(*) FROM pg_locks WHERE NOT granted"
                            " AND relation = $1::regclass AND ($2::text IS NULL OR mode = $2)",
                            2, p);
}

typedef struct {
    const char *rel, *mode;
} tu_lock_arg;

static int lock_waited(void *arg)
{
    const tu_lock_arg *a = arg;
    return tu_lock_waiters(a->rel, a->mode) >= 1;
}

int tu_await_lock_waiter(int ms, const char *rel, const char *mode)
{
    tu_lock_arg a = {rel, mode};
    return tu_poll(ms, lock_waited, &a);
}

int tu_tool(const tu_svc_opts *o, char **out)
{
    util_buf b = {NULL, 0, TU_TOOL_OUT_MAX};
    int64_t end = util_now_ms() + TU_TOOL_MS;
    char chunk[4096], msg[192];
    int fds[2], st, reading = 1;
    tu_svc s;

    ck_assert_msg(pipe2(fds, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    svc_spawn(&s, o, fds[1]);
    close(fds[1]);
    /* Its stdout is read while it runs, so a full pipe never stalls it. */
    while (reading) {
        struct pollfd p = {fds[0], POLLIN, 0};
        int64_t left = end - util_now_ms();
        ssize_t k;
        if (left <= 0) {
            snprintf(msg, sizeof(msg), "%s did not exit within %d ms", s.name, TU_TOOL_MS);
            close(fds[0]);
            tu_svc_stop(&s);
            tu_svc_fail(&s, msg);
        }
        if (poll(&p, 1, (int)left) <= 0)
            continue; /* EINTR, or the time is up: the loop says which */
        k = read(fds[0], chunk, sizeof(chunk));
        if (k > 0 && util_buf_collect(chunk, 1, (size_t)k, &b) != (size_t)k) {
            snprintf(msg, sizeof(msg), "%s wrote more than %d bytes on stdout", s.name,
                     TU_TOOL_OUT_MAX);
            close(fds[0]);
            tu_svc_stop(&s);
            tu_svc_fail(&s, msg);
        }
        if (k == 0 || (k < 0 && errno != EINTR))
            reading = 0;
    }
    close(fds[0]);
    st = tu_svc_wait(&s, (int)(end - util_now_ms() > 0 ? end - util_now_ms() : 1));
    if (!WIFEXITED(st)) {
        snprintf(msg, sizeof(msg), "%s was ended by signal %d", s.name,
                 WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        tu_svc_fail(&s, msg);
    }
    if (out)
        *out = b.p ? b.p : strdup("");
    else
        free(b.p);
    return WEXITSTATUS(st);
}

double tu_metric_sample(const char *page, const char *series)
{
    const char *p = page;
    while ((p = strstr(p, series)) != NULL) {
        if (p == page || p[-1] == '\n') {
            const char *eol = strchr(p, '\n'), *sp = NULL;
            for (const char *q = p; *q && q != eol; q++)
                sp = *q == ' ' ? q : sp;
            return sp ? strtod(sp + 1, NULL) : -1;
        }
        p++;
    }
    return -1;
}

double tu_metric(const char *base, const char *series)
{
    char url[256], *page = NULL;
    double v = -1;
    snprintf(url, sizeof(url), "%s/metrics", base);
    if (tu_http("GET", url, NULL, NULL, 0, &page) == 200)
        v = tu_metric_sample(page, series);
    free(page);
    return v;
}

long tu_file_count(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    if (!f)
        return 0;
    while (getline(&line, &cap, f) >= 0)
        n += (!a || strstr(line, a)) && (!b || strstr(line, b));
    free(line);
    fclose(f);
    return n;
}

long tu_count(const char *sql, const char *param)
{
    const char *p[] = {param};
    return (long)tu_sql_int(tu_env("OWNER_DATABASE_URL"), sql, param ? 1 : 0, p);
}

typedef struct {
    const char *sql, *param;
    long want;
} tu_count_arg;

static int count_is(void *arg)
{
    tu_count_arg *a = arg;
    return tu_count(a->sql, a->param) == a->want;
}

void tu_await_count(int ms, const char *sql, const char *param, long want)
{
    tu_count_arg a = {sql, param, want};
    if (tu_poll(ms, count_is, &a))
        return;
    ck_abort_msg("%s [%s]: %ld after %d ms, want %ld", sql, param ? param : "",
                 tu_count(sql, param), ms, want);
}

int tu_run(Suite *s)
{
    SRunner *r = srunner_create(s);
    int failed;
    srunner_run_all(r, CK_ENV);
    failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}

long tu_http(const char *method, const char *url, const char *const *headers, const char *body,
             size_t len, char **body_out)
{
    return tu_http_h(method, url, headers, body, len, body_out, NULL);
}

long tu_http_h(const char *method, const char *url, const char *const *headers, const char *body,
               size_t len, char **body_out, char **headers_out)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    util_buf b = {NULL, 0, TU_HTTP_MAX}, hb = {NULL, 0, TU_HTTP_MAX};
    long code = 0;

    ck_assert_ptr_nonnull(c);
    for (const char *const *x = headers; x && *x; x++)
        h = curl_slist_append(h, *x);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, util_buf_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, util_buf_collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (body_out)
        *body_out = b.p ? b.p : strdup("");
    else
        free(b.p);
    if (headers_out)
        *headers_out = hb.p ? hb.p : strdup("");
    else
        free(hb.p);
    return code;
}

#define OID "0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e01"
#define SID "5d0c9f7e-8a21-4b3c-b6d4-7e1f2a3b4c5d"
#define IID "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"

static void set_lines(ev_lines *l)
{
    ck_assert_int_eq(ev_lines_alloc(l, 2), 0);
    strcpy(l->items[0].sku, "TEA-SENCHA");
    l->items[0].quantity = 2;
    l->items[0].unit_price = 890;
    strcpy(l->items[1].sku, "MUG-WHITE");
    l->items[1].quantity = 1;
    l->items[1].unit_price = 800;
}

void tu_sale(ev_event *ev, const char *store, const char *sku, int64_t quantity, int64_t unit_price)
{
    sale_completed *s = &ev->u.sale_completed;
    ev_init(ev, EV_SALE_COMPLETED);
    ck_assert_int_eq(uuid_v4(s->sale_id), 0);
    snprintf(s->store_id, sizeof(s->store_id), "%s", store);
    strcpy(s->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&s->lines, 1), 0);
    snprintf(s->lines.items[0].sku, sizeof(s->lines.items[0].sku), "%s", sku);
    s->lines.items[0].quantity = quantity;
    s->lines.items[0].unit_price = unit_price;
    s->total = quantity * unit_price;
    ev_now_rfc3339(s->paid_at);
}

void tu_sample_event(ev_type t, ev_event *ev)
{
    ev_init(ev, t);
    switch (t) {
    case EV_ORDER_PLACED:
    case EV_INVENTORY_RESERVED: {
        order_placed *o = &ev->u.order_placed;
        strcpy(o->order_id, OID);
        strcpy(o->customer_id, "cust-42");
        strcpy(o->customer_email, "ada@example.com");
        strcpy(o->currency, "EUR");
        set_lines(&o->lines);
        o->total = 2 * 890 + 800;
        break;
    }
    case EV_INVENTORY_REJECTED: {
        inventory_rejected *r = &ev->u.inventory_rejected;
        strcpy(r->order_id, OID);
        strcpy(r->customer_email, "ada@example.com");
        strcpy(r->reason, "not enough stock");
        r->skus_short.items = calloc(1, sizeof(*r->skus_short.items));
        r->skus_short.n = 1;
        strcpy(r->skus_short.items[0], "TEA-MATCHA");
        break;
    }
    case EV_INVENTORY_RELEASED:
        strcpy(ev->u.inventory_released.order_id, OID);
        strcpy(ev->u.inventory_released.reason, "payment failed");
        break;
    case EV_INVENTORY_LOW_STOCK:
        strcpy(ev->u.inventory_low_stock.sku, "POT-CAST-IRON");
        ev->u.inventory_low_stock.on_hand = 2;
        ev->u.inventory_low_stock.threshold = 2;
        break;
    case EV_BILLING_INVOICED: {
        billing_invoiced *b = &ev->u.billing_invoiced;
        strcpy(b->invoice_id, IID);
        b->invoice_number = 1001;
        strcpy(b->order_id, OID);
        strcpy(b->customer_id, "cust-42");
        strcpy(b->customer_email, "ada@example.com");
        strcpy(b->currency, "EUR");
        b->amount = 2580;
        b->tax = 412;
        break;
    }
    case EV_BILLING_PAYMENT_FAILED: {
        billing_payment_failed *p = &ev->u.billing_payment_failed;
        strcpy(p->order_id, OID);
        strcpy(p->customer_email, "ada@example.com");
        strcpy(p->currency, "EUR");
        p->amount = 250000;
        strcpy(p->reason, "over the credit limit");
        break;
    }
    case EV_SALE_COMPLETED: {
        sale_completed *s = &ev->u.sale_completed;
        strcpy(s->sale_id, SID);
        strcpy(s->store_id, "NEPAL-01");
        strcpy(s->currency, "EUR");
        set_lines(&s->lines);
        s->total = 2580;
        strcpy(s->paid_at, "2026-11-23T19:42:26.123Z");
        break;
    }
    default:
        ck_abort_msg("no sample for %d", t);
    }
}

mq_conn *tu_publisher(const char *url_env, const char *app_id)
{
    mq_opts o = {.url = tu_env(url_env), .app_id = app_id};
    mq_conn *c = mq_new(&o);
    char err[MQ_ERR_LEN];
    ck_assert_msg(c != NULL, "%s is not an AMQP URL", url_env);
    ck_assert_msg(mq_connect_publisher(c, err, sizeof(err)) == MQ_OK, "%s: %s", url_env, err);
    return c;
}

amqp_connection_state_t tu_amqp_open(const char *url_env)
{
    struct amqp_connection_info info;
    char *url = strdup(tu_env(url_env));
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    ck_assert_ptr_nonnull(url);
    ck_assert_int_eq(amqp_parse_url(url, &info), AMQP_STATUS_OK);
    ck_assert_msg(amqp_socket_open(s, info.host, info.port) == AMQP_STATUS_OK,
                  "%s: no broker at %s:%d", url_env, info.host, info.port);
    ck_assert_msg(
        amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password)
                .reply_type == AMQP_RESPONSE_NORMAL,
        "%s: login refused", url_env);
    amqp_channel_open(c, 1);
    ck_assert_msg(amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL,
                  "%s: channel.open refused", url_env);
    free(url);
    return c;
}

long tu_queue_counts(const char *url_env, const char *queue, int *consumers)
{
    struct amqp_connection_info info;
    char *url = strdup(tu_env(url_env));
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    amqp_queue_declare_ok_t *ok = NULL;
    long n = -1;

    if (amqp_parse_url(url, &info) == AMQP_STATUS_OK &&
        amqp_socket_open(s, info.host, info.port) == AMQP_STATUS_OK &&
        amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password)
                .reply_type == AMQP_RESPONSE_NORMAL &&
        amqp_channel_open(c, 1)) {
        /* Passive: only asks; a missing queue closes the channel (-1). */
        ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
        if (ok) {
            n = (long)ok->message_count;
            if (consumers)
                *consumers = (int)ok->consumer_count;
            amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        }
    }
    amqp_destroy_connection(c);
    free(url);
    return n;
}

void tu_purge(const char *url_env, const char *const *queues)
{
    mq_conn *c = tu_publisher(url_env, "testutil");
    char err[MQ_ERR_LEN];
    for (const char *const *q = queues; *q; q++)
        ck_assert_msg(mq_purge(c, *q, err, sizeof(err)) >= 0, "purge %s: %s", *q, err);
    mq_free(c);
}

void tu_broker(const char *verb)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "bash %s/scripts/rmqctl.sh -q %s >/dev/null 2>&1",
             tu_env("ORDERSUITE_ROOT"), verb);
    ck_assert_msg(system(cmd) == 0, "rabbitmqctl %s failed", verb);
}

int tu_postgres(const char *verb)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D %s/postgres/data %s -w "
             "-t 60 -o '-p %s' -l %s/log/postgresql/startup.log >/dev/null",
             tu_env("ORDERSUITE_VAR"), verb, tu_env("PG_PORT"), tu_env("ORDERSUITE_VAR"));
    return system(cmd);
}
