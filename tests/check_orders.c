/*
 * check_orders.c — order-api's group commit (services/order-api/writer.c),
 * its Idempotency-Key found by the write (store.c) or by the lookup after it
 * or after a refusal (routes.c, idempotency.c) and its price cache
 * (pricing.c) against the real order-api, its workers and PostgreSQL. (Over
 * 600 lines: the three share the suite's services and request helpers, and a
 * second suite would start them all again.)
 *
 * To make orders arrive "together" without trusting timing, a test holds
 * orders.order_lines in SHARE mode from another session: the writer's next
 * write waits on it, a lone order first; the orders posted meanwhile queue
 * behind it; when the lock goes they are written. Which orders one
 * transaction wrote is read from the xmin of their lines (an order's own row
 * gets a new xmin each time its status moves).
 */
#include "events.h"
#include "testutil.h"
#include "util.h"

#include <cJSON.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define API_PORT "18070"
#define API      "http://127.0.0.1:" API_PORT
#define SKU      "FLT-PAPER"

static const char *const names[] = {"inventory", "billing", "email", "order-api"};
static const char *const urls[] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                   "EMAIL_DATABASE_URL", "ORDERS_DATABASE_URL"};
static const char *const amqp[] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL", "EMAIL_AMQP_URL",
                                   "ORDER_API_AMQP_URL"};
static tu_svc svcs[4];

/* The whole suite, order-api with 16 job threads (so 15 orders can wait for
 * one write), lock waits far longer than a test holds its lock, outbox
 * sweeps a minute apart (only a wake-up sends an event promptly), and no
 * price cache: the group commit tests see an order reach the writer by its
 * job thread's price lookup (priced). The cache's tests start an order-api
 * of their own. */
static void start_all(void)
{
    for (int i = 0; i < 4; i++) {
        char port[32], log[64], url[128];
        const char *env[] = {port,
                             "HTTP_PORT=" API_PORT,
                             "OPS_PORT=0",
                             "HTTP_THREADS=16",
                             "DB_LOCK_TIMEOUT_MS=60000",
                             "OUTBOX_SWEEP_MS=60000",
                             "PRICE_CACHE_MAX_AGE_MS=0",
                             TU_API_TOKENS,
                             NULL};
        tu_svc_opts o = {.exe = names[i],
                         .amqp_env = amqp[i],
                         .db_env = urls[i],
                         .env = env,
                         .log = log,
                         .ready_url = url};
        snprintf(port, sizeof(port), "METRICS_PORT=%d", 19171 + i);
        snprintf(log, sizeof(log), "orders-%s", names[i]);
        if (i < 3)
            snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", 19171 + i);
        else
            snprintf(url, sizeof(url), API "/readyz");
        tu_svc_spawn(&svcs[i], &o);
    }
    for (int i = 0; i < 4; i++)
        tu_svc_await(&svcs[i]);
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(sku, 100000 - on_hand, 'check_orders: stock')"
                " FROM inventory.stock WHERE sku = '" SKU "'",
                0, NULL));
}

static void stop_all(void)
{
    for (int i = 3; i >= 0; i--)
        tu_svc_stop_ok(&svcs[i]);
}

/* ------------------------------------------------------------- requests */

/* One POST /orders and what came back. */
typedef struct {
    const char *base;
    const char *sku; /* NULL: SKU */
    char customer[96];
    char key[96]; /* "": no Idempotency-Key */
    int qty;
    long code;
    char id[UUID_STR_LEN];
    char got_customer[96]; /* the 201's customer_id */
    long got_qty;          /* the 201's one line's quantity */
    long got_price;        /* ...and its unit price */
} post;

/* The body do_post sends for p. */
static void post_body(const post *p, char *body, size_t n)
{
    snprintf(body, n,
             "{\"customer_id\":\"%s\",\"customer_email\":\"gc@example.com\",\"currency\":\"EUR\","
             "\"items\":[{\"sku\":\"%s\",\"quantity\":%d}]}",
             p->customer, p->sku ? p->sku : SKU, p->qty);
}

static void *do_post(void *arg)
{
    post *p = arg;
    char body[512], keyhdr[128], *resp = NULL;
    const char *hdrs[] = {"Content-Type: application/json", TU_API_AUTH, p->key[0] ? keyhdr : NULL,
                          NULL};
    cJSON *j;

    snprintf(keyhdr, sizeof(keyhdr), "Idempotency-Key: %s", p->key);
    post_body(p, body, sizeof(body));
    p->code = tu_http("POST", p->base ? p->base : API "/orders", hdrs, body, strlen(body), &resp);
    p->id[0] = p->got_customer[0] = '\0';
    p->got_qty = p->got_price = -1;
    if ((j = cJSON_Parse(resp)) != NULL) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "customer_id");
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(j, "items");
        const cJSON *line = cJSON_GetArrayItem(items, 0);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(line, "quantity");
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(line, "unit_price_minor");
        if (cJSON_IsString(id))
            snprintf(p->id, sizeof(p->id), "%s", id->valuestring);
        if (cJSON_IsString(c))
            snprintf(p->got_customer, sizeof(p->got_customer), "%s", c->valuestring);
        if (cJSON_IsNumber(q) && cJSON_GetArraySize(items) == 1)
            p->got_qty = (long)q->valuedouble;
        if (cJSON_IsNumber(pr) && cJSON_GetArraySize(items) == 1)
            p->got_price = (long)pr->valuedouble;
        cJSON_Delete(j);
    }
    free(resp);
    return NULL;
}

typedef struct {
    const char *since;
    long want;
} priced_arg;

/* `want` order-api connections have priced an order since `since` and gone
 * idle: their requests are at the writer (or a moment from it). */
static int priced(void *arg)
{
    const priced_arg *a = arg;
    const char *p[] = {a->since};
    /* As order-api's own role: the only one (but a superuser) that may read
     * the state and query of its sessions. */
    return tu_sql_int(tu_env("ORDERS_DATABASE_URL"),
                      "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
                      " AND state = 'idle' AND query LIKE 'SELECT sku, price_minor%'"
                      " AND state_change > $1::timestamptz",
                      1, p) >= a->want;
}

/* Posts p[0] alone while order_lines is held, then p[1..n) together, and
 * lets the lock go once they have all been priced: p[0] is written alone,
 * the others queue behind it and are written together. */
static void post_held(post *p, size_t n)
{
    PGconn *hold = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    char *since = tu_sql(tu_env("OWNER_DATABASE_URL"), "SELECT clock_timestamp()::text", 0, NULL);
    priced_arg pa = {since, (long)n};
    pthread_t t[16]; /* order-api's 16 job threads: all wait for the writer */
    PGresult *r;

    ck_assert(n <= sizeof(t) / sizeof(t[0]));
    ck_assert_int_eq(PQstatus(hold), CONNECTION_OK);
    r = PQexec(hold, "BEGIN; LOCK TABLE orders.order_lines IN SHARE MODE");
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQerrorMessage(hold));
    PQclear(r);
    ck_assert_int_eq(pthread_create(&t[0], NULL, do_post, &p[0]), 0);
    ck_assert_msg(tu_await_lock_waiter(10000, "orders.order_lines", NULL),
                  "the writer never waited for the lock");
    for (size_t i = 1; i < n; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, do_post, &p[i]), 0);
    ck_assert_msg(tu_poll(10000, priced, &pa), "the %zu orders were not all priced", n);
    r = PQexec(hold, "COMMIT");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(hold);
    for (size_t i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    free(since);
}

/* n posts for customers "<tag>-<i>", quantity 1 + i % 3, every other one with
 * an Idempotency-Key of its own. */
static void make_posts(post *p, size_t n, const char *tag)
{
    for (size_t i = 0; i < n; i++) {
        memset(&p[i], 0, sizeof(p[i]));
        snprintf(p[i].customer, sizeof(p[i].customer), "%s-%zu", tag, i);
        if (i % 2)
            snprintf(p[i].key, sizeof(p[i].key), "%s-key-%zu", tag, i);
        p[i].qty = 1 + (int)(i % 3);
    }
}

/* p answered 201 with its own order: its customer and quantity, and
 * GET /orders/{id} says the same. */
static void assert_own_order(const post *p)
{
    char url[128], *resp = NULL;
    const char *hdrs[] = {TU_API_AUTH, NULL};
    cJSON *j;
    const cJSON *c;

    ck_assert_msg(p->code == 201, "%s: status %ld, want 201", p->customer, p->code);
    ck_assert_str_eq(p->got_customer, p->customer);
    ck_assert_int_eq(p->got_qty, p->qty);
    snprintf(url, sizeof(url), API "/orders/%s", p->id);
    ck_assert_int_eq(tu_http("GET", url, hdrs, NULL, 0, &resp), 200);
    j = cJSON_Parse(resp);
    c = cJSON_GetObjectItemCaseSensitive(j, "customer_id");
    ck_assert_msg(cJSON_IsString(c) && strcmp(c->valuestring, p->customer) == 0,
                  "GET %s is not %s's order", p->id, p->customer);
    cJSON_Delete(j);
    free(resp);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM orders.orders WHERE customer_id = $1", p->customer), 1);
}

/* The most orders of customers "<tag>-*" one transaction wrote, by the xmin
 * of their lines (never updated; the order's own row is, as it moves on). */
static long largest_write(const char *tag)
{
    return tu_count("SELECT coalesce(max(c), 0) FROM (SELECT count(DISTINCT l.order_id) AS c"
                    " FROM orders.order_lines l JOIN orders.orders o ON o.id = l.order_id"
                    " WHERE o.customer_id LIKE $1 || '-%' GROUP BY l.xmin::text) x",
                    tag);
}

/* ----------------------------------------------------------------- tests */

/* Orders that arrive while a write is under way are written together, in one
 * transaction (their lines and first timeline entries share an xmin), and
 * each request gets its own order back; the order that came alone was
 * written at once, alone. */
START_TEST(orders_posted_together_are_committed_together_and_each_gets_its_own)
{
    enum { N = 12 };
    post p[N];
    char tag[64];

    snprintf(tag, sizeof(tag), "gc-%lld", (long long)util_wall_us());
    make_posts(p, N, tag);
    post_held(p, N);
    for (int i = 0; i < N; i++)
        assert_own_order(&p[i]);
    ck_assert_msg(largest_write(tag) >= 2,
                  "no two orders were written in one transaction (largest write: %ld)",
                  largest_write(tag));
    /* The lone order was not kept to fill a batch: written alone. */
    ck_assert_int_eq(tu_count("SELECT count(DISTINCT l.order_id) FROM orders.order_lines l,"
                              " orders.order_lines a JOIN orders.orders ao ON ao.id = a.order_id"
                              " WHERE ao.customer_id = $1 || '-0' AND l.xmin::text = a.xmin::text",
                              tag),
                     1);
    /* An order's first timeline entry is in the transaction of its lines. */
    ck_assert_int_eq(tu_count("SELECT count(*) FROM orders.orders o"
                              " JOIN orders.order_lines l ON l.order_id = o.id"
                              " JOIN orders.order_timeline t ON t.order_id = o.id"
                              " AND t.status = 'PENDING' WHERE o.customer_id LIKE $1 || '-%'"
                              " AND t.xmin::text <> l.xmin::text",
                              tag),
                     0);
    /* Each goes its way once: one invoice per order. */
    tu_await_count(
        30000,
        "SELECT count(*) FROM billing.invoices i JOIN orders.orders o ON o.id = i.order_id"
        " WHERE o.customer_id LIKE $1 || '-%'",
        tag, N);
}
END_TEST

/* One order of a batch breaks a constraint (one the test adds, NOT VALID,
 * that only that order's customer breaks): the batch's statement fails, and
 * the batch is written again one order at a time, so every other order is
 * stored and answered 201, and only the bad one gets its 500. */
START_TEST(a_failing_order_in_a_batch_holds_back_nothing)
{
    enum { N = 10, BAD = 4 };
    post p[N];
    char tag[64], log[600], sql[512], err[512];
    long fallbacks0;

    snprintf(tag, sizeof(tag), "gcf-%lld", (long long)util_wall_us());
    make_posts(p, N, tag);
    /* DDL takes no parameters: the name and value are the test's own digits. */
    snprintf(sql, sizeof(sql),
             "ALTER TABLE orders.orders ADD CONSTRAINT \"%s\" CHECK (customer_id <> '%s')"
             " NOT VALID",
             tag, p[BAD].customer);
    ck_assert_msg(tu_sql_try(tu_env("OWNER_DATABASE_URL"), sql, err, sizeof(err)) == 0, "%s", err);
    snprintf(log, sizeof(log), "%s", svcs[3].log);
    fallbacks0 = tu_file_count(log, "writing them one by one", NULL);
    post_held(p, N);
    snprintf(sql, sizeof(sql), "ALTER TABLE orders.orders DROP CONSTRAINT \"%s\"", tag);
    ck_assert_msg(tu_sql_try(tu_env("OWNER_DATABASE_URL"), sql, err, sizeof(err)) == 0, "%s", err);

    for (int i = 0; i < N; i++) {
        if (i != BAD)
            assert_own_order(&p[i]);
    }
    ck_assert_msg(p[BAD].code == 500, "the bad order: status %ld, want 500", p[BAD].code);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM orders.orders WHERE customer_id = $1", p[BAD].customer), 0);
    /* ...and the path taken was the batch's failure and the fallback. */
    ck_assert_msg(tu_file_count(log, "writing them one by one", NULL) > fallbacks0,
                  "no batch failed and was written again one by one");
    tu_await_count(
        30000,
        "SELECT count(*) FROM billing.invoices i JOIN orders.orders o ON o.id = i.order_id"
        " WHERE o.customer_id LIKE $1 || '-%'",
        tag, N - 1);
}
END_TEST

/* Two requests with one Idempotency-Key and different bodies, and two with
 * another key and the same body, wait in one batch with others: the write
 * finds the keys itself (no statement fails, nothing is written again one
 * by one): of the first two one wins and the other gets its 409; of the
 * second two one wins and the other is answered with the winner's order. */
START_TEST(one_key_twice_in_a_batch_makes_one_order)
{
    enum { N = 10, A = 3, B = 5, C = 6, D = 8 };
    post p[N];
    char tag[64], key[96], same[96], log[600];
    long fallbacks0, winner;

    snprintf(tag, sizeof(tag), "gcd-%lld", (long long)util_wall_us());
    make_posts(p, N, tag);
    snprintf(key, sizeof(key), "%s-shared", tag);
    snprintf(same, sizeof(same), "%s-same", tag);
    snprintf(p[A].key, sizeof(p[A].key), "%s", key);
    snprintf(p[B].key, sizeof(p[B].key), "%s", key);
    p[A].qty = 1;
    p[B].qty = 2;
    snprintf(p[C].key, sizeof(p[C].key), "%s", same);
    snprintf(p[D].key, sizeof(p[D].key), "%s", same);
    snprintf(p[D].customer, sizeof(p[D].customer), "%s", p[C].customer);
    p[D].qty = p[C].qty;
    snprintf(log, sizeof(log), "%s", svcs[3].log);
    fallbacks0 = tu_file_count(log, "writing them one by one", NULL);
    post_held(p, N);

    for (int i = 0; i < N; i++) {
        if (i != A && i != B && i != C && i != D)
            assert_own_order(&p[i]);
    }
    ck_assert_msg((p[A].code == 201 && p[B].code == 409) || (p[A].code == 409 && p[B].code == 201),
                  "the two requests with one key: %ld and %ld, want 201 and 409", p[A].code,
                  p[B].code);
    winner = p[A].code == 201 ? A : B;
    assert_own_order(&p[winner]);
    ck_assert_int_eq(tu_count("SELECT count(*) FROM orders.orders WHERE idempotency_key = $1", key),
                     1);
    ck_assert_msg((p[C].code == 201 && p[D].code == 200) || (p[C].code == 200 && p[D].code == 201),
                  "the two same requests: %ld and %ld, want 201 and 200", p[C].code, p[D].code);
    ck_assert_str_eq(p[C].id, p[D].id);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM orders.orders WHERE idempotency_key = $1", same), 1);
    ck_assert_msg(tu_file_count(log, "writing them one by one", NULL) == fallbacks0,
                  "a batch was written again one by one: the write did not find the keys itself");
    tu_await_count(
        30000,
        "SELECT count(*) FROM billing.invoices i JOIN orders.orders o ON o.id = i.order_id"
        " WHERE o.customer_id LIKE $1 || '-%'",
        tag, N - 2);
}
END_TEST

/* A request does not wait for the writer past ORDER_WRITE_TIMEOUT_MS, and
 * its 503 is never "may have been stored": with the writer held on a lock,
 * its statement ends at DB_STATEMENT_TIMEOUT_MS, well within the wait (as
 * order-api's start insists), so the order it is writing and the one queued
 * behind it are both answered 503 before the wait runs out, and neither is
 * stored once the lock goes. */
START_TEST(a_request_waits_for_the_writer_at_most_order_write_timeout_ms)
{
    const char *env[] = {"HTTP_PORT=18071",
                         "OPS_PORT=0",
                         "ORDER_WRITE_TIMEOUT_MS=6000",
                         "DB_STATEMENT_TIMEOUT_MS=500",
                         "DB_LOCK_TIMEOUT_MS=60000",
                         TU_API_TOKENS,
                         NULL};
    const tu_svc_opts o = {.exe = "order-api",
                           .amqp_env = "ORDER_API_AMQP_URL",
                           .db_env = "ORDERS_DATABASE_URL",
                           .env = env,
                           .log = "orders-order-api-timeout",
                           .ready_url = "http://127.0.0.1:18071/readyz"};
    post p[2];
    pthread_t t[2];
    char tag[64];
    tu_svc api;
    PGconn *hold;
    PGresult *r;
    int64_t t0, took;

    tu_svc_start(&api, &o);
    snprintf(tag, sizeof(tag), "gct-%lld", (long long)util_wall_us());
    make_posts(p, 2, tag);
    p[0].base = p[1].base = "http://127.0.0.1:18071/orders";
    hold = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(hold), CONNECTION_OK);
    r = PQexec(hold, "BEGIN; LOCK TABLE orders.order_lines IN SHARE MODE");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    t0 = util_now_ms();
    ck_assert_int_eq(pthread_create(&t[0], NULL, do_post, &p[0]), 0);
    ck_assert_msg(tu_await_lock_waiter(10000, "orders.order_lines", NULL),
                  "the writer never waited for the lock");
    ck_assert_int_eq(pthread_create(&t[1], NULL, do_post, &p[1]), 0);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    took = util_now_ms() - t0;
    ck_assert_msg(p[0].code == 503 && p[1].code == 503, "statuses %ld and %ld, want 503 and 503",
                  p[0].code, p[1].code);
    ck_assert_msg(took < 5000, "the requests were answered after %lld ms", (long long)took);
    r = PQexec(hold, "COMMIT");
    PQclear(r);
    PQfinish(hold);
    /* Both statements had ended (57014) when their requests were answered:
     * neither order is written, now or later. */
    tu_svc_stop_ok(&api); /* its writer has finished: nothing more can come */
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM orders.orders WHERE customer_id = $1", p[0].customer), 0);
    ck_assert_int_eq(
        tu_count("SELECT count(*) FROM orders.orders WHERE customer_id = $1", p[1].customer), 0);
}
END_TEST

/* A batch that waits past DB_LOCK_TIMEOUT_MS (55P03) for one order's
 * Idempotency-Key, held uncommitted by another session (as another order-api
 * instance's write would), is written again one by one: the neighbours are
 * stored and answered 201, only the held key's order gets its 503. (The
 * limits leave each order, after two lock waits, a statement's time of its
 * wait: the fallback writes no order with less.) */
START_TEST(a_lock_wait_on_one_orders_key_holds_back_nothing)
{
    enum { N = 6, K = 3 };
    const char *env[] = {"HTTP_PORT=18073",
                         "OPS_PORT=0",
                         "HTTP_THREADS=8",
                         "DB_LOCK_TIMEOUT_MS=3000",
                         "DB_STATEMENT_TIMEOUT_MS=6000",
                         "ORDER_WRITE_TIMEOUT_MS=25000",
                         "PRICE_CACHE_MAX_AGE_MS=0", /* see start_all */
                         TU_API_TOKENS,
                         NULL};
    const tu_svc_opts o = {.exe = "order-api",
                           .amqp_env = "ORDER_API_AMQP_URL",
                           .db_env = "ORDERS_DATABASE_URL",
                           .env = env,
                           .log = "orders-order-api-keylock",
                           .ready_url = "http://127.0.0.1:18073/readyz"};
    post p[N];
    char tag[64];
    const char *kp[1];
    tu_svc api;
    PGconn *held;
    PGresult *r;

    tu_svc_start(&api, &o);
    snprintf(tag, sizeof(tag), "gck-%lld", (long long)util_wall_us());
    make_posts(p, N, tag);
    for (int i = 0; i < N; i++)
        p[i].base = "http://127.0.0.1:18073/orders";
    snprintf(p[K].key, sizeof(p[K].key), "%s-held", tag);
    kp[0] = p[K].key;
    held = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(held), CONNECTION_OK);
    r = PQexec(held, "BEGIN");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexecParams(held,
                     "INSERT INTO orders.orders (id, customer_id, customer_email, currency,"
                     " total_minor, idempotency_key, client_id) VALUES (gen_random_uuid(),"
                     " 'held', 'held@example.com', 'EUR', 0, $1, 'tests')",
                     1, NULL, kp, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQerrorMessage(held));
    PQclear(r);
    post_held(p, N); /* p[1..N), p[K] among them, in one batch */
    r = PQexec(held, "ROLLBACK");
    PQclear(r);
    PQfinish(held);
    for (int i = 0; i < N; i++) {
        if (i != K)
            assert_own_order(&p[i]);
    }
    ck_assert_msg(p[K].code == 503, "the held key's order: status %ld, want 503", p[K].code);
    ck_assert_msg(tu_file_count(api.log, "writing them one by one", NULL) > 0,
                  "no batch failed and was written again one by one");
    tu_svc_stop_ok(&api);
}
END_TEST

typedef struct {
    const char *xid;
} xid_arg;

/* A session waits for transaction xid (a unique index's wait for another
 * session's INSERT of the same key). */
static int waits_for_xid(void *arg)
{
    const xid_arg *a = arg;
    const char *p[] = {a->xid};
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                      "SELECT count(*) FROM pg_locks WHERE NOT granted"
                      " AND locktype = 'transactionid' AND transactionid::text = $1",
                      1, p) >= 1;
}

/* Another session inserts an order of the test client with p's key and
 * request_hash `hash` (SQL: "$2" for the hash of p's body; NULL for none),
 * and holds it until p's write waits for it; then it commits. The write's
 * snapshot began before that commit and does not show the earlier order: the
 * lookup after the write answers. held_id: the earlier order's id. */
static void post_against_held_key(post *p, const char *hash, char held_id[UUID_STR_LEN])
{
    PGconn *held = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    char body[512], sql[640];
    const char *hp[2];
    xid_arg xa;
    pthread_t t;
    PGresult *r;

    post_body(p, body, sizeof(body));
    hp[0] = p->key;
    hp[1] = body;
    ck_assert_int_eq(PQstatus(held), CONNECTION_OK);
    r = PQexec(held, "BEGIN");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    snprintf(sql, sizeof(sql),
             "INSERT INTO orders.orders (id, customer_id, customer_email, currency, total_minor,"
             " idempotency_key, request_hash, client_id) VALUES (gen_random_uuid(), 'held',"
             " 'held@example.com', 'EUR', 0, $1, %s, 'tests')"
             " RETURNING id::text, (txid_current() %% 4294967296)::text AS xid, $2::text",
             hash);
    r = PQexecParams(held, sql, 2, NULL, hp, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s", PQerrorMessage(held));
    snprintf(held_id, UUID_STR_LEN, "%s", PQgetvalue(r, 0, 0));
    xa.xid = PQgetvalue(r, 0, 1);
    ck_assert_int_eq(pthread_create(&t, NULL, do_post, p), 0);
    ck_assert_msg(tu_poll(10000, waits_for_xid, &xa), "the write never waited for the held key");
    PQclear(r);
    r = PQexec(held, "COMMIT");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(held);
    pthread_join(t, NULL);
}

/* order-api still answers: GET /readyz 200. */
static void assert_api_alive(const char *after)
{
    char *resp = NULL;
    ck_assert_msg(tu_http("GET", API "/readyz", NULL, NULL, 0, &resp) == 200,
                  "order-api no longer answers after %s", after);
    free(resp);
}

/* A key taken by a transaction that commits while the write waits for it:
 * the write does not see the earlier order, the lookup after it does. The
 * same body is a replay (200, the earlier order) with no batch written again
 * one by one; another body, or an earlier order with no request hash (one
 * written before hashes were kept), a 409; and order-api lives on. */
START_TEST(a_key_committed_while_the_write_waits_is_answered_by_the_lookup)
{
    static const char *const hashes[] = {"encode(sha256(convert_to($2, 'UTF8')), 'hex')",
                                         "encode(sha256('another body'), 'hex')", "NULL"};
    static const long want[] = {200, 409, 409};
    const char *log = svcs[3].log;
    long fallbacks0 = tu_file_count(log, "writing them one by one", NULL);

    for (int i = 0; i < 3; i++) {
        char tag[64], held_id[UUID_STR_LEN];
        post p;
        snprintf(tag, sizeof(tag), "gch%d-%lld", i, (long long)util_wall_us());
        make_posts(&p, 1, tag);
        snprintf(p.key, sizeof(p.key), "%s-key", tag);
        post_against_held_key(&p, hashes[i], held_id);
        assert_api_alive(hashes[i]);
        ck_assert_msg(p.code == want[i], "earlier hash %s: status %ld, want %ld", hashes[i], p.code,
                      want[i]);
        if (want[i] == 200)
            ck_assert_str_eq(p.id, held_id);
        ck_assert_int_eq(
            tu_count("SELECT count(*) FROM orders.orders WHERE idempotency_key = $1", p.key), 1);
    }
    ck_assert_msg(tu_file_count(log, "writing them one by one", NULL) == fallbacks0,
                  "a batch was written again one by one");
}
END_TEST

static int wake_queued(void *arg)
{
    (void)arg;
    return tu_queue_counts("TEST_AMQP_URL", "wake_test", NULL) >= 1;
}

/* order-api wakes its outbox relay when a write commits: with every relay's
 * timer sweep a minute apart (start_all's OUTBOX_SWEEP_MS=60000), the
 * order.placed event of a posted order is on a queue within 3 s of the 201. */
START_TEST(a_committed_order_wakes_the_relay_before_its_sweep)
{
    const char *keys[] = {"order.placed", NULL};
    mq_topology topo = {.queue = "wake_test", .keys = keys, .retry_ms = {1000}};
    const char *purge[] = {"wake_test", NULL};
    char err[MQ_ERR_LEN], tag[64];
    mq_conn *admin = tu_publisher("TEST_AMQP_URL", "check_orders");
    post p;

    ck_assert_msg(mq_declare_topology(admin, &topo, err, sizeof(err)) == MQ_OK, "%s", err);
    tu_purge("TEST_AMQP_URL", purge);
    snprintf(tag, sizeof(tag), "gcw-%lld", (long long)util_wall_us());
    make_posts(&p, 1, tag);
    do_post(&p);
    ck_assert_msg(p.code == 201, "status %ld, want 201", p.code);
    ck_assert_msg(tu_poll(3000, wake_queued, NULL),
                  "order.placed not on a queue within 3 s of the 201 (sweep every 60 s)");
    tu_purge("TEST_AMQP_URL", purge);
    mq_free(admin);
}
END_TEST

/* order-api refuses to start when a request's wait for the writer could end
 * while the writer's statement still runs (ORDER_WRITE_TIMEOUT_MS at or below
 * DB_STATEMENT_TIMEOUT_MS plus the connect timeout, 5 s unless DATABASE_URL
 * says otherwise): that 503 could not say whether the order was stored. */
START_TEST(a_write_wait_within_the_statement_timeout_is_refused_at_start)
{
    static const char *const bad[][3] = {
        {"ORDER_WRITE_TIMEOUT_MS=10000", "DB_STATEMENT_TIMEOUT_MS=15000", NULL},
        {"ORDER_WRITE_TIMEOUT_MS=20000", "DB_STATEMENT_TIMEOUT_MS=15000", NULL},
        {"ORDER_WRITE_TIMEOUT_MS=60000", "DB_STATEMENT_TIMEOUT_MS=0", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *env[] = {"HTTP_PORT=18072", "OPS_PORT=0",  bad[i][0],
                             bad[i][1],         TU_API_TOKENS, NULL};
        const tu_svc_opts o = {.exe = "order-api",
                               .amqp_env = "ORDER_API_AMQP_URL",
                               .db_env = "ORDERS_DATABASE_URL",
                               .env = env,
                               .log = "orders-order-api-refused"};
        tu_svc s;
        int st;
        tu_svc_spawn(&s, &o);
        st = tu_svc_wait(&s, 10000);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s %s: order-api did not exit 1",
                      bad[i][0], bad[i][1]);
        ck_assert_msg(tu_file_count(s.log, "configuration: ORDER_WRITE_TIMEOUT_MS", NULL) > 0,
                      "%s %s: no configuration error naming ORDER_WRITE_TIMEOUT_MS", bad[i][0],
                      bad[i][1]);
    }
}
END_TEST

/* ------------------------------------------------------ the price cache */

/* An order-api of its own on port with PRICE_CACHE_MAX_AGE_MS=age, started
 * and listening for catalog changes. */
static int listening(void *arg)
{
    (void)arg;
    /* As order-api's role: it may read its own sessions' queries. In this
     * database only: a demo order-api beside the tests listens as the same role. */
    return tu_sql_int(tu_env("ORDERS_DATABASE_URL"),
                      "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
                      " AND datname = current_database()"
                      " AND application_name = 'order-api-prices'"
                      " AND query = 'LISTEN orders_products'",
                      0, NULL) == 1;
}

/* Its operations listener (/metrics) is on port + 1000, its log
 * orders-order-api-prices-<port>: each test has ports of its own. */
static void start_cached(tu_svc *api, const char *port, const char *age)
{
    char p[32], ops[32], a[64], ready[64], log[64];
    const char *env[] = {p, ops, a, TU_API_TOKENS, NULL};
    const tu_svc_opts o = {.exe = "order-api",
                           .amqp_env = "ORDER_API_AMQP_URL",
                           .db_env = "ORDERS_DATABASE_URL",
                           .env = env,
                           .log = log,
                           .ready_url = ready};
    snprintf(p, sizeof(p), "HTTP_PORT=%s", port);
    snprintf(ops, sizeof(ops), "OPS_PORT=%ld", atol(port) + 1000);
    snprintf(log, sizeof(log), "orders-order-api-prices-%s", port);
    snprintf(a, sizeof(a), "PRICE_CACHE_MAX_AGE_MS=%s", age);
    snprintf(ready, sizeof(ready), "http://127.0.0.1:%s/readyz", port);
    tu_svc_start(api, &o);
    ck_assert_msg(tu_poll(10000, listening, NULL), "the price cache never listened");
}

/* The value of the counter `name` (with its labels) on the /metrics of the
 * order-api start_cached started on port; -1 when it is not there. */
static long cache_stat(const char *port, const char *name)
{
    char url[96], *resp = NULL;
    const char *line;
    long v = -1;
    size_t n = strlen(name);
    snprintf(url, sizeof(url), "http://127.0.0.1:%ld/metrics", atol(port) + 1000);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, 0, &resp), 200);
    for (line = resp; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, n) == 0 && line[n] == ' ') {
            v = atol(line + n + 1);
            break;
        }
    }
    free(resp);
    return v;
}

#define HITS    "ordersuite_price_cache_hits_total"
#define CHANGED "ordersuite_price_cache_drops_total{reason=\"catalog_changed\"}"
#define LOST    "ordersuite_price_cache_drops_total{reason=\"connection_lost\"}"

typedef struct {
    const char *port, *name;
    long above;
} stat_arg;

static int stat_rose(void *arg)
{
    const stat_arg *a = arg;
    return cache_stat(a->port, a->name) > a->above;
}

/* The cache tests and the refused-order tests price a SKU of their own
 * (add_sku): no test changes a price another reads, and a test that fails
 * leaves only its own SKU behind. */
/* A SKU of the test's own, in the catalog at 100 EUR (no stock: its orders
 * are rejected later, which these tests do not look at). */
static void add_sku(char sku[32])
{
    snprintf(sku, 32, "TST-%lld", (long long)(util_wall_us() % 1000000000));
    ck_assert_int_eq(tu_count("WITH i AS (INSERT INTO orders.products (sku, name, price_minor,"
                              " currency) VALUES ($1, 'check_orders', 100, 'EUR') RETURNING 1)"
                              " SELECT count(*) FROM i",
                              sku),
                     1);
}

static void drop_sku(const char *sku)
{
    free(tu_sql(tu_env("OWNER_DATABASE_URL"), "DELETE FROM orders.products WHERE sku = $1", 1,
                &sku));
}

/* Sets sku's price; with notify 0, with the catalog's trigger off, so no
 * notification tells order-api (as if it were lost). */
static void set_price(const char *sku, long v, int notify)
{
    char sql[512], err[512];
    /* A number and SKU of the test's own (add_sku's pattern): no parameters
     * in a multi-statement string. */
    snprintf(sql, sizeof(sql),
             "BEGIN; %s UPDATE orders.products SET price_minor = %ld WHERE sku = '%s'; %s"
             " COMMIT",
             notify ? "" : "ALTER TABLE orders.products DISABLE TRIGGER products_notify;", v, sku,
             notify ? "" : "ALTER TABLE orders.products ENABLE TRIGGER products_notify;");
    ck_assert_msg(tu_sql_try(tu_env("OWNER_DATABASE_URL"), sql, err, sizeof(err)) == 0, "%s", err);
}

typedef struct {
    const char *base;
    const char *sku;
    long want;
    int64_t late;     /* util_now_ms() from which the old price is wrong (0: none) */
    long stale_late;  /* POSTs begun after late that got another price */
    long stale_early; /* POSTs begun before late that got the old price, `old` */
    long old;
    long n;
} price_poll;

#define MAX_POSTS 300 /* a poll's POSTs at most: tu_poll's 10 s, 20 ms apart, and a margin */

/* One more POST: 1 when it got the price wanted. */
static int priced_at(void *arg)
{
    price_poll *a = arg;
    post p;
    int64_t began = util_now_ms();
    char tag[64];

    snprintf(tag, sizeof(tag), "pc-%lld", (long long)util_wall_us());
    make_posts(&p, 1, tag);
    p.base = a->base;
    p.sku = a->sku;
    do_post(&p);
    ck_assert_msg(p.code == 201, "status %ld, want 201", p.code);
    ck_assert_msg(++a->n <= MAX_POSTS, "more than %d POSTs in one poll", MAX_POSTS);
    if (a->late && began >= a->late && p.got_price != a->want)
        a->stale_late++;
    if (a->late && began < a->late && p.got_price == a->old)
        a->stale_early++;
    return p.got_price == a->want;
}

/* The calls PostgreSQL counted (pg_stat_statements, loaded by make up and
 * created in the tests' database, schema stats, by run-tests.sh) of every
 * statement a POST can make: the price lookup, the key lookups, the batch
 * write and the order's document, by order-api's role (which may read its
 * own statements' text) in this database. Its other statements (the status
 * consumer, the outbox relay, the readiness probe) are not a POST's. */
static long post_path_calls(void)
{
    return (long)tu_sql_int(
        tu_env("ORDERS_DATABASE_URL"),
        "SELECT coalesce(sum(calls), 0) FROM stats.pg_stat_statements"
        " WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND (query LIKE 'SELECT sku, price_minor%' OR query LIKE 'SELECT id, request_hash%'"
        " OR query LIKE 'SELECT id, coalesce(request_hash%'"
        " OR query LIKE 'WITH x AS (SELECT * FROM json_to_recordset%'"
        " OR query LIKE 'WITH o AS (SELECT * FROM orders WHERE id = $1::uuid%')",
        0, NULL);
}

/* With the catalog's prices cached, a POST without an Idempotency-Key makes
 * one statement, the writer's batch (posted one after another, each is its
 * own batch): N POSTs, N calls, all of them the write, and N cache hits. A
 * replay of a key makes two: the write (which finds the key) and the
 * earlier order's document. */
START_TEST(an_order_whose_prices_are_cached_makes_one_round_trip)
{
    enum { N = 6 };
    const char *base = "http://127.0.0.1:18074/orders";
    char sku[32], tag[64];
    price_poll warm = {.base = base, .sku = sku, .want = 100};
    post p[N], k, replay;
    long hits0, calls0;
    tu_svc api;

    add_sku(sku);
    start_cached(&api, "18074", "3600000");
    ck_assert(priced_at(&warm)); /* reads the catalog: fills the cache */
    hits0 = cache_stat("18074", HITS);
    snprintf(tag, sizeof(tag), "pc1-%lld", (long long)util_wall_us());
    make_posts(p, N, tag);
    calls0 = post_path_calls();
    for (int i = 0; i < N; i++) {
        p[i].base = base;
        p[i].sku = sku;
        p[i].key[0] = '\0';
        do_post(&p[i]);
    }
    ck_assert_int_eq(post_path_calls() - calls0, N);
    ck_assert_int_eq(cache_stat("18074", HITS), hits0 + N);
    for (int i = 0; i < N; i++)
        assert_own_order(&p[i]); /* its GET counts: after the count */

    make_posts(&k, 1, tag);
    k.base = base;
    k.sku = sku;
    snprintf(k.key, sizeof(k.key), "%s-key", tag);
    do_post(&k);
    ck_assert_msg(k.code == 201, "status %ld, want 201", k.code);
    replay = k;
    calls0 = post_path_calls();
    do_post(&replay);
    ck_assert_msg(replay.code == 200, "the replay: status %ld, want 200", replay.code);
    ck_assert_str_eq(replay.id, k.id);
    ck_assert_int_eq(post_path_calls() - calls0, 2);
    tu_svc_stop_ok(&api);
    drop_sku(sku);
}
END_TEST

/* A price changed with SQL (the catalog's trigger notifies order-api) is the
 * price of the next orders, though the cache would keep the old one an hour. */
START_TEST(a_price_change_reaches_the_next_order)
{
    const long p0 = 100;
    char sku[32];
    price_poll a = {.base = "http://127.0.0.1:18078/orders", .sku = sku, .want = p0};
    stat_arg dropped = {"18078", CHANGED, 0};
    tu_svc api;

    add_sku(sku);
    start_cached(&api, "18078", "3600000");
    ck_assert(priced_at(&a));
    ck_assert(priced_at(&a)); /* from the cache now */
    ck_assert_int_ge(cache_stat("18078", HITS), 1);
    dropped.above = cache_stat("18078", CHANGED);
    ck_assert_int_ge(dropped.above, 0);
    set_price(sku, p0 + 1, 1);
    ck_assert_msg(tu_poll(10000, stat_rose, &dropped), "the cache was never dropped");
    a.want = p0 + 1;
    ck_assert_msg(priced_at(&a), "the next order after the drop did not get the new price");
    tu_svc_stop_ok(&api);
    drop_sku(sku);
}
END_TEST

/* A change whose notification never comes (the trigger off) is seen anyway
 * once PRICE_CACHE_MAX_AGE_MS has passed: no POST begun that long after the
 * change's commit gets the old price. */
START_TEST(the_price_cache_serves_no_price_past_its_max_age)
{
    const long p0 = 100;
    char sku[32];
    price_poll a = {.base = "http://127.0.0.1:18075/orders", .sku = sku, .want = p0};
    tu_svc api;

    add_sku(sku);
    start_cached(&api, "18075", "2000");
    ck_assert(priced_at(&a));
    set_price(sku, p0 + 2, 0);
    a.want = p0 + 2;
    a.old = p0;
    a.late = util_now_ms() + 2000;
    ck_assert_msg(tu_poll(10000, priced_at, &a), "the new price never came (%ld orders)", a.n);
    ck_assert_msg(a.stale_late == 0, "%ld orders begun past the max age got the old price",
                  a.stale_late);
    /* ...and the cache served: the old price came from it before the max age. */
    ck_assert_msg(a.stale_early >= 1, "no order got the cached old price before the max age");
    ck_assert_int_ge(cache_stat("18075", HITS), 1);
    tu_svc_stop_ok(&api);
    drop_sku(sku);
}
END_TEST

/* When the cache's LISTEN connection is lost, a notification can be lost
 * with it: the cache is dropped, and the next orders read the catalog. The
 * price changes in the transaction that ends the listener's backend, so its
 * notification goes to no one. */
START_TEST(a_lost_listen_connection_drops_the_price_cache)
{
    const long p0 = 100;
    char sku[32];
    price_poll a = {.base = "http://127.0.0.1:18076/orders", .sku = sku, .want = p0};
    char sql[512], err[512];
    tu_svc api;

    stat_arg lost = {"18076", LOST, 0};

    add_sku(sku);
    start_cached(&api, "18076", "3600000");
    ck_assert(priced_at(&a));
    ck_assert(priced_at(&a));
    ck_assert_int_ge(cache_stat("18076", HITS), 1);
    lost.above = cache_stat("18076", LOST);
    ck_assert_int_ge(lost.above, 0);
    snprintf(sql, sizeof(sql),
             "BEGIN; UPDATE orders.products SET price_minor = %ld WHERE sku = '%s';"
             " SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
             " WHERE application_name = 'order-api-prices'; COMMIT",
             p0 + 3, sku);
    ck_assert_msg(tu_sql_try(tu_env("OWNER_DATABASE_URL"), sql, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(tu_poll(10000, stat_rose, &lost), "the cache never counted its connection lost");
    a.want = p0 + 3;
    ck_assert_msg(priced_at(&a), "the next order after the drop did not get the new price");
    ck_assert_msg(tu_file_count(api.log, "lost its LISTEN connection", NULL) > 0,
                  "the cache never saw its connection lost");
    ck_assert_msg(tu_poll(10000, listening, NULL), "the price cache never listened again");
    tu_svc_stop_ok(&api);
    drop_sku(sku);
}
END_TEST

/* Every kind of catalog change drops the cache, not only an UPDATE (the
 * test above): an INSERT, a DELETE, and a TRUNCATE (the catalog put back
 * with the trigger off in the same transaction, so only the TRUNCATE
 * notifies). */
START_TEST(an_insert_a_delete_and_a_truncate_of_the_catalog_each_drop_the_price_cache)
{
    static const char *const what[] = {"INSERT", "DELETE", "TRUNCATE"};
    char sku[32], sql[768], err[512];
    price_poll a = {.base = "http://127.0.0.1:18079/orders", .sku = sku, .want = 100};
    stat_arg dropped = {"18079", CHANGED, 0};
    tu_svc api;

    add_sku(sku);
    start_cached(&api, "18079", "3600000");
    for (int i = 0; i < 3; i++) {
        ck_assert(priced_at(&a));
        ck_assert(priced_at(&a)); /* from the cache */
        dropped.above = cache_stat("18079", CHANGED);
        ck_assert_int_ge(dropped.above, 0);
        if (i == 0)
            snprintf(sql, sizeof(sql),
                     "INSERT INTO orders.products (sku, name, price_minor, currency)"
                     " VALUES ('%s-N', 'check_orders', 1, 'EUR')",
                     sku);
        else if (i == 1)
            snprintf(sql, sizeof(sql), "DELETE FROM orders.products WHERE sku = '%s-N'", sku);
        else
            snprintf(sql, sizeof(sql),
                     "BEGIN; CREATE TEMP TABLE keep AS SELECT * FROM orders.products;"
                     " TRUNCATE orders.products;"
                     " ALTER TABLE orders.products DISABLE TRIGGER products_notify;"
                     " INSERT INTO orders.products SELECT * FROM keep;"
                     " ALTER TABLE orders.products ENABLE TRIGGER products_notify; COMMIT");
        ck_assert_msg(tu_sql_try(tu_env("OWNER_DATABASE_URL"), sql, err, sizeof(err)) == 0,
                      "%s: %s", what[i], err);
        ck_assert_msg(tu_poll(10000, stat_rose, &dropped), "%s: the cache was not dropped",
                      what[i]);
    }
    tu_svc_stop_ok(&api);
    drop_sku(sku);
}
END_TEST

/* ------------------------------------- a key whose order the catalog refuses */

typedef struct {
    post p;
    long code;
} refused_arg;

/* A POST of p (no key) is refused: the catalog change has been seen. */
static int refused_now(void *arg)
{
    refused_arg *a = arg;
    post q = a->p;
    q.key[0] = '\0';
    do_post(&q);
    a->code = q.code;
    return q.code == 422;
}

/* With key K an order is placed; then the catalog changes (change: SQL, $1
 * the SKU) so that the same body is refused (422 without a key). The same
 * body with K is still a replay of the order placed (200, its id), not the
 * 422, and another body with K a 409: an earlier order stands even if the
 * catalog has changed since. */
static void refused_but_replayed(const char *base, const char *change)
{
    char sku[32], tag[64], sql[256];
    refused_arg ra;
    post p, q;

    add_sku(sku);
    snprintf(tag, sizeof(tag), "rfs-%lld", (long long)util_wall_us());
    make_posts(&p, 1, tag);
    p.base = base;
    p.sku = sku;
    snprintf(p.key, sizeof(p.key), "%s-key", tag);
    do_post(&p);
    ck_assert_msg(p.code == 201, "status %ld, want 201", p.code);
    snprintf(sql, sizeof(sql), "WITH c AS (%s RETURNING 1) SELECT count(*) FROM c", change);
    ck_assert_int_eq(tu_count(sql, sku), 1);
    ra.p = p;
    ck_assert_msg(tu_poll(10000, refused_now, &ra), "%s: never refused (last status %ld)", change,
                  ra.code);
    q = p;
    do_post(&q);
    ck_assert_msg(q.code == 200, "%s: the same body and key: status %ld, want 200", change, q.code);
    ck_assert_str_eq(q.id, p.id);
    q = p;
    q.qty = p.qty + 1;
    do_post(&q);
    ck_assert_msg(q.code == 409, "%s: another body, same key: status %ld, want 409", change,
                  q.code);
    drop_sku(sku);
}

START_TEST(a_key_used_before_is_answered_though_the_catalog_now_refuses_its_body)
{
    static const char *const changes[] = {
        "DELETE FROM orders.products WHERE sku = $1",
        "UPDATE orders.products SET currency = 'USD' WHERE sku = $1"};
    tu_svc api;

    for (int i = 0; i < 2; i++)
        refused_but_replayed(API "/orders", changes[i]); /* no cache (start_all) */
    start_cached(&api, "18077", "3600000");
    for (int i = 0; i < 2; i++)
        refused_but_replayed("http://127.0.0.1:18077/orders", changes[i]);
    tu_svc_stop_ok(&api);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("orders");
    TCase *c = tcase_create("group_commit");

    tcase_add_unchecked_fixture(c, start_all, stop_all);
    tcase_set_timeout(c, 90);
    tcase_add_test(c, orders_posted_together_are_committed_together_and_each_gets_its_own);
    tcase_add_test(c, a_failing_order_in_a_batch_holds_back_nothing);
    tcase_add_test(c, one_key_twice_in_a_batch_makes_one_order);
    tcase_add_test(c, a_request_waits_for_the_writer_at_most_order_write_timeout_ms);
    tcase_add_test(c, a_write_wait_within_the_statement_timeout_is_refused_at_start);
    tcase_add_test(c, a_lock_wait_on_one_orders_key_holds_back_nothing);
    tcase_add_test(c, a_key_committed_while_the_write_waits_is_answered_by_the_lookup);
    tcase_add_test(c, a_committed_order_wakes_the_relay_before_its_sweep);
    tcase_add_test(c, an_order_whose_prices_are_cached_makes_one_round_trip);
    tcase_add_test(c, a_price_change_reaches_the_next_order);
    tcase_add_test(c, the_price_cache_serves_no_price_past_its_max_age);
    tcase_add_test(c, a_lost_listen_connection_drops_the_price_cache);
    tcase_add_test(c, an_insert_a_delete_and_a_truncate_of_the_catalog_each_drop_the_price_cache);
    tcase_add_test(c, a_key_used_before_is_answered_though_the_catalog_now_refuses_its_body);
    suite_add_tcase(s, c);
    return tu_run(s);
}
