/*
 * check_units_common.c — the limits of the small common modules, with no
 * server: what happens at and past each fixed-size buffer that metrics.h,
 * cfg.h and util.h state. (tests/check_cfg.c has their everyday cases.)
 */
#include "cfg.h"
#include "metrics.h"
#include "testutil.h"
#include "util.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

START_TEST(a_buffer_takes_up_to_its_cap_and_refuses_a_chunk_past_it)
{
    util_buf b = {NULL, 0, 8};
    char data[] = "abcdefghij";
    ck_assert_uint_eq(util_buf_collect(data, 1, 5, &b), 5);
    ck_assert_str_eq(b.p, "abcde");
    /* Three more fill it exactly; one more byte is refused, whole. */
    ck_assert_uint_eq(util_buf_collect(data + 5, 3, 1, &b), 3);
    ck_assert_uint_eq(util_buf_collect(data, 1, 1, &b), 0);
    ck_assert_uint_eq(b.len, 8);
    ck_assert_str_eq(b.p, "abcdefgh");
    /* A chunk whose size * n does not fit a size_t is refused, too. */
    ck_assert_uint_eq(util_buf_collect(data, SIZE_MAX / 2, 3, &b), 0);
    ck_assert_uint_eq(b.len, 8);
    free(b.p);
}
END_TEST

/* As libcurl's write callback (file://, no server): a body over the cap
 * fails the transfer, so the caller sees an error and not a cut body. */
START_TEST(a_body_over_the_cap_fails_the_transfer)
{
    char path[] = "/tmp/check_units_common.XXXXXX", url[64];
    util_buf b = {NULL, 0, 100};
    int fd = mkstemp(path);
    CURL *c;
    ck_assert_int_ge(fd, 0);
    for (int i = 0; i < 101; i++)
        ck_assert_int_eq(write(fd, "x", 1), 1);
    close(fd);
    snprintf(url, sizeof(url), "file://%s", path);
    for (size_t cap = 100; cap <= 101; cap++) {
        CURLcode want = cap == 100 ? CURLE_WRITE_ERROR : CURLE_OK;
        c = curl_easy_init();
        ck_assert_ptr_nonnull(c);
        b.cap = cap;
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, util_buf_collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        ck_assert_int_eq(curl_easy_perform(c), want);
        curl_easy_cleanup(c);
        if (cap == 100)
            ck_assert_uint_le(b.len, 100); /* what came before the chunk it refused */
        else
            ck_assert_str_eq(b.p + 100, "x");
        free(b.p);
        b.p = NULL;
        b.len = 0;
    }
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_common");
    TCase *m = tcase_create("metrics");
    TCase *c = tcase_create("cfg");
    TCase *u = tcase_create("util");

    tcase_add_test(m, a_routing_key_longer_than_a_label_is_one_counter);
    tcase_add_test(m, past_the_last_key_counts_go_to_other);
    suite_add_tcase(s, m);
    tcase_add_test(c, a_variable_name_too_long_for_its_file_form_is_an_error);
    suite_add_tcase(s, c);
    tcase_add_test(u, a_buffer_takes_up_to_its_cap_and_refuses_a_chunk_past_it);
    tcase_add_test(u, a_body_over_the_cap_fails_the_transfer);
    suite_add_tcase(s, u);
    return tu_run(s);
}
