/*
 * check_dlq.c — the DLQ tool (build/bin/dlq) against the real broker, with
 * the real inventory worker producing the dead letters and consuming the
 * replays.
 *
 * The worker dead-letters an undecodable order.placed and one with an
 * unknown schema version. The tool lists and shows them (leaving them in
 * place), a dry run changes nothing, a replay by id sends one back (and the
 * worker, still refusing it, dead-letters it again), purge needs --yes.
 * Finally a good order.placed is dead-lettered by hand, replayed, and reserved.
 */
#include "events.h"
#include "mq.h"
#include "testutil.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static tu_svc worker;

/* Runs the dlq tool with argv as the administrator; returns its exit
 * status and its stdout (caller frees). */
static int dlq(char **out, char *const *argv)
{
    const tu_svc_opts o = {.exe = "dlq", .amqp_env = "TEST_AMQP_URL", .argv = argv};
    return tu_tool(&o, out);
}

/* DLQ(&out, "list"): dlq with these arguments. */
#define DLQ(out, ...) dlq(out, (char *[]){"dlq", __VA_ARGS__, NULL})

static long depth(const char *q)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_dlq");
    char err[MQ_ERR_LEN];
    long n = mq_queue_depth(c, q, err, sizeof(err));
    mq_free(c);
    return n;
}

static int dlq_has(void *arg)
{
    return depth("inventory.dlq") == *(long *)arg;
}

static void publish(mq_conn *c, const char *exchange, const char *key, const char *id,
                    const char *corr, const char *body, int version)
{
    char err[MQ_ERR_LEN];
    mq_msg m = {0};
    m.exchange = exchange;
    m.routing_key = key;
    m.message_id = id;
    m.correlation_id = corr;
    m.type = RK_ORDER_PLACED;
    m.body = body;
    m.len = strlen(body);
    m.schema_version = version;
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
}

static void setup(void)
{
    const tu_svc_opts o = {.exe = "inventory",
                           .amqp_env = "INVENTORY_AMQP_URL",
                           .db_env = "INVENTORY_DATABASE_URL",
                           .log = "dlq-inventory",
                           .ready_queue = "inventory"};
    char *out;
    ck_assert_int_eq(DLQ(&out, "purge", "inventory", "--yes"), 0);
    free(out);
    {
        /* This suite owns the inventory queue while it runs: start empty. */
        mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_dlq");
        char err[MQ_ERR_LEN];
        ck_assert_int_ge(mq_purge(c, "inventory", err, sizeof(err)), 0);
        mq_free(c);
    }
    tu_svc_spawn(&worker, &o);
}

static void teardown(void)
{
    tu_svc_stop_ok(&worker);
}

/* The worker's log shows message id arg rejected twice. */
static int rejected_twice(void *arg)
{
    return tu_file_count(worker.log, arg, "rejected") >= 2;
}

START_TEST(list_show_replay_and_purge)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_dlq");
    char bad1[UUID_STR_LEN], bad2[UUID_STR_LEN], corr[UUID_STR_LEN], *out;
    long two = 2;

    uuid_v4(bad1);
    uuid_v4(bad2);
    uuid_v4(corr);
    publish(c, NULL, RK_ORDER_PLACED, bad1, corr, "{\"order_id\": tru", 0);
    publish(c, NULL, RK_ORDER_PLACED, bad2, corr, "{}", 7);
    ck_assert_msg(tu_poll(20000, dlq_has, &two), "dead letters did not arrive: %ld",
                  depth("inventory.dlq"));

    ck_assert_int_eq(DLQ(&out, "list"), 0);
    ck_assert_msg(strstr(out, "inventory.dlq") && strstr(out, " 2\n"), "%s", out);
    free(out);

    ck_assert_int_eq(DLQ(&out, "show", "inventory"), 0);
    ck_assert_msg(strstr(out, bad1) && strstr(out, bad2), "%s", out);
    ck_assert_msg(strstr(out, "reason         rejected"), "%s", out);
    ck_assert_msg(strstr(out, "routing_key    order.placed"), "%s", out);
    ck_assert_msg(strstr(out, corr), "%s", out);
    ck_assert_msg(strstr(out, "undecodable: body: malformed JSON"), "%s", out);
    ck_assert_msg(strstr(out, "schema_version 7 is not supported"), "%s", out);
    free(out);
    /* show leaves them. It reads them with basic.get and gives them back
     * with a requeueing nack, which a quorum queue applies through its log:
     * the depth can read 0 for a moment after show exits (seen in a
     * fresh-clone CI), so wait for the two to be back. */
    ck_assert_msg(tu_poll(20000, dlq_has, &two), "show did not leave them: %ld",
                  depth("inventory.dlq"));

    ck_assert_int_eq(DLQ(&out, "replay", "inventory", "--all", "--dry-run"), 0);
    ck_assert_msg(strstr(out, "would replay 2"), "%s", out);
    free(out);
    ck_assert_msg(tu_poll(20000, dlq_has, &two), "a dry run did not leave them: %ld",
                  depth("inventory.dlq"));

    /* Replayed by id: back through the worker, which still refuses it. */
    ck_assert_int_eq(DLQ(&out, "replay", "inventory", "--id", bad2), 0);
    ck_assert_msg(strstr(out, "replayed 1 message"), "%s", out);
    free(out);
    /* The worker saw it a second time and dead-lettered it again. */
    ck_assert_msg(tu_poll(20000, rejected_twice, bad2), "the replay did not reach the worker");
    ck_assert(tu_poll(20000, dlq_has, &two));

    ck_assert_int_eq(
        DLQ(&out, "replay", "inventory", "--id", "00000000-0000-4000-8000-000000000000"), 1);
    free(out);
    ck_assert_int_eq(DLQ(&out, "purge", "inventory"), 2);
    free(out);
    ck_assert_msg(tu_poll(20000, dlq_has, &two), "a purge without --yes did not leave them: %ld",
                  depth("inventory.dlq"));
    ck_assert_int_eq(DLQ(&out, "purge", "inventory", "--yes"), 0);
    ck_assert_msg(strstr(out, "purged 2"), "%s", out);
    free(out);
    ck_assert_int_eq(depth("inventory.dlq"), 0);
    ck_assert_int_eq(DLQ(&out, "frobnicate"), 2);
    free(out);
    mq_free(c);
}
END_TEST

static int reserved(void *arg)
{
    const char *p[] = {arg};
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                      "SELECT count(*) FROM inventory.reservations WHERE order_id = $1", 1, p) == 1;
}

/* A good message in the DLQ (as after an outage that outlasted the retry
 * tiers) is completed by a replay. */
#define REPLAY_TRACE "5e2f0c1d9a8b47c6b3a2918d7e6f5a4b"
#define REPLAY_SPAN  "1a2b3c4d5e6f7081"

static int replay_span_logged(void *arg)
{
    (void)arg;
    return tu_file_count(worker.log, "\"trace_id\":\"" REPLAY_TRACE "\"",
                         "\"parent_span_id\":\"" REPLAY_SPAN "\"") >= 1;
}

START_TEST(a_replayed_message_is_processed)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_dlq");
    ev_event ev;
    order_placed *o = &ev.u.order_placed;
    char id[UUID_STR_LEN], err[EV_ERR_LEN], *body, *out;
    long one = 1;

    ev_init(&ev, EV_ORDER_PLACED);
    uuid_v4(o->order_id);
    strcpy(o->customer_id, "dlq");
    strcpy(o->customer_email, "dlq@example.com");
    strcpy(o->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&o->lines, 1), 0);
    strcpy(o->lines.items[0].sku, "FLT-PAPER");
    o->lines.items[0].quantity = 1;
    o->lines.items[0].unit_price = 350;
    o->total = 350;
    body = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(body);
    uuid_v4(id);
    /* Straight into the DLQ, as a dead letter after the last retry tier. */
    {
        mq_header h[] = {{MQ_H_ORIGINAL_KEY, RK_ORDER_PLACED, 0},
                         {MQ_H_REASON, "retries-exhausted", 0},
                         {MQ_H_ATTEMPT, NULL, 4}};
        mq_msg m = {0};
        char merr[MQ_ERR_LEN];
        m.exchange = MQ_DLX;
        m.routing_key = "inventory";
        m.message_id = id;
        m.correlation_id = o->order_id;
        m.type = RK_ORDER_PLACED;
        m.body = body;
        m.len = strlen(body);
        m.headers = h;
        m.nheaders = 3;
        /* The context of the original message's publish span. */
        m.traceparent = "00-" REPLAY_TRACE "-" REPLAY_SPAN "-01";
        ck_assert_msg(mq_publish(c, &m, merr, sizeof(merr)) == MQ_OK, "%s", merr);
    }
    ck_assert(tu_poll(10000, dlq_has, &one));
    ck_assert_int_eq(reserved(o->order_id), 0);
    ck_assert_int_eq(DLQ(&out, "replay", "inventory", "--all"), 0);
    free(out);
    ck_assert_msg(tu_poll(20000, reserved, o->order_id), "the replayed order was not reserved");
    ck_assert_int_eq(depth("inventory.dlq"), 0);
    /* The replayed copy kept the original's trace context: its handling is
     * a child of the original publish span (docs/TRACING.md). */
    ck_assert_msg(tu_poll(10000, replay_span_logged, NULL),
                  "no process span of trace " REPLAY_TRACE " under span " REPLAY_SPAN " in %s",
                  worker.log);
    free(body);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

/* The lines logged as a message is settled (retrying, dead-lettered,
 * requeued) come after its process span ended: they still name its trace. */
#define REJECT_TRACE "7c1d2e3f4a5b46c7d8e9f0a1b2c3d4e5"

static int rejected_line_has_trace(void *arg)
{
    (void)arg;
    return tu_file_count(worker.log, "\"trace_id\":\"" REJECT_TRACE "\"",
                         "sent to the dead-letter queue") >= 1;
}

START_TEST(a_dead_letter_line_names_the_messages_trace)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_dlq");
    char id[UUID_STR_LEN], corr[UUID_STR_LEN], merr[MQ_ERR_LEN];
    mq_msg m = {0};
    long one = 1;

    uuid_v4(id);
    uuid_v4(corr);
    m.exchange = MQ_EXCHANGE;
    m.routing_key = RK_ORDER_PLACED;
    m.message_id = id;
    m.correlation_id = corr;
    m.type = RK_ORDER_PLACED;
    m.body = "{\"not\":\"an order\"}";
    m.len = strlen(m.body);
    m.traceparent = "00-" REJECT_TRACE "-" REPLAY_SPAN "-01";
    ck_assert_msg(mq_publish(c, &m, merr, sizeof(merr)) == MQ_OK, "%s", merr);
    ck_assert(tu_poll(10000, dlq_has, &one));
    ck_assert_msg(tu_poll(10000, rejected_line_has_trace, NULL),
                  "no dead-letter line with trace_id " REJECT_TRACE " in %s", worker.log);
    mq_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dlq");
    TCase *t = tcase_create("tool");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 90);
    tcase_add_test(t, list_show_replay_and_purge);
    tcase_add_test(t, a_replayed_message_is_processed);
    tcase_add_test(t, a_dead_letter_line_names_the_messages_trace);
    suite_add_tcase(s, t);
    return tu_run(s);
}
