/*
 * testutil.c — see testutil.h.
 */
#include "testutil.h"
#include "util.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

pid_t tu_spawn(const char *path, char *const argv[], const char *const *env, const char *logpath)
{
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork failed");
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
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

int tu_run(Suite *s)
{
    SRunner *r = srunner_create(s);
    int failed;
    srunner_run_all(r, CK_ENV);
    failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}

typedef struct {
    char *buf;
    size_t len;
} tu_buf;

static size_t tu_collect(char *data, size_t size, size_t n, void *arg)
{
    tu_buf *b = arg;
    char *nb = realloc(b->buf, b->len + size * n + 1);
    if (!nb)
        return 0;
    b->buf = nb;
    memcpy(b->buf + b->len, data, size * n);
    b->len += size * n;
    b->buf[b->len] = '\0';
    return size * n;
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
    tu_buf b = {NULL, 0}, hb = {NULL, 0};
    long code = 0;

    ck_assert_ptr_nonnull(c);
    for (const char *const *x = headers; x && *x; x++)
        h = curl_slist_append(h, *x);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, tu_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, tu_collect);
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
        *body_out = b.buf ? b.buf : strdup("");
    else
        free(b.buf);
    if (headers_out)
        *headers_out = hb.buf ? hb.buf : strdup("");
    else
        free(hb.buf);
    return code;
}
