/*
 * trace.h — W3C trace context (https://www.w3.org/TR/trace-context/) and the
 * spans the suite records.
 *
 * A trace_ctx is what travels: the traceparent header's trace id, the id of
 * the span that sent it, and the sampled flag, plus the tracestate header
 * kept as it came (validated). It travels in POST /orders' headers, in every
 * outbox row (traceparent, tracestate columns) and in the AMQP headers
 * traceparent / tracestate of every message the suite publishes.
 *
 * Parsing is strict where the specification is strict: version 00 is
 * exactly 55 characters, lowercase hex, neither id all zeros, version ff
 * refused; a later version is read by its first 55 characters when a '-'
 * or the end follows them. An invalid traceparent means no parent (a new
 * trace starts, never an error), and its tracestate is then ignored too; an
 * invalid or oversized tracestate (more than TRACE_STATE_MAX bytes, more
 * than 32 members) is dropped alone.
 *
 * A thread has a current context (trace_current), set while it handles a
 * request or a message: log.c writes its trace_id / span_id into every line,
 * and outbox_add / order-api store it with the rows they write.
 *
 * A span (trace_span) is started as the child of a context, or as a root,
 * and ended once; trace_span_end logs it (one "span" line, what tools/trace
 * reads) and hands it to the exporter (otel.c) when it is sampled.
 */
#ifndef ORDERSUITE_TRACE_H
#define ORDERSUITE_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define TRACE_PARENT_LEN   56  /* "00-<32 hex>-<16 hex>-<2 hex>" and its NUL */
#define TRACE_STATE_MAX    512 /* the longest tracestate kept, in bytes */
#define TRACE_ID_HEX       33  /* a trace id in hex and its NUL */
#define TRACE_SPAN_HEX     17  /* a span id in hex and its NUL */
#define TRACE_FLAG_SAMPLED 0x01

typedef struct {
    uint8_t trace_id[16];
    uint8_t span_id[8];              /* the span that is the parent of what follows */
    uint8_t flags;                   /* TRACE_FLAG_SAMPLED or 0; other bits are never passed on */
    char state[TRACE_STATE_MAX + 1]; /* tracestate, "" for none */
} trace_ctx;

/* Parses a traceparent header (tp) and its tracestate (ts, may be NULL) into
 * out. Returns 0, or -1 when tp is NULL or invalid (out is then zeroed: no
 * context). A tracestate that is invalid is dropped (out->state = ""). */
int trace_parse(const char *tp, const char *ts, trace_ctx *out);

/* 1 when s is a tracestate the specification allows (at most 32 members
 * key=value, at most TRACE_STATE_MAX bytes), else 0. "" is valid. */
int trace_state_valid(const char *s);

/* Writes c's traceparent (version 00) into out. */
void trace_format(const trace_ctx *c, char out[TRACE_PARENT_LEN]);

/* Lowercase hex of c's trace id / span id. */
void trace_id_hex(const trace_ctx *c, char out[TRACE_ID_HEX]);
void trace_span_hex(const uint8_t id[8], char out[TRACE_SPAN_HEX]);

/* 1 when c is a context (its ids not all zero). */
int trace_valid(const trace_ctx *c);

/* n random bytes from the kernel's CSPRNG (getrandom), never all zero.
 * Returns 0, or -1 when the kernel gave none. */
int trace_random(uint8_t *buf, size_t n);

/* ------------------------------------------ the thread's current context */

/* The context the calling thread works in, or NULL. */
const trace_ctx *trace_current(void);

/* Makes c (not copied: it must outlive its use; NULL for none) the calling
 * thread's current context and returns the one before, to be put back. */
const trace_ctx *trace_set_current(const trace_ctx *c);

/* --------------------------------------------------------------- spans */

typedef enum {
    TRACE_KIND_INTERNAL = 1, /* the OTLP enum's values */
    TRACE_KIND_SERVER = 2,
    TRACE_KIND_CLIENT = 3,
    TRACE_KIND_PRODUCER = 4,
    TRACE_KIND_CONSUMER = 5,
} trace_kind;

#define TRACE_ATTR_MAX 12
#define TRACE_KEY_MAX  48
#define TRACE_VAL_MAX  128
#define TRACE_NAME_MAX 96

typedef struct {
    char key[TRACE_KEY_MAX];
    char str[TRACE_VAL_MAX]; /* a string value, cut to fit */
    int64_t num;
    int is_num;
} trace_attr;

typedef struct {
    trace_ctx ctx;     /* this span: its trace id, its own span id, sampled */
    uint8_t parent[8]; /* all zero for a root */
    uint8_t link_trace[16], link_span[8];
    int has_link;
    char name[TRACE_NAME_MAX];
    trace_kind kind;
    int64_t start_ns, end_ns; /* unix time in nanoseconds */
    int error;                /* status: 1 = error */
    char status_msg[TRACE_VAL_MAX];
    trace_attr attrs[TRACE_ATTR_MAX];
    int nattrs;
} trace_span;

/* Starts s now: a child of parent (same trace, parent's sampled flag as the
 * sampler decides, its tracestate) or, parent NULL or not valid, the root of
 * a new trace (sampled as the sampler decides). Never fails: without
 * randomness the span is not sampled and has zero ids (trace_valid 0). */
void trace_span_start(trace_span *s, const char *name, trace_kind kind, const trace_ctx *parent);

/* Copies src into dst (len bytes with the NUL) as valid UTF-8: each byte
 * that does not start a well-formed sequence becomes U+FFFD, and a cut falls
 * between characters. OTLP/JSON is JSON text, which must be UTF-8: one bad
 * byte in a percent-decoded URL path would make a receiver refuse the whole
 * batch. Returns the length written. */
size_t trace_utf8_copy(char *dst, size_t len, const char *src);

/* Adds an attribute (past TRACE_ATTR_MAX they are left out; values cut on a
 * character, made valid UTF-8 as trace_utf8_copy). */
void trace_span_str(trace_span *s, const char *key, const char *val);
void trace_span_int(trace_span *s, const char *key, int64_t val);

/* A link to the span of ctx (one per span here). */
void trace_span_link(trace_span *s, const trace_ctx *ctx);

/* Marks s failed with msg. */
void trace_span_fail(trace_span *s, const char *msg);

/* Ends s now (or at end_ns when it is set already): when it is sampled,
 * logs its "span" line and hands a copy to the exporter. correlation_id may
 * be NULL. */
void trace_span_end(trace_span *s, const char *correlation_id);

/* The "span" log line's fields after "msg" (JSON, starting with ','), for
 * log.c's extra; pure, for tools/trace's tests. Returns the length. */
size_t trace_span_fields(const trace_span *s, char *buf, size_t len);

/* Wall-clock time in unix nanoseconds. */
int64_t trace_now_ns(void);

#endif
