/*
 * check_units_common.c — the small common modules, with no server:
 * configuration from the environment (common/cfg.c), the log lines, the
 * utilities (util.h) and the metrics page; their everyday cases, then what
 * happens at and past each fixed-size buffer that metrics.h, cfg.h and
 * util.h state.
 */
#include "cfg.h"
#include "log.h"
#include "metrics.h"
#include "testutil.h"
#include "util.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void clear_env(void)
{
    unsetenv("T_PORT");
    unsetenv("T_PORT_FILE");
    unsetenv("T_URL");
    unsetenv("T_URL_FILE");
    unsetenv("T_FLAG");
}

START_TEST(long_values_are_range_checked_and_name_the_variable)
{
    static const struct {
        const char *val;
        int ok;
        long want;
        const char *err_has;
    } cases[] = {
        {"8080", 1, 8080, NULL},         {"1", 1, 1, NULL},
        {"65535", 1, 65535, NULL},       {"0", 0, 0, "out of range"},
        {"65536", 0, 0, "out of range"}, {"-5", 0, 0, "out of range"},
        {"80a", 0, 0, "not an integer"}, {"", 0, 0, "not an integer"},
        {" 80", 0, 0, "not an integer"}, {"99999999999999999999999", 0, 0, "not an integer"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        long port = -1;
        char err[CFG_ERR_LEN] = "";
        cfg_spec spec = {"T_PORT", CFG_LONG, "8080", 1, 65535, &port};
        int rc;
        clear_env();
        setenv("T_PORT", cases[i].val, 1);
        rc = cfg_load(&spec, 1, err, sizeof(err));
        if (cases[i].ok) {
            ck_assert_msg(rc == 0, "case %zu (%s): %s", i, cases[i].val, err);
            ck_assert_int_eq(port, cases[i].want);
        } else {
            ck_assert_msg(rc == -1, "case %zu (%s) accepted", i, cases[i].val);
            ck_assert_msg(strstr(err, "T_PORT") && strstr(err, cases[i].err_has),
                          "case %zu: error \"%s\"", i, err);
        }
    }
}
END_TEST

START_TEST(defaults_apply_and_required_variables_are_reported)
{
    long port = 0;
    char *url = NULL;
    char err[CFG_ERR_LEN];
    cfg_spec specs[] = {{"T_PORT", CFG_LONG, "8080", 1, 65535, &port},
                        {"T_URL", CFG_STR, NULL, 0, 0, &url}};
    clear_env();
    ck_assert_int_eq(cfg_load(specs, 2, err, sizeof(err)), -1);
    ck_assert_int_eq(port, 8080);
    ck_assert_msg(strstr(err, "T_URL is required"), "%s", err);
    setenv("T_URL", "amqp://x", 1);
    ck_assert_int_eq(cfg_load(specs, 2, err, sizeof(err)), 0);
    ck_assert_str_eq(url, "amqp://x");
    cfg_free(specs, 2);
    ck_assert_ptr_null(url);
    setenv("T_URL", "", 1);
    ck_assert_int_eq(cfg_load(specs, 2, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "T_URL is set but empty"), "%s", err);
}
END_TEST

START_TEST(file_variant_reads_a_secret_and_strips_the_newline)
{
    char path[] = "/tmp/ordersuite-cfg-XXXXXX";
    int fd = mkstemp(path);
    char *url = NULL;
    char err[CFG_ERR_LEN];
    cfg_spec spec = {"T_URL", CFG_STR, NULL, 0, 0, &url};

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "postgresql://u:s3cret@h/db\n", 27), 27);
    close(fd);
    clear_env();
    setenv("T_URL_FILE", path, 1);
    ck_assert_msg(cfg_load(&spec, 1, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(url, "postgresql://u:s3cret@h/db");
    cfg_free(&spec, 1);

    setenv("T_URL", "also", 1);
    ck_assert_int_eq(cfg_load(&spec, 1, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "both set"), "%s", err);

    unsetenv("T_URL");
    setenv("T_URL_FILE", "/nonexistent/secret", 1);
    ck_assert_int_eq(cfg_load(&spec, 1, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "T_URL_FILE") && strstr(err, "/nonexistent/secret"), "%s", err);
    unlink(path);
}
END_TEST

START_TEST(booleans_accept_the_usual_spellings_only)
{
    int flag = -1;
    char err[CFG_ERR_LEN];
    cfg_spec spec = {"T_FLAG", CFG_BOOL, "false", 0, 0, &flag};
    const char *yes[] = {"1", "true", "YES", "on"}, *no[] = {"0", "False", "no", "OFF"};
    for (int i = 0; i < 4; i++) {
        setenv("T_FLAG", yes[i], 1);
        ck_assert_int_eq(cfg_load(&spec, 1, err, sizeof(err)), 0);
        ck_assert_int_eq(flag, 1);
        setenv("T_FLAG", no[i], 1);
        ck_assert_int_eq(cfg_load(&spec, 1, err, sizeof(err)), 0);
        ck_assert_int_eq(flag, 0);
    }
    setenv("T_FLAG", "maybe", 1);
    ck_assert_int_eq(cfg_load(&spec, 1, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "T_FLAG") && strstr(err, "not a boolean"), "%s", err);
}
END_TEST

START_TEST(redact_hides_passwords_in_urls)
{
    char out[256];
    util_redact_url("amqp://user:pw@host:5672/", out, sizeof(out));
    ck_assert_str_eq(out, "amqp://user:***@host:5672/");
    util_redact_url("postgresql://u:p@ss@h/db", out, sizeof(out));
    ck_assert_str_eq(out, "postgresql://u:***@h/db");
    util_redact_url("postgresql://h/db", out, sizeof(out));
    ck_assert_str_eq(out, "postgresql://h/db");
    util_redact_url("amqp://user@host/", out, sizeof(out));
    ck_assert_str_eq(out, "amqp://user@host/");
}
END_TEST

START_TEST(backoff_doubles_up_to_the_cap_with_bounded_jitter)
{
    backoff b;
    int64_t nominal = 100;
    backoff_init(&b, 100, 1000);
    for (int i = 0; i < 8; i++) {
        int64_t d = backoff_next(&b);
        ck_assert_msg(d >= nominal * 3 / 4 && d <= nominal * 5 / 4, "step %d: %lld", i,
                      (long long)d);
        nominal = nominal * 2 > 1000 ? 1000 : nominal * 2;
    }
    backoff_reset(&b);
    ck_assert_int_le(backoff_next(&b), 125);
}
END_TEST

START_TEST(log_lines_are_json_with_escaping)
{
    char line[512];
    log_init("billing", LOG_INFO);
    log_format(line, sizeof(line), LOG_WARN, "c-1", "m-2", "quote \" back\\ nl\n ctl\x01");
    ck_assert_msg(strstr(line, "\"level\":\"warn\""), "%s", line);
    ck_assert_msg(strstr(line, "\"service\":\"billing\""), "%s", line);
    ck_assert_msg(strstr(line, "\"correlation_id\":\"c-1\""), "%s", line);
    ck_assert_msg(strstr(line, "\"message_id\":\"m-2\""), "%s", line);
    ck_assert_msg(strstr(line, "\"msg\":\"quote \\\" back\\\\ nl\\n ctl\\u0001\"}"), "%s", line);
    ck_assert_int_eq(line[strlen(line) - 1], '\n');
    ck_assert_int_eq(strncmp(line, "{\"ts\":\"", 7), 0);
    log_format(line, sizeof(line), LOG_INFO, NULL, NULL, "plain");
    ck_assert_ptr_null(strstr(line, "correlation_id"));
}
END_TEST

START_TEST(log_lines_are_cut_to_the_buffer_and_stay_terminated)
{
    char line[64];
    char big[400];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    size_t n = log_format(line, sizeof(line), LOG_ERROR, NULL, NULL, big);
    ck_assert_uint_lt(n, sizeof(line));
    ck_assert_uint_eq(strlen(line), n);
    ck_assert_int_eq(line[n - 1], '\n');
}
END_TEST

START_TEST(log_levels_parse)
{
    log_level l;
    ck_assert_int_eq(log_parse_level("debug", &l), 0);
    ck_assert_int_eq(l, LOG_DEBUG);
    ck_assert_int_eq(log_parse_level("error", &l), 0);
    ck_assert_int_eq(l, LOG_ERROR);
    ck_assert_int_eq(log_parse_level("loud", &l), -1);
}
END_TEST

/* A routing key comes from a message: whatever it holds must stay inside its
 * label value (Prometheus text format escapes \\, " and newline). */
START_TEST(metrics_escape_label_values_from_messages)
{
    metrics *m = metrics_new("svc\"x", "v\\1");
    char *page;
    ck_assert_ptr_nonnull(m);
    metrics_count(m, M_CONSUMED, "a\"b\\c\nevil_injected_total 99\n", 1);
    page = metrics_render(m, NULL);
    ck_assert_ptr_nonnull(page);
    ck_assert_msg(strstr(page, "\nevil_injected_total") == NULL, "a message added a series");
    ck_assert_msg(strstr(page, "ordersuite_messages_consumed_total{service=\"svc\\\"x\","
                               "routing_key=\"a\\\"b\\\\c\\nevil_injected_total 99\\n\"} 1\n"),
                  "label values not escaped");
    ck_assert_msg(strstr(page, "version=\"v\\\\1\"} 1\n"), "version not escaped");
    free(page);
    metrics_free(m);
}
END_TEST

/* A label value is UTF-8 on the page whatever bytes the routing key had:
 * valid multi-byte characters kept, every byte of a broken sequence (stray
 * continuation, truncated, overlong, surrogate, beyond U+10FFFF) a '?'. */
START_TEST(metrics_labels_stay_valid_utf8)
{
    metrics *m = metrics_new("svc", "v1");
    char *page;
    ck_assert_ptr_nonnull(m);
    metrics_count(m, M_CONSUMED, "caf\xc3\xa9.\xe2\x82\xac.\xf0\x9f\x8d\xb5", 1);
    metrics_count(m, M_CONSUMED,
                  "a\x80"
                  "b\xc3(\xe2\x82\xc0\xf5\x80\x80\x80\xc0\xaf\xed\xa0\x80\xff",
                  1);
    metrics_count(m, M_CONSUMED, "end\xe2\x82", 1);
    page = metrics_render(m, NULL);
    ck_assert_ptr_nonnull(page);
    ck_assert_msg(strstr(page, "routing_key=\"caf\xc3\xa9.\xe2\x82\xac.\xf0\x9f\x8d\xb5\"} 1\n"),
                  "valid UTF-8 not kept");
    ck_assert_msg(strstr(page, "routing_key=\"a?b?(?????????????\"} 1\n"),
                  "invalid UTF-8 not replaced:\n%s", page);
    ck_assert_msg(strstr(page, "routing_key=\"end??\"} 1\n"), "a truncated sequence not replaced");
    for (const unsigned char *p = (const unsigned char *)page; *p; p++)
        ck_assert_msg(*p < 0x80 || *p == 0xc3 || *p == 0xa9 || *p == 0xe2 || *p == 0x82 ||
                          *p == 0xac || *p == 0xf0 || *p == 0x9f || *p == 0x8d || *p == 0xb5,
                      "a byte 0x%02x of a broken sequence reached the page", *p);
    free(page);
    metrics_free(m);
}
END_TEST

/* A setting only some modes need is not read in the others: neither its
 * absence nor a broken NAME_FILE stops them, and the modes that read it
 * still require it. */
START_TEST(a_mode_reads_only_the_groups_it_needs)
{
    enum { RUN = 1, DECLARE = 2 };
    char *url = NULL, *db = NULL, err[CFG_ERR_LEN];
    const cfg_spec both[] = {{"T_URL", CFG_STR, NULL, 0, 0, &url}};
    const cfg_spec run[] = {{"T_DB", CFG_STR, NULL, 0, 0, &db}};
    const cfg_group g[] = {{both, 1, RUN | DECLARE}, {run, 1, RUN}};

    clear_env();
    unsetenv("T_DB");
    setenv("T_URL", "amqp://x", 1);
    ck_assert_msg(cfg_load_mode(g, 2, DECLARE, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(url, "amqp://x");
    ck_assert_ptr_null(db);
    cfg_free_groups(g, 2);

    setenv("T_DB_FILE", "/nonexistent/db-url", 1);
    ck_assert_msg(cfg_load_mode(g, 2, DECLARE, err, sizeof(err)) == 0, "%s", err);
    cfg_free_groups(g, 2);
    ck_assert_int_eq(cfg_load_mode(g, 2, RUN, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "T_DB_FILE"), "%s", err);
    cfg_free_groups(g, 2);

    unsetenv("T_DB_FILE");
    ck_assert_int_eq(cfg_load_mode(g, 2, RUN, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "T_DB is required"), "%s", err);
    cfg_free_groups(g, 2);
    setenv("T_DB", "postgresql://y", 1);
    ck_assert_msg(cfg_load_mode(g, 2, RUN, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(db, "postgresql://y");
    cfg_free_groups(g, 2);
    ck_assert_ptr_null(url);
    unsetenv("T_DB");
    clear_env();
}
END_TEST

/* ------------------------------------------------ the limits */

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

/* A wait that would end past the deadline is -1, a retry loop's cue to
 * give up; without a deadline every wait is a delay. */
START_TEST(a_backoff_gives_up_at_its_deadline)
{
    backoff b;
    backoff_init(&b, 100, 100);
    for (int i = 0; i < 3; i++)
        ck_assert_int_ge(backoff_next(&b), 75);
    backoff_until(&b, 50); /* a wait of at least 75 ms ends after it */
    ck_assert_int_eq(backoff_next(&b), -1);
    backoff_until(&b, 10000);
    ck_assert_int_le(backoff_next(&b), 125);
    backoff_until(&b, -1);
    ck_assert_int_ge(backoff_next(&b), 75);
}
END_TEST

/* SIGINT and SIGTERM set the flag given, and the process goes on. */
START_TEST(stop_signals_set_the_flag_given)
{
    static volatile sig_atomic_t a, b;
    util_stop_on_signals(&a);
    ck_assert_int_eq(raise(SIGTERM), 0);
    ck_assert_int_eq(a, 1);
    util_stop_on_signals(&b);
    ck_assert_int_eq(raise(SIGINT), 0);
    ck_assert_int_eq(b, 1);
}
END_TEST

/* The same for an atomic flag, and a later call of either kind takes them
 * over: a signal sets only the flag named last. */
START_TEST(stop_signals_set_the_atomic_flag_given)
{
    static atomic_int a, c;
    static volatile sig_atomic_t b;
    util_stop_on_signals_atomic(&a);
    ck_assert_int_eq(raise(SIGTERM), 0);
    ck_assert_int_eq(atomic_load(&a), 1);
    util_stop_on_signals(&b);
    atomic_store(&a, 0);
    ck_assert_int_eq(raise(SIGINT), 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(atomic_load(&a), 0);
    util_stop_on_signals_atomic(&c);
    b = 0;
    ck_assert_int_eq(raise(SIGTERM), 0);
    ck_assert_int_eq(atomic_load(&c), 1);
    ck_assert_int_eq(b, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_common");
    TCase *c = tcase_create("cfg");
    TCase *l = tcase_create("log");
    TCase *u = tcase_create("util");
    TCase *m = tcase_create("metrics");

    tcase_add_test(c, long_values_are_range_checked_and_name_the_variable);
    tcase_add_test(c, defaults_apply_and_required_variables_are_reported);
    tcase_add_test(c, file_variant_reads_a_secret_and_strips_the_newline);
    tcase_add_test(c, booleans_accept_the_usual_spellings_only);
    tcase_add_test(c, a_mode_reads_only_the_groups_it_needs);
    tcase_add_test(c, a_variable_name_too_long_for_its_file_form_is_an_error);
    tcase_add_test(l, log_lines_are_json_with_escaping);
    tcase_add_test(l, log_lines_are_cut_to_the_buffer_and_stay_terminated);
    tcase_add_test(l, log_levels_parse);
    tcase_add_test(u, redact_hides_passwords_in_urls);
    tcase_add_test(u, backoff_doubles_up_to_the_cap_with_bounded_jitter);
    tcase_add_test(u, a_buffer_takes_up_to_its_cap_and_refuses_a_chunk_past_it);
    tcase_add_test(u, a_body_over_the_cap_fails_the_transfer);
    tcase_add_test(u, a_backoff_gives_up_at_its_deadline);
    tcase_add_test(u, stop_signals_set_the_flag_given);
    tcase_add_test(u, stop_signals_set_the_atomic_flag_given);
    tcase_add_test(m, metrics_escape_label_values_from_messages);
    tcase_add_test(m, metrics_labels_stay_valid_utf8);
    tcase_add_test(m, a_routing_key_longer_than_a_label_is_one_counter);
    tcase_add_test(m, past_the_last_key_counts_go_to_other);
    suite_add_tcase(s, c);
    suite_add_tcase(s, l);
    suite_add_tcase(s, u);
    suite_add_tcase(s, m);
    return tu_run(s);
}
