/*
 * otel.c — the sampler and the OTLP/HTTP JSON exporter (see otel.h).
 *
 * The process's exporter is one static object: otel_submit is called from
 * trace_span_end on any thread, deep inside code that has no handle to pass
 * along, and there is one exporter per process by definition (like the
 * log's service name). Its mutable parts are guarded by `lock`.
 */
#include "otel.h"
#include "log.h"
#include "util.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OTEL_URL_MAX    1024
#define OTEL_HEADER_MAX 1024

static struct {
    /* Set by otel_init before any thread starts, read-only after. */
    otel_sampler sampler;
    double ratio;
    int log_spans;
    char service[128];
    char url[OTEL_URL_MAX]; /* "" = no exporter */
    char *headers;          /* OTEL_EXPORTER_OTLP_HEADERS as given, or NULL */
    long timeout_ms, delay_ms;
    long flush_ms; /* OTEL_BSP_EXPORT_TIMEOUT: the whole flush at shutdown */
    size_t cap, batch_max;
    /* util_now_ms() time the flush must end by; 0 while not stopping.
     * Atomic: curl's progress callback reads it mid-export. */
    int64_t stop_at_ms;
    /* The queue and the thread. */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    trace_span *ring;
    size_t head, len;
    int running, stopping;
    pthread_t thread;
    uint64_t exported, dropped;
} ex = {.sampler = OTEL_PB_ALWAYS_ON,
        .ratio = 1.0,
        .log_spans = 1,
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .wake = PTHREAD_COND_INITIALIZER};

/* ------------------------------------------------------------- sampling */

int otel_parse_sampler(const char *s, otel_sampler *out)
{
    static const struct {
        const char *name;
        otel_sampler v;
    } names[] = {{"always_on", OTEL_ALWAYS_ON},
                 {"always_off", OTEL_ALWAYS_OFF},
                 {"traceidratio", OTEL_RATIO},
                 {"parentbased_always_on", OTEL_PB_ALWAYS_ON},
                 {"parentbased_always_off", OTEL_PB_ALWAYS_OFF},
                 {"parentbased_traceidratio", OTEL_PB_RATIO}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].v;
            return 0;
        }
    }
    return -1;
}

/* The trace id's last 7 bytes (56 bits) as a number below ratio * 2^56:
 * the same decision in every service for one trace, whatever the parent
 * said. Those are the bytes W3C Trace Context level 2 and the OTel
 * TraceIdRatioBased sampler take as random; byte 8 is not random in a POS
 * sale's trace id (a UUIDv4, spool_trace_root: its variant bits are 10). */
static int ratio_says(double ratio, const uint8_t id[16])
{
    uint64_t x = 0;
    if (ratio >= 1.0)
        return 1;
    if (ratio <= 0.0)
        return 0;
    for (int i = 9; i < 16; i++)
        x = x << 8 | id[i];
    return (double)x < ratio * 72057594037927936.0; /* 2^56 */
}

int otel_decide(otel_sampler sampler, double ratio, const trace_ctx *parent,
                const uint8_t trace_id[16])
{
    switch (sampler) {
    case OTEL_ALWAYS_ON:
        return 1;
    case OTEL_ALWAYS_OFF:
        return 0;
    case OTEL_RATIO:
        return ratio_says(ratio, trace_id);
    case OTEL_PB_ALWAYS_ON:
        return parent ? (parent->flags & TRACE_FLAG_SAMPLED) != 0 : 1;
    case OTEL_PB_ALWAYS_OFF:
        return parent ? (parent->flags & TRACE_FLAG_SAMPLED) != 0 : 0;
    case OTEL_PB_RATIO:
        return parent ? (parent->flags & TRACE_FLAG_SAMPLED) != 0 : ratio_says(ratio, trace_id);
    }
    return 0;
}

int otel_sample(const trace_ctx *parent, const uint8_t trace_id[16])
{
    return otel_decide(ex.sampler, ex.ratio, parent, trace_id);
}

const char *otel_url(void)
{
    return ex.url;
}

int otel_log_spans(void)
{
    return ex.log_spans;
}

/* ------------------------------------------------------------- headers */

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

int otel_header_line(const char *item, size_t n, char *line, size_t linelen, char *err,
                     size_t errlen)
{
    const char *e = item + n, *eq = memchr(item, '=', n), *k = item, *ke, *v, *ve;
    size_t pos;
    int w;
    if (!eq) {
        snprintf(err, errlen, "OTEL_EXPORTER_OTLP_HEADERS must be key=value,key=value");
        return -1;
    }
    /* Whitespace around a key and a value is not part of them (the spec's
     * W3C Baggage-like format). */
    for (ke = eq; ke > k && (ke[-1] == ' ' || ke[-1] == '\t'); ke--)
        ;
    while (k < ke && (*k == ' ' || *k == '\t'))
        k++;
    for (v = eq + 1; v < e && (*v == ' ' || *v == '\t'); v++)
        ;
    for (ve = e; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
        ;
    if (k == ke) {
        snprintf(err, errlen, "OTEL_EXPORTER_OTLP_HEADERS: a header has no name");
        return -1;
    }
    for (const char *p = k; p < ke; p++) {
        if (!is_tchar((unsigned char)*p)) {
            snprintf(err, errlen,
                     "OTEL_EXPORTER_OTLP_HEADERS: a header name may hold only "
                     "token characters (RFC 9110)");
            return -1;
        }
    }
    w = snprintf(line, linelen, "%.*s: ", (int)(ke - k), k);
    if (w < 0 || (size_t)w >= linelen)
        goto too_long;
    pos = (size_t)w;
    /* Decoded first, then checked: %0D%0A must not start a header of its
     * own (a CR, LF or NUL in a value is refused, whatever its form). */
    for (const char *p = v; p < ve; p++) {
        int c = (unsigned char)*p;
        if (c == '%') {
            int hi = p + 2 < ve ? hexval(p[1]) : -1, lo = hi >= 0 ? hexval(p[2]) : -1;
            if (lo < 0) {
                snprintf(err, errlen,
                         "OTEL_EXPORTER_OTLP_HEADERS: a %% not followed by two "
                         "hex digits");
                return -1;
            }
            c = hi << 4 | lo;
            p += 2;
        }
        if (c == '\r' || c == '\n' || c == '\0') {
            snprintf(err, errlen, "OTEL_EXPORTER_OTLP_HEADERS: a value holds a CR, LF or NUL");
            return -1;
        }
        if (pos + 1 >= linelen)
            goto too_long;
        line[pos++] = (char)c;
    }
    line[pos] = '\0';
    return 0;
too_long:
    snprintf(err, errlen, "OTEL_EXPORTER_OTLP_HEADERS: a header is longer than %zu bytes",
             linelen - 1);
    return -1;
}

/* --------------------------------------------------------- configuration */

static int env_long(const char *name, long def, long min, long max, long *out, char *err,
                    size_t errlen)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v) {
        *out = def;
        return 0;
    }
    errno = 0;
    *out = strtol(v, &end, 10);
    if (errno || *end || end == v || *out < min || *out > max) {
        snprintf(err, errlen, "%s must be an integer from %ld to %ld", name, min, max);
        return -1;
    }
    return 0;
}

int otel_init(const char *service, char *err, size_t errlen)
{
    const char *v, *which;
    long n;

    snprintf(ex.service, sizeof(ex.service), "%s", service);
    if ((v = getenv("OTEL_SERVICE_NAME")) && *v)
        snprintf(ex.service, sizeof(ex.service), "%s", v);
    if ((v = getenv("OTEL_TRACES_SAMPLER")) && *v && otel_parse_sampler(v, &ex.sampler) < 0) {
        snprintf(err, errlen,
                 "OTEL_TRACES_SAMPLER must be always_on, always_off, traceidratio, "
                 "parentbased_always_on, parentbased_always_off or parentbased_traceidratio");
        return -1;
    }
    if ((v = getenv("OTEL_TRACES_SAMPLER_ARG")) && *v) {
        char *end;
        errno = 0;
        ex.ratio = strtod(v, &end);
        if (errno || *end || end == v || !(ex.ratio >= 0.0 && ex.ratio <= 1.0)) {
            snprintf(err, errlen, "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1");
            return -1;
        }
    }
    if (env_long("TRACE_LOG_SPANS", 1, 0, 1, &n, err, errlen) < 0)
        return -1;
    ex.log_spans = (int)n;
    if (env_long("OTEL_EXPORTER_OTLP_TIMEOUT", 10000, 1, 600000, &ex.timeout_ms, err, errlen) < 0 ||
        env_long("OTEL_BSP_SCHEDULE_DELAY", 5000, 1, 600000, &ex.delay_ms, err, errlen) < 0 ||
        env_long("OTEL_BSP_EXPORT_TIMEOUT", 5000, 1, 600000, &ex.flush_ms, err, errlen) < 0)
        return -1;
    if (env_long("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1, 1000000, &n, err, errlen) < 0)
        return -1;
    ex.cap = (size_t)n;
    if (env_long("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 100000, &n, err, errlen) < 0)
        return -1;
    ex.batch_max = (size_t)n < ex.cap ? (size_t)n : ex.cap;
    ex.url[0] = '\0';
    which = "OTEL_EXPORTER_OTLP_ENDPOINT";
    if ((v = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) && *v) {
        if (strlen(v) >= sizeof(ex.url)) {
            snprintf(err, errlen, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is too long");
            return -1;
        }
        snprintf(ex.url, sizeof(ex.url), "%s", v);
        which = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    } else if ((v = getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) && *v) {
        size_t l = strlen(v);
        int slash = l > 0 && v[l - 1] == '/';
        /* /v1/traces is appended to the path: a query or a fragment would
         * end up before it. */
        if (strpbrk(v, "?#")) {
            snprintf(err, errlen,
                     "OTEL_EXPORTER_OTLP_ENDPOINT must have no query or fragment "
                     "(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as given)");
            return -1;
        }
        if (l + 12 >= sizeof(ex.url)) {
            snprintf(err, errlen, "OTEL_EXPORTER_OTLP_ENDPOINT is too long");
            return -1;
        }
        snprintf(ex.url, sizeof(ex.url), "%.*s/v1/traces", (int)(l - (size_t)slash), v);
    }
    if (ex.url[0] && strncmp(ex.url, "http://", 7) != 0 && strncmp(ex.url, "https://", 8) != 0) {
        snprintf(err, errlen, "%s must be an http:// or https:// URL", which);
        return -1;
    }
    free(ex.headers);
    ex.headers = NULL;
    if ((v = getenv("OTEL_EXPORTER_OTLP_HEADERS")) && *v) {
        /* Checked here so that a typo stops the process, not every export. */
        for (const char *p = v; *p;) {
            const char *c = strchr(p, ','), *e = c ? c : p + strlen(p);
            char line[OTEL_HEADER_MAX];
            if (otel_header_line(p, (size_t)(e - p), line, sizeof(line), err, errlen) < 0)
                return -1;
            p = c ? c + 1 : e;
        }
        if (!(ex.headers = strdup(v))) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* -------------------------------------------------------------- encoding */

static int add_attr(cJSON *arr, const trace_attr *a)
{
    cJSON *o = cJSON_CreateObject(), *val;
    char num[24];
    if (!o || !cJSON_AddItemToArray(arr, o))
        return cJSON_Delete(o), -1;
    if (!cJSON_AddStringToObject(o, "key", a->key) || !(val = cJSON_AddObjectToObject(o, "value")))
        return -1;
    if (a->is_num) {
        /* proto3 JSON writes an int64 as a string. */
        snprintf(num, sizeof(num), "%lld", (long long)a->num);
        return cJSON_AddStringToObject(val, "intValue", num) ? 0 : -1;
    }
    return cJSON_AddStringToObject(val, "stringValue", a->str) ? 0 : -1;
}

static int add_span(cJSON *arr, const trace_span *s)
{
    char tid[TRACE_ID_HEX], sid[TRACE_SPAN_HEX], t[24];
    cJSON *o = cJSON_CreateObject(), *attrs, *st;
    int ok;

    if (!o || !cJSON_AddItemToArray(arr, o))
        return cJSON_Delete(o), -1;
    trace_id_hex(&s->ctx, tid);
    trace_span_hex(s->ctx.span_id, sid);
    ok = cJSON_AddStringToObject(o, "traceId", tid) && cJSON_AddStringToObject(o, "spanId", sid);
    if (ok && s->ctx.state[0])
        ok = cJSON_AddStringToObject(o, "traceState", s->ctx.state) != NULL;
    for (int i = 0; i < 8; i++) {
        if (s->parent[i]) {
            trace_span_hex(s->parent, sid);
            ok = ok && cJSON_AddStringToObject(o, "parentSpanId", sid);
            break;
        }
    }
    ok = ok && cJSON_AddStringToObject(o, "name", s->name) &&
         cJSON_AddNumberToObject(o, "kind", s->kind);
    snprintf(t, sizeof(t), "%lld", (long long)s->start_ns);
    ok = ok && cJSON_AddStringToObject(o, "startTimeUnixNano", t);
    snprintf(t, sizeof(t), "%lld", (long long)s->end_ns);
    ok = ok && cJSON_AddStringToObject(o, "endTimeUnixNano", t);
    ok = ok && (attrs = cJSON_AddArrayToObject(o, "attributes")) != NULL;
    for (int i = 0; ok && i < s->nattrs; i++)
        ok = add_attr(attrs, &s->attrs[i]) == 0;
    if (ok && s->has_link) {
        cJSON *links = cJSON_AddArrayToObject(o, "links"), *l = cJSON_CreateObject();
        trace_ctx lc;
        memcpy(lc.trace_id, s->link_trace, 16);
        trace_id_hex(&lc, tid);
        trace_span_hex(s->link_span, sid);
        ok = links && l && cJSON_AddItemToArray(links, l);
        if (!ok)
            cJSON_Delete(l);
        ok = ok && cJSON_AddStringToObject(l, "traceId", tid) &&
             cJSON_AddStringToObject(l, "spanId", sid);
    }
    ok = ok && (st = cJSON_AddObjectToObject(o, "status")) != NULL;
    if (ok && s->error) /* STATUS_CODE_ERROR = 2 */
        ok = cJSON_AddNumberToObject(st, "code", 2) &&
             cJSON_AddStringToObject(st, "message", s->status_msg);
    return ok ? 0 : -1;
}

char *otel_encode(const char *service, const trace_span *spans, size_t n)
{
    cJSON *root = cJSON_CreateObject(), *rs, *r, *res, *attrs, *ss, *scope_spans, *scope, *arr;
    trace_attr svc = {.key = "service.name"};
    char *out = NULL;
    int ok;

    snprintf(svc.str, sizeof(svc.str), "%s", service);
    ok = root && (rs = cJSON_AddArrayToObject(root, "resourceSpans")) &&
         (r = cJSON_CreateObject()) && cJSON_AddItemToArray(rs, r) &&
         (res = cJSON_AddObjectToObject(r, "resource")) &&
         (attrs = cJSON_AddArrayToObject(res, "attributes")) && add_attr(attrs, &svc) == 0 &&
         (ss = cJSON_AddArrayToObject(r, "scopeSpans")) && (scope_spans = cJSON_CreateObject()) &&
         cJSON_AddItemToArray(ss, scope_spans) &&
         (scope = cJSON_AddObjectToObject(scope_spans, "scope")) &&
         cJSON_AddStringToObject(scope, "name", "ordersuite") &&
         cJSON_AddStringToObject(scope, "version", ORDERSUITE_VERSION) &&
         (arr = cJSON_AddArrayToObject(scope_spans, "spans"));
    for (size_t i = 0; ok && i < n; i++)
        ok = add_span(arr, &spans[i]) == 0;
    if (ok)
        out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* -------------------------------------------------------------- the queue */

void otel_submit(const trace_span *s)
{
    if (!__atomic_load_n(&ex.running, __ATOMIC_ACQUIRE))
        return; /* no exporter: the common case costs no lock */
    pthread_mutex_lock(&ex.lock);
    if (!ex.ring) {
        /* stopped meanwhile */
    } else if (ex.len >= ex.cap) {
        ex.dropped++;
    } else {
        ex.ring[(ex.head + ex.len) % ex.cap] = *s;
        ex.len++;
        if (ex.len >= ex.batch_max)
            pthread_cond_signal(&ex.wake);
    }
    pthread_mutex_unlock(&ex.lock);
}

void otel_get_stats(otel_stats *out)
{
    pthread_mutex_lock(&ex.lock);
    out->exported = ex.exported;
    out->dropped = ex.dropped;
    out->queued = ex.len;
    out->enabled = ex.running;
    pthread_mutex_unlock(&ex.lock);
}

static size_t discard(char *p, size_t sz, size_t n, void *u)
{
    (void)p;
    (void)u;
    return sz * n; /* the answer's body is not needed */
}

/* The flush's deadline, 0 for none (any thread). */
static int64_t stop_at(void)
{
    return __atomic_load_n(&ex.stop_at_ms, __ATOMIC_ACQUIRE);
}

/* curl's progress callback, called at least about once a second while an
 * export waits: a non-zero answer aborts it once the flush's deadline has
 * passed, so an export already under way at SIGTERM is cut too. */
static int past_deadline(void *u, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    int64_t at = stop_at();
    (void)u, (void)dt, (void)dn, (void)ut, (void)un;
    return at > 0 && util_now_ms() >= at;
}

/* One POST; 0 when the receiver answered 2xx. */
static int post(CURL *h, struct curl_slist *hdrs, const char *body, long timeout_ms)
{
    long code = 0;
    int64_t at = stop_at();
    if (at > 0) { /* stopping: this export gets what is left of the flush */
        int64_t left = at - util_now_ms();
        if (left <= 0)
            return -1;
        if (left < timeout_ms)
            timeout_ms = (long)left;
    }
    curl_easy_setopt(h, CURLOPT_URL, ex.url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, past_deadline);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    if (curl_easy_perform(h) != CURLE_OK)
        return -1;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    return code >= 200 && code < 300 ? 0 : -1;
}

/* The configured headers as curl's list; values may be %-encoded (the
 * specification's form) and are decoded. */
static struct curl_slist *header_list(void)
{
    struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/json"), *more;
    char line[OTEL_HEADER_MAX], err[128];
    for (const char *p = ex.headers; p && *p && l;) {
        const char *c = strchr(p, ','), *e = c ? c : p + strlen(p);
        /* Checked by otel_init: this does not fail but on memory. */
        if (otel_header_line(p, (size_t)(e - p), line, sizeof(line), err, sizeof(err)) == 0) {
            if (!(more = curl_slist_append(l, line))) {
                curl_slist_free_all(l); /* not sent without a header it was given */
                return NULL;
            }
            l = more;
        }
        p = c ? c + 1 : e;
    }
    return l;
}

static void *export_main(void *arg)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = header_list();
    trace_span *batch = calloc(ex.batch_max, sizeof(*batch));
    int warned = 0;

    (void)arg;
    for (;;) {
        size_t n = 0;
        int stopping;
        long timeout_ms;
        char *body;
        struct timespec until;

        pthread_mutex_lock(&ex.lock);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += ex.delay_ms / 1000;
        until.tv_nsec += (ex.delay_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        while (!ex.stopping && ex.len < ex.batch_max &&
               pthread_cond_timedwait(&ex.wake, &ex.lock, &until) == 0)
            ;
        while (batch && n < ex.batch_max && ex.len > 0) {
            batch[n++] = ex.ring[ex.head];
            ex.head = (ex.head + 1) % ex.cap;
            ex.len--;
        }
        stopping = ex.stopping;
        timeout_ms = ex.timeout_ms;
        if (!batch || !h || !hdrs) /* nothing can be sent: count, never hold */
            ex.dropped += ex.len, ex.head = 0, ex.len = 0;
        pthread_mutex_unlock(&ex.lock);
        if (n > 0) {
            int ok = (body = otel_encode(ex.service, batch, n)) != NULL &&
                     post(h, hdrs, body, timeout_ms) == 0;
            free(body);
            pthread_mutex_lock(&ex.lock);
            if (ok)
                ex.exported += n;
            else
                ex.dropped += n;
            pthread_mutex_unlock(&ex.lock);
            if (!ok && !warned++) {
                char shown[OTEL_URL_MAX];
                util_redact_url(ex.url, shown, sizeof(shown));
                log_warn("otel: exporting %zu span(s) to %s failed; they are dropped and "
                         "counted (ordersuite_otel_spans_dropped_total)",
                         n, shown);
            }
            if (ok)
                warned = 0;
        }
        if (stopping && (n == 0 || n < ex.batch_max || util_now_ms() >= stop_at()))
            break; /* what is still queued is counted dropped by otel_stop */
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    free(batch);
    return NULL;
}

int otel_start(char *err, size_t errlen)
{
    if (!ex.url[0] || ex.running)
        return 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ex.ring = calloc(ex.cap, sizeof(*ex.ring));
    if (!ex.ring) {
        snprintf(err, errlen, "out of memory for %zu spans (OTEL_BSP_MAX_QUEUE_SIZE)", ex.cap);
        return -1;
    }
    ex.head = ex.len = 0;
    ex.stopping = 0;
    if (pthread_create(&ex.thread, NULL, export_main, NULL) != 0) {
        free(ex.ring);
        ex.ring = NULL;
        snprintf(err, errlen, "cannot start the span exporter thread");
        return -1;
    }
    __atomic_store_n(&ex.running, 1, __ATOMIC_RELEASE);
    {
        char shown[OTEL_URL_MAX]; /* a user:password in the URL is not logged */
        util_redact_url(ex.url, shown, sizeof(shown));
        log_info("otel: exporting spans to %s as %s", shown, ex.service);
    }
    return 0;
}

void otel_stop(int timeout_ms)
{
    if (!ex.running)
        return;
    pthread_mutex_lock(&ex.lock);
    /* One deadline for the whole flush, the export under way included. */
    __atomic_store_n(&ex.stop_at_ms,
                     util_now_ms() + (timeout_ms > 0 ? (int64_t)timeout_ms : (int64_t)ex.flush_ms),
                     __ATOMIC_RELEASE);
    ex.stopping = 1;
    pthread_cond_signal(&ex.wake);
    pthread_mutex_unlock(&ex.lock);
    pthread_join(ex.thread, NULL);
    pthread_mutex_lock(&ex.lock);
    __atomic_store_n(&ex.running, 0, __ATOMIC_RELEASE);
    ex.dropped += ex.len; /* what the bounded flush left */
    ex.len = 0;
    __atomic_store_n(&ex.stop_at_ms, 0, __ATOMIC_RELEASE);
    free(ex.ring);
    ex.ring = NULL;
    free(ex.headers); /* read by the export thread only, joined above */
    ex.headers = NULL;
    pthread_mutex_unlock(&ex.lock);
}
