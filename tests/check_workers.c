/*
 * check_workers.c — the inventory, billing and email executables together,
 * against the real RabbitMQ and PostgreSQL, each running as its own database
 * role. The test plays order-api and the till: it publishes order.placed,
 * order.confirmed (order-api's, once billing invoiced) and sale.completed
 * with confirms, then reads the services' tables.
 *
 * One file (over 600 lines) on purpose, though not for a shared start: the
 * "flow" case's fixture is checked, so the three services (each as its own
 * role) start again for each of its tests, and the "limits", "modes" and
 * "ledger" cases start what they need themselves. What the tests share is
 * this file's helpers (publish with confirms, await a row or a count, the
 * stock the fixture resets); a split would copy them or move them to
 * testutil.
 */
#include "events.h"
#include "mq.h"
#include "testutil.h"
#include "util.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const services[] = {"inventory", "billing", "email"};
static tu_svc svcs[3];

/* The inventory instances that take part in the race: the fixture's, and two
 * more with metrics ports so the test can see that each handled orders. */
enum { RACERS = 2 };
static const int racer_port[RACERS] = {19121, 19122};
static tu_svc racer[RACERS]; /* stopped by teardown when a test fails first */

static void setup(void)
{
    const char *urls[] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL", "EMAIL_DATABASE_URL"};
    const char *amqp[] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL", "EMAIL_AMQP_URL"};

    /* Known stock for the SKUs these tests use, so they can run again. */
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(v.sku, v.n - s.on_hand, 'test: known stock')"
                " FROM (VALUES ('TEA-SENCHA', 400), ('MUG-WHITE', 600), ('TEA-MATCHA', 0),"
                " ('GRD-BURR', 10), ('POT-CAST-IRON', 3), ('FLT-PAPER', 1000)) AS v(sku, n)"
                " JOIN inventory.stock s ON s.sku = v.sku",
                0, NULL));
    for (int i = 0; i < 3; i++) {
        tu_svc_opts o = {
            .exe = services[i], .amqp_env = amqp[i], .db_env = urls[i], .ready_queue = services[i]};
        tu_svc_spawn(&svcs[i], &o);
    }
    for (int i = 0; i < 3; i++)
        tu_svc_await(&svcs[i]);
}

static void teardown(void)
{
    for (int i = 0; i < RACERS; i++)
        tu_svc_stop(&racer[i]);
    for (int i = 0; i < 3; i++)
        tu_svc_stop_ok(&svcs[i]);
}

/* Publishes ev under a new message id, written to id_out when not NULL. */
static void publish_id(mq_conn *c, const ev_event *ev, const char *corr, char id_out[UUID_STR_LEN])
{
    char err[MQ_ERR_LEN], id[UUID_STR_LEN];
    char *body = ev_to_json(ev, NULL, err, sizeof(err));
    mq_msg m = {0};
    ck_assert_msg(body != NULL, "%s", err);
    uuid_v4(id);
    m.routing_key = ev_routing_key(ev->type);
    m.message_id = id;
    m.correlation_id = corr;
    m.body = body;
    m.len = strlen(body);
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    free(body);
    if (id_out)
        memcpy(id_out, id, UUID_STR_LEN);
}

static void publish(mq_conn *c, const ev_event *ev, const char *corr)
{
    publish_id(c, ev, corr, NULL);
}

/* An order.placed as order-api would publish it: (sku, quantity, unit price)*. */
static void order(ev_event *ev, char id[UUID_STR_LEN], size_t n, const char *const *skus,
                  const int64_t *qty, const int64_t *price)
{
    order_placed *o = &ev->u.order_placed;
    ev_init(ev, EV_ORDER_PLACED);
    uuid_v4(o->order_id);
    memcpy(id, o->order_id, UUID_STR_LEN);
    strcpy(o->customer_id, "cust-1");
    strcpy(o->customer_email, "ada@example.com");
    strcpy(o->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&o->lines, n), 0);
    for (size_t i = 0; i < n; i++) {
        strcpy(o->lines.items[i].sku, skus[i]);
        o->lines.items[i].quantity = qty[i];
        o->lines.items[i].unit_price = price[i];
        o->total += qty[i] * price[i];
    }
}

/* Waits up to 20 s for a count to reach want. */
static void await(const char *sql, const char *param, long want)
{
    tu_await_count(20000, sql, param, want);
}

/* Plays order-api confirming order id: its order.confirmed, from billing's
 * invoice, which email mails (the confirmation follows order-api's
 * decision, not billing.invoiced). */
static void confirm(mq_conn *c, const char *id)
{
    const char *p[] = {id};
    char *row = tu_sql(tu_env("OWNER_DATABASE_URL"),
                       "SELECT id::text || ' ' || number || ' ' || amount_minor || ' ' ||"
                       " tax_minor || ' ' || currency || ' ' || customer_email"
                       " FROM billing.invoices WHERE order_id = $1::uuid",
                       1, p);
    ev_event ev;
    order_confirmed *o = &ev.u.order_confirmed;
    long long num, amount, tax;

    ev_init(&ev, EV_ORDER_CONFIRMED);
    ck_assert_msg(row && sscanf(row, "%36s %lld %lld %lld %3s %254s", o->invoice_id, &num, &amount,
                                &tax, o->currency, o->customer_email) == 6,
                  "no invoice of %s: %s", id, row ? row : "(none)");
    snprintf(o->order_id, sizeof(o->order_id), "%s", id);
    o->invoice_number = num;
    o->amount = amount;
    o->tax = tax;
    publish(c, &ev, id);
    free(row);
}

static long stock(const char *sku)
{
    return tu_count("SELECT on_hand FROM inventory.stock WHERE sku = $1", sku);
}

START_TEST(a_placed_order_is_reserved_invoiced_and_confirmed_by_mail)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *skus[] = {"TEA-SENCHA", "MUG-WHITE"};
    const int64_t qty[] = {2, 1}, price[] = {890, 800};
    char id[UUID_STR_LEN];
    ev_event ev;

    order(&ev, id, 2, skus, qty, price);
    publish(c, &ev, id);
    await("SELECT count(*) FROM billing.invoices WHERE order_id = $1", id, 1);
    confirm(c, id);
    await("SELECT count(*) FROM email.messages WHERE correlation_id = $1 AND kind ="
          " 'order_confirmed' AND body LIKE '%Total: 25.80 EUR (of which tax 4.30 EUR)%'",
          id, 1);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1"
                              " AND status = 'RESERVED'",
                              id),
                     1);
    ck_assert_int_eq(tu_count("SELECT amount_minor FROM billing.invoices WHERE order_id = $1", id),
                     2580);
    ck_assert_int_eq(tu_count("SELECT tax_minor FROM billing.invoices WHERE order_id = $1", id),
                     430);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM billing.invoice_lines l JOIN billing.invoices i"
                              " ON i.id = l.invoice_id WHERE i.order_id = $1",
                              id),
                     2);
    ck_assert_int_eq(stock("TEA-SENCHA"), 398);
    ck_assert_int_eq(stock("MUG-WHITE"), 599);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

START_TEST(an_order_for_missing_stock_is_rejected_and_stock_is_unchanged)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *skus[] = {"TEA-SENCHA", "TEA-MATCHA"};
    const int64_t qty[] = {1, 5}, price[] = {890, 2600};
    char id[UUID_STR_LEN];
    ev_event ev;

    order(&ev, id, 2, skus, qty, price);
    publish(c, &ev, id);
    await("SELECT count(*) FROM email.messages WHERE correlation_id = $1 AND kind ="
          " 'order_rejected'",
          id, 1);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM inventory.rejections WHERE order_id = $1", id),
                     1);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", id), 0);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM billing.invoices WHERE order_id = $1", id), 0);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM email.messages WHERE correlation_id = $1 AND"
                              " body LIKE '%TEA-MATCHA%'",
                              id),
                     1);
    ck_assert_int_eq(stock("TEA-SENCHA"), 400); /* the partial take was undone */
    ck_assert_int_eq(stock("TEA-MATCHA"), 0);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

START_TEST(a_failed_payment_releases_the_stock)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *skus[] = {"GRD-BURR"};
    const int64_t qty[] = {4}, price[] = {14900}; /* 596.00 > the 500.00 credit limit */
    char id[UUID_STR_LEN];
    ev_event ev;

    order(&ev, id, 1, skus, qty, price);
    publish(c, &ev, id);
    await("SELECT count(*) FROM inventory.reservations WHERE order_id = $1 AND status ="
          " 'RELEASED'",
          id, 1);
    await("SELECT count(*) FROM email.messages WHERE correlation_id = $1 AND kind ="
          " 'payment_failed'",
          id, 1);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM billing.payment_failures WHERE order_id = $1", id), 1);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM billing.invoices WHERE order_id = $1", id), 0);
    ck_assert_int_eq(stock("GRD-BURR"), 10);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

START_TEST(a_pos_sale_takes_stock_and_is_invoiced_with_a_receipt)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    ev_event ev;
    sale_completed *s = &ev.u.sale_completed;
    char id[UUID_STR_LEN];

    tu_sale(&ev, "NEPAL-01", "FLT-PAPER", 3, 350);
    memcpy(id, s->sale_id, UUID_STR_LEN);
    strcpy(s->customer_email, "walk-in@example.com");
    publish(c, &ev, id);
    await("SELECT count(*) FROM email.messages WHERE correlation_id = $1 AND kind = 'receipt'", id,
          1);
    await("SELECT count(*) FROM billing.invoices WHERE sale_id = $1 AND amount_minor = 1050", id,
          1);
    await("SELECT count(*) FROM inventory.sale_lines WHERE sale_id = $1 AND applied = 3", id, 1);
    ck_assert_int_eq(stock("FLT-PAPER"), 997);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

/* A till that re-sends a sale (its spool was not rewritten before a crash)
 * publishes it under a new message id: the inbox cannot see it, the sale id
 * must. Stock moves once, for the sale. */
START_TEST(a_sale_resent_under_a_new_message_id_takes_stock_once)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    ev_event ev;
    sale_completed *s = &ev.u.sale_completed;
    char id[UUID_STR_LEN], m1[UUID_STR_LEN], m2[UUID_STR_LEN], ids[2 * UUID_STR_LEN + 4];

    ev_init(&ev, EV_SALE_COMPLETED);
    uuid_v4(s->sale_id);
    memcpy(id, s->sale_id, UUID_STR_LEN);
    strcpy(s->store_id, "NEPAL-01");
    strcpy(s->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&s->lines, 2), 0);
    strcpy(s->lines.items[0].sku, "FLT-PAPER");
    s->lines.items[0].quantity = 5;
    s->lines.items[0].unit_price = 350;
    strcpy(s->lines.items[1].sku, "MUG-WHITE");
    s->lines.items[1].quantity = 2;
    s->lines.items[1].unit_price = 800;
    s->total = 3350;
    ev_now_rfc3339(s->paid_at);
    publish_id(c, &ev, id, m1);
    publish_id(c, &ev, id, m2);
    ck_assert_str_ne(m1, m2);
    snprintf(ids, sizeof(ids), "{%s,%s}", m1, m2);
    /* Both deliveries were handled (each is in inventory's inbox)... */
    await("SELECT count(*) FROM inventory.inbox WHERE message_id = ANY($1::uuid[])", ids, 2);
    /* ...and the sale took its units once. */
    ck_assert_int_eq(stock("FLT-PAPER"), 995);
    ck_assert_int_eq(stock("MUG-WHITE"), 598);
    ck_assert_int_eq(
        tu_count("SELECT sum(applied) FROM inventory.sale_lines WHERE sale_id = $1", id), 7);
    await("SELECT count(*) FROM billing.invoices WHERE sale_id = $1", id, 1);
    ev_free(&ev);
    mq_free(c);
}
END_TEST

/* A sale.completed of sale id `id` with n lines (sku, quantity) at 100 each. */
static void sale_of(ev_event *ev, const char *id, size_t n, const char *const *skus,
                    const int64_t *qty)
{
    sale_completed *s = &ev->u.sale_completed;
    ev_init(ev, EV_SALE_COMPLETED);
    memcpy(s->sale_id, id, UUID_STR_LEN);
    strcpy(s->store_id, "NEPAL-01");
    strcpy(s->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&s->lines, n), 0);
    for (size_t i = 0; i < n; i++) {
        strcpy(s->lines.items[i].sku, skus[i]);
        s->lines.items[i].quantity = qty[i];
        s->lines.items[i].unit_price = 100;
        s->total += qty[i] * 100;
    }
    ev_now_rfc3339(s->paid_at);
}

static int inventory_dlq_has_one(void *arg)
{
    (void)arg;
    return tu_queue_counts("TEST_AMQP_URL", "inventory.dlq", NULL) >= 1;
}

/* A sale id that was applied comes again with other lines, the one already
 * applied not first (lines are claimed in SKU order): FLT-PAPER is new,
 * MUG-WHITE was taken. A sale never changes, so this copy is a conflict: it
 * goes to inventory.dlq and nothing of it is kept, neither stock taken
 * again nor a claim of FLT-PAPER that no stock went with. */
START_TEST(a_sale_id_seen_before_with_other_lines_changes_nothing_and_is_dead_lettered)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *first[] = {"MUG-WHITE"}, *again[] = {"FLT-PAPER", "MUG-WHITE"};
    const int64_t q1[] = {2}, q2[] = {5, 2};
    char id[UUID_STR_LEN], err[MQ_ERR_LEN];
    ev_event ev;

    ck_assert_int_ge(mq_purge(c, "inventory.dlq", err, sizeof(err)), 0);
    uuid_v4(id);
    sale_of(&ev, id, 1, first, q1);
    publish(c, &ev, id);
    ev_free(&ev);
    await("SELECT count(*) FROM inventory.sale_lines WHERE sale_id = $1 AND applied = 2", id, 1);
    sale_of(&ev, id, 2, again, q2);
    publish(c, &ev, id);
    ev_free(&ev);
    /* Handled: dead-lettered, or (wrongly) taken as done. */
    ck_assert_msg(
        tu_poll(20000, inventory_dlq_has_one, NULL) ||
            tu_count("SELECT count(*) FROM inventory.sale_lines WHERE sale_id = $1", id) != 1,
        "the second copy was never handled");
    ck_assert_int_eq(stock("MUG-WHITE"), 598);
    ck_assert_int_eq(stock("FLT-PAPER"), 1000);
    ck_assert_msg(tu_count("SELECT count(*) FROM inventory.sale_lines WHERE sale_id = $1"
                           " AND sku = 'FLT-PAPER'",
                           id) == 0,
                  "a claim of FLT-PAPER (applied %ld) was kept for a sale applied before",
                  tu_count("SELECT max(applied) FROM inventory.sale_lines WHERE sale_id = $1"
                           " AND sku = 'FLT-PAPER'",
                           id));
    ck_assert_msg(inventory_dlq_has_one(NULL), "the conflicting copy is not in inventory.dlq");
    ck_assert_int_ge(mq_purge(c, "inventory.dlq", err, sizeof(err)), 0);
    mq_free(c);
}
END_TEST

static int inventory_consumers_are(void *arg)
{
    int consumers = 0;
    return tu_queue_counts("TEST_AMQP_URL", "inventory", &consumers) >= 0 &&
           consumers >= *(int *)arg;
}

/* The order.placed deliveries one instance has consumed (-1: no answer). */
static long consumed_orders(int port)
{
    char base[64];
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
    return (long)tu_metric(base, "ordersuite_messages_consumed_total{service=\"inventory\","
                                 "routing_key=\"order.placed\"}");
}

/* Three inventory instances take orders for the same SKU at once, so the
 * on_hand >= quantity guard is contended across transactions: 24 orders for
 * 6 units, each instance holding several deliveries in flight (PREFETCH 4). */
START_TEST(concurrent_orders_for_the_last_units_never_oversell)
{
    enum { N = 24, UNITS = 6 };
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *skus[] = {"POT-CAST-IRON"};
    const int64_t qty[] = {1}, price[] = {6900};
    char ids[N][UUID_STR_LEN];
    char list[N * 40 + 8], before[24], units[8];
    const char *up[] = {units};
    long got[RACERS];
    int want = RACERS + 1;
    size_t n = 0;

    snprintf(units, sizeof(units), "%d", UNITS);
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(sku, $1::bigint - on_hand, 'test: known stock')"
                " FROM inventory.stock WHERE sku = 'POT-CAST-IRON'",
                1, up));
    for (int i = 0; i < RACERS; i++) {
        char port[32], log[32];
        const char *env[] = {port, "PREFETCH=4", NULL};
        tu_svc_opts o = {.exe = "inventory",
                         .amqp_env = "INVENTORY_AMQP_URL",
                         .db_env = "INVENTORY_DATABASE_URL",
                         .env = env,
                         .log = log};
        snprintf(port, sizeof(port), "METRICS_PORT=%d", racer_port[i]);
        snprintf(log, sizeof(log), "inventory-racer%d", i + 1);
        tu_svc_spawn(&racer[i], &o);
    }
    ck_assert_msg(tu_poll(30000, inventory_consumers_are, &want),
                  "fewer than %d inventory consumers on the queue", want);
    for (int i = 0; i < RACERS; i++)
        got[i] = consumed_orders(racer_port[i]);

    util_i64(before, tu_count("SELECT coalesce(max(id), 0) FROM email.messages", NULL));
    /* Every instance paused while the orders are published, so each takes
     * several at once when it goes on: sets of orders (inventory's set
     * handler) contend for the same row. */
    ck_assert_int_eq(kill(svcs[0].pid, SIGSTOP), 0);
    for (int i = 0; i < RACERS; i++)
        ck_assert_int_eq(kill(racer[i].pid, SIGSTOP), 0);
    list[n++] = '{';
    for (int i = 0; i < N; i++) {
        ev_event ev;
        order(&ev, ids[i], 1, skus, qty, price);
        publish(c, &ev, ids[i]);
        ev_free(&ev);
        n += (size_t)sprintf(list + n, "%s%s", i ? "," : "", ids[i]);
    }
    list[n++] = '}';
    list[n] = '\0';
    for (int i = 0; i < RACERS; i++)
        ck_assert_int_eq(kill(racer[i].pid, SIGCONT), 0);
    ck_assert_int_eq(kill(svcs[0].pid, SIGCONT), 0);
    await("SELECT (SELECT count(*) FROM inventory.reservations WHERE order_id = ANY($1::uuid[]))"
          " + (SELECT count(*) FROM inventory.rejections WHERE order_id = ANY($1::uuid[]))",
          list, N);
    /* The race really ran between instances: each extra one took orders. */
    for (int i = 0; i < RACERS; i++) {
        long after = consumed_orders(racer_port[i]);
        ck_assert_msg(after > got[i], "inventory on port %d consumed no order (%ld, then %ld)",
                      racer_port[i], got[i], after);
    }
    ck_assert_int_eq(tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id ="
                              " ANY($1::uuid[])",
                              list),
                     UNITS);
    ck_assert_int_eq(stock("POT-CAST-IRON"), 0);
    /* The crossing of the threshold (2) was reported once, to operations. */
    await("SELECT count(*) FROM email.messages WHERE kind = 'low_stock' AND subject LIKE"
          " 'Low stock: POT-CAST-IRON%' AND id > $1::bigint",
          before, 1);
    for (int i = 0; i < RACERS; i++)
        tu_svc_stop_ok(&racer[i]);
    mq_free(c);
}
END_TEST

/* Orders published while inventory is paused reach it as one batch, and
 * its set handler decides them together: each in order of arrival, all of
 * its lines or none. B does not fit after A (POT-CAST-IRON: 3 in stock) and
 * takes nothing, not even its GRD-BURR; C, after it, still gets its pot. */
START_TEST(orders_of_one_set_are_reserved_all_or_nothing_in_order_of_arrival)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *pot[] = {"POT-CAST-IRON"}, *pot_grd[] = {"POT-CAST-IRON", "GRD-BURR"};
    const int64_t two[] = {2, 1}, one[] = {1}, price[] = {6900, 100};
    char a[UUID_STR_LEN], b[UUID_STR_LEN], cc[UUID_STR_LEN];
    ev_event ev;

    ck_assert_int_eq(kill(svcs[0].pid, SIGSTOP), 0);
    order(&ev, a, 1, pot, two, price);
    publish(c, &ev, a);
    ev_free(&ev);
    order(&ev, b, 2, pot_grd, two, price);
    publish(c, &ev, b);
    ev_free(&ev);
    order(&ev, cc, 1, pot, one, price);
    publish(c, &ev, cc);
    ev_free(&ev);
    ck_assert_int_eq(kill(svcs[0].pid, SIGCONT), 0);
    await("SELECT count(*) FROM inventory.rejections WHERE order_id = $1", b, 1);
    await("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", cc, 1);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", a),
                     1);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", b),
                     0);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM inventory.rejections WHERE order_id = $1 AND reason ="
                 " 'not enough stock for 1 of 2 line(s)'",
                 b),
        1);
    ck_assert_int_eq(
        tu_count("SELECT sum(quantity) FROM inventory.reservation_lines WHERE order_id = $1", a),
        2);
    ck_assert_int_eq(stock("POT-CAST-IRON"), 0);
    ck_assert_int_eq(stock("GRD-BURR"), 10);
    mq_free(c);
}
END_TEST

/* One order of a batch cannot be applied: an operator holds its stock row,
 * so the set's lock of every row waits out DB_LOCK_TIMEOUT_MS (5 s) and the
 * set fails. The batch is rolled back and each order applied alone: the
 * others are reserved (once) while the row is still held, the held one is
 * retried, and reserved once the row is free. */
START_TEST(a_failing_order_in_a_set_holds_back_nothing)
{
    enum { N = 6, HELD = 3 };
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    const char *tea[] = {"TEA-SENCHA"}, *grd[] = {"GRD-BURR"};
    const int64_t qty[] = {1}, price[] = {890};
    char ids[N][UUID_STR_LEN];
    long fallbacks0 = tu_file_count(svcs[0].log, "applying them one by one", NULL);
    PGconn *op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    PGresult *res;

    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res =
        PQexec(op, "BEGIN; SELECT on_hand FROM inventory.stock WHERE sku = 'GRD-BURR' FOR UPDATE");
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    ck_assert_int_eq(kill(svcs[0].pid, SIGSTOP), 0);
    for (int i = 0; i < N; i++) {
        ev_event ev;
        order(&ev, ids[i], 1, i == HELD ? grd : tea, qty, price);
        publish(c, &ev, ids[i]);
        ev_free(&ev);
    }
    ck_assert_int_eq(kill(svcs[0].pid, SIGCONT), 0);
    for (int i = 0; i < N; i++) {
        if (i != HELD)
            await("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", ids[i], 1);
    }
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", ids[HELD]), 0);
    ck_assert_msg(tu_file_count(svcs[0].log, "applying them one by one", NULL) > fallbacks0,
                  "no set failed and was applied again one by one");
    res = PQexec(op, "ROLLBACK");
    PQclear(res);
    PQfinish(op);
    await("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", ids[HELD], 1);
    ck_assert_int_eq(stock("TEA-SENCHA"), 400 - (N - 1));
    ck_assert_int_eq(stock("GRD-BURR"), 9);
    mq_free(c);
}
END_TEST

/* ------------------------------------------------ database time limits */

#define LIM_INV_PORT  "18931"
#define LIM_API_PORT  "18932"
#define LIM_BILL_PORT "18933"
#define LIM_Q_PORT    "18934"

/* Starts name with the extra environment and waits for its /readyz on port. */
static void start_limited(tu_svc *s, const char *name, const char *db_env, const char *amqp_env,
                          const char *port, const char *const *extra)
{
    char url[96], log[64];
    tu_svc_opts o = {.exe = name,
                     .amqp_env = amqp_env,
                     .db_env = db_env,
                     .env = extra,
                     .log = log,
                     .ready_url = url};
    snprintf(url, sizeof(url), "http://127.0.0.1:%s/readyz", port);
    snprintf(log, sizeof(log), "%s-limits", name);
    tu_svc_start(s, &o);
}

/* The longest /healthz answer of port, over `rounds` requests. */
static int64_t slowest_healthz(const char *port, int rounds)
{
    char url[96];
    int64_t worst = 0;
    snprintf(url, sizeof(url), "http://127.0.0.1:%s/healthz", port);
    for (int i = 0; i < rounds; i++) {
        int64_t t0 = util_now_ms(), dt;
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, 0, NULL), 200);
        dt = util_now_ms() - t0;
        worst = dt > worst ? dt : worst;
    }
    return worst;
}

/* An operator holds a stock row (and the orders table) in an open
 * transaction. Inventory's wait for that row ends at DB_LOCK_TIMEOUT_MS and
 * the message is retried, so it neither hangs nor holds back an order for
 * other stock; order-api's requests that wait on the table tie up no thread
 * that /healthz needs; once the lock goes, the held order goes through. */
START_TEST(a_held_row_lock_times_out_and_retries_and_health_stays_fast)
{
    const char *inv_env[] = {"METRICS_PORT=" LIM_INV_PORT, "DB_LOCK_TIMEOUT_MS=500", NULL};
    const char *api_env[] = {"HTTP_PORT=" LIM_API_PORT,
                             "HTTP_THREADS=2",
                             "DB_LOCK_TIMEOUT_MS=3000",
                             "OPS_PORT=0",
                             TU_API_TOKENS,
                             NULL};
    const char *locked[] = {"GRD-BURR"}, *free_sku[] = {"TEA-SENCHA"};
    const int64_t qty[] = {1}, price[] = {100};
    const char body[] = "{\"customer_id\":\"lim\",\"customer_email\":\"lim@example.com\","
                        "\"currency\":\"EUR\",\"items\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":1}]}";
    const char *hdrs[] = {"Content-Type: application/json", TU_API_AUTH, NULL};
    char a[UUID_STR_LEN], b[UUID_STR_LEN];
    pid_t posts[4];
    tu_svc inv, api;
    mq_conn *c;
    PGconn *op;
    PGresult *res;
    ev_event ev;
    int64_t worst = 0, t_end, t_pub;
    long consumed0;

    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(v.sku, v.n - s.on_hand, 'test: known stock')"
                " FROM (VALUES ('TEA-SENCHA', 400), ('GRD-BURR', 10)) AS v(sku, n)"
                " JOIN inventory.stock s ON s.sku = v.sku",
                0, NULL));
    start_limited(&inv, "inventory", "INVENTORY_DATABASE_URL", "INVENTORY_AMQP_URL", LIM_INV_PORT,
                  inv_env);
    start_limited(&api, "order-api", "ORDERS_DATABASE_URL", "ORDER_API_AMQP_URL", LIM_API_PORT,
                  api_env);
    /* Only the instance under test consumes: another inventory would take
     * the free order while this one hangs on the lock. */
    {
        int consumers = -1;
        ck_assert_int_ge(tu_queue_counts("TEST_AMQP_URL", "inventory", &consumers), 0);
        ck_assert_msg(consumers == 1,
                      "%d consumers on inventory's queue, want only the one under test", consumers);
    }
    consumed0 = consumed_orders(atoi(LIM_INV_PORT));

    /* The operator's open transaction. */
    op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res = PQexec(op, "BEGIN; SELECT on_hand FROM inventory.stock WHERE sku = 'GRD-BURR' FOR UPDATE;"
                     " LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE");
    ck_assert_int_eq(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);

    c = tu_publisher("TEST_AMQP_URL", "check_workers");
    order(&ev, a, 1, locked, qty, price);
    publish(c, &ev, a);
    ev_free(&ev);
    order(&ev, b, 1, free_sku, qty, price);
    publish(c, &ev, b);
    ev_free(&ev);
    t_pub = util_now_ms();
    /* Four API requests that wait on the locked table (twice HTTP_THREADS). */
    for (int i = 0; i < 4; i++) {
        posts[i] = fork();
        ck_assert_int_ge(posts[i], 0);
        if (posts[i] == 0) {
            long st = tu_http("POST", "http://127.0.0.1:" LIM_API_PORT "/orders", hdrs, body,
                              strlen(body), NULL);
            _exit(st == 503 ? 0 : 1);
        }
    }
    /* While they wait: both services answer /healthz at once. */
    t_end = util_now_ms() + 2500;
    while (util_now_ms() < t_end) {
        int64_t w1 = slowest_healthz(LIM_API_PORT, 1), w2 = slowest_healthz(LIM_INV_PORT, 1);
        worst = w1 > worst ? w1 : worst;
        worst = w2 > worst ? w2 : worst;
    }
    /* Not a timing target: a /healthz that needed a thread held by a
     * waiting request would answer only after that request's lock wait
     * (DB_LOCK_TIMEOUT_MS 3000) ends; half of it tells the two apart on a
     * loaded machine too (100 ms failed there: 115 and 148 ms). */
    ck_assert_msg(worst < 1500, "/healthz took %lld ms while the database was blocked",
                  (long long)worst);
    /* The order for other stock went through while the row was held, soon
     * after the lock wait gave up (DB_LOCK_TIMEOUT_MS 500), not after a
     * statement limit (15 s), by the instance under test... */
    tu_await_count((int)(t_pub + 6000 - util_now_ms()),
                   "SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid", b, 1);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid", a), 0);
    ck_assert_msg(consumed_orders(atoi(LIM_INV_PORT)) >= consumed0 + 2,
                  "the instance under test did not consume both orders (%ld -> %ld)", consumed0,
                  consumed_orders(atoi(LIM_INV_PORT)));
    /* ...and the API requests that waited were answered 503 (retry later). */
    for (int i = 0; i < 4; i++) {
        int st = 0;
        ck_assert_int_eq(waitpid(posts[i], &st, 0), posts[i]);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a blocked POST was not a 503");
    }
    PQfinish(op); /* the operator gives up: the lock goes */
    await("SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid", a, 1);
    ck_assert_int_eq(tu_svc_stop(&api) >= 0, 1);
    ck_assert_int_eq(tu_svc_stop(&inv) >= 0, 1);
    mq_free(c);
}
END_TEST

/* A POST /orders to port for customer `who` in a child process; its exit
 * status says what came back: 10 = 201, 20 = 503 with Retry-After and a
 * problem+json body, 30 = anything else. */
static pid_t post_in_child(const char *port, const char *who)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char url[96], body[256], *resp = NULL, *hdrs = NULL;
        const char *h[] = {"Content-Type: application/json", TU_API_AUTH, NULL};
        long st;
        snprintf(url, sizeof(url), "http://127.0.0.1:%s/orders", port);
        snprintf(body, sizeof(body),
                 "{\"customer_id\":\"%s\",\"customer_email\":\"q@example.com\",\"currency\":"
                 "\"EUR\",\"items\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":1}]}",
                 who);
        st = tu_http_h("POST", url, h, body, strlen(body), &resp, &hdrs);
        if (st == 201)
            _exit(10);
        if (st == 503 && hdrs && strcasestr(hdrs, "\nRetry-After: ") && resp &&
            strstr(resp, "\"status\":503") && strcasestr(hdrs, "application/problem+json"))
            _exit(20);
        _exit(30);
    }
    return pid;
}

/* The API's job queue is bounded and a request that waited past its
 * deadline is dropped: with the one job thread stuck on a held table lock,
 * HTTP_QUEUE_MAX (2) requests wait, the next ones are answered 503 with
 * Retry-After at once; once the lock goes, the running one is done (201)
 * and the two that waited past HTTP_QUEUE_DEADLINE_MS are answered 503
 * without running (no order of theirs is stored). */
START_TEST(the_api_job_queue_is_bounded_and_drops_requests_past_their_deadline)
{
    const char *api_env[] = {"HTTP_PORT=" LIM_Q_PORT,
                             "HTTP_THREADS=1",
                             "HTTP_QUEUE_MAX=2",
                             "HTTP_QUEUE_DEADLINE_MS=1000",
                             "OPS_PORT=0",
                             TU_API_TOKENS,
                             NULL};
    char who[64];
    tu_svc api;
    pid_t first, rest[5];
    int done[5] = {0}, refused = 0, st;
    int64_t sent, end;
    PGconn *op;
    PGresult *res;

    snprintf(who, sizeof(who), "qbound-%lld", (long long)util_wall_us());
    start_limited(&api, "order-api", "ORDERS_DATABASE_URL", "ORDER_API_AMQP_URL", LIM_Q_PORT,
                  api_env);
    op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res = PQexec(op, "BEGIN; LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE");
    ck_assert_int_eq(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    /* The one job thread takes the first request and waits on the lock. */
    first = post_in_child(LIM_Q_PORT, who);
    ck_assert_msg(tu_await_lock_waiter(10000, "orders.orders", NULL),
                  "the first request never waited on the lock");
    sent = util_now_ms();
    for (int i = 0; i < 5; i++)
        rest[i] = post_in_child(LIM_Q_PORT, who);
    /* Two wait in the queue; three are refused while the lock is held. */
    for (end = util_now_ms() + 5000; refused < 3 && util_now_ms() < end;) {
        for (int i = 0; i < 5; i++) {
            if (!done[i] && waitpid(rest[i], &st, WNOHANG) == rest[i]) {
                done[i] = 1;
                refused++;
                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 20,
                              "a request past the queue's bound: exit %d, want a 503 with"
                              " Retry-After (20)",
                              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            }
        }
        util_sleep_ms(20, NULL);
    }
    if (refused < 3)
        PQfinish(op); /* let the rest finish before failing */
    ck_assert_msg(refused == 3, "%d of 5 requests refused at once with 2 queue places (want 3)",
                  refused);
    /* The queued two are past their deadline now; then the lock goes. */
    while (util_now_ms() < sent + 1500)
        util_sleep_ms(50, NULL);
    PQfinish(op);
    ck_assert_int_eq(waitpid(first, &st, 0), first);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 10, "the running request: exit %d, want 201",
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    for (int i = 0; i < 5; i++) {
        if (done[i])
            continue;
        ck_assert_int_eq(waitpid(rest[i], &st, 0), rest[i]);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 20,
                      "a request that waited past its deadline: exit %d, want 503 (20)",
                      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    /* The dropped ones never ran: one order of this customer. */
    ck_assert_int_eq(tu_count("SELECT count(*) FROM orders.orders WHERE customer_id = $1", who), 1);
    tu_svc_stop_ok(&api);
}
END_TEST

/* A till's sale at the contract's maxima (100 lines of 10 000 units at
 * 10 M each: total 10^15 minor units) with the tax rate at its maximum
 * (TAX_RATE_BP=10000, 100 %): the tax part is exactly half, 5 * 10^14, where
 * gross * rate alone (10^19) does not fit in 64 bits. The SKUs are in no
 * stock, so inventory, when it sees the sale later, moves nothing. */
START_TEST(billing_taxes_a_sale_at_the_contract_maxima_exactly)
{
    const char *env[] = {"METRICS_PORT=" LIM_BILL_PORT, "TAX_RATE_BP=10000", NULL};
    mq_conn *c;
    ev_event ev;
    sale_completed *s = &ev.u.sale_completed;
    char id[UUID_STR_LEN];
    tu_svc bill;

    start_limited(&bill, "billing", "BILLING_DATABASE_URL", "BILLING_AMQP_URL", LIM_BILL_PORT, env);
    c = tu_publisher("TEST_AMQP_URL", "check_workers");
    ev_init(&ev, EV_SALE_COMPLETED);
    uuid_v4(s->sale_id);
    memcpy(id, s->sale_id, UUID_STR_LEN);
    strcpy(s->store_id, "MAX-01");
    strcpy(s->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&s->lines, EV_LINES_MAX), 0);
    for (int i = 0; i < EV_LINES_MAX; i++) {
        snprintf(s->lines.items[i].sku, sizeof(s->lines.items[i].sku), "MAXTEST-%03d", i);
        s->lines.items[i].quantity = EV_QTY_MAX;
        s->lines.items[i].unit_price = EV_PRICE_MAX;
    }
    s->total = EV_TOTAL_MAX;
    ev_now_rfc3339(s->paid_at);
    publish(c, &ev, id);
    await("SELECT count(*) FROM billing.invoices WHERE sale_id = $1"
          " AND amount_minor = 1000000000000000 AND tax_minor = 500000000000000"
          " AND net_minor = 500000000000000",
          id, 1);
    ev_free(&ev);
    mq_free(c);
    tu_svc_stop_ok(&bill);
}
END_TEST

/* ------------------------------------------------ modes */

/* --declare-topology reads only what declaring needs: a DATABASE_URL_FILE
 * that points nowhere (and no DATABASE_URL) does not stop it, nor do
 * settings only running reads, set to nonsense, for every worker (the
 * runtime's, and each service's own: email's MAIL_* and SMTP_URL, billing's
 * CREDIT_LIMIT_MINOR and TAX_RATE_BP, order-api's ORDER_*, API_TOKENS_FILE
 * and OPS_*; `make migrate` runs it so). */
START_TEST(declaring_the_topology_needs_no_database_url)
{
    static const char *const names[] = {"inventory", "billing", "email", "order-api"};
    /* Two sets, as a start takes at most 21 entries: the runtime's
     * settings, then each service's own. */
    static const char *const runtime[] = {"DATABASE_URL_FILE=/nonexistent/database-url",
                                          "PREFETCH=none",
                                          "BATCH_MAX=none",
                                          "HEARTBEAT_S=none",
                                          "CRASH_AFTER_COMMIT=none",
                                          "OUTBOX_PARK_AFTER=none",
                                          "OUTBOX_PARK_MIN_AGE_S=none",
                                          "METRICS_PORT=none",
                                          "HTTP_PORT=none",
                                          "HTTP_THREADS=none",
                                          "MAX_BODY_BYTES=none",
                                          "HTTP_TIMEOUT_S=none",
                                          "HTTP_CONN_LIMIT=none",
                                          "HTTP_PER_IP_LIMIT=none",
                                          "HTTP_QUEUE_MAX=none",
                                          "HTTP_QUEUE_DEADLINE_MS=none",
                                          "READY_MAX_OUTBOX=none",
                                          "READY_MAX_OUTBOX_AGE_S=none",
                                          "DB_STATEMENT_TIMEOUT_MS=none",
                                          "DB_LOCK_TIMEOUT_MS=none",
                                          "DB_IDLE_TX_TIMEOUT_MS=none",
                                          NULL};
    static const char *const own[] = {"DATABASE_URL_FILE=/nonexistent/database-url",
                                      "OPS_PORT=none",
                                      "CREDIT_LIMIT_MINOR=none",
                                      "TAX_RATE_BP=none",
                                      "ORDER_BATCH_MAX=none",
                                      "ORDER_WRITE_TIMEOUT_MS=none",
                                      "API_TOKENS_FILE=/nonexistent/api-tokens",
                                      "SMTP_URL=ftp://nowhere",
                                      "MAIL_MAX_ATTEMPTS=none",
                                      "MAIL_RETRY_MAX_MS=none",
                                      "MAIL_LEASE_S=2",
                                      "MAIL_SMTP_TIMEOUT_S=600",
                                      "MAIL_READY_MAX_PENDING=none",
                                      "MAIL_READY_MAX_AGE_S=none",
                                      NULL};
    static const char *const *const sets[] = {runtime, own};
    for (size_t k = 0; k < sizeof(sets) / sizeof(sets[0]); k++) {
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            char *argv[] = {(char *)names[i], "--declare-topology", NULL};
            char log[64];
            const tu_svc_opts o = {.exe = names[i],
                                   .amqp_env = "TEST_AMQP_URL",
                                   .env = sets[k],
                                   .argv = argv,
                                   .log = log};
            tu_svc s;
            int st;
            snprintf(log, sizeof(log), "%s-declare", names[i]);
            tu_svc_spawn(&s, &o);
            st = tu_svc_wait(&s, 30000);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                tu_svc_fail(&s, "--declare-topology failed without a database URL");
        }
    }
}
END_TEST

/* ---------------------------------------------------------------- ledger */

/* What the ledger reports as stuck: its RESULT total and the parts of its
 * "stuck" line (-1 each when the line is missing). */
typedef struct {
    long total, outbox, parked, mail, retry, unacked;
} ledger_stuck_figures;

/* Runs the ledger over billing's queues, with --ids ids when ids is not
 * NULL (the run: its orders' and sales' outbox rows and mail only). */
static ledger_stuck_figures ledger_run(const char *ids)
{
    static const char *const env[] = {"LEDGER_SERVICES=billing", NULL};
    char *argv[] = {"ledger", "--ids", (char *)ids, NULL};
    const tu_svc_opts o = {.exe = "ledger",
                           .amqp_env = "TEST_AMQP_URL",
                           .db_env = "OWNER_DATABASE_URL",
                           .env = env,
                           .argv = ids ? argv : NULL};
    ledger_stuck_figures f = {-1, -1, -1, -1, -1, -1};
    char *out, *save = NULL;
    tu_tool(&o, &out);
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        const char *p = strstr(line, "stuck=");
        if (strncmp(line, "RESULT ", 7) == 0 && p)
            f.total = strtol(p + 6, NULL, 10);
        (void)sscanf(line,
                     "stuck %ld outbox row(s) unpublished, %ld parked, %ld mail(s) undelivered, "
                     "%ld message(s) in retry tiers, %ld delivered and not acked",
                     &f.outbox, &f.parked, &f.mail, &f.retry, &f.unacked);
    }
    free(out);
    return f;
}

/* Whether the RESULT's stuck total is the sum of the parts its "stuck" line
 * prints (the management API's unacked figure may trail an earlier test's
 * consumer by a few seconds, so two runs are not compared). */
static int ledger_stuck_adds_up(const ledger_stuck_figures *f)
{
    return f->outbox >= 0 && f->parked >= 0 && f->mail >= 0 && f->retry >= 0 && f->unacked >= 0 &&
           f->total == f->outbox + f->parked + f->mail + f->retry + f->unacked;
}

/* The ledger's stuck count over billing's queues (-1: no RESULT line). */
static long ledger_stuck(void)
{
    return ledger_run(NULL).total;
}

static int ledger_stuck_is(void *arg)
{
    return ledger_stuck() == *(long *)arg;
}

/* A MGMT_URL past the ledger's cap (511 bytes) is refused, not cut: here the
 * first 511 bytes are a working address (dot segments, which curl removes)
 * and the rest points nowhere, so a cut one would check the queues at an
 * address no one gave. */
START_TEST(a_management_url_past_its_cap_is_refused_not_cut)
{
    const char *port = getenv("MGMT_PORT");
    char url[700], var[720];
    const char *env[] = {"LEDGER_SERVICES=billing", var, NULL};
    const tu_svc_opts o = {.exe = "ledger",
                           .amqp_env = "TEST_AMQP_URL",
                           .db_env = "OWNER_DATABASE_URL",
                           .env = env,
                           .log = "ledger-mgmt-url"};
    char *out;
    int n = snprintf(url, sizeof(url), "http://127.0.0.1:%s", port && *port ? port : "15672"), rc;

    if (n % 2 == 0)
        n += snprintf(url + n, sizeof(url) - (size_t)n, "/a/.."); /* the cut falls on a '.' */
    while (n < 511)
        n += snprintf(url + n, sizeof(url) - (size_t)n, "/.");
    snprintf(url + n, sizeof(url) - (size_t)n, "/nowhere");
    snprintf(var, sizeof(var), "MGMT_URL=%s", url);
    rc = tu_tool(&o, &out);
    ck_assert_msg(rc != 0 && !strstr(out, "RESULT "),
                  "the ledger took a MGMT_URL of %zu bytes (exit %d): %s", strlen(url), rc, out);
    free(out);
}
END_TEST

/* A message a consumer holds unacked is work in flight, not done: the ledger
 * counts it as stuck (a passive queue.declare sees only ready messages). */
START_TEST(the_ledger_counts_a_message_held_unacked_as_stuck)
{
    char err[MQ_ERR_LEN], id[UUID_STR_LEN];
    amqp_connection_state_t a;
    amqp_envelope_t env;
    struct timeval tv = {10, 0};
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    mq_msg m = {0};
    long before = ledger_stuck(), want = before + 1;
    int held;

    ck_assert_int_ge(before, 0);
    /* A consumer of billing's queue that takes one message and keeps it. */
    a = tu_amqp_open("TEST_AMQP_URL");
    amqp_basic_qos(a, 1, 0, 1, 0);
    amqp_basic_consume(a, 1, amqp_cstring_bytes("billing"), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(a).reply_type, AMQP_RESPONSE_NORMAL);
    uuid_v4(id);
    m.routing_key = RK_INVENTORY_RESERVED; /* billing's */
    m.message_id = id;
    m.body = "{}";
    m.len = 2;
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    amqp_maybe_release_buffers(a);
    ck_assert_int_eq(amqp_consume_message(a, &env, &tv, 0).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_destroy_envelope(&env);
    /* The management API's figures may trail by a few seconds. */
    held = tu_poll(20000, ledger_stuck_is, &want);
    amqp_connection_close(a, AMQP_REPLY_SUCCESS); /* back to the queue... */
    amqp_destroy_connection(a);
    ck_assert_int_ge(mq_purge(c, "billing", err, sizeof(err)), 0); /* ...and away */
    mq_free(c);
    ck_assert_msg(held, "ledger stuck=%ld with a message held unacked (before: %ld)",
                  ledger_stuck(), before);
}
END_TEST

/* An outbox row of the run that the relay has not published is work neither
 * lost nor done: stuck. The row is held FOR UPDATE from another session, so
 * no relay (it claims rows SKIP LOCKED) can publish it meanwhile; the run is
 * given by --ids (a sale the row is about), and a row about anything else is
 * not the run's. */
START_TEST(the_ledger_counts_an_unpublished_outbox_row_of_the_run_as_stuck)
{
    char sale[UUID_STR_LEN], other[UUID_STR_LEN], msg1[UUID_STR_LEN], msg2[UUID_STR_LEN];
    char ids[] = "/tmp/check_workers-ledger-XXXXXX";
    const char *url = tu_env("OWNER_DATABASE_URL");
    const char *p1[] = {msg1, sale}, *p2[] = {msg2, other};
    const char *ins = "INSERT INTO billing.outbox (message_id, routing_key, correlation_id, body)"
                      " VALUES ($1, 'billing.test_stuck', $2, '{}')";
    ledger_stuck_figures before, with;
    PGconn *hold;
    PGresult *r;
    FILE *f;
    int fd;

    uuid_v4(sale);
    uuid_v4(other);
    uuid_v4(msg1);
    uuid_v4(msg2);
    fd = mkstemp(ids);
    ck_assert_int_ge(fd, 0);
    ck_assert_ptr_nonnull(f = fdopen(fd, "w"));
    fprintf(f, "S %s\n", sale);
    ck_assert_int_eq(fclose(f), 0);
    before = ledger_run(ids);
    ck_assert_int_ge(before.total, 0);
    ck_assert_int_eq(before.outbox, 0);

    free(tu_sql(url, ins, 2, p1));
    free(tu_sql(url, ins, 2, p2)); /* another run's */
    hold = PQconnectdb(url);
    ck_assert_int_eq(PQstatus(hold), CONNECTION_OK);
    r = PQexec(hold, "BEGIN");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexecParams(hold, "SELECT id FROM billing.outbox WHERE message_id = $1 FOR UPDATE", 1,
                     NULL, p1, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    ck_assert_int_eq(PQntuples(r), 1);
    PQclear(r);

    with = ledger_run(ids);

    PQfinish(hold);
    free(tu_sql(url, "DELETE FROM billing.outbox WHERE message_id IN ($1, $2)", 2,
                (const char *[]){msg1, msg2}));
    unlink(ids);
    ck_assert_msg(with.outbox == 1, "ledger: %ld outbox row(s) unpublished, want 1", with.outbox);
    ck_assert_msg(ledger_stuck_adds_up(&with) && with.total >= 1,
                  "ledger stuck=%ld with an unpublished outbox row of the run", with.total);
}
END_TEST

/* A message left in a retry tier is work neither lost nor done: stuck. It is
 * published as the administrator straight into billing's longest tier
 * (billing.retry.60000ms: 60 s before the broker moves it back, longer than
 * the test), with a correlation id, and purged after. */
START_TEST(the_ledger_counts_a_message_in_a_retry_tier_as_stuck)
{
    char err[MQ_ERR_LEN], id[UUID_STR_LEN], corr[UUID_STR_LEN];
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_workers");
    mq_msg m = {0};
    ledger_stuck_figures before = ledger_run(NULL), with;

    ck_assert_int_ge(before.total, 0);
    uuid_v4(id);
    uuid_v4(corr);
    m.exchange = ""; /* the default exchange: the routing key is the queue */
    m.routing_key = "billing.retry.60000ms";
    m.type = RK_INVENTORY_RESERVED;
    m.message_id = id;
    m.correlation_id = corr;
    m.body = "{}";
    m.len = 2;
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);

    with = ledger_run(NULL);

    ck_assert_int_ge(mq_purge(c, "billing.retry.60000ms", err, sizeof(err)), 0);
    ck_assert_int_ge(mq_purge(c, "billing", err, sizeof(err)), 0); /* had it moved */
    mq_free(c);
    ck_assert_msg(with.retry == before.retry + 1, "ledger: %ld message(s) in retry tiers, want %ld",
                  with.retry, before.retry + 1);
    ck_assert_msg(ledger_stuck_adds_up(&with) && with.total >= 1,
                  "ledger stuck=%ld with a message in a retry tier", with.total);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("workers");
    TCase *t = tcase_create("flow"), *l, *m;
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 90);
    tcase_add_test(t, a_placed_order_is_reserved_invoiced_and_confirmed_by_mail);
    tcase_add_test(t, an_order_for_missing_stock_is_rejected_and_stock_is_unchanged);
    tcase_add_test(t, a_failed_payment_releases_the_stock);
    tcase_add_test(t, a_pos_sale_takes_stock_and_is_invoiced_with_a_receipt);
    tcase_add_test(t, a_sale_resent_under_a_new_message_id_takes_stock_once);
    tcase_add_test(t, a_sale_id_seen_before_with_other_lines_changes_nothing_and_is_dead_lettered);
    tcase_add_test(t, concurrent_orders_for_the_last_units_never_oversell);
    tcase_add_test(t, orders_of_one_set_are_reserved_all_or_nothing_in_order_of_arrival);
    tcase_add_test(t, a_failing_order_in_a_set_holds_back_nothing);
    suite_add_tcase(s, t);
    l = tcase_create("limits");
    tcase_set_timeout(l, 90);
    tcase_add_test(l, a_held_row_lock_times_out_and_retries_and_health_stays_fast);
    tcase_add_test(l, billing_taxes_a_sale_at_the_contract_maxima_exactly);
    tcase_add_test(l, the_api_job_queue_is_bounded_and_drops_requests_past_their_deadline);
    suite_add_tcase(s, l);
    m = tcase_create("modes");
    tcase_set_timeout(m, 90);
    tcase_add_test(m, declaring_the_topology_needs_no_database_url);
    suite_add_tcase(s, m);
    l = tcase_create("ledger");
    tcase_set_timeout(l, 60);
    tcase_add_test(l, the_ledger_counts_a_message_held_unacked_as_stuck);
    tcase_add_test(l, a_management_url_past_its_cap_is_refused_not_cut);
    tcase_add_test(l, the_ledger_counts_an_unpublished_outbox_row_of_the_run_as_stuck);
    tcase_add_test(l, the_ledger_counts_a_message_in_a_retry_tier_as_stuck);
    suite_add_tcase(s, l);
    return tu_run(s);
}
