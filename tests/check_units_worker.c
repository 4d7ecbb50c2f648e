/*
 * check_units_worker.c — what is decided about a delivery, with no server:
 * the retry-tier choice (mq_settle_plan, up to the last of eight tiers) with
 * its configuration (worker_parse_tiers), the batch fallback
 * (worker_batch_fate_of), and the envelope a handler sees
 * (worker_envelope_of: whole UUIDs, type and app_id within their caps).
 * What a delivery says is read in check_units_mq.c. Runs first in make test.
 */
#include "mq.h"
#include "testutil.h"
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------ retry tiers */

START_TEST(retries_walk_the_tiers_then_go_to_the_dlq)
{
    static const char *const keys[] = {"order.placed", NULL};
    mq_topology t = {"billing", keys, {1000, 10000, 60000}};
    mq_plan p;
    static const char *const want[] = {"billing.retry.1000ms", "billing.retry.10000ms",
                                       "billing.retry.60000ms"};
    for (int a = 0; a < 3; a++) {
        mq_settle_plan(&t, a, MQ_RETRY, &p);
        ck_assert_int_eq(p.forward, 1);
        ck_assert_int_eq(p.tier, a);
        ck_assert_int_eq(p.attempt, a + 1);
        ck_assert_str_eq(p.exchange, MQ_RETRY_EXCHANGE);
        ck_assert_str_eq(p.routing_key, want[a]);
        ck_assert_ptr_null(p.reason);
    }
    mq_settle_plan(&t, 3, MQ_RETRY, &p);
    ck_assert_int_eq(p.forward, 1);
    ck_assert_int_eq(p.tier, -1);
    ck_assert_int_eq(p.attempt, 4);
    ck_assert_str_eq(p.exchange, MQ_DLX);
    ck_assert_str_eq(p.routing_key, "billing");
    ck_assert_str_eq(p.reason, "retries-exhausted");
}
END_TEST

START_TEST(the_last_of_eight_tiers_is_used_before_the_dlq)
{
    mq_topology t = {"email", NULL, {1, 2, 3, 4, 5, 6, 7, 86400000}};
    mq_plan p;
    mq_settle_plan(&t, 7, MQ_RETRY, &p);
    ck_assert_int_eq(p.tier, MQ_MAX_TIERS - 1);
    ck_assert_int_eq(p.attempt, 8);
    ck_assert_str_eq(p.routing_key, "email.retry.86400000ms");
    mq_settle_plan(&t, 8, MQ_RETRY, &p);
    ck_assert_int_eq(p.tier, -1);
    ck_assert_int_eq(p.attempt, 9);
    ck_assert_str_eq(p.exchange, MQ_DLX);
    ck_assert_str_eq(p.reason, "retries-exhausted");
    /* A count from a foreign header far past the tiers. */
    mq_settle_plan(&t, 999, MQ_RETRY, &p);
    ck_assert_int_eq(p.tier, -1);
    ck_assert_str_eq(p.exchange, MQ_DLX);
}
END_TEST

START_TEST(no_tiers_rejects_and_done_are_settled_without_a_tier)
{
    mq_topology none = {"billing", NULL, {0}};
    mq_topology t = {"billing", NULL, {1000}};
    mq_plan p;
    mq_settle_plan(&none, 0, MQ_RETRY, &p);
    ck_assert_str_eq(p.exchange, MQ_DLX);
    ck_assert_str_eq(p.reason, "retries-exhausted");
    ck_assert_int_eq(p.attempt, 1);

    mq_settle_plan(&t, 0, MQ_REJECT, &p);
    ck_assert_int_eq(p.forward, 1);
    ck_assert_int_eq(p.tier, -1);
    ck_assert_int_eq(p.attempt, 0); /* a rejection is no failed attempt */
    ck_assert_str_eq(p.exchange, MQ_DLX);
    ck_assert_str_eq(p.routing_key, "billing");
    ck_assert_str_eq(p.reason, "rejected");

    mq_settle_plan(&t, 2, MQ_DONE, &p);
    ck_assert_int_eq(p.forward, 0);
    ck_assert_ptr_null(p.exchange);
}
END_TEST

START_TEST(retry_delays_parse_up_to_eight_ascending_values)
{
    static const struct {
        const char *s;
        int n; /* -1: refused */
    } cases[] = {
        {"1000,10000,60000", 3},
        {"1", 1},
        {"86400000", 1},
        {"1,2,3,4,5,6,7,8", 8},
        {"", 0},
        {"1,2,3,4,5,6,7,8,9", -1}, /* nine */
        {"1000,1000", -1},         /* not ascending */
        {"2000,1000", -1},
        {"0", -1},
        {"-5", -1},
        {"86400001", -1},
        {"99999999999999999999", -1},
        {",1000", -1},
        {"1000,,2000", -1},
        {"1000;2000", -1},
        {"1e3", -1},
        {"abc", -1},
    };
    for (size_t i = 0; i < N(cases); i++) {
        int ms[MQ_MAX_TIERS];
        char err[MQ_ERR_LEN] = "";
        int rc;
        memset(ms, 0x55, sizeof(ms));
        rc = worker_parse_tiers(cases[i].s, ms, err, sizeof(err));
        if (cases[i].n < 0) {
            ck_assert_msg(rc == -1, "\"%s\" accepted", cases[i].s);
            ck_assert_msg(strstr(err, "RETRY_DELAYS_MS") && strstr(err, "up to 8 ascending"),
                          "\"%s\": %s", cases[i].s, err);
            continue;
        }
        ck_assert_msg(rc == 0, "\"%s\": %s", cases[i].s, err);
        for (int k = 0; k < MQ_MAX_TIERS; k++)
            ck_assert_msg((k < cases[i].n) == (ms[k] > 0), "\"%s\": ms[%d] = %d", cases[i].s, k,
                          ms[k]);
    }
    {
        int ms[MQ_MAX_TIERS];
        char err[MQ_ERR_LEN];
        ck_assert_int_eq(worker_parse_tiers("1000,10000,60000", ms, err, sizeof(err)), 0);
        ck_assert_int_eq(ms[0], 1000);
        ck_assert_int_eq(ms[1], 10000);
        ck_assert_int_eq(ms[2], 60000);
    }
}
END_TEST

/* ------------------------------------------------------- batch fallback */

START_TEST(a_batch_acks_only_what_it_committed)
{
    static const mq_result decoded[] = {MQ_DONE, MQ_RETRY, MQ_REJECT};
    for (size_t i = 0; i < N(decoded); i++) {
        for (int up = 0; up <= 1; up++) {
            for (int committed = 0; committed <= 1; committed++) {
                worker_batch_fate f = worker_batch_fate_of(decoded[i], up, committed);
                worker_batch_fate want = decoded[i] != MQ_DONE ? WORKER_BATCH_KEEP
                                         : !up                 ? WORKER_BATCH_RETRY
                                         : committed           ? WORKER_BATCH_ACK
                                                               : WORKER_BATCH_ALONE;
                ck_assert_msg(f == want, "decoded %d, db %d, committed %d: fate %d",
                              (int)decoded[i], up, committed, (int)f);
                /* the property: an ack needs a commit */
                ck_assert(f != WORKER_BATCH_ACK || (up && committed));
            }
        }
    }
}
END_TEST

/* ------------------------------------------------------ the envelope */

START_TEST(the_envelope_takes_only_whole_uuids)
{
    static const char *const bad[] = {"", "not-a-uuid", "0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f5",
                                      /* a UUID and more: it must not be cut down to the UUID */
                                      "0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f50-and-more",
                                      "0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f50 "};
    mq_delivery d;
    ev_envelope env;
    char err[MQ_ERR_LEN];

    memset(&d, 0, sizeof(d));
    strcpy(d.message_id, "0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f50");
    strcpy(d.correlation_id, "1b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f51");
    strcpy(d.routing_key, "order.placed");
    strcpy(d.app_id, "order-api");
    d.timestamp = 1700000000;
    d.schema_version = EV_SCHEMA_VERSION;
    d.attempt = 2;
    ck_assert_msg(worker_envelope_of(&d, &env, err, sizeof(err)) == MQ_DONE, "%s", err);
    ck_assert_str_eq(env.message_id, d.message_id);
    ck_assert_str_eq(env.correlation_id, d.correlation_id);
    ck_assert_str_eq(env.type, "order.placed");
    ck_assert_str_eq(env.app_id, "order-api");
    ck_assert_str_eq(env.causation_id, "");
    ck_assert_int_eq(env.timestamp, 1700000000);
    ck_assert_int_eq(env.attempt, 2);
    for (size_t i = 0; i < N(bad); i++) {
        snprintf(d.correlation_id, sizeof(d.correlation_id), "%s", bad[i]);
        err[0] = '\0';
        ck_assert_msg(worker_envelope_of(&d, &env, err, sizeof(err)) == MQ_REJECT,
                      "correlation_id \"%s\" taken as %s", bad[i], env.correlation_id);
        ck_assert_msg(strstr(err, "correlation_id"), "%s", err);
    }
}
END_TEST

/* The envelope's type and app_id hold sizeof - 1 bytes (events.h): a
 * routing key or app_id of that length is taken whole; one byte more is
 * refused (the message goes to the DLQ), never cut: a cut app_id would name
 * another sender in the records that keep it (email.messages.cause_app). */
START_TEST(the_envelope_refuses_a_type_or_app_id_past_its_cap)
{
    mq_delivery d;
    ev_envelope env;
    char err[MQ_ERR_LEN];
    const size_t key_max = sizeof(env.type) - 1, app_max = sizeof(env.app_id) - 1;

    memset(&d, 0, sizeof(d));
    strcpy(d.message_id, "0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f50");
    strcpy(d.correlation_id, "1b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f51");
    memset(d.routing_key, 'k', key_max);
    memset(d.app_id, 'a', app_max);
    ck_assert_msg(worker_envelope_of(&d, &env, err, sizeof(err)) == MQ_DONE, "%s", err);
    ck_assert_str_eq(env.type, d.routing_key);
    ck_assert_str_eq(env.app_id, d.app_id);

    d.routing_key[key_max] = 'k';
    err[0] = '\0';
    ck_assert_int_eq(worker_envelope_of(&d, &env, err, sizeof(err)), MQ_REJECT);
    ck_assert_msg(strstr(err, "routing key"), "%s", err);

    d.routing_key[key_max] = '\0';
    d.app_id[app_max] = 'a';
    err[0] = '\0';
    ck_assert_msg(worker_envelope_of(&d, &env, err, sizeof(err)) == MQ_REJECT,
                  "an app_id of %zu bytes taken as \"%s\"", app_max + 1, env.app_id);
    ck_assert_msg(strstr(err, "app_id"), "%s", err);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_worker");
    TCase *r = tcase_create("retry");
    TCase *b = tcase_create("batch");
    TCase *e = tcase_create("envelope");

    tcase_add_test(r, retries_walk_the_tiers_then_go_to_the_dlq);
    tcase_add_test(r, the_last_of_eight_tiers_is_used_before_the_dlq);
    tcase_add_test(r, no_tiers_rejects_and_done_are_settled_without_a_tier);
    tcase_add_test(r, retry_delays_parse_up_to_eight_ascending_values);
    tcase_add_test(b, a_batch_acks_only_what_it_committed);
    tcase_add_test(e, the_envelope_takes_only_whole_uuids);
    tcase_add_test(e, the_envelope_refuses_a_type_or_app_id_past_its_cap);
    suite_add_tcase(s, r);
    suite_add_tcase(s, b);
    suite_add_tcase(s, e);
    return tu_run(s);
}
