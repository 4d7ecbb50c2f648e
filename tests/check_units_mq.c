/*
 * check_units_mq.c — what a message says, read by the messaging helper with
 * no server: header tables as a foreign client may send them (every AMQP
 * field kind), a delivery's properties and headers, its event type
 * (mq_event_type, x-death, the type property) and AMQP URLs. What is then
 * decided about it (retry tier, batch fallback, envelope) is in
 * check_units_worker.c. Runs in well under a second, first in make test
 * (scripts/run-tests.sh runs every check_units_* first). Over 600 lines
 * because each header kind and each forgery of the event type is one short
 * test sharing this file's table builders; split by topic it would repeat them.
 */
#include "mq_int.h"
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------ helpers */

static amqp_table_entry_t entry(const char *key, char kind)
{
    amqp_table_entry_t e;
    memset(&e, 0, sizeof(e));
    e.key = amqp_cstring_bytes(key);
    e.value.kind = (uint8_t)kind;
    return e;
}

static amqp_table_entry_t str_entry(const char *key, char kind, const char *v)
{
    amqp_table_entry_t e = entry(key, kind);
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

/* An integer entry of the given kind, v in the member that kind uses. */
static amqp_table_entry_t int_entry(const char *key, char kind, int64_t v)
{
    amqp_table_entry_t e = entry(key, kind);
    switch (kind) {
    case AMQP_FIELD_KIND_I8:
        e.value.value.i8 = (int8_t)v;
        break;
    case AMQP_FIELD_KIND_U8:
        e.value.value.u8 = (uint8_t)v;
        break;
    case AMQP_FIELD_KIND_I16:
        e.value.value.i16 = (int16_t)v;
        break;
    case AMQP_FIELD_KIND_U16:
        e.value.value.u16 = (uint16_t)v;
        break;
    case AMQP_FIELD_KIND_I32:
        e.value.value.i32 = (int32_t)v;
        break;
    case AMQP_FIELD_KIND_U32:
        e.value.value.u32 = (uint32_t)v;
        break;
    case AMQP_FIELD_KIND_U64:
        e.value.value.u64 = (uint64_t)v;
        break;
    default:
        e.value.value.i64 = v;
        break;
    }
    return e;
}

/* An envelope as rabbitmq-c hands it over, with the given headers. */
static void envelope(amqp_envelope_t *env, const char *exchange, const char *key,
                     amqp_table_entry_t *h, int nh)
{
    memset(env, 0, sizeof(*env));
    env->exchange = amqp_cstring_bytes(exchange);
    env->routing_key = amqp_cstring_bytes(key);
    env->delivery_tag = 7;
    env->message.body = amqp_cstring_bytes("{}");
    env->message.properties._flags = AMQP_BASIC_MESSAGE_ID_FLAG;
    env->message.properties.message_id = amqp_cstring_bytes("0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f50");
    if (h) {
        env->message.properties._flags |= AMQP_BASIC_HEADERS_FLAG;
        env->message.properties.headers.num_entries = nh;
        env->message.properties.headers.entries = h;
    }
}

/* ------------------------------------------------------ header tables */

START_TEST(integer_headers_are_read_from_every_amqp_integer_kind)
{
    amqp_table_entry_t e[8];
    amqp_table_t t = {8, e};
    static const struct {
        const char *key;
        int64_t want;
    } want[] = {{"i8", -100},  {"u8", 200},          {"i16", -30000},        {"u16", 60000},
                {"i32", -2e9}, {"u32", 4000000000u}, {"i64", -9000000000LL}, {"u64", 9000000000LL}};
    static const char kinds[] = {AMQP_FIELD_KIND_I8,  AMQP_FIELD_KIND_U8,  AMQP_FIELD_KIND_I16,
                                 AMQP_FIELD_KIND_U16, AMQP_FIELD_KIND_I32, AMQP_FIELD_KIND_U32,
                                 AMQP_FIELD_KIND_I64, AMQP_FIELD_KIND_U64};
    for (size_t i = 0; i < N(kinds); i++)
        e[i] = int_entry(want[i].key, kinds[i], want[i].want);
    for (size_t i = 0; i < N(want); i++) {
        int64_t v = 0;
        ck_assert_msg(mq__header_int(&t, want[i].key, &v) == 0, "%s not read", want[i].key);
        ck_assert_msg(v == want[i].want, "%s: %lld", want[i].key, (long long)v);
    }
}
END_TEST

/* A u64 past INT64_MAX (a foreign client may send one) reads as INT64_MAX:
 * past every limit a caller checks, never a negative number; a delivery's
 * failed_at so sent is INT64_MAX, not a time before 1970. */
START_TEST(a_u64_header_past_int64_max_reads_as_int64_max_not_negative)
{
    static const uint64_t sent[] = {(uint64_t)INT64_MAX, (uint64_t)INT64_MAX + 1, UINT64_MAX - 4,
                                    UINT64_MAX};
    for (size_t i = 0; i < N(sent); i++) {
        amqp_table_entry_t e = int_entry(MQ_H_FAILED_AT, AMQP_FIELD_KIND_U64, 0);
        amqp_table_t t = {1, &e};
        amqp_envelope_t env;
        mq_delivery d;
        char why[MQ_ERR_LEN];
        int64_t v = 0;
        e.value.value.u64 = sent[i];
        ck_assert_int_eq(mq__header_int(&t, MQ_H_FAILED_AT, &v), 0);
        ck_assert_msg(v == INT64_MAX, "u64 %llu read as %lld", (unsigned long long)sent[i],
                      (long long)v);
        envelope(&env, "sales.events", "order.placed", &e, 1);
        mq__to_delivery(&env, "billing", "billing", &d, why, sizeof(why));
        ck_assert_msg(d.failed_at == INT64_MAX, "u64 %llu: failed_at %lld",
                      (unsigned long long)sent[i], (long long)d.failed_at);
    }
}
END_TEST

START_TEST(integer_headers_of_other_kinds_or_absent_are_not_read)
{
    static const char kinds[] = {AMQP_FIELD_KIND_BOOLEAN, AMQP_FIELD_KIND_F32,
                                 AMQP_FIELD_KIND_F64,     AMQP_FIELD_KIND_DECIMAL,
                                 AMQP_FIELD_KIND_UTF8,    AMQP_FIELD_KIND_BYTES,
                                 AMQP_FIELD_KIND_VOID,    AMQP_FIELD_KIND_TIMESTAMP,
                                 AMQP_FIELD_KIND_ARRAY,   AMQP_FIELD_KIND_TABLE};
    for (size_t i = 0; i < N(kinds); i++) {
        amqp_table_entry_t e = entry("x-attempt", kinds[i]);
        amqp_table_t t = {1, &e};
        int64_t v = 42;
        if (kinds[i] == AMQP_FIELD_KIND_UTF8 || kinds[i] == AMQP_FIELD_KIND_BYTES)
            e.value.value.bytes = amqp_cstring_bytes("3");
        ck_assert_msg(mq__header_int(&t, "x-attempt", &v) == -1, "kind '%c' read as an integer",
                      kinds[i]);
        ck_assert_int_eq(v, 42);
    }
    {
        amqp_table_entry_t e = entry("x-attempts", AMQP_FIELD_KIND_I32);
        amqp_table_t t = {1, &e}, empty = {0, NULL};
        int64_t v;
        ck_assert_int_eq(mq__header_int(&t, "x-attempt", &v), -1);   /* a longer key */
        ck_assert_int_eq(mq__header_int(&t, "x-attempts2", &v), -1); /* a shorter one */
        ck_assert_int_eq(mq__header_int(&empty, "x-attempt", &v), -1);
    }
}
END_TEST

START_TEST(string_headers_are_longstr_or_bytes_cut_to_the_buffer)
{
    amqp_table_entry_t e[4];
    amqp_table_t t = {4, e};
    char out[8];
    e[0] = str_entry("s", AMQP_FIELD_KIND_UTF8, "text");
    e[1] = str_entry("b", AMQP_FIELD_KIND_BYTES, "raw");
    e[2] = str_entry("long", AMQP_FIELD_KIND_UTF8, "0123456789abcdef");
    e[3] = entry("n", AMQP_FIELD_KIND_I32);
    ck_assert_int_eq(mq__header_str(&t, "s", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "text");
    ck_assert_int_eq(mq__header_str(&t, "b", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "raw");
    ck_assert_int_eq(mq__header_str(&t, "long", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "0123456"); /* size - 1 bytes and the NUL */
    strcpy(out, "keep");
    ck_assert_int_eq(mq__header_str(&t, "n", out, sizeof(out)), -1);
    ck_assert_int_eq(mq__header_str(&t, "absent", out, sizeof(out)), -1);
    ck_assert_str_eq(out, "keep");
}
END_TEST

START_TEST(published_headers_carry_the_schema_version_and_fill_the_table)
{
    mq_header h[MQ_MAX_HEADERS + 3];
    amqp_table_entry_t hdr[MQ_MAX_HEADERS];
    amqp_table_t t = {0, hdr};
    mq_msg m;
    int64_t v;
    char s[32];

    memset(&m, 0, sizeof(m));
    h[0] = (mq_header){MQ_H_ORIGINAL_KEY, "order.placed", 0};
    h[1] = (mq_header){MQ_H_ATTEMPT, NULL, 3};
    m.headers = h;
    m.nheaders = 2;
    t.num_entries = mq__headers_encode(&m, hdr);
    ck_assert_int_eq(t.num_entries, 3);
    ck_assert_int_eq(mq__header_int(&t, MQ_H_SCHEMA_VERSION, &v), 0);
    ck_assert_int_eq(v, EV_SCHEMA_VERSION); /* 0 = the current version */
    ck_assert_int_eq(mq__header_str(&t, MQ_H_ORIGINAL_KEY, s, sizeof(s)), 0);
    ck_assert_str_eq(s, "order.placed");
    ck_assert_int_eq(mq__header_int(&t, MQ_H_ATTEMPT, &v), 0);
    ck_assert_int_eq(v, 3);

    m.schema_version = 7;
    t.num_entries = mq__headers_encode(&m, hdr);
    ck_assert_int_eq(mq__header_int(&t, MQ_H_SCHEMA_VERSION, &v), 0);
    ck_assert_int_eq(v, 7);

    m.schema_version = -1; /* a forwarded copy without one: none */
    t.num_entries = mq__headers_encode(&m, hdr);
    ck_assert_int_eq(t.num_entries, 2);
    ck_assert_int_eq(mq__header_int(&t, MQ_H_SCHEMA_VERSION, &v), -1);

    for (size_t i = 0; i < N(h); i++)
        h[i] = (mq_header){"k", NULL, (int64_t)i};
    m.schema_version = 0;
    m.nheaders = MQ_MAX_HEADERS - 3; /* the most there is room for, beside the trace context */
    ck_assert_int_eq(mq__headers_encode(&m, hdr), MQ_MAX_HEADERS - 2);
}
END_TEST

/* More is a caller's bug: it stops there, rather than sending a message
 * without some of its headers. */
START_TEST(too_many_headers_abort)
{
    mq_header h[MQ_MAX_HEADERS];
    amqp_table_entry_t hdr[MQ_MAX_HEADERS];
    mq_msg m;
    memset(&m, 0, sizeof(m));
    for (size_t i = 0; i < N(h); i++)
        h[i] = (mq_header){"k", NULL, (int64_t)i};
    m.headers = h;
    m.nheaders = N(h);
    mq__headers_encode(&m, hdr);
}
END_TEST

START_TEST(a_delivery_reads_its_headers_whatever_integer_kind_they_come_in)
{
    static const char kinds[] = {AMQP_FIELD_KIND_I8,  AMQP_FIELD_KIND_U8,  AMQP_FIELD_KIND_I16,
                                 AMQP_FIELD_KIND_U16, AMQP_FIELD_KIND_I32, AMQP_FIELD_KIND_U32,
                                 AMQP_FIELD_KIND_I64, AMQP_FIELD_KIND_U64};
    for (size_t i = 0; i < N(kinds); i++) {
        amqp_table_entry_t h[4];
        amqp_envelope_t env;
        mq_delivery d;
        char why[MQ_ERR_LEN] = "";
        h[0] = int_entry(MQ_H_SCHEMA_VERSION, kinds[i], 1);
        h[1] = int_entry(MQ_H_ATTEMPT, kinds[i], 2);
        h[2] = str_entry(MQ_H_REASON, AMQP_FIELD_KIND_BYTES, "rejected");
        h[3] = int_entry(MQ_H_DELIVERY_COUNT, kinds[i], 4); /* the broker's */
        envelope(&env, "sales.events", "order.placed", h, 4);
        ck_assert_msg(mq__to_delivery(&env, "billing", "billing", &d, why, sizeof(why)) == 0,
                      "kind '%c': %s", kinds[i], why);
        ck_assert_msg(d.schema_version == 1 && d.attempt == 2, "kind '%c': version %d attempt %d",
                      kinds[i], d.schema_version, d.attempt);
        ck_assert_str_eq(d.reason, "rejected");
        ck_assert_int_eq(d.delivery_count, 4);
        ck_assert_str_eq(d.routing_key, "order.placed");
        ck_assert_int_eq(d.delivery_tag, 7);
        ck_assert_int_eq(d.len, 2);
    }
}
END_TEST

START_TEST(a_delivery_with_headers_out_of_range_or_of_the_wrong_kind_gets_the_defaults)
{
    static const struct {
        char kind;
        int64_t v;
        int version, attempt;
    } cases[] = {
        {AMQP_FIELD_KIND_I32, -1, -1, 0},         /* negative */
        {AMQP_FIELD_KIND_I64, 1000000, -1, 0},    /* too large for either */
        {AMQP_FIELD_KIND_U64, -5, -1, 0},         /* 2^64 - 5: INT64_MAX, too large */
        {AMQP_FIELD_KIND_I32, 999, 999, 999},     /* the largest attempt kept */
        {AMQP_FIELD_KIND_I32, 1000, 1000, 0},     /* an attempt past it is 0 */
        {AMQP_FIELD_KIND_F64, 1, -1, 0},          /* a double is not an integer */
        {AMQP_FIELD_KIND_BOOLEAN, 1, -1, 0},      /* nor a bool */
        {AMQP_FIELD_KIND_UTF8, 0, -1, 0},         /* nor "1" */
        {AMQP_FIELD_KIND_TIMESTAMP, 1, -1, 0},    /* nor a timestamp */
        {AMQP_FIELD_KIND_I32, 999999, 999999, 0}, /* the largest version kept */
        {AMQP_FIELD_KIND_I32, 1000000, -1, 0},    /* past it: unknown */
    };
    for (size_t i = 0; i < N(cases); i++) {
        amqp_table_entry_t h[2];
        amqp_envelope_t env;
        mq_delivery d;
        char why[MQ_ERR_LEN];
        h[0] = int_entry(MQ_H_SCHEMA_VERSION, cases[i].kind, cases[i].v);
        h[1] = int_entry(MQ_H_ATTEMPT, cases[i].kind, cases[i].v);
        if (cases[i].kind == AMQP_FIELD_KIND_UTF8) {
            h[0].value.value.bytes = h[1].value.value.bytes = amqp_cstring_bytes("1");
        } else if (cases[i].kind == AMQP_FIELD_KIND_F64) {
            h[0].value.value.f64 = h[1].value.value.f64 = 1.0;
        } else if (cases[i].kind == AMQP_FIELD_KIND_BOOLEAN) {
            h[0].value.value.boolean = h[1].value.value.boolean = 1;
        }
        envelope(&env, "sales.events", "order.placed", h, 2);
        mq__to_delivery(&env, "billing", "billing", &d, why, sizeof(why));
        ck_assert_msg(d.schema_version == cases[i].version && d.attempt == cases[i].attempt,
                      "case %zu: version %d attempt %d", i, d.schema_version, d.attempt);
    }
}
END_TEST

START_TEST(a_delivery_without_headers_or_properties_is_empty_not_garbage)
{
    amqp_envelope_t env;
    mq_delivery d;
    char why[MQ_ERR_LEN];
    envelope(&env, "sales.events", "order.placed", NULL, 0);
    env.message.properties._flags = 0;
    ck_assert_int_eq(mq__to_delivery(&env, "billing", "billing", &d, why, sizeof(why)), 0);
    ck_assert_int_eq(d.schema_version, -1);
    ck_assert_int_eq(d.attempt, 0);
    ck_assert_str_eq(d.message_id, "");
    ck_assert_str_eq(d.type, "");
    ck_assert_str_eq(d.reason, "");
    ck_assert_int_eq(d.failed_at, 0);
}
END_TEST

START_TEST(long_properties_are_cut_to_the_delivery_fields)
{
    char big[600];
    amqp_envelope_t env;
    mq_delivery d;
    char why[MQ_ERR_LEN];
    amqp_table_entry_t h;
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    h = str_entry(MQ_H_ERROR, AMQP_FIELD_KIND_UTF8, big);
    envelope(&env, "sales.events", "order.placed", &h, 1);
    env.message.properties.message_id = amqp_cstring_bytes(big);
    env.message.properties._flags |= AMQP_BASIC_APP_ID_FLAG;
    env.message.properties.app_id = amqp_cstring_bytes(big);
    mq__to_delivery(&env, "billing", "billing", &d, why, sizeof(why));
    ck_assert_uint_eq(strlen(d.message_id), sizeof(d.message_id) - 1);
    ck_assert_uint_eq(strlen(d.app_id), sizeof(d.app_id) - 1);
    ck_assert_uint_eq(strlen(d.error), sizeof(d.error) - 1);
}
END_TEST

/* ------------------------------------------------ a delivery's event type */

START_TEST(event_type_follows_the_one_rule)
{
    static const struct {
        const char *name;
        mq_route r;
        const char *want; /* NULL: forged */
        const char *why_has;
    } cases[] = {
#define R(ex, rk, ...) {.exchange = ex, .routing_key = rk, __VA_ARGS__}
        {.name = "the routing key through sales.events",
         .r = R("sales.events", "order.placed"),
         .want = "order.placed"},
        {.name = "an x-original-routing-key through sales.events is not believed",
         .r = R("sales.events", "order.placed", .original_key = "payment.failed"),
         .want = "order.placed"},
        {.name = "dead-lettered into sales.events by a queue",
         .r = R("sales.events", "order.placed", .has_death = 1),
         .why_has = "dead-lettered into sales.events"},
        {.name = "the default exchange: the key (a queue name)",
         .r = R("", "billing"),
         .want = "billing"},
        {.name = "no exchange at all", .r = R(NULL, "order.placed"), .want = "order.placed"},
        {.name = "our retry copy under our key: its original key",
         .r = R("sales.retry", "billing", .original_key = "order.placed"),
         .want = "order.placed"},
        {.name = "through sales.retry under another's key",
         .r = R("sales.retry", "inventory", .original_key = "order.placed"),
         .why_has = "not under billing's own key"},
        {.name = "through sales.dlx under another's key",
         .r = R("sales.dlx", "order.placed"),
         .why_has = "not under billing's own key"},
        {.name = "through sales.retry without an original key",
         .r = R("sales.retry", "billing"),
         .why_has = "no x-original-routing-key"},
        {.name = "through sales.retry with an empty original key",
         .r = R("sales.retry", "billing", .original_key = ""),
         .why_has = "no x-original-routing-key"},
        {.name = "a retry tier dead-lettering our copy back: our user, the original key",
         .r = R("sales.retry", "billing", .original_key = "order.placed", .user_id = "billing-user",
                .has_death = 1, .death_queue = "billing.retry.1000ms",
                .death_exchange = "sales.retry", .death_key = "billing.retry.1000ms"),
         .want = "order.placed"},
        {.name = "the same with the service name as user (the administrator's replay)",
         .r = R("sales.retry", "billing", .original_key = "order.placed", .user_id = "billing",
                .has_death = 1),
         .want = "order.placed"},
        {.name = "dead-lettered from our work queue after sales.events: x-death's key",
         .r = R("sales.dlx", "billing", .original_key = "payment.failed", .user_id = "order-api",
                .has_death = 1, .death_queue = "billing", .death_exchange = "sales.events",
                .death_key = "order.placed"),
         .want = "order.placed"},
        /* x-death is the publisher's to pre-set (the broker only counts up
         * a matching entry): its key is believed only from the key's owner */
        {.name = "x-death's key published by another than its owner",
         .r = R("sales.dlx", "billing", .user_id = "pos", .has_death = 1, .death_queue = "billing",
                .death_exchange = "sales.events", .death_key = "order.placed"),
         .why_has = "not by its owner"},
        {.name = "x-death's key without a user-id",
         .r = R("sales.dlx", "billing", .original_key = "order.placed", .has_death = 1,
                .death_queue = "billing", .death_exchange = "sales.events",
                .death_key = "order.placed"),
         .why_has = "not by its owner"},
        {.name = "x-death's key under another's prefix that starts like the user's",
         .r = R("sales.dlx", "billing", .user_id = "inventory", .has_death = 1,
                .death_queue = "billing", .death_exchange = "sales.events",
                .death_key = "inventoryx.reserved"),
         .why_has = "not by its owner"},
        {.name = "x-death's key of pos's prefix, published by pos",
         .r = R("sales.dlx", "billing", .user_id = "pos", .has_death = 1, .death_queue = "billing",
                .death_exchange = "sales.events", .death_key = "sale.completed"),
         .want = "sale.completed"},
        {.name = "x-death's key of a service named as its prefix (a generated one)",
         .r = R("sales.dlx", "billing", .user_id = "parcel", .has_death = 1,
                .death_queue = "billing", .death_exchange = "sales.events",
                .death_key = "parcel.shipped"),
         .want = "parcel.shipped"},
        {.name = "the same without a key in x-death",
         .r = R("sales.dlx", "billing", .original_key = "order.placed", .has_death = 1,
                .death_queue = "billing", .death_exchange = "sales.events"),
         .why_has = "x-death without a routing key"},
        {.name = "dead-lettered under our key by another's queue",
         .r = R("sales.dlx", "billing", .original_key = "order.placed", .user_id = "mallory",
                .has_death = 1, .death_queue = "mallory", .death_exchange = "sales.events",
                .death_key = "order.placed"),
         .why_has = "by another's queue"},
        {.name = "the same without a user-id",
         .r = R("sales.retry", "billing", .original_key = "order.placed", .has_death = 1),
         .why_has = "by another's queue"},
#undef R
    };
    for (size_t i = 0; i < N(cases); i++) {
        char out[64] = "stale", why[MQ_ERR_LEN] = "";
        int rc = mq_event_type(&cases[i].r, "billing", "billing-user", out, sizeof(out), why,
                               sizeof(why));
        if (!cases[i].why_has) {
            ck_assert_msg(rc == 0, "%s: %s", cases[i].name, why);
            ck_assert_msg(strcmp(out, cases[i].want) == 0, "%s: %s", cases[i].name, out);
        } else {
            ck_assert_msg(rc == -1, "%s: taken as %s", cases[i].name, out);
            ck_assert_msg(strstr(why, "forged") && strstr(why, cases[i].why_has), "%s: \"%s\"",
                          cases[i].name, why);
            ck_assert_msg(out[0] == '\0', "%s: type \"%s\" left", cases[i].name, out);
        }
    }
}
END_TEST

START_TEST(a_delivery_reads_x_death_and_checks_its_type_property)
{
    amqp_table_entry_t death[3], h[2];
    amqp_field_value_t keys[1], deaths[1];
    amqp_envelope_t env;
    mq_delivery d;
    char why[MQ_ERR_LEN] = "";

    /* RabbitMQ's x-death: an array of tables, the last death first. */
    death[0] = str_entry("queue", AMQP_FIELD_KIND_UTF8, "billing");
    death[1] = str_entry("exchange", AMQP_FIELD_KIND_UTF8, "sales.events");
    death[2] = entry("routing-keys", AMQP_FIELD_KIND_ARRAY);
    keys[0].kind = AMQP_FIELD_KIND_UTF8;
    keys[0].value.bytes = amqp_cstring_bytes("order.placed");
    death[2].value.value.array = (amqp_array_t){1, keys};
    deaths[0].kind = AMQP_FIELD_KIND_TABLE;
    deaths[0].value.table = (amqp_table_t){3, death};
    h[0] = entry("x-death", AMQP_FIELD_KIND_ARRAY);
    h[0].value.value.array = (amqp_array_t){1, deaths};
    h[1] = str_entry(MQ_H_ORIGINAL_KEY, AMQP_FIELD_KIND_UTF8, "payment.failed");
    envelope(&env, "sales.dlx", "billing", h, 2);
    /* x-death's key is believed from its owner only (the user-id) */
    ck_assert_int_eq(mq__to_delivery(&env, "billing", "billing-user", &d, why, sizeof(why)), -1);
    ck_assert_msg(strstr(why, "not by its owner"), "%s", why);
    ck_assert_str_eq(d.routing_key, "billing");
    env.message.properties._flags |= AMQP_BASIC_USER_ID_FLAG;
    env.message.properties.user_id = amqp_cstring_bytes("order-api");
    ck_assert_msg(mq__to_delivery(&env, "billing", "billing-user", &d, why, sizeof(why)) == 0, "%s",
                  why);
    ck_assert_str_eq(d.routing_key, "order.placed");
    env.message.properties._flags &= ~AMQP_BASIC_USER_ID_FLAG;

    /* An x-death that is not an array still counts as a death. */
    h[0] = entry("x-death", AMQP_FIELD_KIND_UTF8);
    h[0].value.value.bytes = amqp_cstring_bytes("billing");
    ck_assert_int_eq(mq__to_delivery(&env, "billing", "billing-user", &d, why, sizeof(why)), -1);
    ck_assert_msg(strstr(why, "by another's queue"), "%s", why);
    ck_assert_str_eq(d.routing_key, "billing"); /* forged: the key it came under */

    /* A type property that contradicts the key: forged. */
    envelope(&env, "sales.events", "order.placed", NULL, 0);
    env.message.properties._flags |= AMQP_BASIC_TYPE_FLAG;
    env.message.properties.type = amqp_cstring_bytes("payment.failed");
    ck_assert_int_eq(mq__to_delivery(&env, "billing", "billing-user", &d, why, sizeof(why)), -1);
    ck_assert_msg(strstr(why, "type payment.failed on a message routed as order.placed"), "%s",
                  why);
    env.message.properties.type = amqp_cstring_bytes("order.placed");
    ck_assert_int_eq(mq__to_delivery(&env, "billing", "billing-user", &d, why, sizeof(why)), 0);
}
END_TEST

/* ------------------------------------------------------------ AMQP URLs */

START_TEST(amqp_urls_parse_into_host_port_vhost_and_tls_files)
{
    char buf[256];
    struct amqp_connection_info info;
    mq__tls_opts t;
    char err[MQ_ERR_LEN];

    snprintf(buf, sizeof(buf), "amqp://billing:s3cret@broker:5673/sales");
    ck_assert_int_eq(mq__parse_url(buf, &info, &t, err, sizeof(err)), 0);
    ck_assert_str_eq(info.user, "billing");
    ck_assert_str_eq(info.password, "s3cret");
    ck_assert_str_eq(info.host, "broker");
    ck_assert_int_eq(info.port, 5673);
    ck_assert_str_eq(info.vhost, "sales");
    ck_assert_int_eq(info.ssl, 0);
    ck_assert_ptr_null(t.cacertfile);

    snprintf(buf, sizeof(buf),
             "amqps://u:p@broker.test/v?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem");
    ck_assert_msg(mq__parse_url(buf, &info, &t, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(info.ssl, 1);
    ck_assert_int_eq(info.port, 5671);
    ck_assert_str_eq(t.cacertfile, "/ca.pem");
    ck_assert_str_eq(t.certfile, "/c.pem");
    ck_assert_str_eq(t.keyfile, "/k.pem");
}
END_TEST

START_TEST(bad_amqp_urls_are_refused_with_the_reason)
{
    static const struct {
        const char *url, *err_has;
    } cases[] = {
        {"http://u:p@h/v", "not an AMQP URL"},
        {"amqp://u:p@h:notaport/v", "not an AMQP URL"},
        {"", "not an AMQP URL"},
        {"amqps://u:p@h/v", "needs ?cacertfile"},
        {"amqp://u:p@h/v?cacertfile=/etc/hostname", "need an amqps:// URL"},
        {"amqps://u:p@h/v?cacertfile=/etc/hostname&verify=none", "unknown parameter \"verify\""},
        {"amqps://u:p@h/v?cacertfile", "is not name=value"},
        {"amqps://u:p@h/v?cacertfile=", "is not name=value"},
        {"amqps://u:p@h/v?=x", "is not name=value"},
        {"amqps://u:p@h/v?cacertfile=/a%20b", "percent-escapes"},
        {"amqps://u:p@h/v?cacertfile=/etc/hostname&certfile=/etc/hostname", "go together"},
        {"amqps://u:p@h/v?cacertfile=/nonexistent/ca.pem", "cannot read /nonexistent/ca.pem"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        char err[MQ_ERR_LEN] = "";
        ck_assert_msg(mq_check_url(cases[i].url, err, sizeof(err)) == -1, "\"%s\" accepted",
                      cases[i].url);
        ck_assert_msg(strstr(err, cases[i].err_has), "\"%s\": %s", cases[i].url, err);
    }
}
END_TEST

START_TEST(good_amqp_urls_pass_the_check)
{
    static const char *const ok[] = {
        "amqp://u:p@127.0.0.1:5672/ordersuite",
        "amqp://u:p@localhost/",
        "amqps://u:p@broker.test:5671/v?cacertfile=/etc/hostname",
        "amqps://u:p@broker.test/v?cacertfile=/etc/hostname&certfile=/etc/hostname&keyfile=/etc/"
        "hostname",
    };
    for (size_t i = 0; i < N(ok); i++) {
        char err[MQ_ERR_LEN] = "";
        ck_assert_msg(mq_check_url(ok[i], err, sizeof(err)) == 0, "\"%s\": %s", ok[i], err);
    }
}
END_TEST

START_TEST(a_list_of_amqp_urls_parses_into_endpoints_of_one_user_and_vhost)
{
    char buf[512], err[MQ_ERR_LEN];
    mq__endpoint ep[MQ_MAX_ENDPOINTS];
    int n = -1;

    snprintf(buf, sizeof(buf),
             "amqp://u:p@n1:5672/v,amqp://u:p@n2:5673/v,amqps://u:p@n3/v?cacertfile=/ca.pem");
    ck_assert_msg(mq__parse_urls(buf, ep, MQ_MAX_ENDPOINTS, &n, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(ep[0].info.host, "n1");
    ck_assert_int_eq(ep[0].info.port, 5672);
    ck_assert_str_eq(ep[1].info.host, "n2");
    ck_assert_int_eq(ep[1].info.port, 5673);
    ck_assert_str_eq(ep[2].info.host, "n3");
    ck_assert_int_eq(ep[2].info.ssl, 1);
    ck_assert_str_eq(ep[2].tls.cacertfile, "/ca.pem");
    ck_assert_ptr_null(ep[1].tls.cacertfile);

    /* One URL is a list of one. */
    snprintf(buf, sizeof(buf), "amqp://u:p@n1/v");
    ck_assert_int_eq(mq__parse_urls(buf, ep, MQ_MAX_ENDPOINTS, &n, err, sizeof(err)), 0);
    ck_assert_int_eq(n, 1);

    /* A comma in a password is written %2C. */
    snprintf(buf, sizeof(buf), "amqp://u:a%%2Cb@n1/v,amqp://u:a%%2Cb@n2/v");
    ck_assert_msg(mq__parse_urls(buf, ep, MQ_MAX_ENDPOINTS, &n, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(ep[1].info.password, "a,b");
}
END_TEST

START_TEST(bad_lists_of_amqp_urls_are_refused_naming_the_endpoint)
{
    static const struct {
        const char *url, *err_has;
    } cases[] = {
        {"amqp://u:p@n1/v,", "endpoint 2 is empty"},
        {",amqp://u:p@n1/v", "endpoint 1 is empty"},
        {"amqp://u:p@n1/v,,amqp://u:p@n2/v", "endpoint 2 is empty"},
        {"amqp://u:p@n1/v,http://n2", "endpoint 2: not an AMQP URL"},
        {"amqp://u:p@n1/v,amqp://other:p@n2/v", "endpoint 2 names another user or vhost"},
        {"amqp://u:p@n1/v,amqp://u:p@n2/w", "endpoint 2 names another user or vhost"},
        {"amqp://u:p@n1/v,amqps://u:p@n2/v", "endpoint 2: amqps:// needs ?cacertfile"},
        {"amqp://u:p@h/v,amqp://u:p@h/v,amqp://u:p@h/v,amqp://u:p@h/v,amqp://u:p@h/v,"
         "amqp://u:p@h/v,amqp://u:p@h/v,amqp://u:p@h/v,amqp://u:p@h/v",
         "more than 8 endpoints"},
        {"amqp://u:p@n1/v,amqps://u:p@n2/v?cacertfile=/nonexistent/ca.pem",
         "cannot read /nonexistent/ca.pem"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        char err[MQ_ERR_LEN] = "";
        ck_assert_msg(mq_check_url(cases[i].url, err, sizeof(err)) == -1, "\"%s\" accepted",
                      cases[i].url);
        ck_assert_msg(strstr(err, cases[i].err_has), "\"%s\": %s", cases[i].url, err);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_mq");
    TCase *h = tcase_create("headers");
    TCase *e = tcase_create("event_type");
    TCase *u = tcase_create("url");

    tcase_add_test(h, integer_headers_are_read_from_every_amqp_integer_kind);
    tcase_add_test(h, a_u64_header_past_int64_max_reads_as_int64_max_not_negative);
    tcase_add_test(h, integer_headers_of_other_kinds_or_absent_are_not_read);
    tcase_add_test(h, string_headers_are_longstr_or_bytes_cut_to_the_buffer);
    tcase_add_test(h, published_headers_carry_the_schema_version_and_fill_the_table);
    tcase_add_test_raise_signal(h, too_many_headers_abort, SIGABRT);
    tcase_add_test(h, a_delivery_reads_its_headers_whatever_integer_kind_they_come_in);
    tcase_add_test(h, a_delivery_with_headers_out_of_range_or_of_the_wrong_kind_gets_the_defaults);
    tcase_add_test(h, a_delivery_without_headers_or_properties_is_empty_not_garbage);
    tcase_add_test(h, long_properties_are_cut_to_the_delivery_fields);
    tcase_add_test(e, event_type_follows_the_one_rule);
    tcase_add_test(e, a_delivery_reads_x_death_and_checks_its_type_property);
    tcase_add_test(u, amqp_urls_parse_into_host_port_vhost_and_tls_files);
    tcase_add_test(u, bad_amqp_urls_are_refused_with_the_reason);
    tcase_add_test(u, good_amqp_urls_pass_the_check);
    tcase_add_test(u, a_list_of_amqp_urls_parses_into_endpoints_of_one_user_and_vhost);
    tcase_add_test(u, bad_lists_of_amqp_urls_are_refused_naming_the_endpoint);
    suite_add_tcase(s, h);
    suite_add_tcase(s, e);
    suite_add_tcase(s, u);
    return tu_run(s);
}
