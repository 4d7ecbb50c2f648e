/*
 * check_units_contracts.c — the event codec (contracts/), with no server.
 *
 * Round trip of every event type, then a table of bad bodies per event, each
 * of which must be refused with an error that names the right field. The
 * edges field by field are in check_units_contract_edges.c.
 */
#include "events.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OID "0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e01"
#define SID "5d0c9f7e-8a21-4b3c-b6d4-7e1f2a3b4c5d"
#define IID "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
#define CID "11111111-2222-4333-8444-555555555555"

START_TEST(every_event_round_trips)
{
    ev_type t = (ev_type)_i;
    ev_event a, b;
    char err[EV_ERR_LEN], cause[UUID_STR_LEN];
    char *j1, *j2;
    ev_type back;

    tu_sample_event(t, &a);
    j1 = ev_to_json(&a, CID, err, sizeof(err));
    ck_assert_msg(j1 != NULL, "%s: %s", ev_routing_key(t), err);
    ck_assert_msg(ev_from_json(t, j1, strlen(j1), &b, cause, err, sizeof(err)) == 0, "%s: %s",
                  ev_routing_key(t), err);
    ck_assert_str_eq(cause, CID);
    j2 = ev_to_json(&b, cause, err, sizeof(err));
    ck_assert_ptr_nonnull(j2);
    ck_assert_str_eq(j1, j2);
    ck_assert_int_eq(ev_type_from_key(ev_routing_key(t), &back), 0);
    ck_assert_int_eq(back, t);
    if (t == EV_ORDER_EXPIRED) {
        ck_assert_str_eq(ev_routing_key(t), "order.expired");
        ck_assert_str_eq(b.u.order_expired.order_id, OID);
        ck_assert_str_eq(b.u.order_expired.reason, "no final status within 900 s");
    }
    if (t == EV_ORDER_CONFIRMED) {
        ck_assert_str_eq(ev_routing_key(t), "order.confirmed");
        ck_assert_str_eq(b.u.order_confirmed.invoice_id, IID);
        ck_assert_int_eq(b.u.order_confirmed.invoice_number, 1001);
        ck_assert_int_eq(b.u.order_confirmed.tax, 412);
    }
    if (t == EV_ORDER_PLACED) {
        ck_assert_uint_eq(b.u.order_placed.lines.n, 2);
        ck_assert_str_eq(b.u.order_placed.lines.items[1].sku, "MUG-WHITE");
        ck_assert_int_eq(b.u.order_placed.total, 2580);
        ck_assert_str_eq(b.u.order_placed.customer_email, "ada@example.com");
    }
    free(j1);
    free(j2);
    ev_free(&a);
    ev_free(&b);
}
END_TEST

START_TEST(optional_fields_may_be_left_out)
{
    ev_event a, b;
    char err[EV_ERR_LEN];
    char *j;
    tu_sample_event(EV_SALE_COMPLETED, &a);
    j = ev_to_json(&a, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(j);
    ck_assert_ptr_null(strstr(j, "customer_email"));
    ck_assert_ptr_null(strstr(j, "causation_id"));
    ck_assert_int_eq(ev_from_json(EV_SALE_COMPLETED, j, strlen(j), &b, NULL, err, sizeof(err)), 0);
    ck_assert_str_eq(b.u.sale_completed.customer_email, "");
    free(j);
    ev_free(&a);
    ev_free(&b);
}
END_TEST

START_TEST(encoder_refuses_an_invalid_event)
{
    ev_event a;
    char err[EV_ERR_LEN];
    tu_sample_event(EV_ORDER_PLACED, &a);
    a.u.order_placed.lines.items[0].quantity = 0;
    ck_assert_ptr_null(ev_to_json(&a, NULL, err, sizeof(err)));
    ck_assert_str_eq(err, "lines[0].quantity: must be between 1 and 10000");
    ev_free(&a);
}
END_TEST

START_TEST(unknown_routing_keys_are_refused)
{
    ev_type t;
    ck_assert_int_eq(ev_type_from_key("order.cancelled", &t), -1);
    ck_assert_int_eq(ev_type_from_key("ORDER.PLACED", &t), -1);
}
END_TEST

#define ORDER_OK                                                                                   \
    "{\"order_id\":\"" OID "\",\"customer_id\":\"c1\",\"customer_email\":\"a@b.io\","              \
    "\"currency\":\"EUR\",\"lines\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":2,"                      \
    "\"unit_price_minor\":890}],\"total_minor\":1780}"

static const struct {
    ev_type type;
    const char *body;
    const char *err; /* the error must start with this */
} bad[] = {
    /* envelope-level JSON problems */
    {EV_ORDER_PLACED, "", "body: malformed JSON"},
    {EV_ORDER_PLACED, "{\"order_id\":", "body: malformed JSON"},
    {EV_ORDER_PLACED, ORDER_OK " trailing", "body: malformed JSON"},
    {EV_ORDER_PLACED, "[1,2]", "body: must be a JSON object"},
    {EV_ORDER_PLACED, "\"text\"", "body: must be a JSON object"},
    {EV_ORDER_PLACED,
     "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
     "body: nested deeper"},
    {EV_ORDER_PLACED, "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":1}}}}}", "body: nested deeper"},
    {EV_ORDER_PLACED, "{\"order_id\":\"\xff\xfe\"}", "body: not valid UTF-8"},
    {EV_ORDER_PLACED, "{\"order_id\":\"\xc0\xaf\"}", "body: not valid UTF-8"},
    {EV_ORDER_PLACED, "{\"order_id\":\"\xed\xa0\x80\"}", "body: not valid UTF-8"},
    {EV_ORDER_PLACED, "{\"x\":\"\xe2\x82\"}", "body: not valid UTF-8"},
    /* order.placed fields */
    {EV_ORDER_PLACED, "{}", "order_id: missing"},
    {EV_ORDER_PLACED, "{\"order_id\":\"" OID "\",\"order_id\":\"" OID "\"}",
     "order_id: duplicate key"},
    {EV_ORDER_PLACED, "{\"order_id\":42}", "order_id: must be a string"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"not-a-uuid\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":1}",
     "order_id: must be a UUID"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"nobody\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":1}",
     "customer_email: must be an email"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"eur\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":1}",
     "currency: must be an ISO 4217"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[],\"total_minor\":0}",
     "lines: must have 1 to 100 entries"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":{},\"total_minor\":0}",
     "lines: must be an array"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":0,"
     "\"unit_price_minor\":1}],\"total_minor\":0}",
     "lines[0].quantity: must be between 1 and 10000"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":-3,"
     "\"unit_price_minor\":1}],\"total_minor\":0}",
     "lines[0].quantity: must be between"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1.5,"
     "\"unit_price_minor\":1}],\"total_minor\":0}",
     "lines[0].quantity: must be an integer"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":"
     "1e400,\"unit_price_minor\":1}],\"total_minor\":0}",
     "lines[0].quantity: must be an integer"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":"
     "\"2\",\"unit_price_minor\":1}],\"total_minor\":0}",
     "lines[0].quantity: must be an integer"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}, {\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":2}",
     "lines[1].sku: A appears in an earlier line"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"a b\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":1}",
     "lines[0].sku: must be 1-32"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":1}",
     "lines[0].sku: missing"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"sku\":\"B\","
     "\"quantity\":1,\"unit_price_minor\":1}],\"total_minor\":1}",
     "lines[0].sku: duplicate key"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":99}",
     "total_minor: 99 is not the sum of the lines (1)"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":1}],\"total_minor\":123456789012345678901234567890}",
     "total_minor: must be an integer"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\":"
     "\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":\"A\",\"quantity\":1,"
     "\"unit_price_minor\":-1}],\"total_minor\":-1}",
     "lines[0].unit_price_minor: must be between"},
    {EV_ORDER_PLACED,
     "{\"order_id\":\"" OID "\",\"customer_id\":\""
     "c'; DROP TABLE x;--"
     "\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"lines\":[{\"sku\":"
     "\"A\",\"quantity\":1,\"unit_price_minor\":1}],\"total_minor\":1}",
     "customer_id: must be 1-64"},
    {EV_ORDER_PLACED, "{\"ORDER_ID\":\"" OID "\"}", "order_id: missing"},
    {EV_ORDER_PLACED, "{\"causation_id\":\"nope\"}", "causation_id: must be a UUID"},
    /* other events */
    {EV_INVENTORY_REJECTED,
     "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\","
     "\"reason\":\"\",\"skus_short\":[]}",
     "reason: missing"},
    {EV_INVENTORY_REJECTED,
     "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\","
     "\"reason\":\"line\\nbreak\",\"skus_short\":[]}",
     "reason: must be non-empty printable text"},
    {EV_INVENTORY_REJECTED,
     "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\","
     "\"reason\":\"short\",\"skus_short\":[1]}",
     "skus_short[0]: must be a string"},
    {EV_INVENTORY_RELEASED, "{\"order_id\":\"" OID "\"}", "reason: missing"},
    {EV_ORDER_EXPIRED, "{\"order_id\":\"" OID "\",\"reason\":\"late\"}", "customer_email: missing"},
    {EV_ORDER_EXPIRED, "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\",\"reason\":\"\"}",
     "reason: missing"},
    {EV_ORDER_EXPIRED, "{\"order_id\":\"nope\",\"customer_email\":\"a@b.io\",\"reason\":\"late\"}",
     "order_id: must be a UUID"},
    {EV_ORDER_EXPIRED, "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\",\"reason\":7}",
     "reason: must be a string"},
    {EV_ORDER_CONFIRMED,
     "{\"order_id\":\"" OID "\",\"invoice_number\":1,\"currency\":\"EUR\","
     "\"amount_minor\":1,\"tax_minor\":0}",
     "invoice_id: missing"},
    {EV_ORDER_CONFIRMED,
     "{\"order_id\":\"" OID "\",\"invoice_id\":\"" IID "\",\"invoice_number\":0,"
     "\"currency\":\"EUR\",\"amount_minor\":1,\"tax_minor\":0}",
     "invoice_number: must be between 1"},
    {EV_ORDER_CONFIRMED,
     "{\"order_id\":\"" OID "\",\"invoice_id\":\"" IID "\",\"invoice_number\":3,"
     "\"currency\":\"EUR\",\"amount_minor\":1,\"tax_minor\":2}",
     "tax_minor: larger than amount_minor"},
    {EV_INVENTORY_LOW_STOCK, "{\"sku\":\"A\",\"on_hand\":-1,\"threshold\":1}",
     "on_hand: must be between 0 and"},
    {EV_INVENTORY_LOW_STOCK, "{\"sku\":\"A\",\"on_hand\":true,\"threshold\":1}",
     "on_hand: must be an integer"},
    {EV_BILLING_INVOICED,
     "{\"invoice_id\":\"" IID "\",\"invoice_number\":1,\"currency\":"
     "\"EUR\",\"amount_minor\":1,\"tax_minor\":0}",
     "order_id: exactly one of order_id and sale_id"},
    {EV_BILLING_INVOICED,
     "{\"invoice_id\":\"" IID "\",\"invoice_number\":1,\"order_id\":\"" OID "\",\"sale_id\":\"" SID
     "\",\"currency\":\"EUR\",\"amount_minor\":1,"
     "\"tax_minor\":0}",
     "order_id: exactly one of order_id and sale_id"},
    {EV_BILLING_INVOICED,
     "{\"invoice_id\":\"" IID "\",\"invoice_number\":0,\"order_id\":\"" OID
     "\",\"currency\":\"EUR\",\"amount_minor\":1,\"tax_minor\":0}",
     "invoice_number: must be between 1"},
    {EV_BILLING_INVOICED,
     "{\"invoice_id\":\"" IID "\",\"invoice_number\":3,\"order_id\":\"" OID
     "\",\"currency\":\"EUR\",\"amount_minor\":1,\"tax_minor\":2}",
     "tax_minor: larger than amount_minor"},
    {EV_BILLING_PAYMENT_FAILED,
     "{\"order_id\":\"" OID "\",\"customer_email\":\"a@b.io\","
     "\"currency\":\"EUR\",\"amount_minor\":1}",
     "reason: missing"},
    {EV_SALE_COMPLETED,
     "{\"sale_id\":\"" SID "\",\"store_id\":\"S1\",\"currency\":\"EUR\","
     "\"lines\":[{\"sku\":\"A\",\"quantity\":1,\"unit_price_minor\":1}],"
     "\"total_minor\":1,\"paid_at\":\"yesterday\"}",
     "paid_at: must be an RFC 3339"},
    {EV_SALE_COMPLETED,
     "{\"sale_id\":\"" SID "\",\"store_id\":\"S1\",\"currency\":\"EUR\","
     "\"lines\":[{\"sku\":\"A\",\"quantity\":1,\"unit_price_minor\":1}],"
     "\"total_minor\":1,\"paid_at\":\"2026-13-01T00:00:00Z\"}",
     "paid_at: must be an RFC 3339"},
    {EV_SALE_COMPLETED,
     "{\"sale_id\":\"" SID "\",\"store_id\":\"S1\",\"currency\":\"EUR\","
     "\"lines\":[{\"sku\":\"A\",\"quantity\":1,\"unit_price_minor\":1}],"
     "\"total_minor\":1,\"paid_at\":\"2026-11-01T00:00:00Z\","
     "\"customer_email\":\"x\"}",
     "customer_email: must be an email"},
    {EV_SALE_COMPLETED,
     "{\"sale_id\":\"" SID "\",\"store_id\":\""
     "0123456789012345678901234567"
     "890123456789012345678901234567890123456789\"}",
     "store_id: longer than 64 bytes"},
};

START_TEST(bad_bodies_are_refused_naming_the_field)
{
    ev_event ev;
    char err[EV_ERR_LEN] = "";
    const char *body = bad[_i].body;
    int rc = ev_from_json(bad[_i].type, body, strlen(body), &ev, NULL, err, sizeof(err));
    ck_assert_msg(rc == -1, "case %d accepted: %s", _i, body);
    ck_assert_msg(strncmp(err, bad[_i].err, strlen(bad[_i].err)) == 0,
                  "case %d: got \"%s\", want \"%s...\"", _i, err, bad[_i].err);
}
END_TEST

START_TEST(the_valid_order_used_by_the_table_is_accepted)
{
    ev_event ev;
    char err[EV_ERR_LEN];
    ck_assert_msg(
        ev_from_json(EV_ORDER_PLACED, ORDER_OK, strlen(ORDER_OK), &ev, NULL, err, sizeof(err)) == 0,
        "%s", err);
    ev_free(&ev);
}
END_TEST

START_TEST(bodies_are_read_only_up_to_their_length)
{
    /* The body is not NUL-terminated: whatever follows must not be read. */
    char buf[sizeof(ORDER_OK) + 16];
    ev_event ev;
    char err[EV_ERR_LEN];
    size_t n = strlen(ORDER_OK);
    memcpy(buf, ORDER_OK, n);
    memset(buf + n, '}', sizeof(buf) - n);
    ck_assert_msg(ev_from_json(EV_ORDER_PLACED, buf, n, &ev, NULL, err, sizeof(err)) == 0, "%s",
                  err);
    ev_free(&ev);
    ck_assert_int_eq(ev_from_json(EV_ORDER_PLACED, buf, n - 1, &ev, NULL, err, sizeof(err)), -1);
}
END_TEST

START_TEST(huge_bodies_and_too_many_lines_are_refused)
{
    ev_event ev;
    char err[EV_ERR_LEN];
    size_t n = EV_BODY_MAX + 1, pos;
    char *big = malloc(n);
    memset(big, ' ', n);
    ck_assert_int_eq(ev_from_json(EV_ORDER_PLACED, big, n, &ev, NULL, err, sizeof(err)), -1);
    ck_assert_msg(strncmp(err, "body: larger than", 17) == 0, "%s", err);

    /* 101 lines */
    pos = (size_t)sprintf(big, "{\"order_id\":\"" OID "\",\"customer_id\":\"c\",\"customer_email\""
                               ":\"a@b.io\",\"currency\":\"EUR\",\"lines\":[");
    for (int i = 0; i <= EV_LINES_MAX; i++)
        pos +=
            (size_t)sprintf(big + pos, "%s{\"sku\":\"S%d\",\"quantity\":1,\"unit_price_minor\":1}",
                            i ? "," : "", i);
    pos += (size_t)sprintf(big + pos, "],\"total_minor\":101}");
    ck_assert_int_eq(ev_from_json(EV_ORDER_PLACED, big, pos, &ev, NULL, err, sizeof(err)), -1);
    ck_assert_msg(strcmp(err, "lines: must have 1 to 100 entries") == 0, "%s", err);
    free(big);
}
END_TEST

START_TEST(utf8_validation)
{
    ck_assert(ev_utf8_valid("plain", 5));
    ck_assert(ev_utf8_valid("\xc3\xa9t\xc3\xa9", 6)); /* été */
    ck_assert(ev_utf8_valid("\xf0\x9f\x8d\xb5", 4));  /* U+1F375 */
    ck_assert(!ev_utf8_valid("\xf0\x9f\x8d", 3));     /* truncated */
    ck_assert(!ev_utf8_valid("\xe0\x80\xaf", 3));     /* overlong */
    ck_assert(!ev_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    ck_assert(!ev_utf8_valid("\x80", 1));             /* lone continuation */
}
END_TEST

START_TEST(uuids)
{
    char u[UUID_STR_LEN], v[UUID_STR_LEN];
    ck_assert_int_eq(uuid_v4(u), 0);
    ck_assert_int_eq(uuid_v4(v), 0);
    ck_assert(uuid_valid(u));
    ck_assert_str_ne(u, v);
    ck_assert_int_eq(u[14], '4');
    ck_assert(strchr("89ab", u[19]) != NULL);
    ck_assert(uuid_valid(OID));
    ck_assert(!uuid_valid("0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e0"));
    ck_assert(!uuid_valid("0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e0g"));
    ck_assert(!uuid_valid("0b6e4a8c3f1d-4c2a-9a57-2f8d1c6b9e01-"));
    ck_assert(!uuid_valid(NULL));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("contracts");
    TCase *rt = tcase_create("round_trip");
    TCase *bd = tcase_create("bad_input");

    tcase_add_loop_test(rt, every_event_round_trips, 0, EV__COUNT);
    tcase_add_test(rt, optional_fields_may_be_left_out);
    tcase_add_test(rt, encoder_refuses_an_invalid_event);
    tcase_add_test(rt, unknown_routing_keys_are_refused);
    tcase_add_test(rt, uuids);
    tcase_add_loop_test(bd, bad_bodies_are_refused_naming_the_field, 0,
                        (int)(sizeof(bad) / sizeof(bad[0])));
    tcase_add_test(bd, the_valid_order_used_by_the_table_is_accepted);
    tcase_add_test(bd, bodies_are_read_only_up_to_their_length);
    tcase_add_test(bd, huge_bodies_and_too_many_lines_are_refused);
    tcase_add_test(bd, utf8_validation);
    suite_add_tcase(s, rt);
    suite_add_tcase(s, bd);
    return tu_run(s);
}
