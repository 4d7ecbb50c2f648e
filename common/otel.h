/*
 * otel.h — the sampler and the OTLP/HTTP span exporter.
 *
 * otel_init reads the standard OpenTelemetry environment once, in main()
 * before any thread starts:
 *   OTEL_EXPORTER_OTLP_ENDPOINT       base URL; spans go to <it>/v1/traces
 *   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT the full URL (wins over the above)
 *   OTEL_EXPORTER_OTLP_HEADERS        "k=v,k2=v2" sent with every export
 *   OTEL_EXPORTER_OTLP_TIMEOUT        ms per export (10000)
 *   OTEL_SERVICE_NAME                 service.name (the service's own name)
 *   OTEL_TRACES_SAMPLER               always_on, always_off, traceidratio,
 *                                     parentbased_always_on (default),
 *                                     parentbased_always_off,
 *                                     parentbased_traceidratio
 *   OTEL_TRACES_SAMPLER_ARG           the ratio, 0..1 (1)
 *   OTEL_BSP_MAX_QUEUE_SIZE           spans waiting, at most (2048)
 *   OTEL_BSP_SCHEDULE_DELAY           ms between exports (5000)
 *   OTEL_BSP_MAX_EXPORT_BATCH_SIZE    spans per export, at most (512)
 *   OTEL_BSP_EXPORT_TIMEOUT           ms for the whole flush at shutdown,
 *                                     the export under way included (5000)
 *   TRACE_LOG_SPANS                   1 (default): log each sampled span
 *                                     (what tools/trace reads); 0: don't
 * A bad value stops the process with a message naming the variable, like
 * every other setting of the suite.
 *
 * With an endpoint, otel_start starts one background thread that takes
 * spans from a bounded queue and POSTs them (OTLP/HTTP, JSON encoding, with
 * libcurl) in batches. otel_submit never waits: it copies the span into the
 * queue under a short lock, or, the queue full, counts it dropped. A failed
 * export (the receiver down, a non-2xx answer) drops its batch and counts
 * it too; nothing is retried, so a receiver that is down costs the counter
 * and nothing else. otel_stop exports what is queued (bounded) and joins.
 */
#ifndef ORDERSUITE_OTEL_H
#define ORDERSUITE_OTEL_H

#include "trace.h"

#include <stddef.h>
#include <stdint.h>

/* Reads the environment (see above); service is the default service.name.
 * 0, or -1 with err naming the variable. Call once before otel_start. */
int otel_init(const char *service, char *err, size_t errlen);

/* Starts the exporter thread when an endpoint is set (a no-op otherwise).
 * 0, or -1 with err. curl_global_init must have run (otel_start calls it
 * when no one did: it is called before any other thread exists). */
int otel_start(char *err, size_t errlen);

/* Exports what is queued within one deadline for the whole flush, the
 * export under way included (timeout_ms, or OTEL_BSP_EXPORT_TIMEOUT when
 * timeout_ms <= 0; cut within about a second of it: curl's progress
 * callback), counts what is left dropped, stops the thread. A no-op when
 * it never started. */
void otel_stop(int timeout_ms);

/* Queues a copy of s for export (never blocks; counted dropped when the
 * queue is full). A no-op without an exporter. */
void otel_submit(const trace_span *s);

/* The sampler's decision for a new span of trace_id whose parent is parent
 * (NULL: a root): 1 = sampled. */
int otel_sample(const trace_ctx *parent, const uint8_t trace_id[16]);

/* 1 when sampled spans are logged (TRACE_LOG_SPANS). */
int otel_log_spans(void);

/* The URL spans are posted to, as otel_init built it ("" = no exporter):
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as given, else
 * OTEL_EXPORTER_OTLP_ENDPOINT with /v1/traces appended to its path (one
 * trailing slash dropped; a query or fragment refused). */
const char *otel_url(void);

/* One item of OTEL_EXPORTER_OTLP_HEADERS (item[0..n), "key=value") as the
 * HTTP header line "key: value": whitespace around key and value trimmed,
 * the key token characters only (RFC 9110), the value percent-decoded and
 * then refused if it holds a CR, LF or NUL (no header injection). 0, or -1
 * with err naming the variable. Pure. */
int otel_header_line(const char *item, size_t n, char *line, size_t linelen, char *err,
                     size_t errlen);

typedef struct {
    uint64_t exported; /* spans the receiver took (2xx) */
    uint64_t dropped;  /* spans dropped: queue full or a failed export */
    uint64_t queued;   /* spans waiting now */
    int enabled;       /* 1 when an exporter runs */
} otel_stats;

void otel_get_stats(otel_stats *out);

/* ---------------------------------------- pure parts, for the unit tests */

typedef enum {
    OTEL_ALWAYS_ON,
    OTEL_ALWAYS_OFF,
    OTEL_RATIO,
    OTEL_PB_ALWAYS_ON,
    OTEL_PB_ALWAYS_OFF,
    OTEL_PB_RATIO,
} otel_sampler;

/* Parses a sampler name; 0, or -1 for an unknown one. */
int otel_parse_sampler(const char *s, otel_sampler *out);

/* The decision of sampler (with ratio) for a span of trace_id with parent. */
int otel_decide(otel_sampler sampler, double ratio, const trace_ctx *parent,
                const uint8_t trace_id[16]);

/* The OTLP/JSON ExportTraceServiceRequest for spans[0..n) of service
 * (malloc'd; the caller frees), or NULL when out of memory. */
char *otel_encode(const char *service, const trace_span *spans, size_t n);

#endif
