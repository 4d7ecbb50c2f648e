/*
 * check_units_contract_edges.c — the event codec's edges, field by field,
 * with no server: every field of every event given each wrong JSON type,
 * left out or null; strings at their cap and one past; numbers at their
 * bounds and one past; the lines' and skus' count at the cap; unknown
 * fields; causation_id; a string holding \u0000. (Round trips and the table
 * of bad bodies are in check_units_contracts.c.)
 */
#include "events.h"
#include "testutil.h"

#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OID "0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e01"
#define CID "11111111-2222-4333-8444-555555555555"

#define ORDER_OK                                                                                   \
    "{\"order_id\":\"" OID "\",\"customer_id\":\"c1\",\"customer_email\":\"a@b.io\","              \
    "\"currency\":\"EUR\",\"lines\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":2,"                      \
    "\"unit_price_minor\":890}],\"total_minor\":1780}"

/* The sample body of t (tu_sample_event) with its top-level member name
 * replaced by val (taken over), or removed when val is NULL; malloc'd. */
static char *sample_with(ev_type t, const char *name, cJSON *val)
{
    ev_event ev;
    char err[EV_ERR_LEN];
    char *j, *out;
    cJSON *root;

    tu_sample_event(t, &ev);
    j = ev_to_json(&ev, CID, err, sizeof(err));
    ck_assert_msg(j != NULL, "%s", err);
    root = cJSON_Parse(j);
    ck_assert_ptr_nonnull(root);
    if (val)
        ck_assert(cJSON_ReplaceItemInObjectCaseSensitive(root, name, val));
    else
        cJSON_DeleteItemFromObjectCaseSensitive(root, name);
    out = cJSON_PrintUnformatted(root);
    ck_assert_ptr_nonnull(out);
    cJSON_Delete(root);
    free(j);
    ev_free(&ev);
    return out;
}

/* Decodes body as t: 0 or -1 with err; frees what was decoded. */
static int decode(ev_type t, const char *body, size_t len, char *err, size_t errlen)
{
    ev_event ev;
    int rc = ev_from_json(t, body, len, &ev, NULL, err, errlen);
    if (rc == 0)
        ev_free(&ev);
    return rc;
}

/* The JSON kind of an item, to skip the replacement of the same kind. */
static int kind_of(const cJSON *it)
{
    int k = it->type & 0xff;
    return k == cJSON_False ? cJSON_True : k;
}

/* The optional members (absent, null or "" mean unset) of each event. */
static int optional(ev_type t, const char *name)
{
    if (t == EV_BILLING_INVOICED)
        return strcmp(name, "order_id") == 0 || strcmp(name, "sale_id") == 0 ||
               strcmp(name, "customer_id") == 0 || strcmp(name, "customer_email") == 0;
    if (t == EV_SALE_COMPLETED || t == EV_ORDER_CONFIRMED)
        return strcmp(name, "customer_email") == 0;
    return 0;
}

START_TEST(every_field_of_a_wrong_json_type_is_refused_naming_it)
{
    ev_type t = (ev_type)_i;
    ev_event ev;
    char err[EV_ERR_LEN], *j;
    cJSON *root;
    int tried = 0;

    tu_sample_event(t, &ev);
    j = ev_to_json(&ev, CID, err, sizeof(err));
    ck_assert_msg(j != NULL, "%s", err);
    root = cJSON_Parse(j);
    ck_assert_ptr_nonnull(root);
    for (const cJSON *f = root->child; f; f = f->next) {
        cJSON *wrong[] = {cJSON_CreateNumber(7), cJSON_CreateString("x"), cJSON_CreateTrue(),
                          cJSON_CreateArray(), cJSON_CreateObject()};
        for (size_t k = 0; k < sizeof(wrong) / sizeof(wrong[0]); k++) {
            char want[64], *body;
            if (kind_of(wrong[k]) == kind_of(f)) {
                cJSON_Delete(wrong[k]);
                continue;
            }
            body = sample_with(t, f->string, wrong[k]);
            snprintf(want, sizeof(want), "%s: ", f->string);
            err[0] = '\0';
            ck_assert_msg(decode(t, body, strlen(body), err, sizeof(err)) == -1, "%s: accepted %s",
                          ev_routing_key(t), body);
            ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s: %s gave \"%s\"",
                          ev_routing_key(t), body, err);
            free(body);
            tried++;
        }
    }
    ck_assert_int_ge(tried, 4);
    cJSON_Delete(root);
    free(j);
    ev_free(&ev);
}
END_TEST

/* A required field left out or null is "missing"; an optional one may be
 * left out (billing.invoiced then needs the other of order_id/sale_id). */
START_TEST(every_required_field_left_out_or_null_is_missing)
{
    ev_type t = (ev_type)_i;
    ev_event ev;
    char err[EV_ERR_LEN], *j;
    cJSON *root;

    tu_sample_event(t, &ev);
    j = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_msg(j != NULL, "%s", err);
    root = cJSON_Parse(j);
    ck_assert_ptr_nonnull(root);
    for (const cJSON *f = root->child; f; f = f->next) {
        for (int null = 0; null <= 1; null++) {
            char want[64], *body = sample_with(t, f->string, null ? cJSON_CreateNull() : NULL);
            int rc = decode(t, body, strlen(body), err, sizeof(err));
            if (optional(t, f->string) && strcmp(f->string, "order_id") != 0) {
                ck_assert_msg(rc == 0, "%s: optional %s refused: %s", ev_routing_key(t), f->string,
                              err);
            } else if (optional(t, f->string)) {
                ck_assert_int_eq(rc, -1);
                ck_assert_str_eq(err, "order_id: exactly one of order_id and sale_id must be set");
            } else {
                snprintf(want, sizeof(want), "%s: missing", f->string);
                ck_assert_msg(rc == -1, "%s: accepted without %s", ev_routing_key(t), f->string);
                ck_assert_str_eq(err, want);
            }
            free(body);
        }
    }
    cJSON_Delete(root);
    free(j);
    ev_free(&ev);
}
END_TEST

/* A string of n bytes: c repeated, then tail. */
static cJSON *str_of(size_t n, char c, const char *tail)
{
    size_t tl = strlen(tail);
    char *s = malloc(n + 1);
    cJSON *it;
    ck_assert(n >= tl);
    memset(s, c, n - tl);
    memcpy(s + n - tl, tail, tl + 1);
    it = cJSON_CreateString(s);
    free(s);
    return it;
}

/* Each string field at its stated cap (events.h) is taken whole; one byte
 * more is refused with the cap named, never cut to fit. */
START_TEST(strings_at_their_cap_pass_and_one_past_is_refused)
{
    static const struct {
        ev_type t;
        const char *name;
        size_t cap;
        char c;
        const char *tail;
    } cases[] = {
        {EV_ORDER_PLACED, "order_id", UUID_STR_LEN - 1, 'x', OID},
        {EV_ORDER_PLACED, "customer_id", EV_ID_MAX, 'c', ""},
        {EV_ORDER_PLACED, "customer_email", EV_EMAIL_MAX, 'a', "@b.io"},
        {EV_ORDER_PLACED, "currency", 3, 'E', ""},
        {EV_INVENTORY_LOW_STOCK, "sku", EV_SKU_MAX, 'S', ""},
        {EV_INVENTORY_RELEASED, "reason", EV_TEXT_MAX, 'r', ""},
        {EV_ORDER_EXPIRED, "reason", EV_TEXT_MAX, 'r', ""},
        {EV_ORDER_EXPIRED, "customer_email", EV_EMAIL_MAX, 'a', "@b.io"},
        {EV_BILLING_PAYMENT_FAILED, "reason", EV_TEXT_MAX, 'r', ""},
        {EV_SALE_COMPLETED, "store_id", EV_ID_MAX, 's', ""},
        {EV_BILLING_INVOICED, "customer_id", EV_ID_MAX, 'c', ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[EV_ERR_LEN], want[96], *body;
        size_t cap = cases[i].cap;
        /* at the cap (a UUID is exactly its length) */
        body = sample_with(cases[i].t, cases[i].name,
                           str_of(cap, cases[i].c, cap == 36 ? OID : cases[i].tail));
        ck_assert_msg(decode(cases[i].t, body, strlen(body), err, sizeof(err)) == 0,
                      "%s at %zu bytes: %s", cases[i].name, cap, err);
        free(body);
        /* one past */
        body = sample_with(cases[i].t, cases[i].name, str_of(cap + 1, cases[i].c, cases[i].tail));
        snprintf(want, sizeof(want), "%s: longer than %zu bytes", cases[i].name, cap);
        ck_assert_msg(decode(cases[i].t, body, strlen(body), err, sizeof(err)) == -1,
                      "%s at %zu bytes accepted", cases[i].name, cap + 1);
        ck_assert_str_eq(err, want);
        free(body);
    }
    /* paid_at: 32 bytes of which the longest valid time uses 30 */
    {
        char err[EV_ERR_LEN], *body;
        body = sample_with(EV_SALE_COMPLETED, "paid_at",
                           cJSON_CreateString("2026-11-23T19:42:26.123456789Z"));
        ck_assert_msg(decode(EV_SALE_COMPLETED, body, strlen(body), err, sizeof(err)) == 0, "%s",
                      err);
        free(body);
        body = sample_with(EV_SALE_COMPLETED, "paid_at",
                           cJSON_CreateString("2026-11-23T19:42:26.1234567890123Z"));
        ck_assert_int_eq(decode(EV_SALE_COMPLETED, body, strlen(body), err, sizeof(err)), -1);
        ck_assert_str_eq(err, "paid_at: longer than 32 bytes");
        free(body);
    }
}
END_TEST

/* An order of one line (sku A) with quantity q, unit price p, total q * p. */
static int one_line(const char *q, const char *p, const char *total, char *err, size_t errlen)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":\"a@b.io\","
             "\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":%s,"
             "\"unit_price_minor\":%s}],\"total_minor\":%s}",
             q, p, total);
    return decode(EV_ORDER_PLACED, body, strlen(body), err, errlen);
}

START_TEST(numbers_at_their_bounds_pass_and_one_past_is_refused)
{
    static const struct {
        const char *q, *p, *total;
        const char *err; /* NULL: accepted */
    } lines[] = {
        {"10000", "1", "10000", NULL},
        {"10001", "1", "10001", "lines[0].quantity: must be between 1 and 10000"},
        {"0", "1", "0", "lines[0].quantity: must be between 1 and 10000"},
        {"1", "1000000000", "1000000000", NULL},
        {"1", "1000000001", "1000000001",
         "lines[0].unit_price_minor: must be between 0 and 1000000000"},
        {"1", "0", "0", NULL},
        {"1", "-1", "0", "lines[0].unit_price_minor: must be between 0 and 1000000000"},
        /* JSON does not tell 1.0 or 1e0 from 1: they are the integer 1 */
        {"1.0", "1e0", "1", NULL},
        {"-0", "1", "0", "lines[0].quantity: must be between 1 and 10000"},
        /* JSON has no leading zeros: 01 is not a number (cJSON reads it as 1) */
        {"01", "1", "1", "body: a number with a leading zero"},
        {"1", "-00", "0", "body: a number with a leading zero"},
        {"1", "1", "0001", "body: a number with a leading zero"},
        {"1", "0.5e1", "5", NULL}, /* a zero before the point is no leading zero */
        {"1.000001", "1", "1", "lines[0].quantity: must be an integer"},
        {"1", "1", "-1", "total_minor: must be between 0 and 1000000000000000"},
        {"1", "1", "9007199254740994", "total_minor: must be an integer (at most 2^53)"},
        {"1", "1", "1000000000000001", "total_minor: must be between 0 and 1000000000000000"},
        {"1", "1", "null", "total_minor: missing"},
    };
    static const struct {
        ev_type t;
        const char *name;
        double v;
        const char *err;
    } fields[] = {
        {EV_INVENTORY_LOW_STOCK, "on_hand", 2147483647.0, NULL},
        {EV_INVENTORY_LOW_STOCK, "on_hand", 2147483648.0,
         "on_hand: must be between 0 and 2147483647"},
        {EV_INVENTORY_LOW_STOCK, "threshold", 2147483648.0,
         "threshold: must be between 0 and 2147483647"},
        {EV_INVENTORY_LOW_STOCK, "threshold", -1, "threshold: must be between 0 and 2147483647"},
        {EV_BILLING_INVOICED, "invoice_number", 4503599627370496.0, NULL},
        {EV_BILLING_INVOICED, "invoice_number", 4503599627370497.0,
         "invoice_number: must be between 1 and 4503599627370496"},
        {EV_BILLING_INVOICED, "invoice_number", 0.5, "invoice_number: must be an integer"},
        {EV_BILLING_PAYMENT_FAILED, "amount_minor", 1e15, NULL},
        {EV_BILLING_PAYMENT_FAILED, "amount_minor", 1e15 + 1,
         "amount_minor: must be between 0 and 1000000000000000"},
        {EV_BILLING_PAYMENT_FAILED, "amount_minor", -1,
         "amount_minor: must be between 0 and 1000000000000000"},
    };
    char err[EV_ERR_LEN];

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        int rc = one_line(lines[i].q, lines[i].p, lines[i].total, err, sizeof(err));
        if (!lines[i].err) {
            ck_assert_msg(rc == 0, "quantity %s, price %s: %s", lines[i].q, lines[i].p, err);
        } else {
            ck_assert_msg(rc == -1, "quantity %s, price %s, total %s accepted", lines[i].q,
                          lines[i].p, lines[i].total);
            ck_assert_msg(strncmp(err, lines[i].err, strlen(lines[i].err)) == 0,
                          "got \"%s\", want \"%s\"", err, lines[i].err);
        }
    }
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        char *body = sample_with(fields[i].t, fields[i].name, cJSON_CreateNumber(fields[i].v));
        int rc = decode(fields[i].t, body, strlen(body), err, sizeof(err));
        if (!fields[i].err) {
            ck_assert_msg(rc == 0, "%s: %s", body, err);
        } else {
            ck_assert_msg(rc == -1, "accepted %s", body);
            ck_assert_msg(strncmp(err, fields[i].err, strlen(fields[i].err)) == 0,
                          "got \"%s\", want \"%s\"", err, fields[i].err);
        }
        free(body);
    }
}
END_TEST

/* EV_LINES_MAX lines at the maxima add up to EV_TOTAL_MAX exactly; as many
 * skus_short pass, one more does not; no skus_short at all is allowed. */
START_TEST(lines_and_skus_at_their_cap_pass)
{
    size_t cap = 64 + (size_t)(EV_LINES_MAX + 1) * 80, pos;
    char *big = malloc(cap), err[EV_ERR_LEN];

    pos = (size_t)snprintf(big, cap,
                           "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\""
                           ":\"a@b.io\",\"currency\":\"EUR\",\"lines\":[");
    for (int i = 0; i < EV_LINES_MAX; i++)
        pos += (size_t)snprintf(big + pos, cap - pos,
                                "%s{\"sku\":\"S%d\",\"quantity\":%d,\"unit_price_minor\":%lld}",
                                i ? "," : "", i, EV_QTY_MAX, (long long)EV_PRICE_MAX);
    pos +=
        (size_t)snprintf(big + pos, cap - pos, "],\"total_minor\":%lld}", (long long)EV_TOTAL_MAX);
    ck_assert_msg(decode(EV_ORDER_PLACED, big, pos, err, sizeof(err)) == 0, "%s", err);

    for (int n = EV_LINES_MAX; n <= EV_LINES_MAX + 1; n++) {
        pos = (size_t)snprintf(big, cap,
                               "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\","
                               "\"reason\":\"short\",\"skus_short\":[");
        for (int i = 0; i < n; i++)
            pos += (size_t)snprintf(big + pos, cap - pos, "%s\"S%d\"", i ? "," : "", i);
        pos += (size_t)snprintf(big + pos, cap - pos, "]}");
        if (n == EV_LINES_MAX) {
            ck_assert_msg(decode(EV_INVENTORY_REJECTED, big, pos, err, sizeof(err)) == 0, "%s",
                          err);
        } else {
            ck_assert_int_eq(decode(EV_INVENTORY_REJECTED, big, pos, err, sizeof(err)), -1);
            ck_assert_str_eq(err, "skus_short: at most 100 entries");
        }
    }
    pos = (size_t)snprintf(big, cap,
                           "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\","
                           "\"reason\":\"short\",\"skus_short\":[]}");
    ck_assert_msg(decode(EV_INVENTORY_REJECTED, big, pos, err, sizeof(err)) == 0, "%s", err);
    free(big);
}
END_TEST

/* Tolerant reader: a member the contract does not name is ignored, at the
 * top and inside a line, whatever its type; but it is still JSON read
 * strictly (no duplicate, no deeper nesting than the shapes allow). */
START_TEST(unknown_fields_are_ignored_but_read_strictly)
{
    static const struct {
        const char *extra; /* inserted after the first { of ORDER_OK */
        const char *err;   /* NULL: accepted */
    } cases[] = {
        {"\"note\":\"hi\",", NULL},
        {"\"note\":{\"a\":[1,2]},", NULL},
        {"\"note\":null,\"v\":2,", NULL},
        {"\"note\":1,\"note\":2,", "note: duplicate key"},
        {"\"note\":{\"a\":{\"b\":{\"c\":{\"d\":1}}}},", "body: nested deeper than 4 levels"},
    };
    char body[1024], err[EV_ERR_LEN];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body), "{%s%s", cases[i].extra, ORDER_OK + 1);
        if (!cases[i].err) {
            ck_assert_msg(decode(EV_ORDER_PLACED, body, strlen(body), err, sizeof(err)) == 0,
                          "%s: %s", body, err);
        } else {
            ck_assert_msg(decode(EV_ORDER_PLACED, body, strlen(body), err, sizeof(err)) == -1,
                          "accepted %s", body);
            ck_assert_str_eq(err, cases[i].err);
        }
    }
    snprintf(body, sizeof(body),
             "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":\"a@b.io\","
             "\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
             "\"unit_price_minor\":1,\"colour\":\"red\"}],\"total_minor\":1}");
    ck_assert_msg(decode(EV_ORDER_PLACED, body, strlen(body), err, sizeof(err)) == 0, "%s", err);
}
END_TEST

/* JSON may spell a NUL byte as \u0000 inside a string; C strings stop at
 * it, so "<uuid>\u0000more" would be read as the UUID and "a@b.io\u0000x"
 * as a@b.io. Such a string is refused; a raw NUL byte in the body is too.
 * An escaped backslash before u0000 is plain text. */
START_TEST(an_escaped_nul_in_a_string_is_refused_not_cut)
{
    static const char *const bad_bodies[] = {
        "{\"order_id\":\"" OID "\\u0000more\",\"customer_id\":\"c\",\"customer_email\":"
        "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
        "\"unit_price_minor\":1}],\"total_minor\":1}",
        "{\"order_id\":\"" OID "\",\"customer_id\":\"c\\u0000\",\"customer_email\":"
        "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
        "\"unit_price_minor\":1}],\"total_minor\":1}",
        "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
        "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\\u0000B\",\"quantity\":1,"
        "\"unit_price_minor\":1}],\"total_minor\":1}",
        "{\"causation_id\":\"" CID "\\u0000\",\"order_id\":\"" OID "\",\"reason\":\"r\"}",
        "{\"order_id\":\"" OID "\",\"reason\":\"r\",\"note\":\"\\u0000\"}",
    };
    static const char raw[] = "{\"order_id\":\"" OID "\",\"reason\":\"a\0b\"}";
    static const char text[] = "{\"order_id\":\"" OID "\",\"reason\":\"a\\\\u0000b\"}";
    char err[EV_ERR_LEN];
    ev_event ev;

    for (size_t i = 0; i < sizeof(bad_bodies) / sizeof(bad_bodies[0]); i++) {
        ev_type t = strstr(bad_bodies[i], "reason") ? EV_INVENTORY_RELEASED : EV_ORDER_PLACED;
        err[0] = '\0';
        ck_assert_msg(decode(t, bad_bodies[i], strlen(bad_bodies[i]), err, sizeof(err)) == -1,
                      "accepted %s", bad_bodies[i]);
        ck_assert_msg(strstr(err, "\\u0000"), "case %zu: %s", i, err);
    }
    ck_assert_int_eq(decode(EV_INVENTORY_RELEASED, raw, sizeof(raw) - 1, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "body: not valid UTF-8 text");
    ck_assert_msg(
        ev_from_json(EV_INVENTORY_RELEASED, text, strlen(text), &ev, NULL, err, sizeof(err)) == 0,
        "%s", err);
    ck_assert_str_eq(ev.u.inventory_released.reason, "a\\u0000b");
    ev_free(&ev);
}
END_TEST

START_TEST(causation_id_is_a_whole_uuid_or_absent_or_null)
{
    char body[256], err[EV_ERR_LEN], cause[UUID_STR_LEN];
    ev_event ev;
    static const char *const bad_causes[] = {"1", "\"\"", "\"" CID "x\"", "[\"" CID "\"]",
                                             "\"" OID "\"}{"};
    snprintf(body, sizeof(body),
             "{\"causation_id\":null,\"order_id\":\"" OID "\",\"reason\":\"r\"}");
    ck_assert_msg(
        ev_from_json(EV_INVENTORY_RELEASED, body, strlen(body), &ev, cause, err, sizeof(err)) == 0,
        "%s", err);
    ck_assert_str_eq(cause, "");
    ev_free(&ev);
    for (size_t i = 0; i < sizeof(bad_causes) / sizeof(bad_causes[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"causation_id\":%s,\"order_id\":\"" OID "\",\"reason\":\"r\"}", bad_causes[i]);
        ck_assert_msg(ev_from_json(EV_INVENTORY_RELEASED, body, strlen(body), &ev, cause, err,
                                   sizeof(err)) == -1,
                      "accepted %s", body);
        ck_assert_str_eq(cause, "");
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("contract_edges");
    TCase *ed = tcase_create("edges");

    tcase_add_loop_test(ed, every_field_of_a_wrong_json_type_is_refused_naming_it, 0, EV__COUNT);
    tcase_add_loop_test(ed, every_required_field_left_out_or_null_is_missing, 0, EV__COUNT);
    tcase_add_test(ed, strings_at_their_cap_pass_and_one_past_is_refused);
    tcase_add_test(ed, numbers_at_their_bounds_pass_and_one_past_is_refused);
    tcase_add_test(ed, lines_and_skus_at_their_cap_pass);
    tcase_add_test(ed, unknown_fields_are_ignored_but_read_strictly);
    tcase_add_test(ed, an_escaped_nul_in_a_string_is_refused_not_cut);
    tcase_add_test(ed, causation_id_is_a_whole_uuid_or_absent_or_null);
    suite_add_tcase(s, ed);
    return tu_run(s);
}
