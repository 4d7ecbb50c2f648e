/*
 * check_units_upcast.c — versions of an event's schema (contracts/upcast.c),
 * with no server: which versions each event has, order.placed 1 and 2 read
 * as the same event, each written as its version says, an unknown version
 * refused with a reason that names it, and errors that name a field as the
 * body's version calls it.
 */
#include "events.h"
#include "testutil.h"
#include "upcast.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OID "0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e01"
#define CID "11111111-2222-4333-8444-555555555555"

/* An order.placed body with the total under `name` (value total). */
static char *placed_body(const char *name, long long total, const char *extra)
{
    static char buf[1024];
    snprintf(buf, sizeof(buf),
             "{\"order_id\":\"" OID "\",\"customer_id\":\"c-1\",\"customer_email\":\"a@b.io\","
             "\"currency\":\"EUR\",\"lines\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":2,"
             "\"unit_price_minor\":890}],\"%s\":%lld%s}",
             name, total, extra ? extra : "");
    return buf;
}

/* The member `name` of JSON text j as a number; -1 when absent. */
static double member(const char *j, const char *name)
{
    cJSON *o = cJSON_Parse(j);
    const cJSON *it;
    double v;
    ck_assert_ptr_nonnull(o);
    it = cJSON_GetObjectItemCaseSensitive(o, name);
    v = cJSON_IsNumber(it) ? it->valuedouble : -1;
    cJSON_Delete(o);
    return v;
}

START_TEST(order_placed_has_two_versions_and_every_other_event_one)
{
    char err[EV_ERR_LEN];
    for (int t = 0; t < EV__COUNT; t++) {
        int want = t == EV_ORDER_PLACED ? 2 : 1;
        ck_assert_int_eq(ev_version_latest((ev_type)t), want);
        for (int v = 1; v <= want; v++)
            ck_assert_int_eq(ev_version_check((ev_type)t, v, err, sizeof(err)), 0);
    }
    ck_assert_int_eq(ev_version_latest(EV__COUNT), 0);
}
END_TEST

/* The reason a reader dead-letters with names the version, the event and
 * the versions it knows. */
START_TEST(an_unknown_version_is_refused_naming_the_versions_known)
{
    char err[EV_ERR_LEN];
    ev_event ev;
    const char *body = placed_body("amount_minor", 1780, NULL);

    ck_assert_int_eq(ev_version_check(EV_ORDER_PLACED, 3, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "schema_version 3 is not supported for order.placed (want 1 to 2)");
    ck_assert_int_eq(ev_version_check(EV_SALE_COMPLETED, 2, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "schema_version 2 is not supported for sale.completed (want 1)");
    ck_assert_int_eq(ev_version_check(EV_ORDER_PLACED, 0, err, sizeof(err)), -1);
    ck_assert_int_eq(ev_version_check(EV_ORDER_PLACED, -1, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "schema_version -1 is not supported for order.placed (want 1 to 2)");
    ck_assert_int_eq(
        ev_from_json_version(EV_ORDER_PLACED, 3, body, strlen(body), &ev, NULL, err, sizeof(err)),
        -1);
    ck_assert_str_eq(err, "schema_version 3 is not supported for order.placed (want 1 to 2)");
}
END_TEST

/* The upcaster: a version 1 body is read as the event version 2 describes. */
START_TEST(a_version_1_order_is_upcast_to_version_2)
{
    char err[EV_ERR_LEN], cause[UUID_STR_LEN];
    ev_event v1, v2;
    char b1[1024], b2[1024];

    snprintf(b1, sizeof(b1), "%s", placed_body("total_minor", 1780, NULL));
    snprintf(b2, sizeof(b2), "%s", placed_body("amount_minor", 1780, NULL));
    ck_assert_msg(
        ev_from_json_version(EV_ORDER_PLACED, 1, b1, strlen(b1), &v1, cause, err, sizeof(err)) == 0,
        "%s", err);
    ck_assert_msg(
        ev_from_json_version(EV_ORDER_PLACED, 2, b2, strlen(b2), &v2, cause, err, sizeof(err)) == 0,
        "%s", err);
    ck_assert_int_eq(v1.u.order_placed.total, 1780);
    ck_assert_int_eq(v2.u.order_placed.total, 1780);
    ck_assert_str_eq(v1.u.order_placed.order_id, v2.u.order_placed.order_id);
    /* ev_from_json reads the version written when none is chosen: 1. */
    ev_free(&v2);
    ck_assert_int_eq(ev_from_json(EV_ORDER_PLACED, b1, strlen(b1), &v2, cause, err, sizeof(err)),
                     0);
    ck_assert_int_eq(v2.u.order_placed.total, 1780);
    ev_free(&v1);
    ev_free(&v2);
}
END_TEST

/* Each version has its own name for the total; the other is an unknown
 * field its readers skip, so it is not read for the total. */
START_TEST(each_version_reads_the_total_under_its_own_name_only)
{
    char err[EV_ERR_LEN];
    ev_event ev;
    /* Version 1 with a stray amount_minor (unknown to version 1): the total
     * is total_minor's, as a version 1 reader had it. */
    const char *b = placed_body("total_minor", 1780, ",\"amount_minor\":5");
    ck_assert_msg(
        ev_from_json_version(EV_ORDER_PLACED, 1, b, strlen(b), &ev, NULL, err, sizeof(err)) == 0,
        "%s", err);
    ck_assert_int_eq(ev.u.order_placed.total, 1780);
    ev_free(&ev);
    /* Version 2 without amount_minor is missing its total, whatever
     * total_minor says. */
    b = placed_body("total_minor", 1780, NULL);
    ck_assert_int_eq(
        ev_from_json_version(EV_ORDER_PLACED, 2, b, strlen(b), &ev, NULL, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "amount_minor: missing");
}
END_TEST

/* The error names the field as the sender's version does. */
START_TEST(errors_name_the_field_as_the_body_version_calls_it)
{
    char err[EV_ERR_LEN];
    ev_event ev;
    const char *b = placed_body("total_minor", 99, NULL);
    ck_assert_int_eq(
        ev_from_json_version(EV_ORDER_PLACED, 1, b, strlen(b), &ev, NULL, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "total_minor: 99 is not the sum of the lines (1780)");
    b = placed_body("amount_minor", 99, NULL);
    ck_assert_int_eq(
        ev_from_json_version(EV_ORDER_PLACED, 2, b, strlen(b), &ev, NULL, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "amount_minor: 99 is not the sum of the lines (1780)");
    b = placed_body("total_minor", -1, NULL);
    ck_assert_int_eq(
        ev_from_json_version(EV_ORDER_PLACED, 1, b, strlen(b), &ev, NULL, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "total_minor: must be between 0 and 1000000000000000");
    /* Errors about other fields are left as they are. */
    snprintf(err, sizeof(err), "lines[0].sku: missing");
    ev_name_as(EV_ORDER_PLACED, 1, err, sizeof(err));
    ck_assert_str_eq(err, "lines[0].sku: missing");
    snprintf(err, sizeof(err), "amount_minorx: odd");
    ev_name_as(EV_ORDER_PLACED, 1, err, sizeof(err));
    ck_assert_str_eq(err, "amount_minorx: odd");
}
END_TEST

/* A writer chooses the version: each is written under its own names and
 * read back, by a reader of either version, as the same event. */
START_TEST(a_writer_writes_the_version_it_chooses)
{
    char err[EV_ERR_LEN], cause[UUID_STR_LEN];
    ev_event ev, back;
    char *j1, *j2, *j0;

    tu_sample_event(EV_ORDER_PLACED, &ev);
    j1 = ev_to_json_version(&ev, CID, 1, err, sizeof(err));
    j2 = ev_to_json_version(&ev, CID, 2, err, sizeof(err));
    j0 = ev_to_json(&ev, CID, err, sizeof(err));
    ck_assert_ptr_nonnull(j1);
    ck_assert_ptr_nonnull(j2);
    ck_assert_str_eq(j0, j1); /* unchosen: EV_SCHEMA_VERSION, 1 */
    ck_assert(member(j1, "total_minor") == 2580 && member(j1, "amount_minor") == -1);
    ck_assert(member(j2, "amount_minor") == 2580 && member(j2, "total_minor") == -1);
    ck_assert_ptr_null(ev_to_json_version(&ev, CID, 3, err, sizeof(err)));
    ck_assert_str_eq(err, "schema_version 3 is not supported for order.placed (want 1 to 2)");
    ck_assert_int_eq(
        ev_from_json_version(EV_ORDER_PLACED, 2, j2, strlen(j2), &back, cause, err, sizeof(err)),
        0);
    ck_assert_str_eq(cause, CID);
    ck_assert_int_eq(back.u.order_placed.total, 2580);
    ck_assert_uint_eq(back.u.order_placed.lines.n, 2);
    ev_free(&back);
    /* An invalid event is refused naming the field as the version would. */
    ev.u.order_placed.total = 1;
    ck_assert_ptr_null(ev_to_json_version(&ev, NULL, 1, err, sizeof(err)));
    ck_assert_msg(strncmp(err, "total_minor: ", 13) == 0, "%s", err);
    ck_assert_ptr_null(ev_to_json_version(&ev, NULL, 2, err, sizeof(err)));
    ck_assert_msg(strncmp(err, "amount_minor: ", 14) == 0, "%s", err);
    free(j0);
    free(j1);
    free(j2);
    ev_free(&ev);
}
END_TEST

/* inventory.reserved keeps version 1's names: only order.placed moved. */
START_TEST(inventory_reserved_is_unchanged)
{
    char err[EV_ERR_LEN];
    ev_event ev;
    char *j;
    tu_sample_event(EV_INVENTORY_RESERVED, &ev);
    j = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(j);
    ck_assert(member(j, "total_minor") == 2580 && member(j, "amount_minor") == -1);
    free(j);
    ev_free(&ev);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("upcast");
    TCase *v = tcase_create("versions");
    TCase *u = tcase_create("upcast");

    tcase_add_test(v, order_placed_has_two_versions_and_every_other_event_one);
    tcase_add_test(v, an_unknown_version_is_refused_naming_the_versions_known);
    tcase_add_test(u, a_version_1_order_is_upcast_to_version_2);
    tcase_add_test(u, each_version_reads_the_total_under_its_own_name_only);
    tcase_add_test(u, errors_name_the_field_as_the_body_version_calls_it);
    tcase_add_test(u, a_writer_writes_the_version_it_chooses);
    tcase_add_test(u, inventory_reserved_is_unchanged);
    suite_add_tcase(s, v);
    suite_add_tcase(s, u);
    return tu_run(s);
}
