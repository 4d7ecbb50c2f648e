/*
 * check_units_rpc.c — the pure parts of request/reply: the availability
 * contract (contracts/availability.c), the request's expiration and queue
 * name (common/mq_rpc_serve.c) and the availability path of order-api
 * (services/order-api/availability.c). No server.
 */
#include "api.h"
#include "availability.h"
#include "mq_rpc.h"
#include "testutil.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(sku_form_is_the_catalogs)
{
    static const struct {
        const char *s;
        int ok;
    } t[] = {{"TEA-SENCHA", 1},
             {"A", 1},
             {"0-9", 1},
             {"", 0},
             {"-A", 0},
             {"tea", 0},
             {"A B", 0},
             {"A/B", 0},
             {"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", 1},
             {"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456", 0}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        ck_assert_msg(av_sku_valid(t[i].s) == t[i].ok, "%s", t[i].s);
}
END_TEST

START_TEST(request_round_trips_and_is_strict)
{
    static const char *const bad[] = {
        "",
        "[]",
        "{}",
        "{\"sku\":1}",
        "{\"sku\":\"tea\"}",
        "{\"sku\":\"TEA\",\"x\":1}",
        "{\"sku\":\"TEA\",\"sku\":\"COF\"}",
        "{\"sku\":\"TEA\"",
    };
    char *j, sku[EV_SKU_MAX + 1], err[256];
    ck_assert_int_eq(av_request_encode("TEA-SENCHA", &j), 0);
    ck_assert_int_eq(av_request_decode(j, strlen(j), sku, err, sizeof(err)), 0);
    ck_assert_str_eq(sku, "TEA-SENCHA");
    free(j);
    ck_assert_int_eq(av_request_encode("bad sku", &j), -1);
    ck_assert_ptr_null(j);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(av_request_decode(bad[i], strlen(bad[i]), sku, err, sizeof(err)) == -1,
                      "accepted %s", bad[i]);
    /* not NUL-terminated: only len bytes are read */
    ck_assert_int_eq(av_request_decode("{\"sku\":\"A\"}garbage", 11, sku, err, sizeof(err)), 0);
    ck_assert_str_eq(sku, "A");
}
END_TEST

START_TEST(reply_round_trips_and_is_strict)
{
    static const char *const bad[] = {
        "{\"sku\":\"A\"}",
        "{\"sku\":\"A\",\"found\":1,\"available\":2}",
        "{\"sku\":\"A\",\"found\":true}",
        "{\"sku\":\"A\",\"found\":true,\"available\":-1}",
        "{\"sku\":\"A\",\"found\":true,\"available\":1.5}",
        "{\"sku\":\"A\",\"found\":true,\"available\":\"3\"}",
        "{\"sku\":\"A\",\"found\":false,\"available\":0}",
        "{\"sku\":\"A\",\"found\":true,\"available\":1,\"more\":1}",
        "{\"error\":\"other\"}",
        "{\"error\":1}",
        "{\"error\":\"unavailable\",\"sku\":\"A\"}",
    };
    av_reply r = {"COF-DECAF", 1, 8, AV_OK}, got;
    char *j, err[256];
    ck_assert_int_eq(av_reply_encode(&r, &j), 0);
    ck_assert_int_eq(av_reply_decode(j, strlen(j), &got, err, sizeof(err)), 0);
    ck_assert_str_eq(got.sku, "COF-DECAF");
    ck_assert_int_eq(got.found, 1);
    ck_assert_int_eq(got.available, 8);
    free(j);
    r = (av_reply){"NOPE", 0, 0, AV_OK};
    ck_assert_int_eq(av_reply_encode(&r, &j), 0);
    ck_assert_str_eq(j, "{\"sku\":\"NOPE\",\"found\":false}");
    ck_assert_int_eq(av_reply_decode(j, strlen(j), &got, err, sizeof(err)), 0);
    ck_assert_int_eq(got.found, 0);
    free(j);
    r = (av_reply){"A", 1, -1, AV_OK};
    ck_assert_int_eq(av_reply_encode(&r, &j), -1);
    /* the error replies: inventory could not answer, or could not read */
    ck_assert_int_eq(av_error_encode(AV_ERR_UNAVAILABLE, &j), 0);
    ck_assert_str_eq(j, "{\"error\":\"unavailable\"}");
    ck_assert_int_eq(av_reply_decode(j, strlen(j), &got, err, sizeof(err)), 0);
    ck_assert_int_eq(got.error, AV_ERR_UNAVAILABLE);
    free(j);
    ck_assert_int_eq(av_error_encode(AV_ERR_BAD_REQUEST, &j), 0);
    ck_assert_int_eq(av_reply_decode(j, strlen(j), &got, err, sizeof(err)), 0);
    ck_assert_int_eq(got.error, AV_ERR_BAD_REQUEST);
    free(j);
    ck_assert_int_eq(av_error_encode(AV_OK, &j), -1);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(av_reply_decode(bad[i], strlen(bad[i]), &got, err, sizeof(err)) == -1,
                      "accepted %s", bad[i]);
}
END_TEST

START_TEST(expiration_is_the_deadline_in_ms)
{
    char out[16], q[MQ_NAME_LEN];
    ck_assert_int_eq(mq_rpc_expiration(1500, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "1500");
    ck_assert_int_eq(mq_rpc_expiration(600000, out, sizeof(out)), 0);
    ck_assert_int_eq(mq_rpc_expiration(0, out, sizeof(out)), -1);
    ck_assert_int_eq(mq_rpc_expiration(600001, out, sizeof(out)), -1);
    ck_assert_int_eq(mq_rpc_expiration(-5, out, sizeof(out)), -1);
    ck_assert_int_eq(mq_rpc_expiration(1500, out, 4), -1); /* does not fit */
    ck_assert_int_eq(mq_rpc_queue_name("inventory", q, sizeof(q)), 0);
    ck_assert_str_eq(q, "inventory.requests");
    ck_assert_int_eq(mq_rpc_queue_name("inventory", q, 10), -1);
}
END_TEST

START_TEST(availability_path_holds_one_sku)
{
    static const struct {
        const char *rest, *sku; /* sku NULL: refused */
    } t[] = {{"TEA-SENCHA/availability", "TEA-SENCHA"},
             {"A/availability", "A"},
             {"/availability", NULL},
             {"availability", NULL},
             {"TEA-SENCHA", NULL},
             {"TEA-SENCHA/availability/", NULL},
             {"TEA/SENCHA/availability", NULL},
             {"tea/availability", NULL},
             {"TEA-SENCHA/availabilityx", NULL},
             {"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456/availability", NULL}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char sku[EV_SKU_MAX + 1];
        int rc = api_availability_sku(t[i].rest, sku);
        ck_assert_msg(rc == (t[i].sku ? 0 : -1), "%s: %d", t[i].rest, rc);
        if (t[i].sku)
            ck_assert_str_eq(sku, t[i].sku);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_rpc");
    TCase *tc = tcase_create("contract");
    tcase_add_test(tc, sku_form_is_the_catalogs);
    tcase_add_test(tc, request_round_trips_and_is_strict);
    tcase_add_test(tc, reply_round_trips_and_is_strict);
    tcase_add_test(tc, expiration_is_the_deadline_in_ms);
    tcase_add_test(tc, availability_path_holds_one_sku);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
