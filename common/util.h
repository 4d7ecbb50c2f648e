/*
 * util.h — small helpers shared by the common modules: clocks, sleeping,
 * capped exponential backoff, redacting secrets from URLs, and a capped
 * growing buffer.
 */
#ifndef ORDERSUITE_UTIL_H
#define ORDERSUITE_UTIL_H

#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Monotonic milliseconds, for timeouts and durations. */
int64_t util_now_ms(void);

/* Wall-clock microseconds since the epoch. */
int64_t util_wall_us(void);

/* Sleeps ms milliseconds in short steps; returns early (1) when *stop becomes
 * non-zero. stop may be NULL. Returns 0 after the full sleep. */
int util_sleep_ms(int64_t ms, volatile sig_atomic_t *stop);

/* The same for a stop flag another thread sets: a C11 atomic (a volatile
 * sig_atomic_t is only for a signal handler and the thread it interrupts). */
int util_sleep_ms_atomic(int64_t ms, atomic_int *stop);

/* For main(): from now on SIGINT and SIGTERM set *flag to 1 (one flag per
 * process: a later call of either of these points them at its own flag
 * instead). */
void util_stop_on_signals(volatile sig_atomic_t *flag);

/* The same for a flag other threads read (atomic_int is lock-free here, so a
 * handler may store to it). */
void util_stop_on_signals_atomic(atomic_int *flag);

/* Capped exponential backoff with jitter, and an optional deadline after
 * which a retry loop gives up (backoff_next says -1). */
typedef struct {
    int64_t initial_ms, max_ms, next_ms;
    int64_t deadline_ms; /* util_now_ms() time no wait may end after; -1: none */
} backoff;

/* Starts at initial_ms, with no deadline. */
void backoff_init(backoff *b, int64_t initial_ms, int64_t max_ms);
/* Sets the deadline timeout_ms from now (timeout_ms < 0: none). */
void backoff_until(backoff *b, int timeout_ms);
/* Returns the delay to wait now (with +-25% jitter) and doubles the next one,
 * up to max_ms; -1 when waiting it would end after the deadline (give up). */
int64_t backoff_next(backoff *b);
void backoff_reset(backoff *b);

/* Copies url into out with any password replaced by "***"
 * ("amqp://user:***@host/"), for logs. out is always NUL-terminated. */
void util_redact_url(const char *url, char *out, size_t outlen);

/* Writes v in decimal into buf (at least 24 bytes) and returns buf: for SQL
 * text parameters. */
char *util_i64(char *buf, int64_t v);

/* A growing byte buffer that takes at most cap bytes, filled by
 * util_buf_collect. Start it as {NULL, 0, cap}; p is NULL until the first
 * byte comes, then NUL-terminated (len not counting the NUL). The caller
 * frees p. */
typedef struct {
    char *p;
    size_t len;
    size_t cap; /* the most bytes it takes; a chunk that would pass it is refused */
} util_buf;

/* Appends size * n bytes of data to the util_buf at buf (a void * so that
 * it has the shape of libcurl's write callback, and can be one). Returns
 * size * n, or 0 when they would take it past its cap, or memory runs out:
 * then nothing of the chunk is kept, and the buffer holds what it held. */
size_t util_buf_collect(char *data, size_t size, size_t n, void *buf);

#endif
