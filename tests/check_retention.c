/*
 * check_retention.c — the inbox's retention (common/retention.h) in the real
 * billing, against the real RabbitMQ and PostgreSQL: rows past
 * INBOX_RETENTION_HOURS go, in batches, rows inside it stay, a copy of a
 * message whose row is inside the window is still absorbed, a row a
 * transaction holds is skipped rather than waited for, the figures are in
 * /metrics, and a window shorter than a message may come back stops the
 * service at start.
 *
 * The rows are billing.inbox rows the test writes as the owner with an old
 * processed_at: the window is days, the test cannot wait for it.
 */
#include "events.h"
#include "testutil.h"
#include "util.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define METRICS "http://127.0.0.1:19302"
#define OLD     4 /* rows 400 h old: past the default 336 h */
#define KEPT    2 /* rows 300 h old: inside it */

static tu_svc billing;
static char old_ids[OLD][UUID_STR_LEN], kept_ids[KEPT][UUID_STR_LEN];

/* Writes a billing.inbox row for id, processed `hours` ago. */
static void inbox_row(const char *id, const char *hours)
{
    const char *p[] = {id, hours};
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "INSERT INTO billing.inbox (message_id, routing_key, processed_at)"
                " VALUES ($1, 'sale.completed', now() - make_interval(hours => $2::int))",
                2, p));
}

static long inbox_has(const char *id)
{
    return tu_count("SELECT count(*) FROM billing.inbox WHERE message_id = $1", id);
}

static void setup(void)
{
    for (int i = 0; i < OLD; i++) {
        ck_assert_int_eq(uuid_v4(old_ids[i]), 0);
        inbox_row(old_ids[i], "400");
    }
    for (int i = 0; i < KEPT; i++) {
        ck_assert_int_eq(uuid_v4(kept_ids[i]), 0);
        inbox_row(kept_ids[i], "300");
    }
}

/* The sales published for billing also reach inventory's queue (and
 * email's, bound to sale.completed): none of them is another suite's to
 * apply (check_workers counts the stock), so they go. */
static void teardown(void)
{
    const char *const queues[] = {"inventory", "email", NULL};
    tu_svc_stop(&billing);
    tu_purge("TEST_AMQP_URL", queues);
}

/* billing with a round every second, two rows a batch, metrics on 19302. */
static void start_billing(void)
{
    const char *env[] = {"RETENTION_EVERY_S=1", "RETENTION_BATCH=2", "METRICS_PORT=19302", NULL};
    tu_svc_opts o = {.exe = "billing",
                     .amqp_env = "BILLING_AMQP_URL",
                     .db_env = "BILLING_DATABASE_URL",
                     .env = env,
                     .log = "retention-billing",
                     .ready_queue = "billing"};
    tu_svc_start(&billing, &o);
}

static int olds_gone(void *arg)
{
    int skip = arg ? *(int *)arg : -1;
    for (int i = 0; i < OLD; i++) {
        if (i != skip && inbox_has(old_ids[i]))
            return 0;
    }
    return 1;
}

/* A sale.completed body (malloc'd); its sale id is written to sale. */
static char *sale_body(char sale[UUID_STR_LEN])
{
    ev_event ev;
    char err[MQ_ERR_LEN], *body;
    tu_sale(&ev, "retention", "TEA-SENCHA", 1, 890);
    body = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_msg(body != NULL, "%s", err);
    memcpy(sale, ev.u.sale_completed.sale_id, UUID_STR_LEN);
    ev_free(&ev);
    return body;
}

/* Publishes body (of the sale sale) as sale.completed under message id mid. */
static void publish(const char *mid, const char *sale, const char *body)
{
    char err[MQ_ERR_LEN];
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "pos");
    mq_msg m = {0};
    m.routing_key = RK_SALE_COMPLETED;
    m.message_id = mid;
    m.correlation_id = sale;
    m.body = body;
    m.len = strlen(body);
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    mq_free(c);
}

/* A new sale published under message id mid; its id is written to sale. */
static void publish_sale(const char *mid, char sale[UUID_STR_LEN])
{
    char *body = sale_body(sale);
    publish(mid, sale, body);
    free(body);
}

static long invoices_for(const char *sale)
{
    return tu_count("SELECT count(*) FROM billing.invoices WHERE sale_id = $1", sale);
}

/* ----------------------------------------------------------------- tests */

START_TEST(rows_past_the_window_go_and_rows_inside_it_stay)
{
    double deleted;
    start_billing();
    ck_assert_msg(tu_poll(20000, olds_gone, NULL), "rows 400 h old are still in billing.inbox");
    for (int i = 0; i < KEPT; i++)
        ck_assert_msg(inbox_has(kept_ids[i]) == 1, "a row 300 h old was deleted");
    /* The figures: at least our rows deleted (two a batch), when, sizes. */
    deleted = tu_metric(METRICS, "ordersuite_inbox_deleted_rows_total{service=\"billing\"}");
    ck_assert_msg(deleted >= OLD, "ordersuite_inbox_deleted_rows_total %g", deleted);
    ck_assert(
        tu_metric(METRICS, "ordersuite_inbox_cleanup_timestamp_seconds{service=\"billing\"}") >
        (double)(util_wall_us() / 1000000 - 60));
    ck_assert(tu_metric(METRICS, "ordersuite_table_bytes{service=\"billing\",table=\"inbox\"}") >
              0);
    ck_assert(tu_metric(METRICS, "ordersuite_table_bytes{service=\"billing\",table=\"outbox\"}") >
              0);
    ck_assert(tu_metric(METRICS, "ordersuite_inbox_cleanup_failures_total{service=\"billing\"}") ==
              0);
    tu_svc_stop_ok(&billing);
}
END_TEST

/* A message whose id is in the inbox, 300 h after it was processed (inside
 * the window), is a duplicate still: acked, no second invoice. One whose row
 * is past the window would be processed again, which is why the window has a
 * lower bound: here a copy of a deleted row makes an invoice. */
START_TEST(a_redelivery_inside_the_window_is_still_absorbed)
{
    char sale[UUID_STR_LEN], again[UUID_STR_LEN], mid[UUID_STR_LEN], *body;
    start_billing();
    ck_assert(tu_poll(20000, olds_gone, NULL));
    /* A copy of a message processed 300 h ago. */
    publish_sale(kept_ids[0], sale);
    /* A new message, twice (the same message: id and body). */
    ck_assert_int_eq(uuid_v4(mid), 0);
    body = sale_body(again);
    publish(mid, again, body);
    tu_await_count(15000, "SELECT count(*) FROM billing.invoices WHERE sale_id = $1", again, 1);
    publish(mid, again, body);
    free(body);
    /* Past the window: the row is gone, the copy is new to billing. */
    {
        char past[UUID_STR_LEN];
        publish_sale(old_ids[0], past);
        tu_await_count(15000, "SELECT count(*) FROM billing.invoices WHERE sale_id = $1", past, 1);
    }
    /* Both duplicates were seen (counted) and had no effect. */
    {
        int64_t end = util_now_ms() + 15000;
        while (tu_metric(METRICS, "ordersuite_messages_duplicate_total{service=\"billing\","
                                  "routing_key=\"sale.completed\"}") < 2 &&
               util_now_ms() < end)
            util_sleep_ms(50, NULL);
    }
    ck_assert(tu_metric(METRICS, "ordersuite_messages_duplicate_total{service=\"billing\","
                                 "routing_key=\"sale.completed\"}") >= 2);
    ck_assert_int_eq(invoices_for(sale), 0);
    ck_assert_int_eq(invoices_for(again), 1);
    tu_svc_stop_ok(&billing);
}
END_TEST

/* An old row that another transaction holds (a consumer's, in life) is
 * skipped, not waited for: the others go, no round fails, and it goes once
 * the transaction ends. */
START_TEST(a_row_a_transaction_holds_is_skipped_not_waited_for)
{
    PGconn *c = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    const char *p[] = {old_ids[1]};
    PGresult *r;
    int held = 1;

    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    r = PQexec(c, "BEGIN");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexecParams(c, "SELECT 1 FROM billing.inbox WHERE message_id = $1 FOR UPDATE", 1, NULL, p,
                     NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    ck_assert_int_eq(PQntuples(r), 1);
    PQclear(r);
    start_billing();
    ck_assert_msg(tu_poll(20000, olds_gone, &held), "the rows nobody holds are still there");
    /* Two more rounds with the row held: none failed (none waited out its
     * lock_timeout), and the row is there. */
    {
        double t0 =
            tu_metric(METRICS, "ordersuite_inbox_cleanup_timestamp_seconds{service=\"billing\"}");
        int64_t end = util_now_ms() + 10000;
        while (
            tu_metric(METRICS, "ordersuite_inbox_cleanup_timestamp_seconds{service=\"billing\"}") <
                t0 + 2 &&
            util_now_ms() < end)
            util_sleep_ms(100, NULL);
    }
    ck_assert_int_eq(inbox_has(old_ids[1]), 1);
    ck_assert(tu_metric(METRICS, "ordersuite_inbox_cleanup_failures_total{service=\"billing\"}") ==
              0);
    r = PQexec(c, "COMMIT");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(c);
    ck_assert_msg(tu_poll(20000, olds_gone, NULL), "the row held before is still there");
    tu_svc_stop_ok(&billing);
}
END_TEST

/* The window must cover the way back: DLQ_REPLAY_HOURS plus the retry tiers
 * rounded up to the hour. Shorter stops billing at start, naming both. */
START_TEST(a_window_shorter_than_the_way_back_stops_the_service_at_start)
{
    /* The default tiers (71 s: 1 h); other tiers are check_units_retention's
     * (here they would leave their queues behind). */
    static const struct {
        const char *hours, *replay, *tiers;
        int ok;
    } cases[] = {
        {"168", "168", "1000,10000,60000", 0}, /* 168 + 1 = 169 */
        {"169", "168", "1000,10000,60000", 1},
        {"1", "0", "1000,10000,60000", 1}, /* the bound follows DLQ_REPLAY_HOURS */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char h[64], rp[64], t[96], log[600];
        const char *env[] = {h, rp, t, NULL};
        tu_svc_opts o = {.exe = "billing",
                         .amqp_env = "BILLING_AMQP_URL",
                         .db_env = "BILLING_DATABASE_URL",
                         .env = env,
                         .log = "retention-bound",
                         .ready_queue = "billing"};
        snprintf(h, sizeof(h), "INBOX_RETENTION_HOURS=%s", cases[i].hours);
        snprintf(rp, sizeof(rp), "DLQ_REPLAY_HOURS=%s", cases[i].replay);
        snprintf(t, sizeof(t), "RETRY_DELAYS_MS=%s", cases[i].tiers);
        snprintf(log, sizeof(log), "%s/log/tests/retention-bound.log", tu_env("ORDERSUITE_VAR"));
        unlink(log);
        if (cases[i].ok) {
            tu_svc_start(&billing, &o);
            tu_svc_stop_ok(&billing);
            continue;
        }
        tu_svc_spawn(&billing, &o);
        {
            int st = tu_svc_wait(&billing, 15000);
            ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "case %zu: status %d", i, st);
        }
        billing.pid = 0;
        ck_assert_msg(tu_file_count(log, "INBOX_RETENTION_HOURS", "DLQ_REPLAY_HOURS") >= 1,
                      "case %zu: no configuration error naming both variables in %s", i, log);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("retention");
    TCase *t = tcase_create("inbox");

    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, rows_past_the_window_go_and_rows_inside_it_stay);
    tcase_add_test(t, a_redelivery_inside_the_window_is_still_absorbed);
    tcase_add_test(t, a_row_a_transaction_holds_is_skipped_not_waited_for);
    tcase_add_test(t, a_window_shorter_than_the_way_back_stops_the_service_at_start);
    suite_add_tcase(s, t);
    return tu_run(s);
}
