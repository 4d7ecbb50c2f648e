/*
 * check_units_trace.c — W3C trace context and the span exporter's pure
 * parts, with no server: traceparent / tracestate parsing and formatting
 * (common/trace.c), the trace headers of a publish and of a delivery
 * (common/mq_msg.c, as a longstr or as bytes), the log line's trace fields,
 * the sampler and the OTLP/JSON encoding (common/otel.c), and the
 * exporter's bounded queue against a receiver that never answers.
 * Over 600 lines: one suite for the trace context from the header to the
 * export, so that `make test` names one place for it.
 */
#include "log.h"
#include "mq_int.h"
#include "otel.h"
#include "testutil.h"
#include "trace.h"

#include <arpa/inet.h>
#include <cJSON.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define TP_OK "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

/* ---------------------------------------------------------- traceparent */

START_TEST(a_valid_traceparent_is_read_and_formatted_back)
{
    trace_ctx c;
    char out[TRACE_PARENT_LEN], tid[TRACE_ID_HEX], sid[TRACE_SPAN_HEX];

    ck_assert_int_eq(trace_parse(TP_OK, "congo=t61rcWkgMzE", &c), 0);
    ck_assert(trace_valid(&c));
    ck_assert_int_eq(c.flags, TRACE_FLAG_SAMPLED);
    trace_id_hex(&c, tid);
    trace_span_hex(c.span_id, sid);
    ck_assert_str_eq(tid, "4bf92f3577b34da6a3ce929d0e0e4736");
    ck_assert_str_eq(sid, "00f067aa0ba902b7");
    ck_assert_str_eq(c.state, "congo=t61rcWkgMzE");
    trace_format(&c, out);
    ck_assert_str_eq(out, TP_OK);

    /* Not sampled; unknown flag bits are not passed on. */
    ck_assert_int_eq(
        trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe", NULL, &c), 0);
    ck_assert_int_eq(c.flags, 0);
    trace_format(&c, out);
    ck_assert_str_eq(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
}
END_TEST

START_TEST(invalid_traceparents_are_refused_and_leave_no_context)
{
    static const char *const bad[] = {
        "",
        "00",
        /* all-zero ids */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        /* uppercase hex, other characters */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        /* lengths and separators */
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* version ff is invalid; a later version needs '-' after 55 */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
    };
    for (size_t i = 0; i < N(bad); i++) {
        trace_ctx c;
        memset(&c, 0x5a, sizeof(c));
        ck_assert_msg(trace_parse(bad[i], "a=b", &c) == -1, "accepted \"%s\"", bad[i]);
        ck_assert_msg(!trace_valid(&c) && c.state[0] == '\0', "left a context for \"%s\"", bad[i]);
    }
    ck_assert_int_eq(trace_parse(NULL, NULL, &(trace_ctx){0}), -1);
}
END_TEST

START_TEST(a_later_version_is_read_by_its_first_fields)
{
    trace_ctx c;
    ck_assert_int_eq(
        trace_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future", NULL,
                    &c),
        0);
    ck_assert(trace_valid(&c));
    ck_assert_int_eq(
        trace_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL, &c), 0);
}
END_TEST

/* ----------------------------------------------------------- tracestate */

START_TEST(tracestate_follows_the_list_grammar_and_its_limits)
{
    static const char *const good[] = {
        "",
        "rojo=00f067aa0ba902b7",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        " rojo=1 ,\tcongo=2 ",
        "rojo=1,,congo=2",
        "tenant@vendor=x",
        "a_b-c*d/e=v a l",
    };
    static const char *const bad[] = {
        "Rojo=1",               /* uppercase key */
        "rojo",                 /* no value */
        "rojo=",                /* empty value */
        "rojo=a,b",             /* b no member */
        "rojo=a=b",             /* '=' in a value */
        "1abc=x",               /* a simple key starts with a letter */
        "@vendor=x",            /* no tenant */
        "tenant@=x",            /* no system */
        "t@verylongsystemid=x", /* a system id is at most 14 */
        "rojo=\x7f",            /* DEL is no value character */
        "rojo=\x01",
    };
    char big[TRACE_STATE_MAX + 2], many[33 * 6 + 1];
    size_t pos = 0;

    for (size_t i = 0; i < N(good); i++)
        ck_assert_msg(trace_state_valid(good[i]), "refused \"%s\"", good[i]);
    for (size_t i = 0; i < N(bad); i++)
        ck_assert_msg(!trace_state_valid(bad[i]), "accepted \"%s\"", bad[i]);

    /* Oversized: 513 bytes is dropped, 512 kept. */
    memset(big, 'v', sizeof(big));
    memcpy(big, "k=", 2);
    big[TRACE_STATE_MAX + 1] = '\0';
    ck_assert(!trace_state_valid(big));
    /* (a value is at most 256: 512 bytes as two members) */
    memcpy(big + 256, ",j=", 3);
    big[TRACE_STATE_MAX] = '\0';
    ck_assert(trace_state_valid(big));

    /* 33 members are too many, 32 are fine. */
    for (int i = 0; i < 33; i++)
        pos += (size_t)snprintf(many + pos, sizeof(many) - pos, "%sk%02d=v", i ? "," : "", i);
    ck_assert(!trace_state_valid(many));
    many[strlen(many) - 6] = '\0';
    ck_assert(trace_state_valid(many));
}
END_TEST

START_TEST(a_bad_tracestate_is_dropped_but_the_traceparent_kept)
{
    trace_ctx c;
    char big[TRACE_STATE_MAX + 40];
    memset(big, 'a', sizeof(big) - 1);
    big[0] = 'k';
    big[1] = '=';
    big[sizeof(big) - 1] = '\0';
    ck_assert_int_eq(trace_parse(TP_OK, "Bad Key=1", &c), 0);
    ck_assert(trace_valid(&c));
    ck_assert_str_eq(c.state, "");
    ck_assert_int_eq(trace_parse(TP_OK, big, &c), 0);
    ck_assert_str_eq(c.state, "");
}
END_TEST

/* ---------------------------------------------------------------- spans */

START_TEST(ids_are_random_and_never_zero)
{
    uint8_t a[16], b[16];
    ck_assert_int_eq(trace_random(a, sizeof(a)), 0);
    ck_assert_int_eq(trace_random(b, sizeof(b)), 0);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
    ck_assert(memcmp(a, (uint8_t[16]){0}, 16) != 0);
}
END_TEST

START_TEST(a_child_span_keeps_the_trace_and_points_at_its_parent)
{
    trace_ctx parent;
    trace_span root, child;

    ck_assert_int_eq(trace_parse(TP_OK, "congo=1", &parent), 0);
    trace_span_start(&child, "process order.placed", TRACE_KIND_CONSUMER, &parent);
    ck_assert(memcmp(child.ctx.trace_id, parent.trace_id, 16) == 0);
    ck_assert(memcmp(child.parent, parent.span_id, 8) == 0);
    ck_assert(memcmp(child.ctx.span_id, parent.span_id, 8) != 0);
    ck_assert_str_eq(child.ctx.state, "congo=1");
    ck_assert_int_eq(child.ctx.flags, TRACE_FLAG_SAMPLED); /* parentbased_always_on */

    trace_span_start(&root, "POST /orders", TRACE_KIND_SERVER, NULL);
    ck_assert(trace_valid(&root.ctx));
    ck_assert(memcmp(root.parent, (uint8_t[8]){0}, 8) == 0);
    ck_assert(memcmp(root.ctx.trace_id, parent.trace_id, 16) != 0);
}
END_TEST

START_TEST(log_lines_carry_the_current_trace_and_span_ids)
{
    char line[LOG_LINE_MAX];
    trace_ctx c;
    const trace_ctx *prev;

    log_format(line, sizeof(line), LOG_INFO, "c-1", NULL, "outside");
    ck_assert_ptr_null(strstr(line, "trace_id"));
    ck_assert_int_eq(trace_parse(TP_OK, NULL, &c), 0);
    prev = trace_set_current(&c);
    log_format(line, sizeof(line), LOG_INFO, "c-1", NULL, "inside");
    trace_set_current(prev);
    ck_assert_msg(strstr(line, "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"") &&
                      strstr(line, "\"span_id\":\"00f067aa0ba902b7\""),
                  "%s", line);
    ck_assert_ptr_null(trace_current());
}
END_TEST

START_TEST(a_span_line_is_json_with_its_timing_and_parent)
{
    trace_ctx parent;
    trace_span s;
    char extra[512], line[LOG_LINE_MAX];
    cJSON *j;

    ck_assert_int_eq(trace_parse(TP_OK, NULL, &parent), 0);
    trace_span_start(&s, "process \"q\"", TRACE_KIND_CONSUMER, &parent);
    s.start_ns = 1000000000;
    s.end_ns = 1002500000;
    trace_span_fail(&s, "boom");
    trace_span_fields(&s, extra, sizeof(extra));
    log_format_extra(line, sizeof(line), LOG_INFO, NULL, NULL, "span", extra);
    j = cJSON_ParseWithOpts(line, NULL, 0);
    ck_assert_msg(j != NULL, "not JSON: %s", line);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "span")->valuestring, "process \"q\"");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "kind")->valuestring, "consumer");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "parent_span_id")->valuestring,
                     "00f067aa0ba902b7");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "start_us")->valuestring, "1000000");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "dur_us")->valuestring, "2500");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "error")->valuestring, "boom");
    cJSON_Delete(j);
}
END_TEST

/* A strict UTF-8 check (RFC 3629): what a conforming OTLP receiver asks. */
static int utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80                  ? 0
                : *p >= 0xc2 && *p <= 0xdf ? 1
                : *p >= 0xe0 && *p <= 0xef ? 2
                : *p >= 0xf0 && *p <= 0xf4 ? 3
                                           : -1;
        unsigned lo = 0x80, hi = 0xbf;
        if (n < 0)
            return 0;
        if (*p == 0xe0)
            lo = 0xa0;
        else if (*p == 0xed)
            hi = 0x9f;
        else if (*p == 0xf0)
            lo = 0x90;
        else if (*p == 0xf4)
            hi = 0x8f;
        p++;
        for (int i = 0; i < n; i++, p++) {
            if (*p < (i ? 0x80 : lo) || *p > (i ? 0xbf : hi))
                return 0;
        }
    }
    return 1;
}

/* A percent-decoded path (GET /products/%C3%28) or a long value cut in the
 * middle of a character would make the whole OTLP batch invalid JSON text. */
START_TEST(attribute_values_are_valid_utf8_and_cut_on_a_character)
{
    trace_span s;
    char buf[TRACE_VAL_MAX], *json;
    static const char *const bad[] = {
        "/products/\xc3\x28", "\xff\xfe",         "a\xe2\x82", "\xed\xa0\x80",
        "\xc0\xaf",           "\xf4\x90\x80\x80", "x\x80y"};
    char long_val[300];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        trace_utf8_copy(buf, sizeof(buf), bad[i]);
        ck_assert_msg(utf8_ok(buf), "case %zu not valid UTF-8", i);
    }
    trace_utf8_copy(buf, sizeof(buf), "/products/\xc3\x28");
    ck_assert_str_eq(buf, "/products/\xef\xbf\xbd(");
    trace_utf8_copy(buf, sizeof(buf), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    ck_assert_str_eq(buf, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    /* 'a' then 2-byte characters: the cut at 127 bytes falls mid-character. */
    long_val[0] = 'a';
    for (int i = 1; i + 1 < (int)sizeof(long_val) - 1; i += 2) {
        long_val[i] = '\xc3';
        long_val[i + 1] = '\xa9';
        long_val[i + 2] = '\0';
    }
    trace_utf8_copy(buf, 8, long_val);
    ck_assert_str_eq(buf, "a\xc3\xa9\xc3\xa9\xc3\xa9");
    trace_span_start(&s, "GET /products/{id}", TRACE_KIND_SERVER, NULL);
    trace_span_str(&s, "url.path", long_val);
    trace_span_str(&s, "url.bad", "/products/\xc3\x28");
    trace_span_fail(&s, long_val);
    ck_assert(utf8_ok(s.attrs[0].str));
    ck_assert(utf8_ok(s.attrs[1].str));
    ck_assert(utf8_ok(s.status_msg));
    s.end_ns = s.start_ns + 1;
    json = otel_encode("order-api", &s, 1);
    ck_assert_ptr_nonnull(json);
    ck_assert_msg(utf8_ok(json), "OTLP body not valid UTF-8");
    free(json);
}
END_TEST

/* put_kv cut at len - 2 returned len with no NUL written. */
START_TEST(a_span_line_cut_short_is_terminated_and_json)
{
    trace_span s;
    char extra[512], line[LOG_LINE_MAX];
    size_t n;
    cJSON *j;

    trace_span_start(&s, "x", TRACE_KIND_INTERNAL, NULL);
    memset(s.name, '"', TRACE_NAME_MAX - 1);
    s.name[TRACE_NAME_MAX - 1] = '\0';
    s.error = 1;
    memset(s.status_msg, '"', TRACE_VAL_MAX - 1);
    s.status_msg[TRACE_VAL_MAX - 1] = '\0';
    s.end_ns = s.start_ns + 1;
    for (size_t len = 16; len <= sizeof(extra); len++) {
        memset(extra, 'Z', sizeof(extra));
        n = trace_span_fields(&s, extra, len);
        ck_assert_msg(n < len && extra[n] == '\0' && strlen(extra) == n,
                      "len %zu: not terminated at %zu", len, n);
    }
    trace_span_fields(&s, extra, sizeof(extra));
    log_format_extra(line, sizeof(line), LOG_INFO, NULL, NULL, "span", extra);
    j = cJSON_ParseWithOpts(line, NULL, 0);
    ck_assert_msg(j != NULL, "not JSON: %s", line);
    cJSON_Delete(j);
}
END_TEST

/* ---------------------------------------------------- the AMQP headers */

START_TEST(a_publish_carries_traceparent_and_tracestate_headers)
{
    amqp_table_entry_t hdr[MQ_MAX_HEADERS];
    amqp_table_t t = {0, hdr};
    mq_header h[MQ_MAX_HEADERS];
    mq_msg m;
    char s[MQ_TRACESTATE_MAX];

    memset(&m, 0, sizeof(m));
    m.traceparent = TP_OK;
    m.tracestate = "congo=1";
    t.num_entries = mq__headers_encode(&m, hdr);
    ck_assert_int_eq(t.num_entries, 3);
    ck_assert_int_eq(mq__header_str(&t, MQ_H_TRACEPARENT, s, sizeof(s)), 0);
    ck_assert_str_eq(s, TP_OK);
    ck_assert_int_eq(hdr[1].value.kind, AMQP_FIELD_KIND_UTF8);
    ck_assert_int_eq(mq__header_str(&t, MQ_H_TRACESTATE, s, sizeof(s)), 0);
    ck_assert_str_eq(s, "congo=1");

    /* Room for both beside the most headers a caller may give. */
    for (size_t i = 0; i < N(h); i++)
        h[i] = (mq_header){"k", NULL, (int64_t)i};
    m.headers = h;
    m.nheaders = MQ_MAX_HEADERS - 3;
    ck_assert_int_eq(mq__headers_encode(&m, hdr), MQ_MAX_HEADERS);

    m.nheaders = 0;
    m.traceparent = "";
    ck_assert_int_eq(mq__headers_encode(&m, hdr), 1); /* schema_version only */
}
END_TEST

START_TEST(a_delivery_reads_the_trace_headers_as_longstr_or_bytes)
{
    static const char kinds[] = {AMQP_FIELD_KIND_UTF8, AMQP_FIELD_KIND_BYTES};
    for (size_t i = 0; i < N(kinds); i++) {
        amqp_table_entry_t h[2];
        amqp_envelope_t env;
        mq_delivery d;
        trace_ctx c;
        char why[MQ_ERR_LEN] = "";

        memset(h, 0, sizeof(h));
        h[0].key = amqp_cstring_bytes(MQ_H_TRACEPARENT);
        h[0].value.kind = kinds[i];
        h[0].value.value.bytes = amqp_cstring_bytes(TP_OK);
        h[1].key = amqp_cstring_bytes(MQ_H_TRACESTATE);
        h[1].value.kind = kinds[i];
        h[1].value.value.bytes = amqp_cstring_bytes("congo=1");
        memset(&env, 0, sizeof(env));
        env.exchange = amqp_cstring_bytes("sales.events");
        env.routing_key = amqp_cstring_bytes("order.placed");
        env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
        env.message.properties.headers.num_entries = 2;
        env.message.properties.headers.entries = h;
        ck_assert_msg(mq__to_delivery(&env, "inventory", "inventory", &d, why, sizeof(why)) == 0,
                      "%s", why);
        ck_assert_str_eq(d.traceparent, TP_OK);
        ck_assert_str_eq(d.tracestate, "congo=1");
        ck_assert_int_eq(trace_parse(d.traceparent, d.tracestate, &c), 0);
    }
}
END_TEST

START_TEST(an_oversized_tracestate_header_is_not_read_as_a_cut_one)
{
    char big[2000];
    amqp_table_entry_t h[1];
    amqp_envelope_t env;
    mq_delivery d;
    trace_ctx c;
    char why[MQ_ERR_LEN] = "";

    memset(big, 'a', sizeof(big) - 1);
    big[0] = 'k';
    big[1] = '=';
    big[sizeof(big) - 1] = '\0';
    for (size_t i = 300; i < sizeof(big) - 10; i += 200)
        memcpy(big + i, ",k=", 3); /* valid members all along: only the size is wrong */
    memset(h, 0, sizeof(h));
    h[0].key = amqp_cstring_bytes(MQ_H_TRACESTATE);
    h[0].value.kind = AMQP_FIELD_KIND_UTF8;
    h[0].value.value.bytes = amqp_cstring_bytes(big);
    memset(&env, 0, sizeof(env));
    env.routing_key = amqp_cstring_bytes("order.placed");
    env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    env.message.properties.headers.num_entries = 1;
    env.message.properties.headers.entries = h;
    mq__to_delivery(&env, "inventory", "inventory", &d, why, sizeof(why));
    ck_assert_int_eq(trace_parse(TP_OK, d.tracestate, &c), 0);
    ck_assert_str_eq(c.state, "");
}
END_TEST

/* A header's bytes are not a C string: "a valid traceparent\0junk" is not
 * a valid traceparent, and is not read as its prefix. */
START_TEST(a_trace_header_with_a_nul_byte_is_not_read)
{
    char tp[sizeof(TP_OK) + 4];
    amqp_table_entry_t h[1];
    amqp_envelope_t env;
    mq_delivery d;
    char why[MQ_ERR_LEN] = "";

    memcpy(tp, TP_OK, sizeof(TP_OK)); /* with its NUL */
    memcpy(tp + sizeof(TP_OK), "junk", 4);
    memset(h, 0, sizeof(h));
    h[0].key = amqp_cstring_bytes(MQ_H_TRACEPARENT);
    h[0].value.kind = AMQP_FIELD_KIND_BYTES;
    h[0].value.value.bytes.bytes = tp;
    h[0].value.value.bytes.len = sizeof(tp);
    memset(&env, 0, sizeof(env));
    env.routing_key = amqp_cstring_bytes("order.placed");
    env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    env.message.properties.headers.num_entries = 1;
    env.message.properties.headers.entries = h;
    ck_assert_msg(mq__to_delivery(&env, "inventory", "inventory", &d, why, sizeof(why)) == 0, "%s",
                  why);
    ck_assert_str_eq(d.traceparent, "");
}
END_TEST

/* --------------------------------------------------------------- sampler */

START_TEST(samplers_parse_and_decide)
{
    otel_sampler s;
    trace_ctx on, off;
    uint8_t low[16] = {0}, high[16];

    memset(high, 0xff, sizeof(high));
    ck_assert_int_eq(trace_parse(TP_OK, NULL, &on), 0);
    off = on;
    off.flags = 0;
    ck_assert_int_eq(otel_parse_sampler("bogus", &s), -1);
    ck_assert_int_eq(otel_parse_sampler("always_on", &s), 0);
    ck_assert(otel_decide(s, 1, &off, high));
    ck_assert_int_eq(otel_parse_sampler("always_off", &s), 0);
    ck_assert(!otel_decide(s, 1, &on, low));
    ck_assert_int_eq(otel_parse_sampler("traceidratio", &s), 0);
    ck_assert(otel_decide(s, 0.5, NULL, low));
    ck_assert(!otel_decide(s, 0.5, NULL, high));
    ck_assert(!otel_decide(s, 0.0, &on, low));
    ck_assert_int_eq(otel_parse_sampler("parentbased_always_on", &s), 0);
    ck_assert(otel_decide(s, 1, NULL, low));
    ck_assert(otel_decide(s, 1, &on, low));
    ck_assert(!otel_decide(s, 1, &off, low));
    ck_assert_int_eq(otel_parse_sampler("parentbased_always_off", &s), 0);
    ck_assert(!otel_decide(s, 1, NULL, low));
    ck_assert(otel_decide(s, 1, &on, low));
    ck_assert_int_eq(otel_parse_sampler("parentbased_traceidratio", &s), 0);
    ck_assert(!otel_decide(s, 0.5, NULL, high));
    ck_assert(otel_decide(s, 0.5, &on, high));
}
END_TEST

START_TEST(otel_settings_are_checked_and_name_the_variable)
{
    char err[256];
    static const char *const vars[][2] = {
        {"OTEL_TRACES_SAMPLER", "sometimes"},
        {"OTEL_TRACES_SAMPLER_ARG", "1.5"},
        {"OTEL_TRACES_SAMPLER_ARG", "x"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318?x=1"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "novalue"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "a=b%0D%0AX-Evil: 1"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "a=b%0aX-Evil: 1"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "a=b%00"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "bad key=v"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "k:x=v"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "=v"},
        {"OTEL_BSP_MAX_QUEUE_SIZE", "0"},
        {"TRACE_LOG_SPANS", "2"},
    };
    for (size_t i = 0; i < N(vars); i++) {
        setenv(vars[i][0], vars[i][1], 1);
        err[0] = '\0';
        ck_assert_msg(otel_init("t", err, sizeof(err)) == -1, "%s=%s accepted", vars[i][0],
                      vars[i][1]);
        ck_assert_msg(strstr(err, vars[i][0]) != NULL, "%s", err);
        unsetenv(vars[i][0]);
    }
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/", 1);
    setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%20ecret,x=y", 1);
    ck_assert_msg(otel_init("t", err, sizeof(err)) == 0, "%s", err);
    unsetenv("OTEL_EXPORTER_OTLP_ENDPOINT");
    unsetenv("OTEL_EXPORTER_OTLP_HEADERS");
    ck_assert_int_eq(otel_init("t", err, sizeof(err)), 0);
}
END_TEST

/* The exporter's URL: the spec's rule for the base endpoint, the signal
 * endpoint as given. */
START_TEST(the_export_url_follows_the_endpoint_rules)
{
    char err[256];
    static const char *const cases[][3] = {
        {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318", "http://h:4318/v1/traces"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318/", "http://h:4318/v1/traces"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT", "https://h/otlp", "https://h/otlp/v1/traces"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT", "https://h/otlp/", "https://h/otlp/v1/traces"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:4318/custom?tenant=1",
         "http://h:4318/custom?tenant=1"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:4318/", "http://h:4318/"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        setenv(cases[i][0], cases[i][1], 1);
        ck_assert_msg(otel_init("t", err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(otel_url(), cases[i][2]);
        unsetenv(cases[i][0]);
    }
    ck_assert_int_eq(otel_init("t", err, sizeof(err)), 0);
    ck_assert_str_eq(otel_url(), "");
}
END_TEST

START_TEST(otlp_headers_are_trimmed_decoded_and_checked)
{
    char line[64], err[256], longer[73];
    static const char *const good[][2] = {
        {"api-key=s%20ecret", "api-key: s ecret"},
        {"  x-tenant = a b  ", "x-tenant: a b"},
        {"k=v%3Dw", "k: v=w"},
        {"k=", "k: "},
    };
    static const char *const bad[] = {"k=a%0D%0AX: 1", "k=a%0a", "k=%00",   "k=a\r\nX: 1", "b k=v",
                                      "k:=v",          "=v",     "novalue", "k=%zz",       "k=%4"};
    for (size_t i = 0; i < N(good); i++) {
        ck_assert_msg(otel_header_line(good[i][0], strlen(good[i][0]), line, sizeof(line), err,
                                       sizeof(err)) == 0,
                      "%s: %s", good[i][0], err);
        ck_assert_str_eq(line, good[i][1]);
    }
    for (size_t i = 0; i < N(bad); i++) {
        err[0] = '\0';
        ck_assert_msg(
            otel_header_line(bad[i], strlen(bad[i]), line, sizeof(line), err, sizeof(err)) == -1,
            "%s accepted", bad[i]);
        ck_assert_msg(strstr(err, "OTEL_EXPORTER_OTLP_HEADERS"), "%s", err);
    }
    memset(longer, 'v', sizeof(longer) - 1); /* "k: " and 70 bytes do not fit in 64 */
    longer[0] = 'k';
    longer[1] = '=';
    longer[sizeof(longer) - 1] = '\0';
    ck_assert_int_eq(otel_header_line(longer, strlen(longer), line, sizeof(line), err, sizeof(err)),
                     -1);
}
END_TEST

/* ------------------------------------------------------------- encoding */

static const char *attr_str(const cJSON *span, const char *key)
{
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(span, "attributes"))
    {
        if (strcmp(cJSON_GetObjectItemCaseSensitive(a, "key")->valuestring, key) == 0) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(a, "value");
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(v, "stringValue");
            if (!s)
                s = cJSON_GetObjectItemCaseSensitive(v, "intValue");
            return s ? s->valuestring : NULL;
        }
    }
    return NULL;
}

START_TEST(spans_encode_as_otlp_json)
{
    trace_ctx parent;
    trace_span s[2];
    char *json;
    cJSON *j, *rs, *span;
    char tid[TRACE_ID_HEX];

    ck_assert_int_eq(trace_parse(TP_OK, "congo=1", &parent), 0);
    trace_span_start(&s[0], "publish order.placed", TRACE_KIND_PRODUCER, &parent);
    trace_span_link(&s[0], &parent);
    trace_span_str(&s[0], "messaging.system", "rabbitmq");
    trace_span_int(&s[0], "http.response.status_code", 201);
    s[0].start_ns = 1764547200123456789LL;
    s[0].end_ns = 1764547200223456789LL;
    trace_span_start(&s[1], "root", TRACE_KIND_INTERNAL, NULL);
    trace_span_fail(&s[1], "bad");
    s[1].end_ns = s[1].start_ns + 1;
    json = otel_encode("inventory", s, 2);
    ck_assert_ptr_nonnull(json);
    j = cJSON_Parse(json);
    ck_assert_ptr_nonnull(j);
    rs = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "resourceSpans"), 0);
    ck_assert_str_eq(attr_str(cJSON_GetObjectItemCaseSensitive(rs, "resource"), "service.name"),
                     "inventory");
    span = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(rs, "scopeSpans"), 0), "spans"),
        0);
    trace_id_hex(&parent, tid);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(span, "traceId")->valuestring, tid);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(span, "parentSpanId")->valuestring,
                     "00f067aa0ba902b7");
    ck_assert_int_eq(strlen(cJSON_GetObjectItemCaseSensitive(span, "spanId")->valuestring), 16);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(span, "kind")->valueint, 4);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(span, "startTimeUnixNano")->valuestring,
                     "1764547200123456789");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(span, "endTimeUnixNano")->valuestring,
                     "1764547200223456789");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(span, "traceState")->valuestring, "congo=1");
    ck_assert_str_eq(attr_str(span, "messaging.system"), "rabbitmq");
    ck_assert_str_eq(attr_str(span, "http.response.status_code"), "201");
    ck_assert_str_eq(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(span, "links"), 0), "spanId")
            ->valuestring,
        "00f067aa0ba902b7");
    span = span->next; /* the second span */
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(span, "parentSpanId"));
    ck_assert_int_eq(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(span, "status"), "code")
            ->valueint,
        2);
    cJSON_Delete(j);
    free(json);
}
END_TEST

/* ------------------------------------------------------- the full queue */

static int nothing_queued(void *arg)
{
    otel_stats st;
    (void)arg;
    otel_get_stats(&st);
    return st.queued == 0;
}

/* A receiver that takes the connection (the kernel's backlog) and never
 * answers holds the exporter in its first export: the queue behind it then
 * fills, and a span that finds it full is dropped and counted, never
 * waited for (OTEL_BSP_MAX_QUEUE_SIZE=4: of 10 spans, 4 queued, 6 dropped). */
START_TEST(a_span_finding_the_queue_full_is_dropped_and_counted)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char url[64], err[256];
    trace_span s;
    otel_stats st;

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(fd, 4), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url, 1);
    setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4", 1);
    setenv("OTEL_BSP_SCHEDULE_DELAY", "600000", 1);
    setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "600000", 1);
    ck_assert_msg(otel_init("units", err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(otel_start(err, sizeof(err)) == 0, "%s", err);
    trace_span_start(&s, "queued", TRACE_KIND_INTERNAL, NULL);
    s.end_ns = s.start_ns + 1;
    /* A full batch (4) wakes the exporter, which takes it and waits on the
     * silent receiver. */
    for (int i = 0; i < 4; i++)
        otel_submit(&s);
    ck_assert_msg(tu_poll(10000, nothing_queued, NULL),
                  "the exporter did not take the first batch in 10 s");
    for (int i = 0; i < 10; i++)
        otel_submit(&s);
    otel_get_stats(&st);
    ck_assert_int_eq(st.queued, 4);
    ck_assert_int_eq(st.dropped, 6);
    ck_assert_int_eq(st.exported, 0);
    /* The flush cannot reach the receiver: the export under way and the
     * queued 4 are dropped too, within the stop's bound. */
    otel_stop(300);
    otel_get_stats(&st);
    ck_assert_int_eq(st.dropped, 14);
    ck_assert_int_eq(st.queued, 0);
    close(fd);
    unsetenv("OTEL_EXPORTER_OTLP_ENDPOINT");
    unsetenv("OTEL_BSP_MAX_QUEUE_SIZE");
    unsetenv("OTEL_BSP_SCHEDULE_DELAY");
    unsetenv("OTEL_EXPORTER_OTLP_TIMEOUT");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_trace");
    TCase *p = tcase_create("traceparent");
    TCase *st = tcase_create("tracestate");
    TCase *sp = tcase_create("spans");
    TCase *mq = tcase_create("amqp_headers");
    TCase *ot = tcase_create("otel");

    tcase_add_test(p, a_valid_traceparent_is_read_and_formatted_back);
    tcase_add_test(p, invalid_traceparents_are_refused_and_leave_no_context);
    tcase_add_test(p, a_later_version_is_read_by_its_first_fields);
    tcase_add_test(st, tracestate_follows_the_list_grammar_and_its_limits);
    tcase_add_test(st, a_bad_tracestate_is_dropped_but_the_traceparent_kept);
    tcase_add_test(sp, ids_are_random_and_never_zero);
    tcase_add_test(sp, a_child_span_keeps_the_trace_and_points_at_its_parent);
    tcase_add_test(sp, log_lines_carry_the_current_trace_and_span_ids);
    tcase_add_test(sp, a_span_line_is_json_with_its_timing_and_parent);
    tcase_add_test(sp, attribute_values_are_valid_utf8_and_cut_on_a_character);
    tcase_add_test(sp, a_span_line_cut_short_is_terminated_and_json);
    tcase_add_test(mq, a_publish_carries_traceparent_and_tracestate_headers);
    tcase_add_test(mq, a_delivery_reads_the_trace_headers_as_longstr_or_bytes);
    tcase_add_test(mq, an_oversized_tracestate_header_is_not_read_as_a_cut_one);
    tcase_add_test(mq, a_trace_header_with_a_nul_byte_is_not_read);
    tcase_add_test(ot, samplers_parse_and_decide);
    tcase_add_test(ot, otel_settings_are_checked_and_name_the_variable);
    tcase_add_test(ot, the_export_url_follows_the_endpoint_rules);
    tcase_add_test(ot, otlp_headers_are_trimmed_decoded_and_checked);
    tcase_add_test(ot, spans_encode_as_otlp_json);
    tcase_add_test(ot, a_span_finding_the_queue_full_is_dropped_and_counted);
    suite_add_tcase(s, p);
    suite_add_tcase(s, st);
    suite_add_tcase(s, sp);
    suite_add_tcase(s, mq);
    suite_add_tcase(s, ot);
    return tu_run(s);
}
