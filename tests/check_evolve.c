/*
 * check_evolve.c — schema evolution of order.placed (contracts/upcast.h)
 * against the real RabbitMQ and PostgreSQL, with the real order-api,
 * inventory, billing and email: a rollout where order-api writes version 1,
 * then version 2 (ORDER_PLACED_VERSION), while the readers, which read
 * both, are away, so one queue holds both versions when they come back; and
 * a version no reader knows, which goes to the DLQ with a reason naming it.
 *
 * What a reader that knows only version 1 (one built before version 2) does
 * with version 2 is what a reader here does with version 3: the second test.
 * A spy queue bound to order.placed shows what order-api really published.
 */
#include "events.h"
#include "testutil.h"
#include "upcast.h"
#include "util.h"

#include <amqp.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define API "http://127.0.0.1:18280"

static const char *const workers[] = {"inventory", "billing", "email"};
static const char *const worker_db[] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                        "EMAIL_DATABASE_URL"};
static const char *const worker_amqp[] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL",
                                          "EMAIL_AMQP_URL"};
static tu_svc svcs[3], api;

static void start_workers(void)
{
    for (int i = 0; i < 3; i++) {
        tu_svc_opts o = {.exe = workers[i],
                         .amqp_env = worker_amqp[i],
                         .db_env = worker_db[i],
                         .ready_queue = workers[i]};
        tu_svc_spawn(&svcs[i], &o);
    }
    for (int i = 0; i < 3; i++)
        tu_svc_await(&svcs[i]);
}

/* order-api writing order.placed in schema version (its setting). */
static void start_api(const char *version)
{
    char v[64];
    const char *env[] = {"HTTP_PORT=18280", "OPS_PORT=0", TU_API_TOKENS, v, NULL};
    tu_svc_opts o = {.exe = "order-api",
                     .amqp_env = "ORDER_API_AMQP_URL",
                     .db_env = "ORDERS_DATABASE_URL",
                     .env = env,
                     .log = "evolve-order-api",
                     .ready_url = API "/readyz"};
    snprintf(v, sizeof(v), "ORDER_PLACED_VERSION=%s", version);
    tu_svc_start(&api, &o);
}

static void teardown(void)
{
    tu_svc_stop(&api);
    for (int i = 0; i < 3; i++)
        tu_svc_stop(&svcs[i]);
}

/* ------------------------------------------------------------ the spy */

typedef struct {
    amqp_connection_state_t c;
    char queue[128];
} spy;

/* An exclusive queue of the test's own, bound to order.placed. */
static void spy_open(spy *s)
{
    amqp_queue_declare_ok_t *q;
    s->c = tu_amqp_open("TEST_AMQP_URL");
    q = amqp_queue_declare(s->c, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    ck_assert_msg(q != NULL, "declaring the spy queue failed");
    snprintf(s->queue, sizeof(s->queue), "%.*s", (int)q->queue.len, (char *)q->queue.bytes);
    amqp_queue_bind(s->c, 1, amqp_cstring_bytes(s->queue), amqp_cstring_bytes(MQ_EXCHANGE),
                    amqp_cstring_bytes(RK_ORDER_PLACED), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(s->c).reply_type, AMQP_RESPONSE_NORMAL);
}

static void spy_close(spy *s)
{
    amqp_connection_close(s->c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(s->c);
}

/* The next message on the spy (waiting up to 10 s): its schema_version
 * header and body. */
static void spy_next(spy *s, long *version, char *body, size_t n)
{
    int64_t end = util_now_ms() + 10000;
    for (;;) {
        amqp_rpc_reply_t r = amqp_basic_get(s->c, 1, amqp_cstring_bytes(s->queue), 1);
        amqp_message_t m;
        ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id == AMQP_BASIC_GET_OK_METHOD) {
            const amqp_table_t *h;
            ck_assert_int_eq(amqp_read_message(s->c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
            h = &m.properties.headers;
            *version = -1;
            for (int i = 0; i < h->num_entries; i++) {
                if (h->entries[i].key.len == strlen(MQ_H_SCHEMA_VERSION) &&
                    memcmp(h->entries[i].key.bytes, MQ_H_SCHEMA_VERSION, h->entries[i].key.len) ==
                        0)
                    *version = (long)h->entries[i].value.value.i64;
            }
            snprintf(body, n, "%.*s", (int)m.body.len, (char *)m.body.bytes);
            amqp_destroy_message(&m);
            return;
        }
        ck_assert_msg(util_now_ms() < end, "nothing reached the spy queue in 10 s");
        util_sleep_ms(50, NULL);
    }
}

/* ---------------------------------------------------------- the orders */

/* POSTs an order of customer for two TEA-SENCHA; 201 expected. */
static void place(const char *customer)
{
    const char *hdrs[] = {"Content-Type: application/json", TU_API_AUTH, NULL};
    char body[512];
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"%s\",\"customer_email\":\"evolve@example.com\","
             "\"currency\":\"EUR\",\"items\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":2}]}",
             customer);
    ck_assert_int_eq(tu_http("POST", API "/orders", hdrs, body, strlen(body), NULL), 201);
}

static void set_stock(const char *sku, long n)
{
    char v[24];
    const char *p[] = {sku, util_i64(v, n)};
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(sku, $2::bigint - on_hand, 'test: set stock')"
                " FROM inventory.stock WHERE sku = $1",
                2, p));
}

/* ----------------------------------------------------------------- tests */

/* The rollout, both ways at once: the readers (v2-aware) are stopped while
 * order-api writes two orders as version 1 and then, restarted with
 * ORDER_PLACED_VERSION=2, two as version 2; inventory's queue holds both
 * versions when the readers come back, and every order completes once, with
 * its invoice, its reservation and its mail. */
START_TEST(a_rollout_mixes_both_versions_in_one_queue_and_every_order_completes)
{
    char customer[64], body[4096];
    long version;
    spy s;

    snprintf(customer, sizeof(customer), "evolve-%lld", (long long)util_wall_us());
    set_stock("TEA-SENCHA", 100);
    spy_open(&s);
    start_api("1");
    place(customer);
    place(customer);
    tu_svc_stop_ok(&api);
    start_api("2");
    place(customer);
    place(customer);
    for (int i = 0; i < 4; i++) {
        spy_next(&s, &version, body, sizeof(body));
        /* What order-api wrote: each version under its own names. */
        ck_assert_int_eq(version, i < 2 ? 1 : 2);
        ck_assert_msg(strstr(body, i < 2 ? "\"total_minor\":1780" : "\"amount_minor\":1780") &&
                          !strstr(body, i < 2 ? "amount_minor" : "total_minor"),
                      "message %d (version %ld): %s", i, version, body);
    }
    spy_close(&s);
    start_workers();
    tu_await_count(30000,
                   "SELECT count(*) FROM orders.orders WHERE customer_id = $1"
                   " AND status = 'CONFIRMED'",
                   customer, 4);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM billing.invoices i JOIN orders.orders o"
                              " ON o.id = i.order_id WHERE o.customer_id = $1"
                              " AND i.amount_minor = 1780",
                              customer),
                     4);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM inventory.reservations r JOIN orders.orders o"
                              " ON o.id = r.order_id WHERE o.customer_id = $1",
                              customer),
                     4);
    ck_assert_int_eq(tu_count("SELECT on_hand FROM inventory.stock WHERE sku = $1", "TEA-SENCHA"),
                     100 - 4 * 2);
    tu_await_count(10000,
                   "SELECT count(*) FROM email.messages m JOIN orders.orders o"
                   " ON o.id = m.correlation_id WHERE o.customer_id = $1"
                   " AND m.kind = 'order_confirmed'",
                   customer, 4);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM orders.outbox WHERE parked_at IS NOT NULL"
                              " AND correlation_id IN (SELECT id FROM orders.orders"
                              " WHERE customer_id = $1)",
                              customer),
                     0);
}
END_TEST

/* Review of #17, item 7: an outbox row keeps the version it was written
 * in. order-api writes an order as version 1 while the broker is down (the
 * row waits in its outbox: 201 all the same), and is restarted with
 * ORDER_PLACED_VERSION=2 before the broker comes back: what it publishes
 * for that row is version 1, under version 1's names; its next order is
 * version 2. Both complete. */
START_TEST(an_outbox_row_keeps_the_version_it_was_written_in)
{
    char customer[64], body[4096];
    long version;
    spy s;

    snprintf(customer, sizeof(customer), "evolve-held-%lld", (long long)util_wall_us());
    set_stock("TEA-SENCHA", 100);
    start_api("1");
    tu_broker("stop_app");
    place(customer);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM orders.outbox WHERE schema_version = 1"
                              " AND correlation_id IN (SELECT id FROM orders.orders"
                              " WHERE customer_id = $1)",
                              customer),
                     1);
    tu_svc_stop_ok(&api);
    tu_broker("start_app");
    spy_open(&s);
    start_api("2");
    spy_next(&s, &version, body, sizeof(body));
    ck_assert_int_eq(version, 1);
    ck_assert_msg(strstr(body, "\"total_minor\":1780") && !strstr(body, "amount_minor"),
                  "the held row (version %ld): %s", version, body);
    place(customer);
    spy_next(&s, &version, body, sizeof(body));
    ck_assert_int_eq(version, 2);
    spy_close(&s);
    start_workers();
    tu_await_count(30000,
                   "SELECT count(*) FROM orders.orders WHERE customer_id = $1"
                   " AND status = 'CONFIRMED'",
                   customer, 2);
}
END_TEST

/* A version no reader knows (a writer ahead of its readers; for a reader
 * built before version 2, version 2 was one) goes to the DLQ at once with a
 * reason that names it, reserves nothing, and the reader goes on: the same
 * order as version 2 is reserved. */
START_TEST(a_version_the_reader_does_not_know_is_dead_lettered_naming_it)
{
    ev_event ev;
    order_placed *o = &ev.u.order_placed;
    char err[MQ_ERR_LEN], mid[UUID_STR_LEN], *body, *out = NULL;
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "order-api");
    mq_msg m = {0};
    char *argv[] = {"dlq", "show", "inventory", "--limit", "50", NULL};
    tu_svc_opts t = {.exe = "dlq", .amqp_env = "TEST_AMQP_URL", .argv = argv};

    start_workers();
    tu_sample_event(EV_ORDER_PLACED, &ev);
    ck_assert_int_eq(uuid_v4(o->order_id), 0);
    body = ev_to_json_version(&ev, NULL, 2, err, sizeof(err));
    ck_assert_msg(body != NULL, "%s", err);
    ck_assert_int_eq(uuid_v4(mid), 0);
    m.routing_key = RK_ORDER_PLACED;
    m.message_id = mid;
    m.correlation_id = o->order_id;
    m.body = body;
    m.len = strlen(body);
    m.schema_version = 3;
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    /* The DLQ says why, naming the version, the event and the ones known. */
    {
        int64_t end = util_now_ms() + 15000;
        int found = 0;
        while (!found && util_now_ms() < end) {
            free(out);
            out = NULL;
            ck_assert_int_eq(tu_tool(&t, &out), 0);
            found = strstr(out, mid) &&
                    strstr(out, "undecodable: schema_version 3 is not supported for order.placed"
                                " (want 1 to 2)");
            if (!found)
                util_sleep_ms(200, NULL);
        }
        ck_assert_msg(found, "message %s not in inventory.dlq with its reason:\n%s", mid,
                      out ? out : "");
    }
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", o->order_id),
        0);
    /* The same order as version 2: reserved. */
    ck_assert_int_eq(uuid_v4(mid), 0);
    m.schema_version = 2;
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    tu_await_count(15000, "SELECT count(*) FROM inventory.reservations WHERE order_id = $1",
                   o->order_id, 1);
    /* The version 3 copy is no one's to replay (chaos_check's scenario 6,
     * later in make test, counts and replays inventory.dlq). */
    {
        const char *const dlq[] = {"inventory.dlq", NULL};
        tu_purge("TEST_AMQP_URL", dlq);
    }
    free(out);
    free(body);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

/* order-api refuses a version it cannot write, naming the setting. */
START_TEST(order_api_refuses_a_version_it_cannot_write)
{
    char v[64];
    const char *env[] = {"HTTP_PORT=18280", "OPS_PORT=0", TU_API_TOKENS, v, NULL};
    tu_svc_opts o = {.exe = "order-api",
                     .amqp_env = "ORDER_API_AMQP_URL",
                     .db_env = "ORDERS_DATABASE_URL",
                     .env = env,
                     .log = "evolve-order-api-bad"};
    const char *bad[] = {"3", "0", "two"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char path[600];
        int st;
        snprintf(v, sizeof(v), "ORDER_PLACED_VERSION=%s", bad[i]);
        /* Its log holds this start only. */
        snprintf(path, sizeof(path), "%s/log/tests/evolve-order-api-bad.log",
                 tu_env("ORDERSUITE_VAR"));
        unlink(path);
        tu_svc_spawn(&api, &o);
        st = tu_svc_wait(&api, 15000);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "ORDER_PLACED_VERSION=%s: status %d",
                      bad[i], st);
        ck_assert_msg(tu_file_count(path, "ORDER_PLACED_VERSION", "configuration") >= 1,
                      "no configuration error naming ORDER_PLACED_VERSION in %s", path);
        api.pid = 0;
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("evolve");
    TCase *t = tcase_create("order_placed_v2");

    tcase_add_checked_fixture(t, NULL, teardown);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, a_rollout_mixes_both_versions_in_one_queue_and_every_order_completes);
    tcase_add_test(t, an_outbox_row_keeps_the_version_it_was_written_in);
    tcase_add_test(t, a_version_the_reader_does_not_know_is_dead_lettered_naming_it);
    tcase_add_test(t, order_api_refuses_a_version_it_cannot_write);
    suite_add_tcase(s, t);
    return tu_run(s);
}
