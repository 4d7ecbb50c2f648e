/*
 * metrics.c — see metrics.h.
 */
#include "metrics.h"
#include "otel.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEYS METRICS_MAX_KEYS

static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
#define NB (sizeof(bounds) / sizeof(bounds[0]))

static const char *const kind_names[M__KINDS] = {
    "ordersuite_messages_consumed_total",  "ordersuite_messages_duplicate_total",
    "ordersuite_messages_retried_total",   "ordersuite_messages_dead_lettered_total",
    "ordersuite_messages_published_total", "ordersuite_messages_redelivered_total",
    "ordersuite_rpc_requests_total",       "ordersuite_rpc_timeouts_total",
    "ordersuite_rpc_late_replies_total",   "ordersuite_rpc_answered_total"};
static const char *const kind_help[M__KINDS] = {
    "Messages handed to a handler, by routing key.",
    "Redelivered messages acked without a second effect (inbox hit).",
    "Messages sent to a retry tier after a transient failure.",
    "Messages sent to the dead-letter queue.",
    "Messages published and confirmed by the broker.",
    "Messages the broker delivered again (after a crash or a lost connection).",
    "Requests asked over the broker (request/reply), by routing key.",
    "Requests whose deadline passed without a reply.",
    "Replies dropped because nobody waited for them any more (past their deadline).",
    "Requests answered (the answering side), by routing key."};

/* A label value escaped for the text format: every byte may double. */
#define LABEL_MAX METRICS_LABEL_MAX
#define ESC_MAX   (2 * LABEL_MAX)

struct metrics {
    pthread_mutex_t lock;
    char service[ESC_MAX], version[ESC_MAX]; /* escaped once, at creation */
    char keys[MAX_KEYS][LABEL_MAX];          /* as received; escaped when rendered */
    size_t nkeys;
    uint64_t counts[M__KINDS][MAX_KEYS];
    uint64_t buckets[NB + 1]; /* the last is +Inf */
    uint64_t observed;
    double sum;
};

/* The length of the valid UTF-8 character at s (1 to 4), or 0 if s starts
 * a broken sequence: a stray continuation byte, a truncated, overlong or
 * surrogate sequence, or one beyond U+10FFFF (RFC 3629's table). */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0; /* overlong */
    else if (s[0] == 0xed)
        hi = 0x9f; /* surrogates */
    else if (s[0] == 0xf0)
        lo = 0x90; /* overlong */
    else if (s[0] == 0xf4)
        hi = 0x8f; /* beyond U+10FFFF */
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return len;
}

/* src as a Prometheus label value: \ " and newline escaped (the text
 * format's rules), other control bytes and every byte of a broken UTF-8
 * sequence shown as '?' (the page must be UTF-8; valid characters are
 * kept whole), cut to fit dst whole (never in the middle of an escape or a
 * character). A routing key comes from a message, so without this a
 * publisher could end a label, add series of its own or break the scrape. */
static void escape_label(char *dst, size_t size, const char *src)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t n = 0;

    while (*s && n + 3 <= size) {
        size_t len = utf8_len(s);
        if (*s == '\\' || *s == '"') {
            dst[n++] = '\\';
            dst[n++] = (char)*s;
        } else if (*s == '\n') {
            dst[n++] = '\\';
            dst[n++] = 'n';
        } else if (len > 1) {
            if (n + len + 1 > size)
                break;
            memcpy(dst + n, s, len);
            n += len;
            s += len;
            continue;
        } else {
            dst[n++] = len == 0 || *s < 0x20 || *s == 0x7f ? '?' : (char)*s;
        }
        s++;
    }
    dst[n] = '\0';
}

metrics *metrics_new(const char *service, const char *version)
{
    metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    escape_label(m->service, sizeof(m->service), service);
    escape_label(m->version, sizeof(m->version), version);
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* key cut to a label (METRICS_LABEL_MAX - 1 bytes) into cut; its length. A
 * key is always looked up cut: compared whole, a long one never found its
 * slot again and took a new one each time (the same series twice). */
static size_t cut_key(char cut[LABEL_MAX], const char *key)
{
    size_t n = strlen(key);
    if (n >= LABEL_MAX)
        n = LABEL_MAX - 1;
    memcpy(cut, key, n);
    cut[n] = '\0';
    return n;
}

/* The index of key, added when new; the last slot collects the overflow. */
static size_t key_index(metrics *m, const char *key)
{
    char cut[LABEL_MAX];
    size_t n = cut_key(cut, key);
    for (size_t i = 0; i < m->nkeys; i++) {
        if (strcmp(m->keys[i], cut) == 0)
            return i;
    }
    if (m->nkeys < MAX_KEYS - 1) {
        memcpy(m->keys[m->nkeys], cut, n + 1);
        return m->nkeys++;
    }
    snprintf(m->keys[MAX_KEYS - 1], sizeof(m->keys[0]), "other");
    m->nkeys = MAX_KEYS;
    return MAX_KEYS - 1;
}

void metrics_count(metrics *m, metric_kind kind, const char *routing_key, uint64_t n)
{
    if (!m || kind >= M__KINDS)
        return;
    pthread_mutex_lock(&m->lock);
    m->counts[kind][key_index(m, routing_key && *routing_key ? routing_key : "none")] += n;
    pthread_mutex_unlock(&m->lock);
}

uint64_t metrics_get(metrics *m, metric_kind kind, const char *routing_key)
{
    uint64_t v = 0;
    char cut[LABEL_MAX];
    cut_key(cut, routing_key);
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->nkeys; i++) {
        if (strcmp(m->keys[i], cut) == 0)
            v = m->counts[kind][i];
    }
    pthread_mutex_unlock(&m->lock);
    return v;
}

void metrics_observe(metrics *m, double seconds)
{
    metrics_observe_n(m, seconds, 1);
}

void metrics_observe_n(metrics *m, double seconds, size_t n)
{
    size_t b = 0;
    if (!m)
        return;
    while (b < NB && seconds > bounds[b])
        b++;
    pthread_mutex_lock(&m->lock);
    m->buckets[b] += n;
    m->observed += n;
    m->sum += seconds * (double)n;
    pthread_mutex_unlock(&m->lock);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} out_buf;

static void put(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out_buf *o, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (o->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        {
            size_t cap = (o->cap + (size_t)n + 1) * 2;
            char *b = realloc(o->buf, cap);
            if (!b) {
                o->failed = 1;
                return;
            }
            o->buf = b;
            o->cap = cap;
        }
    }
}

char *metrics_render(metrics *m, const metrics_gauges *g)
{
    out_buf o = {malloc(4096), 0, 4096, 0};
    uint64_t cum = 0;
    if (!o.buf)
        return NULL;
    o.buf[0] = '\0';
    pthread_mutex_lock(&m->lock);
    for (int k = 0; k < M__KINDS; k++) {
        put(&o, "# HELP %s %s\n# TYPE %s counter\n", kind_names[k], kind_help[k], kind_names[k]);
        for (size_t i = 0; i < m->nkeys; i++) {
            char key[ESC_MAX];
            escape_label(key, sizeof(key), m->keys[i]);
            put(&o, "%s{service=\"%s\",routing_key=\"%s\"} %llu\n", kind_names[k], m->service, key,
                (unsigned long long)m->counts[k][i]);
        }
    }
    put(&o, "# HELP ordersuite_handler_duration_seconds Time from delivery to commit.\n"
            "# TYPE ordersuite_handler_duration_seconds histogram\n");
    for (size_t b = 0; b <= NB; b++) {
        cum += m->buckets[b];
        if (b < NB)
            put(&o, "ordersuite_handler_duration_seconds_bucket{service=\"%s\",le=\"%g\"} %llu\n",
                m->service, bounds[b], (unsigned long long)cum);
        else
            put(&o, "ordersuite_handler_duration_seconds_bucket{service=\"%s\",le=\"+Inf\"} %llu\n",
                m->service, (unsigned long long)cum);
    }
    put(&o, "ordersuite_handler_duration_seconds_sum{service=\"%s\"} %.6f\n", m->service, m->sum);
    put(&o, "ordersuite_handler_duration_seconds_count{service=\"%s\"} %llu\n", m->service,
        (unsigned long long)m->observed);
    pthread_mutex_unlock(&m->lock);
    if (g) {
        put(&o,
            "# HELP ordersuite_outbox_pending_rows Outbox rows not yet confirmed by the broker.\n"
            "# TYPE ordersuite_outbox_pending_rows gauge\n"
            "ordersuite_outbox_pending_rows{service=\"%s\"} %lld\n",
            m->service, (long long)g->outbox_pending);
        put(&o,
            "# HELP ordersuite_outbox_oldest_age_seconds Age of the oldest pending outbox row.\n"
            "# TYPE ordersuite_outbox_oldest_age_seconds gauge\n"
            "ordersuite_outbox_oldest_age_seconds{service=\"%s\"} %lld\n",
            m->service, (long long)g->outbox_oldest_age_s);
        put(&o,
            "# HELP ordersuite_outbox_parked_rows Outbox rows parked after the broker refused"
            " them (dlq outbox list).\n"
            "# TYPE ordersuite_outbox_parked_rows gauge\n"
            "ordersuite_outbox_parked_rows{service=\"%s\"} %lld\n",
            m->service, (long long)g->outbox_parked);
        put(&o,
            "# HELP ordersuite_outbox_relay_failures_total Outbox relay rounds that failed"
            " (broker or database away, a nack); the relay backs off after each. A row the"
            " broker returns (unroutable) is not one.\n"
            "# TYPE ordersuite_outbox_relay_failures_total counter\n"
            "ordersuite_outbox_relay_failures_total{service=\"%s\"} %llu\n",
            m->service, (unsigned long long)g->outbox_relay_failures);
        put(&o,
            "# HELP ordersuite_deliveries_acked_total Deliveries the consumer acked.\n"
            "# TYPE ordersuite_deliveries_acked_total counter\n"
            "ordersuite_deliveries_acked_total{service=\"%s\"} %llu\n"
            "# HELP ordersuite_ack_frames_total basic.ack frames the consumer sent: one"
            " multiple-ack settles a batch's successes.\n"
            "# TYPE ordersuite_ack_frames_total counter\n"
            "ordersuite_ack_frames_total{service=\"%s\"} %llu\n",
            m->service, (unsigned long long)g->deliveries_acked, m->service,
            (unsigned long long)g->ack_frames);
        put(&o,
            "# HELP ordersuite_broker_connected 1 while the consumer is connected.\n"
            "# TYPE ordersuite_broker_connected gauge\n"
            "ordersuite_broker_connected{service=\"%s\"} %d\n",
            m->service, g->broker_connected);
        put(&o,
            "# HELP ordersuite_database_connected 1 while the database answers.\n"
            "# TYPE ordersuite_database_connected gauge\n"
            "ordersuite_database_connected{service=\"%s\"} %d\n",
            m->service, g->database_connected);
    }
    {
        otel_stats os;
        otel_get_stats(&os);
        put(&o,
            "# HELP ordersuite_otel_spans_exported_total Spans the OTLP receiver took.\n"
            "# TYPE ordersuite_otel_spans_exported_total counter\n"
            "ordersuite_otel_spans_exported_total{service=\"%s\"} %llu\n"
            "# HELP ordersuite_otel_spans_dropped_total Spans dropped: the export queue full, or"
            " an export that failed (the receiver down).\n"
            "# TYPE ordersuite_otel_spans_dropped_total counter\n"
            "ordersuite_otel_spans_dropped_total{service=\"%s\"} %llu\n",
            m->service, (unsigned long long)os.exported, m->service,
            (unsigned long long)os.dropped);
    }
    put(&o,
        "# HELP ordersuite_build_info The build.\n# TYPE ordersuite_build_info gauge\n"
        "ordersuite_build_info{service=\"%s\",version=\"%s\"} 1\n",
        m->service, m->version);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}
