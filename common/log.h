/*
 * log.h — JSON-lines logging to stderr.
 *
 * One JSON object per line: {"ts","level","service","msg"} plus
 * "correlation_id" / "message_id" when the caller has them, and "trace_id" /
 * "span_id" when the thread works in a trace context (trace_current: a
 * request or a message being handled). Thread-safe: each line is formatted
 * into a local buffer and written with one write(2).
 */
#ifndef ORDERSUITE_LOG_H
#define ORDERSUITE_LOG_H

#include <stdarg.h>
#include <stdio.h>

/* Limits: a line is at most LOG_LINE_MAX bytes with its newline; the
 * message is cut to LOG_MSG_MAX - 1 bytes before escaping, the service name
 * to LOG_SERVICE_MAX - 1, and a line that escaping makes longer is cut to
 * fit (it still ends in "}\n"). */
#define LOG_LINE_MAX    4096
#define LOG_MSG_MAX     (LOG_LINE_MAX / 2)
#define LOG_SERVICE_MAX 64

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Sets the service name written in every line and the minimum level. Call
 * once from main() before any thread starts. */
void log_init(const char *service, log_level min);

/* Parses "debug" | "info" | "warn" | "error" into *out. Returns 0, or -1 for
 * any other string. */
int log_parse_level(const char *s, log_level *out);

/* Writes one line. corr and msgid may be NULL (then they are left out). */
void log_write(log_level lvl, const char *corr, const char *msgid, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* log_write with a va_list, for a function that logs its caller's format. */
void log_vwrite(log_level lvl, const char *corr, const char *msgid, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* log_write with more fields: extra (may be NULL) is JSON written as it is
 * after "msg", starting with ',' (trace.c's "span" lines). */
void log_write_extra(log_level lvl, const char *corr, const char *msgid, const char *extra,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Formats one line into buf (always NUL-terminated, ends in '\n'); returns the
 * length. Used by log_write and by the tests. */
size_t log_format(char *buf, size_t len, log_level lvl, const char *corr, const char *msgid,
                  const char *msg);
/* log_format with extra (see log_write_extra; NULL: none). */
size_t log_format_extra(char *buf, size_t len, log_level lvl, const char *corr, const char *msgid,
                        const char *msg, const char *extra);

#define log_debug(...) log_write(LOG_DEBUG, NULL, NULL, __VA_ARGS__)
#define log_info(...)  log_write(LOG_INFO, NULL, NULL, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, NULL, NULL, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, NULL, NULL, __VA_ARGS__)

#endif
