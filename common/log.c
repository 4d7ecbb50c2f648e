/*
 * log.c — JSON-lines logging (see log.h).
 */
#include "log.h"
#include "trace.h"

#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_service[LOG_SERVICE_MAX] = "ordersuite";
static log_level log_min = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *service, log_level min)
{
    snprintf(log_service, sizeof(log_service), "%s", service ? service : "ordersuite");
    log_min = min;
}

int log_parse_level(const char *s, log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (log_level)i;
            return 0;
        }
    }
    return -1;
}

/* Appends s to buf as the inside of a JSON string; stops before the end of
 * the buffer and always leaves room for the closing bytes. */
static size_t put_escaped(char *buf, size_t pos, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)s; *p && pos + 8 < cap; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)c;
        } else if (c == '\n') {
            buf[pos++] = '\\';
            buf[pos++] = 'n';
        } else if (c == '\t') {
            buf[pos++] = '\\';
            buf[pos++] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(buf + pos, "\\u00", 4);
            buf[pos + 4] = hex[c >> 4];
            buf[pos + 5] = hex[c & 15];
            pos += 6;
        } else {
            buf[pos++] = (char)c;
        }
    }
    return pos;
}

static void log_vwrite_extra(log_level lvl, const char *corr, const char *msgid, const char *extra,
                             const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

static size_t put_raw(char *buf, size_t pos, size_t cap, const char *s)
{
    while (*s && pos + 8 < cap)
        buf[pos++] = *s++;
    return pos;
}

static size_t put_field(char *buf, size_t pos, size_t cap, const char *key, const char *val)
{
    pos = put_raw(buf, pos, cap, ",\"");
    pos = put_raw(buf, pos, cap, key);
    pos = put_raw(buf, pos, cap, "\":\"");
    pos = put_escaped(buf, pos, cap, val);
    return put_raw(buf, pos, cap, "\"");
}

size_t log_format(char *buf, size_t cap, log_level lvl, const char *corr, const char *msgid,
                  const char *msg)
{
    return log_format_extra(buf, cap, lvl, corr, msgid, msg, NULL);
}

size_t log_format_extra(char *buf, size_t cap, log_level lvl, const char *corr, const char *msgid,
                        const char *msg, const char *extra)
{
    const trace_ctx *tc = trace_current();
    struct timespec ts;
    struct tm tm;
    char tsbuf[96];
    size_t pos;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(tsbuf, sizeof(tsbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    pos = put_raw(buf, 0, cap, "{\"ts\":\"");
    pos = put_raw(buf, pos, cap, tsbuf);
    pos = put_raw(buf, pos, cap, "\"");
    pos = put_field(buf, pos, cap, "level", level_names[lvl]);
    pos = put_field(buf, pos, cap, "service", log_service);
    if (corr && *corr)
        pos = put_field(buf, pos, cap, "correlation_id", corr);
    if (msgid && *msgid)
        pos = put_field(buf, pos, cap, "message_id", msgid);
    if (trace_valid(tc)) {
        char tid[TRACE_ID_HEX], sid[TRACE_SPAN_HEX];
        trace_id_hex(tc, tid);
        trace_span_hex(tc->span_id, sid);
        pos = put_field(buf, pos, cap, "trace_id", tid);
        pos = put_field(buf, pos, cap, "span_id", sid);
    }
    pos = put_field(buf, pos, cap, "msg", msg);
    if (extra)
        pos = put_raw(buf, pos, cap, extra);
    buf[pos++] = '}';
    buf[pos++] = '\n';
    buf[pos] = '\0';
    return pos;
}

void log_write(log_level lvl, const char *corr, const char *msgid, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(lvl, corr, msgid, fmt, ap);
    va_end(ap);
}

void log_write_extra(log_level lvl, const char *corr, const char *msgid, const char *extra,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite_extra(lvl, corr, msgid, extra, fmt, ap);
    va_end(ap);
}

void log_vwrite(log_level lvl, const char *corr, const char *msgid, const char *fmt, va_list ap)
{
    log_vwrite_extra(lvl, corr, msgid, NULL, fmt, ap);
}

static void log_vwrite_extra(log_level lvl, const char *corr, const char *msgid, const char *extra,
                             const char *fmt, va_list ap)
{
    char msg[LOG_MSG_MAX];
    char line[LOG_LINE_MAX];
    size_t n;

    if (lvl < log_min)
        return;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = log_format_extra(line, sizeof(line), lvl, corr, msgid, msg, extra);
    /* One write per line keeps lines whole across threads; a short write to
     * stderr is not worth a retry loop. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}
