/*
 * testutil.c — see testutil.h: the core (required environment, bounded
 * polling, tu_run) and starting the real executables: tu_spawn, tu_svc_*,
 * tu_tool, the mail catcher.
 */
#include "testutil.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

int tu_run(Suite *s)
{
    SRunner *r = srunner_create(s);
    int failed;
    srunner_run_all(r, CK_ENV);
    failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
