/*
 * util.c — clocks, sleeping, backoff, URL redaction, the capped buffer (see
 * util.h).
 */
#include "util.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* util_sleep_ms and util_sleep_ms_atomic: at most one flag is given. */
static int sleep_steps(int64_t ms, volatile sig_atomic_t *sig, atomic_int *flag)
{
    int64_t end = util_now_ms() + ms;
    assert(!sig || !flag);
    for (;;) {
        int64_t left = end - util_now_ms();
        struct timespec ts;
        if ((sig && *sig) || (flag && atomic_load(flag)))
            return 1;
        if (left <= 0)
            return 0;
        if (left > 100)
            left = 100;
        ts.tv_sec = 0;
        ts.tv_nsec = (long)left * 1000000L;
        nanosleep(&ts, NULL);
    }
}

int util_sleep_ms(int64_t ms, volatile sig_atomic_t *stop)
{
    return sleep_steps(ms, stop, NULL);
}

int util_sleep_ms_atomic(int64_t ms, atomic_int *stop)
{
    return sleep_steps(ms, NULL, stop);
}

/* A signal handler may store only to a lock-free atomic (C11 7.14.1.1). */
static_assert(ATOMIC_INT_LOCK_FREE == 2, "atomic_int is not lock-free");

/* Where the handler writes (one of the two): set before the handlers are
 * installed. */
static volatile sig_atomic_t *stop_target;
static atomic_int *stop_atomic_target;

static void on_stop_signal(int sig)
{
    (void)sig;
    if (stop_atomic_target)
        atomic_store(stop_atomic_target, 1);
    else if (stop_target)
        *stop_target = 1;
}

static void stop_on_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void util_stop_on_signals(volatile sig_atomic_t *flag)
{
    stop_atomic_target = NULL;
    stop_target = flag;
    stop_on_signals();
}

void util_stop_on_signals_atomic(atomic_int *flag)
{
    stop_target = NULL;
    stop_atomic_target = flag;
    stop_on_signals();
}

void backoff_init(backoff *b, int64_t initial_ms, int64_t max_ms)
{
    b->initial_ms = initial_ms;
    b->max_ms = max_ms;
    b->next_ms = initial_ms;
    b->deadline_ms = -1;
}

void backoff_until(backoff *b, int timeout_ms)
{
    b->deadline_ms = timeout_ms < 0 ? -1 : util_now_ms() + timeout_ms;
}

int64_t backoff_next(backoff *b)
{
    int64_t d = b->next_ms;
    unsigned int r = 0;
    int64_t jitter;

    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = (unsigned int)util_now_ms();
    jitter = d / 4 > 0 ? (int64_t)(r % (unsigned int)(d / 2 + 1)) - d / 4 : 0;
    b->next_ms = d * 2 > b->max_ms ? b->max_ms : d * 2;
    if (b->deadline_ms >= 0 && util_now_ms() + d + jitter > b->deadline_ms)
        return -1;
    return d + jitter;
}

void backoff_reset(backoff *b)
{
    b->next_ms = b->initial_ms;
}

void util_redact_url(const char *url, char *out, size_t outlen)
{
    const char *scheme = strstr(url, "://");
    const char *auth, *at, *colon;

    if (!scheme) {
        snprintf(out, outlen, "%s", url);
        return;
    }
    auth = scheme + 3;
    /* The userinfo ends at the last '@' before the path, so a password that
     * holds a raw '@' is hidden whole. */
    at = NULL;
    for (const char *p = auth; *p && *p != '/' && *p != '?'; p++) {
        if (*p == '@')
            at = p;
    }
    colon = strchr(auth, ':');
    if (!at || !colon || colon > at) {
        snprintf(out, outlen, "%s", url);
        return;
    }
    snprintf(out, outlen, "%.*s:***%s", (int)(colon - url), url, at);
}

char *util_i64(char *buf, int64_t v)
{
    snprintf(buf, 24, "%lld", (long long)v);
    return buf;
}

size_t util_buf_collect(char *data, size_t size, size_t n, void *buf)
{
    util_buf *b = buf;
    size_t k;
    char *more;

    if (n && size > SIZE_MAX / n)
        return 0;
    k = size * n;
    if (k > b->cap || b->len > b->cap - k)
        return 0;
    if (!(more = realloc(b->p, b->len + k + 1)))
        return 0;
    b->p = more;
    memcpy(b->p + b->len, data, k);
    b->len += k;
    b->p[b->len] = '\0';
    return k;
}
