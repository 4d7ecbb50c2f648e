/*
 * check_e2e.c — the whole suite through its front doors: the real order-api,
 * inventory, billing and email executables (each as its own database role)
 * and the real pos, against the real RabbitMQ and PostgreSQL. Orders go in
 * over HTTP; the assertions read the API and the services' tables.
 *
 * The services start once per test case (an unchecked fixture: twice in
 * all, for "flow" and for "bad_input") on HTTP port 18080, so a running
 * `make demo` on 8080 is not in the way.
 *
 * One file (over 600 lines) on purpose: its tests share two starts of
 * every service (the fixtures), the slow part; a suite per concern would
 * start them once more per suite.
 */
#include "events.h"
#include "testutil.h"
#include "util.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define API "http://127.0.0.1:18080"
#define OPS "http://127.0.0.1:19100" /* order-api's operations listener */
/* The suite's API client: order-api gets its hash in a tokens file. */
#define E2E_TOKEN "e2e-suite-token-Zx8Qm2Lp5Rt7Vw9Ya1Cb3Dn6Fg"
#define AUTH      "Authorization: Bearer " E2E_TOKEN

static const char *const names[] = {"inventory", "billing", "email", "order-api"};
static const char *const urls[] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                   "EMAIL_DATABASE_URL", "ORDERS_DATABASE_URL"};
static const char *const amqp[] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL", "EMAIL_AMQP_URL",
                                   "ORDER_API_AMQP_URL"};
static tu_svc svcs[4];

static const char *const json_hdr[] = {"Content-Type: application/json", AUTH, NULL};
static const char *const auth_hdr[] = {AUTH, NULL};

/* The HTTP side of each service started by start_all: inventory, billing and
 * email's metrics ports, then the API. */
static const char *const bases[] = {"http://127.0.0.1:19101", "http://127.0.0.1:19102",
                                    "http://127.0.0.1:19103", API};

/* The service at base (NULL: order-api) answers /readyz with 200. */
static int ready(void *arg)
{
    char url[128];
    snprintf(url, sizeof(url), "%s/readyz", arg ? (const char *)arg : API);
    return tu_http("GET", url, NULL, NULL, 0, NULL) == 200;
}

/* Writes a tokens file for E2E_TOKEN (client "e2e") into path. */
static void write_tokens(const char *path)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(EVP_Digest(E2E_TOKEN, strlen(E2E_TOKEN), md, &n, EVP_sha256(), NULL) == 1);
    fprintf(f, "e2e ");
    for (unsigned int i = 0; i < n; i++)
        fprintf(f, "%02x", md[i]);
    fprintf(f, "\n");
    ck_assert_int_eq(fclose(f), 0);
}

static void start_all(void)
{
    char tokens[512], tokens_env[600];

    snprintf(tokens, sizeof(tokens), "%s/log/tests/e2e-api-tokens", tu_env("ORDERSUITE_VAR"));
    write_tokens(tokens);

    snprintf(tokens_env, sizeof(tokens_env), "API_TOKENS_FILE=%s", tokens);
    for (int i = 0; i < 4; i++) {
        char port[32], log[64], url[128];
        /* OPS_PORT: order-api's, beside a demo. */
        const char *env[] = {"HTTP_PORT=18080", port, tokens_env, "OPS_PORT=19100", NULL};
        /* Each service as its own broker user and database role; every one
         * of them ready: a test may ask any of them (and a worker still
         * connecting to the broker is not ready yet). */
        tu_svc_opts o = {.exe = names[i],
                         .amqp_env = amqp[i],
                         .db_env = urls[i],
                         .env = env,
                         .log = log,
                         .ready_url = url};
        snprintf(port, sizeof(port), "METRICS_PORT=%d", 19101 + i);
        snprintf(log, sizeof(log), "e2e-%s", names[i]);
        snprintf(url, sizeof(url), "%s/readyz", bases[i]);
        tu_svc_spawn(&svcs[i], &o);
    }
    for (int i = 0; i < 4; i++)
        tu_svc_await(&svcs[i]);
}

static void stop_all(void)
{
    for (int i = 3; i >= 0; i--)
        tu_svc_stop_ok(&svcs[i]);
}

/* --------------------------------------------------------------- helpers */

static long owner_int(const char *sql, const char *param)
{
    return tu_count(sql, param);
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

static long stock(const char *sku)
{
    return owner_int("SELECT on_hand FROM inventory.stock WHERE sku = $1", sku);
}

/* POSTs an order; returns the status and writes the order id. */
static long place(const char *items, const char *key, char id[UUID_STR_LEN])
{
    char body[2048], *resp, keyhdr[300];
    const char *hdrs[] = {"Content-Type: application/json", AUTH, key ? keyhdr : NULL, NULL};
    cJSON *j;
    long code;

    snprintf(keyhdr, sizeof(keyhdr), "Idempotency-Key: %s", key ? key : "");
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"e2e\",\"customer_email\":\"e2e@example.com\","
             "\"currency\":\"EUR\",\"items\":%s}",
             items);
    code = tu_http("POST", API "/orders", hdrs, body, strlen(body), &resp);
    id[0] = '\0';
    j = cJSON_Parse(resp);
    if (j && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "id")))
        snprintf(id, UUID_STR_LEN, "%s", cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    free(resp);
    return code;
}

/* GET /orders/{id}; returns the parsed document (caller deletes). */
static cJSON *get_order(const char *id)
{
    char url[256], *resp;
    cJSON *j;
    snprintf(url, sizeof(url), API "/orders/%s", id);
    ck_assert_int_eq(tu_http("GET", url, auth_hdr, NULL, 0, &resp), 200);
    j = cJSON_Parse(resp);
    free(resp);
    ck_assert_ptr_nonnull(j);
    return j;
}

typedef struct {
    const char *id;
    const char *want;
} status_arg;

static int has_status(void *arg)
{
    status_arg *a = arg;
    cJSON *j = get_order(a->id);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "status");
    int ok = cJSON_IsString(s) && strcmp(s->valuestring, a->want) == 0;
    cJSON_Delete(j);
    return ok;
}

static void await_status(const char *id, const char *want)
{
    status_arg a = {id, want};
    ck_assert_msg(tu_poll(20000, has_status, &a), "order %s never reached %s", id, want);
}

/* ----------------------------------------------------------------- tests */

START_TEST(a_placed_order_is_confirmed_with_one_invoice_reservation_and_mail)
{
    char id[UUID_STR_LEN], *resp, *hdrs;
    const char body[] = "{\"customer_id\":\"e2e\",\"customer_email\":\"e2e@example.com\","
                        "\"currency\":\"EUR\",\"items\":[{\"sku\":\"TEA-SENCHA\",\"quantity\":2},"
                        "{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}";
    cJSON *j;
    const cJSON *tl;

    ck_assert_int_eq(tu_http_h("POST", API "/orders", json_hdr, body, strlen(body), &resp, &hdrs),
                     201);
    j = cJSON_Parse(resp);
    snprintf(id, sizeof(id), "%s", cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "total_minor")->valueint, 2580);
    cJSON_Delete(j);
    {
        char loc[128];
        snprintf(loc, sizeof(loc), "Location: /orders/%s", id);
        ck_assert_msg(strstr(hdrs, loc), "no %s in:\n%s", loc, hdrs);
    }
    free(resp);
    free(hdrs);
    await_status(id, "CONFIRMED");
    j = get_order(id);
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "invoice_number")));
    tl = cJSON_GetObjectItemCaseSensitive(j, "timeline");
    ck_assert_int_eq(cJSON_GetArraySize(tl), 3);
    ck_assert_str_eq(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(tl, 0), "status")->valuestring,
        "PENDING");
    ck_assert_str_eq(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(tl, 2), "status")->valuestring,
        "CONFIRMED");
    cJSON_Delete(j);
    ck_assert_int_eq(owner_int("SELECT count(*) FROM billing.invoices WHERE order_id = $1", id), 1);
    ck_assert_int_eq(
        owner_int("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", id), 1);
    /* The mail may trail the status by a moment: billing's event reaches
     * order-api and email independently. */
    tu_await_count(10000,
                   "SELECT count(*) FROM email.messages WHERE correlation_id = $1"
                   " AND kind = 'order_confirmed'",
                   id, 1);
}
END_TEST

START_TEST(an_order_for_too_much_stock_is_rejected_and_stock_is_unchanged)
{
    char id[UUID_STR_LEN];
    set_stock("COF-DECAF", 8);
    ck_assert_int_eq(place("[{\"sku\":\"COF-FILTER\",\"quantity\":1},"
                           "{\"sku\":\"COF-DECAF\",\"quantity\":9}]",
                           NULL, id),
                     201);
    {
        long before = stock("COF-FILTER");
        await_status(id, "REJECTED");
        ck_assert_int_eq(stock("COF-DECAF"), 8);
        ck_assert_int_eq(stock("COF-FILTER"), before);
    }
    ck_assert_int_eq(
        owner_int("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", id), 0);
}
END_TEST

START_TEST(a_payment_failure_releases_the_stock)
{
    char id[UUID_STR_LEN];
    long before = stock("MUG-WHITE");
    ck_assert_int_ge(before, 70);
    ck_assert_int_eq(place("[{\"sku\":\"MUG-WHITE\",\"quantity\":70}]", NULL, id), 201);
    await_status(id, "CANCELLED");
    ck_assert_int_eq(stock("MUG-WHITE"), before);
    ck_assert_int_eq(
        owner_int("SELECT count(*) FROM billing.payment_failures WHERE order_id = $1", id), 1);
    ck_assert_int_eq(owner_int("SELECT count(*) FROM inventory.reservations WHERE order_id = $1"
                               " AND status = 'RELEASED'",
                               id),
                     1);
}
END_TEST

static int sales_invoiced(void *arg)
{
    return owner_int("SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL", NULL) >=
           *(long *)arg;
}

/* Runs the till as the pos user with the arguments after its name
 * (NULL-ended) and more (may be NULL) in its environment, selling from
 * order-api's catalog; returns its exit status. */
static int run_pos(const char *more, char *const *argv)
{
    char spool[600];
    const char *env[] = {"CATALOG_URL=" API "/products", spool, more, NULL};
    const tu_svc_opts o = {
        .exe = "pos", .amqp_env = "POS_AMQP_URL", .env = env, .argv = argv, .log = "pos-e2e"};
    snprintf(spool, sizeof(spool), "POS_SPOOL_DIR=%s/log/tests", tu_env("ORDERSUITE_VAR"));
    return tu_tool(&o, NULL);
}

START_TEST(pos_sales_take_stock_and_are_invoiced)
{
    long before =
        owner_int("SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL", NULL);
    long lines_before = owner_int("SELECT count(DISTINCT sale_id) FROM inventory.sale_lines", NULL);
    long want = before + 7;

    ck_assert_int_eq(run_pos(NULL, (char *[]){"pos", "--count", "7", "--rate", "100", "--store",
                                              "E2E-01", NULL}),
                     0);
    ck_assert_msg(tu_poll(20000, sales_invoiced, &want), "POS sales were not invoiced");
    ck_assert_int_eq(
        owner_int("SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL", NULL),
        before + 7);
    tu_await_count(10000, "SELECT count(DISTINCT sale_id) FROM inventory.sale_lines", NULL,
                   lines_before + 7);
}
END_TEST

/* POS_SPOOLING("--count", "3"): run_pos with these arguments, flushing its
 * spool for at most 1 s. */
#define POS_SPOOLING(...) run_pos("POS_FLUSH_TIMEOUT_S=1", (char *[]){"pos", __VA_ARGS__, NULL})

static int spool_lines(const char *store)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/log/tests/pos-%s.spool", tu_env("ORDERSUITE_VAR"), store);
    return (int)tu_file_count(path, NULL, NULL);
}

/* The till keeps selling with the broker down and sends the spool later. */
START_TEST(pos_spools_sales_while_the_broker_is_down_and_sends_them_after)
{
    long before =
        owner_int("SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL", NULL);
    long want = before + 4;
    tu_broker("stop_app");
    ck_assert_int_eq(POS_SPOOLING("--count", "3", "--store", "SPOOL-E2E"), 2); /* 2: left spooled */
    ck_assert_int_eq(spool_lines("SPOOL-E2E"), 3);
    tu_broker("start_app");
    ck_assert_msg(tu_poll(60000, ready, NULL), "order-api did not recover");
    ck_assert_int_eq(POS_SPOOLING("--count", "1", "--store", "SPOOL-E2E"), 0);
    ck_assert_int_eq(spool_lines("SPOOL-E2E"), 0);
    ck_assert_msg(tu_poll(30000, sales_invoiced, &want), "spooled sales were not invoiced");
    ck_assert_int_eq(
        owner_int("SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL", NULL),
        before + 4);
}
END_TEST

typedef struct {
    char id[UUID_STR_LEN];
    long code;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    r->code = place("[{\"sku\":\"POT-CAST-IRON\",\"quantity\":1}]", NULL, r->id);
    return NULL;
}

/* order.placed deliveries consumed by the inventory whose metrics are at
 * base (-1: no answer). */
static long consumed_orders(const char *base)
{
    return (long)tu_metric(base, "ordersuite_messages_consumed_total{service=\"inventory\","
                                 "routing_key=\"order.placed\"}");
}

static int two_inventory_consumers(void *arg)
{
    int consumers = 0;
    (void)arg;
    return tu_queue_counts("TEST_AMQP_URL", "inventory", &consumers) >= 0 && consumers >= 2;
}

/* The suite's inventory and a second instance (PREFETCH 2 each) take the
 * orders, so the on_hand guard is contended across transactions. */
START_TEST(concurrent_orders_for_the_last_units_never_oversell)
{
    enum { N = 12 };
    static const char second[] = "http://127.0.0.1:19131";
    const char *env[] = {"METRICS_PORT=19131", "PREFETCH=2", NULL};
    const tu_svc_opts o = {.exe = "inventory",
                           .amqp_env = "INVENTORY_AMQP_URL",
                           .db_env = "INVENTORY_DATABASE_URL",
                           .env = env,
                           .log = "e2e-inventory-2",
                           .ready_url = "http://127.0.0.1:19131/readyz"};
    racer r[N];
    pthread_t t[N];
    int confirmed = 0, rejected = 0;
    long before[2];
    tu_svc other;

    set_stock("POT-CAST-IRON", 3);
    tu_svc_start(&other, &o);
    ck_assert_msg(tu_poll(30000, two_inventory_consumers, NULL),
                  "the second inventory is not consuming");
    before[0] = consumed_orders(bases[0]);
    before[1] = consumed_orders(second);
    for (int i = 0; i < N; i++)
        pthread_create(&t[i], NULL, race, &r[i]);
    for (int i = 0; i < N; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(r[i].code, 201);
        for (int64_t end = util_now_ms() + 20000; util_now_ms() < end;) {
            cJSON *j = get_order(r[i].id);
            const char *s = cJSON_GetObjectItemCaseSensitive(j, "status")->valuestring;
            int c = strcmp(s, "CONFIRMED") == 0, x = strcmp(s, "REJECTED") == 0;
            cJSON_Delete(j);
            confirmed += c;
            rejected += x;
            if (c || x)
                break;
            util_sleep_ms(50, NULL);
        }
    }
    /* Both instances took part. */
    ck_assert_msg(consumed_orders(bases[0]) > before[0] && consumed_orders(second) > before[1],
                  "the orders did not reach both inventory instances (%ld -> %ld, %ld -> %ld)",
                  before[0], consumed_orders(bases[0]), before[1], consumed_orders(second));
    tu_svc_stop_ok(&other);
    ck_assert_int_eq(confirmed, 3);
    ck_assert_int_eq(rejected, N - 3);
    ck_assert_int_eq(stock("POT-CAST-IRON"), 0);
}
END_TEST

START_TEST(the_same_idempotency_key_gives_the_same_order_once)
{
    char a[UUID_STR_LEN], b[UUID_STR_LEN], c[UUID_STR_LEN], key[64];
    snprintf(key, sizeof(key), "e2e-%lld", (long long)util_wall_us());
    ck_assert_int_eq(place("[{\"sku\":\"FLT-PAPER\",\"quantity\":1}]", key, a), 201);
    ck_assert_int_eq(place("[{\"sku\":\"FLT-PAPER\",\"quantity\":1}]", key, b), 200);
    ck_assert_str_eq(a, b);
    ck_assert_int_eq(place("[{\"sku\":\"FLT-PAPER\",\"quantity\":2}]", key, c), 409);
    await_status(a, "CONFIRMED");
    ck_assert_int_eq(
        owner_int("SELECT count(*) FROM orders.orders WHERE idempotency_key = $1", key), 1);
    ck_assert_int_eq(owner_int("SELECT count(*) FROM billing.invoices WHERE order_id = $1", a), 1);
}
END_TEST

/* Racers on one Idempotency-Key: each waits at the barrier, then POSTs the
 * same body with the same key at once. */
typedef struct {
    pthread_barrier_t *go;
    const char *key;
    racer r;
} key_racer;

static void *race_key(void *arg)
{
    key_racer *k = arg;
    pthread_barrier_wait(k->go);
    k->r.code = place("[{\"sku\":\"FLT-PAPER\",\"quantity\":1}]", k->key, k->r.id);
    return NULL;
}

/* Requests with one key that arrive together: the unique (client, key) lets
 * one INSERT win (the write's ON CONFLICT skips the others, in its batch or
 * in a later one; one that waited for the winner's commit is answered by the
 * lookup after the write), and every other one must answer as a replay of
 * that order (not a 5xx, not a second order). Several rounds of 12, so that
 * requests surely meet in one batch and across batches. */
START_TEST(requests_racing_on_one_idempotency_key_get_one_order)
{
    enum { ROUNDS = 5, N = 12 };
    for (int round = 0; round < ROUNDS; round++) {
        pthread_barrier_t go;
        pthread_t t[N];
        key_racer k[N];
        char key[64];
        int created = 0;

        snprintf(key, sizeof(key), "e2e-race-%lld-%d", (long long)util_wall_us(), round);
        pthread_barrier_init(&go, NULL, N);
        for (int i = 0; i < N; i++) {
            k[i].go = &go;
            k[i].key = key;
            ck_assert_int_eq(pthread_create(&t[i], NULL, race_key, &k[i]), 0);
        }
        for (int i = 0; i < N; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&go);
        for (int i = 0; i < N; i++) {
            ck_assert_msg(k[i].r.code == 201 || k[i].r.code == 200,
                          "round %d, request %d: status %ld, want 201 or a 200 replay", round, i,
                          k[i].r.code);
            created += k[i].r.code == 201;
            ck_assert_str_eq(k[i].r.id, k[0].r.id);
        }
        ck_assert_int_eq(created, 1);
        ck_assert_int_eq(
            owner_int("SELECT count(*) FROM orders.orders WHERE idempotency_key = $1", key), 1);
        /* ...and that one order goes its way once: one invoice. */
        await_status(k[0].r.id, "CONFIRMED");
        ck_assert_int_eq(
            owner_int("SELECT count(*) FROM billing.invoices WHERE order_id = $1", k[0].r.id), 1);
    }
}
END_TEST

/* Every kind of bad request gets its documented status, never a 5xx. */
static const struct {
    const char *method, *path, *ctype, *body;
    long want;
} bad[] = {
    {"POST", "/orders", "application/json", "{\"customer_id\":", 400},
    {"POST", "/orders", "application/json", "{\"customer_id\":\"a\",\"customer_id\":\"b\"}", 400},
    {"POST", "/orders", "application/json", "[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]", 400},
    {"POST", "/orders", "application/json", "\"just a string\"", 400},
    {"POST", "/orders", "application/json", "{\"x\":\"\xff\xfe\"}", 400},
    {"POST", "/orders", "text/plain", "{}", 415},
    {"POST", "/orders", NULL, "{}", 415},
    {"POST", "/orders", "application/json", "{}", 422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"items\":[]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"items\":"
     "[{\"sku\":\"NOPE\",\"quantity\":1}]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"items\":"
     "[{\"sku\":\"MUG-WHITE\",\"quantity\":0}]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"items\":"
     "[{\"sku\":\"MUG-WHITE\",\"quantity\":-4}]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"items\":"
     "[{\"sku\":\"MUG-WHITE\",\"quantity\":1e300}]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"EUR\",\"items\":"
     "[{\"sku\":\"MUG-WHITE\",\"quantity\":1,\"unit_price_minor\":1}]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c'; DROP TABLE orders.orders; --\",\"customer_email\":\"a@b.io\","
     "\"currency\":\"EUR\",\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}",
     422},
    {"POST", "/orders", "application/json",
     "{\"customer_id\":\"c\",\"customer_email\":\"a@b.io\",\"currency\":\"USD\",\"items\":"
     "[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}",
     422},
    {"GET", "/orders/not-a-uuid", NULL, NULL, 404},
    {"GET", "/orders/00000000-0000-4000-8000-000000000000", NULL, NULL, 404},
    {"GET", "/orders?limit=0", NULL, NULL, 422},
    {"GET", "/orders?status=LOST", NULL, NULL, 422},
    {"GET", "/orders?after=zzz", NULL, NULL, 422},
    {"GET", "/nowhere", NULL, NULL, 404},
    {"DELETE", "/orders", NULL, NULL, 405},
    {"PUT", "/products", NULL, NULL, 405},
};

START_TEST(bad_requests_get_their_status_and_the_server_keeps_serving)
{
    char url[256], ct[128], *resp;
    const char *hdrs[] = {ct, AUTH, NULL};
    long code;
    snprintf(url, sizeof(url), API "%s", bad[_i].path);
    snprintf(ct, sizeof(ct), "Content-Type: %s", bad[_i].ctype ? bad[_i].ctype : "");
    code = tu_http(bad[_i].method, url, bad[_i].ctype ? hdrs : auth_hdr, bad[_i].body,
                   bad[_i].body ? strlen(bad[_i].body) : 0, &resp);
    ck_assert_msg(code == bad[_i].want, "case %d (%s %s): %ld, want %ld: %s", _i, bad[_i].method,
                  bad[_i].path, code, bad[_i].want, resp);
    if (code >= 400)
        ck_assert_msg(strstr(resp, "\"status\":"), "no problem+json: %s", resp);
    free(resp);
    ck_assert_int_eq(tu_http("GET", API "/healthz", NULL, NULL, 0, NULL), 200);
}
END_TEST

START_TEST(oversized_bodies_are_refused_with_413)
{
    size_t n = 200 * 1024;
    char *big = malloc(n);
    const char *chunked[] = {"Content-Type: application/json", "Transfer-Encoding: chunked", AUTH,
                             NULL};
    memset(big, 'a', n);
    ck_assert_int_eq(tu_http("POST", API "/orders", json_hdr, big, n, NULL), 413);
    ck_assert_int_eq(tu_http("POST", API "/orders", chunked, big, n, NULL), 413);
    free(big);
    ck_assert_int_eq(tu_http("GET", API "/products", NULL, NULL, 0, NULL), 200);
}
END_TEST

/* The value of the first sample line starting with `series` in a metrics page. */
START_TEST(every_service_reports_health_readiness_and_metrics)
{
    char url[128], *page;
    char id[UUID_STR_LEN];

    /* Something for every service to count. */
    ck_assert_int_eq(place("[{\"sku\":\"TEA-ASSAM\",\"quantity\":1}]", NULL, id), 201);
    await_status(id, "CONFIRMED");
    for (int i = 0; i < 4; i++) {
        snprintf(url, sizeof(url), "%s/healthz", bases[i]);
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, 0, NULL), 200);
        /* Readiness is a state the service reaches (its probe, relay and
         * consumer), not an instant one: a fixture may have just restarted
         * it. Bounded. */
        snprintf(url, sizeof(url), "%s/readyz", bases[i]);
        ck_assert_msg(tu_poll(15000, ready, (void *)bases[i]), "%s not ready within 15 s", url);
        /* order-api's metrics are on its operations listener only */
        snprintf(url, sizeof(url), "%s/metrics", i == 3 ? OPS : bases[i]);
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, 0, &page), 200);
        /* Short messages: Check cannot carry a whole page. */
        ck_assert_msg(strstr(page, "# TYPE ordersuite_handler_duration_seconds histogram"),
                      "%s: no histogram", url);
        ck_assert_msg(tu_metric_sample(page, "ordersuite_broker_connected{") == 1, "%s: broker",
                      url);
        ck_assert_msg(tu_metric_sample(page, "ordersuite_database_connected{") == 1, "%s: database",
                      url);
        ck_assert_msg(strstr(page, "ordersuite_build_info{"), "%s: no build info", url);
        if (i == 0) {
            ck_assert(tu_metric_sample(page,
                                       "ordersuite_messages_consumed_total{service=\"inventory\","
                                       "routing_key=\"order.placed\"}") >= 1);
            ck_assert(tu_metric_sample(page,
                                       "ordersuite_messages_published_total{service=\"inventory\","
                                       "routing_key=\"inventory.reserved\"}") >= 1);
        }
        if (i == 3) {
            ck_assert(tu_metric_sample(page,
                                       "ordersuite_messages_published_total{service=\"order-api\","
                                       "routing_key=\"order.placed\"}") >= 1);
            ck_assert(tu_metric_sample(page,
                                       "ordersuite_messages_consumed_total{service=\"order-api\","
                                       "routing_key=\"billing.invoiced\"}") >= 1);
            ck_assert(tu_metric_sample(
                          page, "ordersuite_outbox_pending_rows{service=\"order-api\"}") >= 0);
        }
        free(page);
    }
}
END_TEST

typedef struct {
    const char *series;
    double at_least; /* the metric must reach this; or, when < 0, fall to 0 */
} metric_goal;

static int api_metric_reaches(void *arg)
{
    const metric_goal *g = arg;
    double v = tu_metric(OPS, g->series);
    return g->at_least < 0 ? v == 0 : v >= g->at_least;
}

static int api_not_ready(void *arg)
{
    (void)arg;
    return !ready(NULL);
}

/* With the broker away, POST /orders still accepts orders (into the outbox):
 * the backlog metric counts them and the age of the oldest grows, readiness
 * says 503; with the broker back, the backlog drains to 0 and it is 200. */
START_TEST(the_outbox_backlog_is_counted_while_the_broker_is_away)
{
    char id[UUID_STR_LEN];
    metric_goal rows = {"ordersuite_outbox_pending_rows{service=\"order-api\"}", 15};
    metric_goal age = {"ordersuite_outbox_oldest_age_seconds{service=\"order-api\"}", 2};
    metric_goal drained = {"ordersuite_outbox_pending_rows{service=\"order-api\"}", -1};

    double seen_rows, seen_age;
    int rows_ok, age_ok, unready;
    char *pub = NULL, *ops = NULL;
    long pub_st, ops_st;

    tu_broker("stop_app");
    for (int i = 0; i < 15; i++) {
        if (place("[{\"sku\":\"TEA-ASSAM\",\"quantity\":1}]", NULL, id) != 201) {
            tu_broker("start_app");
            ck_abort_msg("POST /orders refused while the broker was away");
        }
    }
    rows_ok = tu_poll(10000, api_metric_reaches, &rows);
    seen_rows = tu_metric(OPS, rows.series);
    age_ok = tu_poll(10000, api_metric_reaches, &age);
    seen_age = tu_metric(OPS, age.series);
    unready = tu_poll(10000, api_not_ready, NULL);
    /* Why it is not ready is the operator's (the operations listener), not
     * the API clients' (the API port says only that it is not). */
    pub_st = tu_http("GET", API "/readyz", NULL, NULL, 0, &pub);
    ops_st = tu_http("GET", OPS "/readyz", NULL, NULL, 0, &ops);
    tu_broker("start_app"); /* before any assertion: the next tests need it */
    ck_assert_msg(pub_st == 503 && pub && !strstr(pub, "outbox") && !strstr(pub, "consumer"),
                  "the API port's /readyz: %ld %.200s", pub_st, pub ? pub : "");
    ck_assert_msg(ops_st == 503 && ops && strstr(ops, "outbox backlog"),
                  "the operations port's /readyz: %ld %.200s", ops_st, ops ? ops : "");
    free(pub);
    free(ops);
    ck_assert_msg(rows_ok, "backlog metric %g, want >= 15", seen_rows);
    ck_assert_msg(age_ok, "oldest age %g s, want >= 2", seen_age);
    ck_assert_msg(unready, "order-api ready without a broker");
    ck_assert_msg(tu_poll(60000, api_metric_reaches, &drained),
                  "backlog %g after the broker came back", tu_metric(OPS, drained.series));
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++)
        ck_assert_msg(tu_poll(60000, ready, (void *)bases[i]), "%s not ready again", bases[i]);
    await_status(id, "CONFIRMED");
}
END_TEST

/* PostgreSQL stops: every service's /readyz turns 503 within 5 s (a probe
 * that must answer, not the cached state of an idle connection), and 200
 * again once it is back. */
START_TEST(every_service_is_unready_within_5_s_of_losing_postgresql)
{
    enum { N = sizeof(bases) / sizeof(bases[0]) };
    int64_t t0, took[N];
    int started;

    ck_assert_int_eq(tu_postgres("stop -m fast"), 0);
    t0 = util_now_ms();
    for (size_t i = 0; i < N; i++)
        took[i] = -1;
    for (int left = N; left > 0 && util_now_ms() - t0 < 8000;) {
        for (size_t i = 0; i < N; i++) {
            if (took[i] < 0 && !ready((void *)bases[i])) {
                took[i] = util_now_ms() - t0;
                left--;
            }
        }
        util_sleep_ms(50, NULL);
    }
    started = tu_postgres("start");
    ck_assert_int_eq(started, 0);
    for (size_t i = 0; i < N; i++)
        ck_assert_msg(took[i] >= 0 && took[i] <= 5000, "%s: /readyz 503 after %lld ms (-1: never)",
                      bases[i], (long long)took[i]);
    for (size_t i = 0; i < N; i++)
        ck_assert_msg(tu_poll(30000, ready, (void *)bases[i]), "%s not ready again", bases[i]);
}
END_TEST

static int one_parked(void *arg)
{
    (void)arg;
    return owner_int("SELECT count(*) FROM orders.outbox WHERE routing_key LIKE 'order.unbound%'"
                     " AND parked_at IS NOT NULL AND last_error LIKE 'basic.return 312%'",
                     NULL) == 1 &&
           tu_metric(OPS, "ordersuite_outbox_parked_rows{service=\"order-api\"}") == 1;
}

static int unbound_row_gone(void *arg)
{
    (void)arg;
    return owner_int("SELECT count(*) FROM orders.outbox WHERE routing_key LIKE 'order.unbound%'",
                     NULL) == 0;
}

/* `dlq outbox` with these arguments, as the owner; returns its exit status. */
static int run_dlq_outbox(char *const *argv)
{
    const tu_svc_opts o = {
        .exe = "dlq", .db_env = "OWNER_DATABASE_URL", .argv = argv, .log = "dlq-outbox"};
    return tu_tool(&o, NULL);
}
#define DLQ_OUTBOX(...) run_dlq_outbox((char *[]){"dlq", "outbox", __VA_ARGS__, NULL})

/* An event nobody is bound for: the broker returns it on every publish. It
 * must not slow the rows behind it (the relay backs off only when the broker
 * is away), is parked after a few refusals with the broker's reply, and,
 * replayed once a queue is bound, arrives once. */
/* The unroutable row's attempts (returns so far). */
static long unbound_attempts(void *arg)
{
    (void)arg;
    return owner_int("SELECT coalesce(max(attempts), -1) FROM orders.outbox"
                     " WHERE routing_key LIKE 'order.unbound%'",
                     NULL);
}

typedef struct {
    long before;
} attempts_arg;

static int unbound_attempts_past(void *arg)
{
    return unbound_attempts(NULL) > ((attempts_arg *)arg)->before;
}

START_TEST(an_unroutable_outbox_row_is_parked_and_holds_back_nothing)
{
    char key[64], u[UUID_STR_LEN], id[UUID_STR_LEN], err[MQ_ERR_LEN];
    const char *keys[] = {key, NULL};
    const char *kp[] = {key};
    mq_topology topo = {.queue = "parking_test", .keys = keys, .retry_ms = {1000}};
    double failures0, failures;
    long parked_attempts;
    int parked;
    mq_conn *admin;

    /* A key of its own: a queue bound by an earlier run cannot route it. */
    uuid_v4(u);
    snprintf(key, sizeof(key), "order.unbound_%.8s", u);
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "DELETE FROM orders.outbox WHERE routing_key LIKE 'order.unbound%'", 0, NULL));
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "INSERT INTO orders.outbox (message_id, routing_key, correlation_id, body)"
                " VALUES (gen_random_uuid(), $1, gen_random_uuid(), '{}')",
                1, kp));
    /* While the relay meets it again and again (its attempts grow between
     * orders), orders go through and no relay round fails: a return is not
     * the broker away, so the relay never backs off (as chaos unroutable
     * checks with ordersuite_outbox_relay_failures_total). */
    failures0 = tu_metric(OPS, "ordersuite_outbox_relay_failures_total{");
    ck_assert_msg(failures0 >= 0, "no ordersuite_outbox_relay_failures_total on " OPS);
    for (int i = 0; i < 6; i++) {
        long st = 0;
        attempts_arg a = {unbound_attempts(NULL)};
        /* A 503 asks the client to retry (a connection PostgreSQL dropped
         * earlier in this suite is found broken by its next query). */
        for (int k = 0;
             k < 10 && (st = place("[{\"sku\":\"TEA-ASSAM\",\"quantity\":1}]", NULL, id)) == 503;
             k++)
            util_sleep_ms(100, NULL);
        ck_assert_int_eq(st, 201);
        await_status(id, "CONFIRMED");
        ck_assert_msg(tu_poll(20000, unbound_attempts_past, &a),
                      "the relay did not meet the unroutable row again (attempts %ld)", a.before);
    }
    failures = tu_metric(OPS, "ordersuite_outbox_relay_failures_total{");
    /* Parking also waits OUTBOX_PARK_MIN_AGE_S (30 s) after the first
     * return (check_spine tests that); here the returns are made that old. */
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "UPDATE orders.outbox SET refused_since = now() - interval '1 hour'"
                " WHERE routing_key LIKE 'order.unbound%' AND refused_since IS NOT NULL",
                0, NULL));
    parked = tu_poll(20000, one_parked, NULL);
    parked_attempts = owner_int("SELECT coalesce(max(attempts), -1) FROM orders.outbox"
                                " WHERE routing_key LIKE 'order.unbound%'",
                                NULL);
    /* On a failure, take the row away first: left behind, it would make the
     * backlog and readiness tests after this one fail too. */
    if (failures != failures0 || !parked)
        free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                    "DELETE FROM orders.outbox WHERE routing_key LIKE 'order.unbound%'", 0, NULL));
    ck_assert_msg(failures == failures0,
                  "the relay failed %.0f rounds behind an unroutable row (it backed off)",
                  failures - failures0);
    ck_assert_msg(parked, "the unroutable row was not parked within 20 s (attempts %ld)",
                  parked_attempts);
    ck_assert_int_eq(DLQ_OUTBOX("list", "order-api"), 0);
    /* Bind a queue for it, replay: delivered once, gone from the outbox. */
    admin = tu_publisher("TEST_AMQP_URL", "check_e2e");
    ck_assert_msg(mq_declare_topology(admin, &topo, err, sizeof(err)) == MQ_OK, "%s", err);
    ck_assert_int_ge(mq_purge(admin, "parking_test", err, sizeof(err)), 0);
    ck_assert_int_eq(DLQ_OUTBOX("replay", "order-api", "--all"), 0);
    /* The relay deletes a row in the transaction after the broker's
     * confirms: once it is gone, every copy the relay ever published is in
     * the queue already, and none can follow. */
    ck_assert_msg(tu_poll(20000, unbound_row_gone, NULL), "the replayed row stayed in the outbox");
    ck_assert_int_eq(tu_queue_counts("TEST_AMQP_URL", "parking_test", NULL), 1);
    ck_assert_int_ge(mq_purge(admin, "parking_test", err, sizeof(err)), 0);
    mq_free(admin);
}
END_TEST

/* ----------------------------------------- readiness through the backlog */

#define BACKLOG_API "http://127.0.0.1:18085"
#define BACKLOG_OPS "http://127.0.0.1:18086" /* its operations listener: the 503's detail */

static int backlog_api_ready(void *arg)
{
    (void)arg;
    return tu_http("GET", BACKLOG_API "/readyz", NULL, NULL, 0, NULL) == 200;
}

/* /readyz of the backlog test's order-api is 503 for the reason `want` (a
 * part of its detail, on the operations listener) while consumer, relay and
 * database are fine. */
static int backlog_api_unready_for(void *arg)
{
    char *body = NULL;
    long st = tu_http("GET", BACKLOG_OPS "/readyz", NULL, NULL, 0, &body);
    int ok = st == 503 && body && strstr(body, "consumer up, relay up, database answering") &&
             strstr(body, (const char *)arg);
    free(body);
    return ok;
}

static int readyz_queue_has_six(void *arg)
{
    (void)arg;
    return tu_queue_counts("TEST_AMQP_URL", "readyz_test", NULL) == 6;
}

static PGresult *must(PGconn *c, PGresult *r, ExecStatusType want)
{
    ck_assert_msg(PQresultStatus(r) == want, "%s", PQerrorMessage(c));
    return r;
}

/* A backlog the relay cannot publish while everything is connected: six
 * rows committed while the outbox table is held (EXCLUSIVE: the relay's
 * claim waits, the probe's count does not). An order-api with READY_MAX_OUTBOX
 * (`max_rows`) or READY_MAX_OUTBOX_AGE_S (`max_age`) says 503 with `reason`,
 * and 200 again once the rows are out. */
static void backlog_makes_unready(const char *max_rows, const char *max_age, const char *reason)
{
    char key[64], u[UUID_STR_LEN], err[MQ_ERR_LEN], rows[64], age[64];
    const char *keys[] = {key, NULL};
    const char *kp[] = {key};
    mq_topology topo = {.queue = "readyz_test", .keys = keys, .retry_ms = {1000}};
    const char *env[] = {rows,
                         age,
                         "HTTP_PORT=18085",
                         "OPS_PORT=18086",
                         "DB_LOCK_TIMEOUT_MS=60000",
                         "DB_STATEMENT_TIMEOUT_MS=60000",
                         "ORDER_WRITE_TIMEOUT_MS=70000",
                         TU_API_TOKENS,
                         NULL};
    const tu_svc_opts o = {.exe = "order-api",
                           .amqp_env = "ORDER_API_AMQP_URL",
                           .db_env = "ORDERS_DATABASE_URL",
                           .env = env,
                           .log = "e2e-order-api-backlog",
                           .ready_url = BACKLOG_API "/readyz"};
    PGconn *ins, *hold;
    mq_conn *admin;
    tu_svc api;
    int unready;

    snprintf(rows, sizeof(rows), "READY_MAX_OUTBOX=%s", max_rows);
    snprintf(age, sizeof(age), "READY_MAX_OUTBOX_AGE_S=%s", max_age);
    uuid_v4(u);
    snprintf(key, sizeof(key), "order.backlog_%.8s", u);
    admin = tu_publisher("TEST_AMQP_URL", "check_e2e");
    ck_assert_msg(mq_declare_topology(admin, &topo, err, sizeof(err)) == MQ_OK, "%s", err);
    ck_assert_int_ge(mq_purge(admin, "readyz_test", err, sizeof(err)), 0);
    tu_svc_start(&api, &o);

    /* Rows inserted (not committed), then the table lock asked for (it
     * queues behind the insert), then the insert committed: the lock is
     * granted before any claim of the relay can see the rows. */
    ins = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    hold = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert(PQstatus(ins) == CONNECTION_OK && PQstatus(hold) == CONNECTION_OK);
    PQclear(must(ins, PQexec(ins, "BEGIN"), PGRES_COMMAND_OK));
    PQclear(must(ins,
                 PQexecParams(ins,
                              "INSERT INTO orders.outbox (message_id, routing_key, correlation_id,"
                              " body) SELECT gen_random_uuid(), $1, gen_random_uuid(), '{}'"
                              " FROM generate_series(1, 6)",
                              1, NULL, kp, NULL, NULL, 0),
                 PGRES_COMMAND_OK));
    ck_assert_int_eq(
        PQsendQuery(hold, "BEGIN; LOCK TABLE orders.outbox IN EXCLUSIVE MODE; SELECT 1"), 1);
    ck_assert_msg(tu_await_lock_waiter(10000, "orders.outbox", "ExclusiveLock"),
                  "the table lock never queued");
    PQclear(must(ins, PQexec(ins, "COMMIT"), PGRES_COMMAND_OK));
    for (PGresult *r; (r = PQgetResult(hold)) != NULL; PQclear(r))
        ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                      "%s", PQerrorMessage(hold));
    unready = tu_poll(15000, backlog_api_unready_for, (void *)reason);
    PQclear(PQexec(hold, "COMMIT")); /* the relays go on */
    PQfinish(hold);
    PQfinish(ins);
    ck_assert_msg(unready, "/readyz was not 503 for '%s' with everything connected", reason);
    ck_assert_msg(tu_poll(20000, readyz_queue_has_six, NULL), "the backlog did not drain");
    ck_assert_msg(tu_poll(15000, backlog_api_ready, NULL), "not ready again after the drain");
    ck_assert_int_ge(mq_purge(admin, "readyz_test", err, sizeof(err)), 0);
    mq_free(admin);
    tu_svc_stop_ok(&api);
}

START_TEST(readiness_fails_when_the_backlog_passes_ready_max_outbox)
{
    backlog_makes_unready("5", "3600", "outbox backlog 6 rows (limit 5)");
}
END_TEST

START_TEST(readiness_fails_when_the_oldest_row_passes_ready_max_outbox_age_s)
{
    backlog_makes_unready("1000", "2", "(limit 2)");
}
END_TEST

/* One grep follows an order: every service logs its correlation id. */
START_TEST(one_grep_follows_an_order_through_every_service)
{
    char id[UUID_STR_LEN];
    ck_assert_int_eq(place("[{\"sku\":\"HNY-ACACIA\",\"quantity\":1}]", NULL, id), 201);
    await_status(id, "CONFIRMED");
    for (int i = 0; i < 4; i++) {
        int found = 0;
        /* The mail may be the last to be written. */
        for (int64_t end = util_now_ms() + 10000; !found && util_now_ms() < end;) {
            found = tu_file_count(svcs[i].log, id, "\"correlation_id\"") > 0;
            if (!found)
                util_sleep_ms(50, NULL);
        }
        ck_assert_msg(found, "%s logged nothing with correlation_id %s", names[i], id);
    }
}
END_TEST

/* Two requests on one libcurl handle: the second reuses the connection. */
START_TEST(keep_alive_connections_are_reused)
{
    CURL *c = curl_easy_init();
    long connects = -1;
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_URL, API "/products");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, devnull);
    ck_assert_int_eq(curl_easy_perform(c), CURLE_OK);
    ck_assert_int_eq(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &connects);
    ck_assert_int_eq(connects, 0);
    curl_easy_cleanup(c);
    fclose(devnull);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("e2e");
    TCase *f = tcase_create("flow");
    TCase *b = tcase_create("bad_input");

    tcase_add_unchecked_fixture(f, start_all, stop_all);
    tcase_set_timeout(f, 90);
    tcase_add_test(f, a_placed_order_is_confirmed_with_one_invoice_reservation_and_mail);
    tcase_add_test(f, an_order_for_too_much_stock_is_rejected_and_stock_is_unchanged);
    tcase_add_test(f, a_payment_failure_releases_the_stock);
    tcase_add_test(f, pos_sales_take_stock_and_are_invoiced);
    tcase_add_test(f, concurrent_orders_for_the_last_units_never_oversell);
    tcase_add_test(f, the_same_idempotency_key_gives_the_same_order_once);
    tcase_add_test(f, requests_racing_on_one_idempotency_key_get_one_order);
    tcase_add_test(f, pos_spools_sales_while_the_broker_is_down_and_sends_them_after);
    tcase_add_test(f, every_service_reports_health_readiness_and_metrics);
    tcase_add_test(f, one_grep_follows_an_order_through_every_service);
    tcase_add_test(f, an_unroutable_outbox_row_is_parked_and_holds_back_nothing);
    tcase_add_test(f, the_outbox_backlog_is_counted_while_the_broker_is_away);
    tcase_add_test(f, readiness_fails_when_the_backlog_passes_ready_max_outbox);
    tcase_add_test(f, readiness_fails_when_the_oldest_row_passes_ready_max_outbox_age_s);
    tcase_add_test(f, every_service_is_unready_within_5_s_of_losing_postgresql);
    tcase_add_unchecked_fixture(b, start_all, stop_all);
    tcase_add_loop_test(b, bad_requests_get_their_status_and_the_server_keeps_serving, 0,
                        (int)(sizeof(bad) / sizeof(bad[0])));
    tcase_add_test(b, oversized_bodies_are_refused_with_413);
    tcase_add_test(b, keep_alive_connections_are_reused);
    suite_add_tcase(s, f);
    suite_add_tcase(s, b);
    return tu_run(s);
}
