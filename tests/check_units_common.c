/*
 * check_units_common.c — the limits of the small common modules, with no
 * server: what happens at and past each fixed-size buffer that metrics.h,
 * cfg.h and util.h state. (tests/check_cfg.c has their everyday cases.)
 */
#include "cfg.h"
#include "metrics.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(a_routing_key_longer_than_a_label_is_one_counter)
{
    metrics *m = metrics_new("svc", "1");
    char key[METRICS_LABEL_MAX + 40], other[METRICS_LABEL_MAX + 40];
    char *text;
    int series = 0;

    ck_assert_ptr_nonnull(m);
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    for (int i = 0; i < 3; i++)
        metrics_count(m, M_DEAD_LETTERED, key, 1);
    ck_assert_int_eq(metrics_get(m, M_DEAD_LETTERED, key), 3);
    /* Keys equal in their first METRICS_LABEL_MAX - 1 bytes share it. */
    memcpy(other, key, sizeof(key));
    other[sizeof(other) - 2] = 'x';
    metrics_count(m, M_DEAD_LETTERED, other, 1);
    ck_assert_int_eq(metrics_get(m, M_DEAD_LETTERED, key), 4);
    /* Every series once: a label set twice makes Prometheus drop the scrape. */
    text = metrics_render(m, NULL);
    ck_assert_ptr_nonnull(text);
    for (const char *p = text; (p = strstr(p, "ordersuite_messages_dead_lettered_total{")); p++)
        series++;
    ck_assert_int_eq(series, 1);
    free(text);
    metrics_free(m);
}
END_TEST

START_TEST(past_the_last_key_counts_go_to_other)
{
    metrics *m = metrics_new("svc", "1");
    char key[32];
    ck_assert_ptr_nonnull(m);
    for (int i = 0; i < METRICS_MAX_KEYS + 5; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        metrics_count(m, M_CONSUMED, key, 1);
    }
    ck_assert_int_eq(metrics_get(m, M_CONSUMED, "k0"), 1);
    ck_assert_int_eq(metrics_get(m, M_CONSUMED, "other"), 6);
    metrics_free(m);
}
END_TEST

START_TEST(a_variable_name_too_long_for_its_file_form_is_an_error)
{
    char name[CFG_NAME_MAX + 2], *out = NULL, err[CFG_ERR_LEN] = "";
    memset(name, 'V', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    /* NAME_FILE cut to fit would look up another variable, or none. */
    ck_assert_int_eq(cfg_raw(name, &out, err, sizeof(err)), -1);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err, "too long"), "%s", err);
    name[CFG_NAME_MAX] = '\0'; /* the longest that works */
    setenv(name, "v", 1);
    ck_assert_int_eq(cfg_raw(name, &out, err, sizeof(err)), 1);
    ck_assert_str_eq(out, "v");
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_common");
    TCase *m = tcase_create("metrics");
    TCase *c = tcase_create("cfg");

    tcase_add_test(m, a_routing_key_longer_than_a_label_is_one_counter);
    tcase_add_test(m, past_the_last_key_counts_go_to_other);
    suite_add_tcase(s, m);
    tcase_add_test(c, a_variable_name_too_long_for_its_file_form_is_an_error);
    suite_add_tcase(s, c);
    return tu_run(s);
}
