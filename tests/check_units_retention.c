/*
 * check_units_retention.c — the inbox window's lower bound
 * (common/retention.h), with no server: DLQ_REPLAY_HOURS plus the retry
 * tiers rounded up to the hour, and the refusal that names them.
 */
#include "retention.h"
#include "testutil.h"
#include "worker.h"

#include <string.h>

START_TEST(the_bound_is_the_replay_promise_plus_the_tiers_rounded_up)
{
    static const struct {
        const char *tiers;
        long replay, want;
    } cases[] = {
        {"1000,10000,60000", 168, 169}, /* 71 s: one hour */
        {"1000,10000,60000", 0, 1},
        {"3600000", 0, 1},                 /* exactly an hour */
        {"3600001", 0, 2},                 /* a millisecond more: two */
        {"1000,3600000,14400000", 24, 30}, /* 5 h 0 min 1 s: 6 */
        {"", 168, 168},                    /* no tiers */
        {"86400000,86400001,86400002,86400003,86400004,86400005,86400006,86400007", 0, 193},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int ms[MQ_MAX_TIERS];
        char err[256];
        /* The last case's tiers are over worker_parse_tiers' 86400000: set by hand. */
        if (i == sizeof(cases) / sizeof(cases[0]) - 1) {
            for (int k = 0; k < MQ_MAX_TIERS; k++)
                ms[k] = 86400000 + k;
        } else {
            ck_assert_msg(worker_parse_tiers(cases[i].tiers, ms, err, sizeof(err)) == 0, "%s", err);
        }
        ck_assert_msg(retention_min_hours(ms, cases[i].replay) == cases[i].want,
                      "case %zu: %ld, want %ld", i, retention_min_hours(ms, cases[i].replay),
                      cases[i].want);
        ck_assert_int_eq(retention_check(cases[i].want, ms, cases[i].replay, err, sizeof(err)), 0);
        ck_assert_int_eq(retention_check(cases[i].want - 1, ms, cases[i].replay, err, sizeof(err)),
                         -1);
    }
}
END_TEST

START_TEST(the_refusal_names_the_variables_and_the_bound)
{
    int ms[MQ_MAX_TIERS];
    char err[512];
    ck_assert_int_eq(worker_parse_tiers("1000,10000,60000", ms, err, sizeof(err)), 0);
    ck_assert_int_eq(retention_check(24, ms, 168, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "INBOX_RETENTION_HOURS=24 is shorter than a message may come back: it"
                          " must be at least DLQ_REPLAY_HOURS (168) plus the retry tiers of"
                          " RETRY_DELAYS_MS rounded up to the hour (1), 169");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_retention");
    TCase *t = tcase_create("bound");
    tcase_add_test(t, the_bound_is_the_replay_promise_plus_the_tiers_rounded_up);
    tcase_add_test(t, the_refusal_names_the_variables_and_the_bound);
    suite_add_tcase(s, t);
    return tu_run(s);
}
