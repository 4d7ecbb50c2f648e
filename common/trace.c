/*
 * trace.c — W3C trace context and spans (see trace.h).
 */
#include "trace.h"
#include "log.h"
#include "otel.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* The one piece of per-thread state: which request or message the thread
 * is working on, read by every log line. A thread-local, not a parameter,
 * so that log_write and outbox_add need no new argument at hundreds of
 * call sites. */
static _Thread_local const trace_ctx *current;

const trace_ctx *trace_current(void)
{
    return current;
}

const trace_ctx *trace_set_current(const trace_ctx *c)
{
    const trace_ctx *prev = current;
    current = c;
    return prev;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* uppercase is invalid in traceparent */
}

/* n bytes from 2n lowercase hex characters; -1 on any other character. */
static int unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hi < 0 ? -1 : hexval(s[2 * i + 1]);
        if (lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i])
            return 0;
    }
    return 1;
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* A tracestate key: simple-key = lcalpha 0*255(lcalpha / digit / "_" / "-"/ "*" / "/"),
 * or tenant@system, tenant-id = (lcalpha / digit) 0*240(...), system-id =
 * lcalpha 0*13(...). */
static int key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/';
}

static int key_valid(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (n == 0 || n > 256)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (k + i != at && !key_char(k[i]))
            return 0;
    }
    if (!at)
        return k[0] >= 'a' && k[0] <= 'z';
    {
        size_t tn = (size_t)(at - k), sn = n - tn - 1;
        if (tn == 0 || tn > 241 || sn == 0 || sn > 14 || memchr(at + 1, '@', sn))
            return 0;
        return ((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= '0' && k[0] <= '9')) && at[1] >= 'a' &&
               at[1] <= 'z';
    }
}

/* A value: 0*255(chr) nblk-chr, chr = %x20 / nblk-chr, nblk-chr = %x21-2B /
 * %x2D-3C / %x3E-7E (printable ASCII but ',' and '='; no trailing space). */
static int value_valid(const char *v, size_t n)
{
    if (n == 0 || n > 256 || v[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return 0;
    }
    return 1;
}

int trace_state_valid(const char *s)
{
    size_t len = strlen(s);
    int members = 0;
    const char *p = s, *end = s + len;

    if (len > TRACE_STATE_MAX)
        return 0;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end, *b = p, *eq;
        /* Optional white space around each member; an empty member is
         * allowed and not counted. */
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (b < e) {
            eq = memchr(b, '=', (size_t)(e - b));
            if (!eq || !key_valid(b, (size_t)(eq - b)) ||
                !value_valid(eq + 1, (size_t)(e - eq - 1)) || ++members > 32)
                return 0;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return 1;
}

int trace_parse(const char *tp, const char *ts, trace_ctx *out)
{
    uint8_t ver, fl;
    size_t n;

    memset(out, 0, sizeof(*out));
    if (!tp)
        return -1;
    n = strlen(tp);
    if (n < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' || unhex(tp, &ver, 1) < 0 ||
        ver == 0xff)
        goto bad;
    /* Version 00 is exactly 55 characters; a later one may have more after
     * a '-' (the specification's rule for versions it does not know). */
    if ((ver == 0 && n != 55) || (ver > 0 && n > 55 && tp[55] != '-'))
        goto bad;
    if (unhex(tp + 3, out->trace_id, 16) < 0 || unhex(tp + 36, out->span_id, 8) < 0 ||
        unhex(tp + 53, &fl, 1) < 0)
        goto bad;
    if (all_zero(out->trace_id, 16) || all_zero(out->span_id, 8))
        goto bad;
    out->flags = fl & TRACE_FLAG_SAMPLED;
    if (ts && trace_state_valid(ts))
        snprintf(out->state, sizeof(out->state), "%s", ts);
    return 0;
bad:
    memset(out, 0, sizeof(*out));
    return -1;
}

void trace_format(const trace_ctx *c, char out[TRACE_PARENT_LEN])
{
    char t[TRACE_ID_HEX], s[TRACE_SPAN_HEX];
    hex(c->trace_id, 16, t);
    hex(c->span_id, 8, s);
    snprintf(out, TRACE_PARENT_LEN, "00-%s-%s-%02x", t, s, c->flags & TRACE_FLAG_SAMPLED);
}

void trace_id_hex(const trace_ctx *c, char out[TRACE_ID_HEX])
{
    hex(c->trace_id, 16, out);
}

void trace_span_hex(const uint8_t id[8], char out[TRACE_SPAN_HEX])
{
    hex(id, 8, out);
}

int trace_valid(const trace_ctx *c)
{
    return c && !all_zero(c->trace_id, 16) && !all_zero(c->span_id, 8);
}

int trace_random(uint8_t *buf, size_t n)
{
    for (int tries = 0; tries < 4; tries++) {
        size_t got = 0;
        while (got < n) {
            ssize_t r = getrandom(buf + got, n - got, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1;
            got += (size_t)r;
        }
        if (!all_zero(buf, n))
            return 0; /* an all-zero id is invalid: draw again */
    }
    return -1;
}

int64_t trace_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---------------------------------------------------------------- spans */

void trace_span_start(trace_span *s, const char *name, trace_kind kind, const trace_ctx *parent)
{
    memset(s, 0, sizeof(*s));
    trace_utf8_copy(s->name, sizeof(s->name), name);
    s->kind = kind;
    s->start_ns = trace_now_ns();
    if (trace_valid(parent)) {
        memcpy(s->ctx.trace_id, parent->trace_id, 16);
        memcpy(s->parent, parent->span_id, 8);
        memcpy(s->ctx.state, parent->state, sizeof(s->ctx.state));
    } else {
        parent = NULL;
        if (trace_random(s->ctx.trace_id, 16) < 0)
            return;
    }
    if (trace_random(s->ctx.span_id, 8) < 0) {
        memset(&s->ctx, 0, sizeof(s->ctx));
        return;
    }
    s->ctx.flags = otel_sample(parent, s->ctx.trace_id) ? TRACE_FLAG_SAMPLED : 0;
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629 table 3-7:
 * no overlong forms, no surrogates, nothing past U+10FFFF), 0 if none. */
static size_t utf8_seq(const unsigned char *p)
{
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;
    if (*p < 0x80)
        return 1;
    if (*p >= 0xc2 && *p <= 0xdf)
        n = 2;
    else if (*p >= 0xe0 && *p <= 0xef)
        n = 3;
    else if (*p >= 0xf0 && *p <= 0xf4)
        n = 4;
    else
        return 0;
    if (*p == 0xe0)
        lo = 0xa0;
    else if (*p == 0xed)
        hi = 0x9f;
    else if (*p == 0xf0)
        lo = 0x90;
    else if (*p == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    }
    return n;
}

size_t trace_utf8_copy(char *dst, size_t len, const char *src)
{
    static const char repl[] = "\xef\xbf\xbd"; /* U+FFFD */
    const unsigned char *p = (const unsigned char *)(src ? src : "");
    size_t pos = 0, n;
    if (len == 0)
        return 0;
    while (*p) {
        const char *from = (const char *)p;
        n = utf8_seq(p);
        if (n == 0) {
            from = repl;
            n = 3;
            p++;
        } else {
            p += n;
        }
        if (pos + n >= len)
            break; /* the whole character or nothing */
        memcpy(dst + pos, from, n);
        pos += n;
    }
    dst[pos] = '\0';
    return pos;
}

void trace_span_str(trace_span *s, const char *key, const char *val)
{
    trace_attr *a;
    if (s->nattrs >= TRACE_ATTR_MAX || !val)
        return;
    a = &s->attrs[s->nattrs++];
    snprintf(a->key, sizeof(a->key), "%s", key);
    trace_utf8_copy(a->str, sizeof(a->str), val);
    a->is_num = 0;
}

void trace_span_int(trace_span *s, const char *key, int64_t val)
{
    trace_attr *a;
    if (s->nattrs >= TRACE_ATTR_MAX)
        return;
    a = &s->attrs[s->nattrs++];
    snprintf(a->key, sizeof(a->key), "%s", key);
    a->num = val;
    a->is_num = 1;
}

void trace_span_link(trace_span *s, const trace_ctx *ctx)
{
    if (!trace_valid(ctx))
        return;
    memcpy(s->link_trace, ctx->trace_id, 16);
    memcpy(s->link_span, ctx->span_id, 8);
    s->has_link = 1;
}

void trace_span_fail(trace_span *s, const char *msg)
{
    s->error = 1;
    trace_utf8_copy(s->status_msg, sizeof(s->status_msg), msg);
}

/* Appends ,"k":"v" with v JSON-escaped (only characters a span name or id
 * holds need escaping; anything below 0x20 becomes a space). A value that
 * does not fit is cut between characters; a key that does not fit leaves
 * the field out. buf stays NUL-terminated and the result is below len. */
static size_t put_kv(char *buf, size_t pos, size_t len, const char *k, const char *v)
{
    size_t start = pos, n, need;
    int w = snprintf(buf + pos, len - pos, ",\"%s\":\"", k);
    if (w < 0 || pos + (size_t)w + 2 > len) {
        buf[start] = '\0';
        return start;
    }
    pos += (size_t)w;
    for (; *v; v += n) {
        n = (unsigned char)*v < 0x80 ? 1 : utf8_seq((const unsigned char *)v);
        if (n == 0)
            n = 1;
        need = *v == '"' || *v == '\\' ? 2 : n;
        if (pos + need + 2 > len)
            break; /* room left for the closing quote and the NUL */
        if (need == 2 && n == 1)
            buf[pos++] = '\\';
        for (size_t i = 0; i < n; i++)
            buf[pos++] = n == 1 && (unsigned char)v[i] < 0x20 ? ' ' : v[i];
    }
    buf[pos++] = '"';
    buf[pos] = '\0';
    return pos;
}

size_t trace_span_fields(const trace_span *s, char *buf, size_t len)
{
    static const char *const kinds[] = {"", "internal", "server", "client", "producer", "consumer"};
    char parent[TRACE_SPAN_HEX], num[32];
    size_t pos = 0;

    buf[0] = '\0';
    trace_span_hex(s->parent, parent);
    pos = put_kv(buf, pos, len, "span", s->name);
    pos = put_kv(buf, pos, len, "kind", kinds[s->kind >= 1 && s->kind <= 5 ? s->kind : 1]);
    if (!all_zero(s->parent, 8))
        pos = put_kv(buf, pos, len, "parent_span_id", parent);
    snprintf(num, sizeof(num), "%lld", (long long)(s->start_ns / 1000));
    pos = put_kv(buf, pos, len, "start_us", num);
    snprintf(num, sizeof(num), "%lld", (long long)((s->end_ns - s->start_ns) / 1000));
    pos = put_kv(buf, pos, len, "dur_us", num);
    if (s->error)
        pos = put_kv(buf, pos, len, "error", s->status_msg);
    return pos;
}

void trace_span_end(trace_span *s, const char *correlation_id)
{
    char extra[512];
    const trace_ctx *prev;

    if (!s->end_ns)
        s->end_ns = trace_now_ns();
    if (!(s->ctx.flags & TRACE_FLAG_SAMPLED) || !trace_valid(&s->ctx))
        return;
    if (otel_log_spans()) {
        trace_span_fields(s, extra, sizeof(extra));
        prev = trace_set_current(&s->ctx);
        log_write_extra(LOG_INFO, correlation_id, NULL, extra, "span %s", s->name);
        trace_set_current(prev);
    }
    otel_submit(s);
}
