/*
 * check_rpc.c — request/reply over the broker (common/mq_rpc.c) as the
 * suite uses it: GET /products/{sku}/availability in the real order-api,
 * answered by the real inventory from its stock table, on the real RabbitMQ
 * and PostgreSQL.
 *
 * The deadline is AVAILABILITY_TIMEOUT_MS=1500 here. Inventory is made slow
 * or absent by the operating system (SIGSTOP / SIGCONT, SIGTERM), the
 * broker by rabbitmqctl stop_app, and a backlog of orders by a lock on
 * inventory's stock table that the orders' updates wait for while the
 * availability query (a plain read) does not.
 *
 * One file (over 600 lines) on purpose: every test runs on the same fixture
 * (the real order-api and inventory started, and an answer seen, before
 * each test; the grants put back after it), and the tests are the one path
 * of a request (asked, answered, late, unanswered, refused) each broken at a
 * different hop. Split in two, each file would carry the fixture and the
 * helpers (ask, available, stock_of) again, and a change to the path would
 * have two places to miss.
 */
#include "availability.h"
#include "events.h"
#include "testutil.h"
#include "util.h"
#include "uuid.h"

#include <amqp.h>
#include <cJSON.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_PORT "18190"
#define API      "http://127.0.0.1:" API_PORT
#define OPS      "http://127.0.0.1:19190"
#define INV_PORT "19191"
#define DEADLINE 1500
#define ORDERS   300 /* the backlog */
#define SERIES(m)                                                                                  \
    "ordersuite_rpc_" m "_total{service=\"order-api\",routing_key=\"inventory.availability\"}"

static tu_svc inv, api;
static void restore_perms(void);

/* inventory's SELECT on its stock table, as the migrations grant it. */
static void grant_stock(void)
{
    free(tu_sql(tu_env("OWNER_DATABASE_URL"), "GRANT SELECT ON inventory.stock TO inventory", 0,
                NULL));
}

static void start_inventory(void)
{
    const char *env[] = {"METRICS_PORT=" INV_PORT, "DB_LOCK_TIMEOUT_MS=60000", NULL};
    const tu_svc_opts o = {.exe = "inventory",
                           .amqp_env = "INVENTORY_AMQP_URL",
                           .db_env = "INVENTORY_DATABASE_URL",
                           .env = env,
                           .log = "rpc-inventory",
                           .ready_url = "http://127.0.0.1:" INV_PORT "/readyz"};
    tu_svc_start(&inv, &o);
}

/* One GET of sku's availability: the status, and the body and headers
 * when asked for (malloc'd). */
static long ask(const char *sku, char **body, char **headers)
{
    char url[256];
    const char *hdrs[] = {TU_API_AUTH, NULL};
    snprintf(url, sizeof(url), API "/products/%s/availability", sku);
    return tu_http_h("GET", url, hdrs, NULL, 0, body, headers);
}

static int answers(void *sku)
{
    return ask(sku, NULL, NULL) == 200;
}

/* Both running, and an answer has come through (the client connects in
 * the background after /readyz, and inventory's answering thread too). */
static void setup(void)
{
    const char *env[] = {"HTTP_PORT=" API_PORT, "OPS_PORT=19190", "AVAILABILITY_TIMEOUT_MS=1500",
                         TU_API_TOKENS, NULL};
    const tu_svc_opts o = {.exe = "order-api",
                           .amqp_env = "ORDER_API_AMQP_URL",
                           .db_env = "ORDERS_DATABASE_URL",
                           .env = env,
                           .log = "rpc-order-api",
                           .ready_url = API "/readyz"};
    restore_perms();
    grant_stock();
    start_inventory();
    tu_svc_start(&api, &o);
    ck_assert_msg(tu_poll(30000, answers, "TEA-SENCHA"), "no availability answer within 30 s");
}

static void teardown(void)
{
    restore_perms();
    grant_stock();
    if (inv.pid)
        kill(inv.pid, SIGCONT);
    tu_svc_stop_ok(&api);
    tu_svc_stop_ok(&inv);
}

static long long stock_of(const char *sku)
{
    const char *p[] = {sku};
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                      "SELECT on_hand FROM inventory.stock WHERE sku = $1", 1, p);
}

/* The 200's available for sku (fails the test unless it is a 200 for sku). */
static long long available(const char *sku)
{
    char *body = NULL;
    long code = ask(sku, &body, NULL);
    cJSON *j = cJSON_Parse(body ? body : "");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "sku");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "available");
    long long n;
    ck_assert_msg(code == 200, "%s: status %ld: %s", sku, code, body ? body : "");
    ck_assert_msg(cJSON_IsString(s) && strcmp(s->valuestring, sku) == 0 && cJSON_IsNumber(a),
                  "%s: the answer is %s", sku, body);
    n = (long long)a->valuedouble;
    cJSON_Delete(j);
    free(body);
    return n;
}

static int is_problem(const char *headers)
{
    return headers && strstr(headers, "application/problem+json") != NULL;
}

/* ------------------------------------------------------------------ tests */

START_TEST(the_answer_is_the_stock_in_inventorys_table)
{
    static const char *const skus[] = {"TEA-SENCHA", "COF-DECAF", "TEA-HIMALAYA"};
    const char *p[] = {"COF-DECAF"};
    char *body = NULL, *hdrs = NULL;
    for (size_t i = 0; i < sizeof(skus) / sizeof(skus[0]); i++)
        ck_assert_int_eq(available(skus[i]), stock_of(skus[i]));
    /* a change in inventory's table is in the next answer */
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock($1, 3, 'check_rpc: +3')", 1, p));
    ck_assert_int_eq(available("COF-DECAF"), stock_of("COF-DECAF"));
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock($1, -3, 'check_rpc: -3')", 1, p));
    /* a SKU inventory does not stock, and a path that holds no SKU */
    ck_assert_int_eq(ask("NO-SUCH-SKU-1", &body, &hdrs), 404);
    ck_assert_msg(is_problem(hdrs) && strstr(body, "no such product"), "%s", body);
    free(body);
    free(hdrs);
    ck_assert_int_eq(ask("not_a_sku", NULL, NULL), 404);
    /* the token is needed */
    ck_assert_int_eq(tu_http("GET", API "/products/TEA-SENCHA/availability", NULL, NULL, 0, NULL),
                     401);
}
END_TEST

/* The queues of the tests' vhost, sorted names one a line (malloc'd). */
static char *queue_names(void)
{
    struct amqp_connection_info info;
    char cmd[1024], line[512], *out = NULL, *url = strdup(tu_env("TEST_AMQP_URL"));
    size_t len = 0;
    FILE *f;
    ck_assert_int_eq(amqp_parse_url(url, &info), AMQP_STATUS_OK);
    /* The vhost's name is plain (the tests' own): no quoting needed. */
    ck_assert_msg(strspn(info.vhost, "abcdefghijklmnopqrstuvwxyz0123456789-_/") ==
                      strlen(info.vhost),
                  "vhost %s", info.vhost);
    snprintf(cmd, sizeof(cmd),
             "bash %s/scripts/rmqctl.sh -s list_queues -p '%s' name 2>/dev/null | sort",
             tu_env("ORDERSUITE_ROOT"), info.vhost);
    free(url);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f)) {
        size_t n = strlen(line);
        char *grown = realloc(out, len + n + 1);
        ck_assert_ptr_nonnull(grown);
        out = grown;
        memcpy(out + len, line, n + 1);
        len += n;
    }
    ck_assert_int_eq(pclose(f), 0);
    return out ? out : strdup("");
}

typedef struct {
    const char *sku;
    long long want;
    int ok;
} asker;

static void *ask_many(void *arg)
{
    asker *a = arg;
    a->ok = 1;
    for (int i = 0; i < 10; i++) {
        char *body = NULL;
        char want[128];
        snprintf(want, sizeof(want), "{\"sku\":\"%s\",\"available\":%lld}", a->sku, a->want);
        if (ask(a->sku, &body, NULL) != 200 || !body || strcmp(body, want) != 0)
            a->ok = 0;
        free(body);
    }
    return NULL;
}

/* Asked from four threads at once, each for its own SKU: each gets its own
 * answer, and the broker holds no queue it did not hold before (direct
 * reply-to declares none: no amq.gen-* reply queue). */
/* A request whose reply_to names an ordinary queue, sent with order-api's
 * own credentials: inventory may publish replies to the default exchange
 * only for direct reply-to, so it drops the request instead of putting an
 * "answer" into that queue (which would arrive with inventory's user_id). */
START_TEST(a_reply_to_that_is_no_direct_reply_to_is_not_answered)
{
    amqp_connection_state_t c = tu_amqp_open("ORDER_API_AMQP_URL");
    amqp_basic_properties_t p = {0};
    char corr[UUID_STR_LEN];
    const char *body = "{\"sku\": \"TEA-SENCHA\"}", *target = "billing.dlq";
    long before = tu_queue_counts("TEST_AMQP_URL", target, NULL);

    ck_assert_int_ge(before, 0);
    uuid_v4(corr);
    p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
               AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_USER_ID_FLAG;
    p.correlation_id = amqp_cstring_bytes(corr);
    p.reply_to = amqp_cstring_bytes(target);
    p.content_type = amqp_cstring_bytes("application/json");
    p.user_id = amqp_cstring_bytes("order-api");
    ck_assert_int_eq(amqp_basic_publish(c, 1, amqp_cstring_bytes("sales.rpc"),
                                        amqp_cstring_bytes("inventory.availability"), 0, 0, &p,
                                        amqp_cstring_bytes(body)),
                     AMQP_STATUS_OK);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    /* Inventory answers its requests one at a time, in order: once an ask
     * made after it is answered, that request has been handled. */
    ck_assert(tu_poll(10000, answers, "TEA-SENCHA"));
    ck_assert_int_eq(tu_queue_counts("TEST_AMQP_URL", target, NULL), before);
    ck_assert_msg(tu_file_count(inv.log, corr, "dropped") >= 1,
                  "inventory did not say it dropped %s", corr);
}
END_TEST

START_TEST(concurrent_asks_get_their_own_answers_and_leave_no_queue_behind)
{
    static const char *const skus[] = {"TEA-SENCHA", "COF-DECAF", "TEA-HIMALAYA", "COF-FILTER"};
    asker a[4];
    pthread_t t[4];
    char *before = queue_names(), *after;
    for (int i = 0; i < 4; i++) {
        a[i] = (asker){skus[i], stock_of(skus[i]), 0};
        ck_assert_int_eq(pthread_create(&t[i], NULL, ask_many, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ck_assert_msg(a[i].ok, "an answer for %s was not its own", skus[i]);
    }
    after = queue_names();
    ck_assert_msg(strstr(after, "amq.gen") == NULL, "a server-named queue: %s", after);
    ck_assert_str_eq(after, before);
    free(before);
    free(after);
}
END_TEST

/* Inventory stopped: the request waits its deadline and no longer, then a
 * 504 problem; the request itself expires from inventory's queue, so a
 * restarted inventory does not answer a question nobody waits for. */
START_TEST(inventory_stopped_is_a_504_at_the_deadline)
{
    char *body = NULL, *hdrs = NULL;
    int64_t t0, took;
    long code;
    tu_svc_stop_ok(&inv);
    t0 = util_now_ms();
    code = ask("TEA-SENCHA", &body, &hdrs);
    took = util_now_ms() - t0;
    ck_assert_msg(code == 504 && is_problem(hdrs), "%ld: %s", code, body);
    ck_assert_msg(took >= DEADLINE - 50 && took < DEADLINE + 3000,
                  "answered after %lld ms, the deadline is %d ms", (long long)took, DEADLINE);
    free(body);
    free(hdrs);
    {
        int64_t until = util_now_ms() + 15000;
        long n;
        while ((n = tu_queue_counts("TEST_AMQP_URL", "inventory.requests", NULL)) != 0 &&
               util_now_ms() < until)
            util_sleep_ms(100, NULL);
        ck_assert_msg(n == 0, "inventory.requests still holds %ld request(s)", n);
    }
    start_inventory();
    ck_assert_msg(tu_poll(30000, answers, "TEA-SENCHA"), "no answer after inventory's restart");
}
END_TEST

typedef struct {
    char *hdrs;
    long other; /* an answer that was neither a 503 nor a 200, if any */
} unavail_arg;

static int unavailable(void *arg)
{
    unavail_arg *a = arg;
    long code;
    free(a->hdrs);
    a->hdrs = NULL;
    code = ask("TEA-SENCHA", NULL, &a->hdrs);
    if (code != 503 && code != 200 && !a->other)
        a->other = code;
    return code == 503;
}

/* The broker down: a 503 problem with Retry-After, at once, and nothing
 * else before it (a 504, a request that waited for its deadline, would not
 * be "the broker is down"; a 200 is an answer that raced the stop); back
 * up, the answers come again. */
START_TEST(broker_down_is_a_503)
{
    unavail_arg a = {NULL, 0};
    char *hdrs;
    int got503, back;
    tu_broker("stop_app");
    got503 = tu_poll(15000, unavailable, &a);
    tu_broker("start_app");
    back = tu_poll(60000, answers, "TEA-SENCHA");
    hdrs = a.hdrs;
    ck_assert_msg(got503, "no 503 while the broker was down");
    ck_assert_msg(a.other == 0, "a %ld before the 503 while the broker was down", a.other);
    ck_assert_msg(is_problem(hdrs) && strstr(hdrs, "Retry-After: 2"), "%s", hdrs);
    ck_assert_msg(back, "no answer within 60 s of the broker's return");
    free(hdrs);
}
END_TEST

/* No queue for the request (inventory.requests unbound from sales.rpc, as
 * when inventory's topology was never declared): the broker returns the
 * mandatory request, and the asker answers 503 with Retry-After at once.
 * order-api runs with a 60 s deadline here, so a request that waited for
 * its deadline (a 504) would take 60 s: the test tells the two apart by
 * what is answered, not by a timing. */
START_TEST(no_request_queue_is_a_503_at_once)
{
    const char *env[] = {"HTTP_PORT=" API_PORT, "OPS_PORT=19190", "AVAILABILITY_TIMEOUT_MS=60000",
                         TU_API_TOKENS, NULL};
    const tu_svc_opts o = {.exe = "order-api",
                           .amqp_env = "ORDER_API_AMQP_URL",
                           .db_env = "ORDERS_DATABASE_URL",
                           .env = env,
                           .log = "rpc-order-api-60s",
                           .ready_url = API "/readyz"};
    amqp_connection_state_t c;
    char *body = NULL, *hdrs = NULL;
    long code;

    tu_svc_stop_ok(&api);
    tu_svc_start(&api, &o);
    ck_assert_msg(tu_poll(30000, answers, "TEA-SENCHA"), "no answer from the restarted order-api");
    c = tu_amqp_open("TEST_AMQP_URL");
    amqp_queue_unbind(c, 1, amqp_cstring_bytes("inventory.requests"),
                      amqp_cstring_bytes("sales.rpc"),
                      amqp_cstring_bytes(RPC_INVENTORY_AVAILABILITY), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    code = ask("TEA-SENCHA", &body, &hdrs);
    amqp_queue_bind(c, 1, amqp_cstring_bytes("inventory.requests"), amqp_cstring_bytes("sales.rpc"),
                    amqp_cstring_bytes(RPC_INVENTORY_AVAILABILITY), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    ck_assert_msg(code == 503 && is_problem(hdrs) && strstr(hdrs, "Retry-After: 2"),
                  "no request queue: %ld %s %s", code, hdrs ? hdrs : "", body ? body : "");
    free(body);
    free(hdrs);
    ck_assert_msg(tu_poll(30000, answers, "TEA-SENCHA"), "no answer once the queue is bound");
}
END_TEST

static int sent_reaches(void *want)
{
    return tu_metric(OPS, SERIES("requests")) >= *(double *)want;
}

static int late_reaches(void *want)
{
    return tu_metric(OPS, SERIES("late_replies")) >= *(double *)want;
}

typedef struct {
    long code;
    char *body;
} reply;

static void *ask_decaf(void *arg)
{
    reply *r = arg;
    r->code = ask("COF-DECAF", &r->body, NULL);
    return NULL;
}

/* Inventory held (SIGSTOP) past a request's deadline answers it when let
 * go (SIGCONT): that reply finds nobody waiting, is dropped and counted,
 * and the request asked meanwhile, for another SKU, gets its own answer. */
START_TEST(a_late_reply_is_dropped_and_the_next_request_gets_its_own)
{
    double late0 = tu_metric(OPS, SERIES("late_replies"));
    double sent0 = tu_metric(OPS, SERIES("requests")), want;
    reply r = {0};
    pthread_t t;
    char expect[128];
    long code;

    ck_assert(late0 >= 0 && sent0 >= 0);
    snprintf(expect, sizeof(expect), "{\"sku\":\"COF-DECAF\",\"available\":%lld}",
             stock_of("COF-DECAF"));
    ck_assert_int_eq(kill(inv.pid, SIGSTOP), 0);
    code = ask("TEA-SENCHA", NULL, NULL);
    ck_assert_int_eq(pthread_create(&t, NULL, ask_decaf, &r), 0);
    want = sent0 + 2;
    ck_assert_msg(tu_poll(5000, sent_reaches, &want), "the second request was not sent");
    ck_assert_int_eq(kill(inv.pid, SIGCONT), 0);
    pthread_join(t, NULL);
    ck_assert_int_eq(code, 504);
    ck_assert_msg(r.code == 200 && r.body && strcmp(r.body, expect) == 0,
                  "the request after the late one got %ld: %s", r.code, r.body ? r.body : "");
    want = late0 + 1;
    ck_assert_msg(tu_poll(10000, late_reaches, &want), "the late reply was not counted");
    ck_assert_int_eq(tu_metric(OPS, SERIES("late_replies")), late0 + 1);
    free(r.body);
}
END_TEST

static int backlog(void *arg)
{
    (void)arg;
    return tu_queue_counts("TEST_AMQP_URL", "inventory", NULL) > 0;
}

/* Orders wait in inventory's queue behind a batch that waits for a lock on
 * its stock table: the availability question, on inventory's own request
 * queue and thread, is answered within its deadline all the same, while
 * the backlog is still there. */
START_TEST(a_backlog_of_orders_does_not_delay_an_answer)
{
    const char *sku = "TEA-SENCHA";
    const char *p[] = {sku};
    const char *purge[] = {"billing", NULL};
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_rpc");
    char err[MQ_ERR_LEN];
    PGconn *hold;
    PGresult *r;
    long long stock;
    long waiting;
    char *ids = malloc(ORDERS * (UUID_STR_LEN + 1) + 3), *at;

    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(sku, 100000 - on_hand, 'check_rpc: stock')"
                " FROM inventory.stock WHERE sku = $1",
                1, p));
    stock = stock_of(sku);
    hold = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(hold), CONNECTION_OK);
    r = PQexec(hold, "BEGIN; LOCK TABLE inventory.stock IN SHARE MODE");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    ck_assert_ptr_nonnull(ids);
    at = ids + sprintf(ids, "{");
    for (int i = 0; i < ORDERS; i++) {
        ev_event ev;
        order_placed *o = &ev.u.order_placed;
        char id[UUID_STR_LEN], *body;
        mq_msg m = {0};
        ev_init(&ev, EV_ORDER_PLACED);
        uuid_v4(o->order_id);
        strcpy(o->customer_id, "check-rpc");
        strcpy(o->customer_email, "rpc@example.com");
        strcpy(o->currency, "EUR");
        ck_assert_int_eq(ev_lines_alloc(&o->lines, 1), 0);
        strcpy(o->lines.items[0].sku, sku);
        o->lines.items[0].quantity = 1;
        o->lines.items[0].unit_price = o->total = 890;
        body = ev_to_json(&ev, NULL, err, sizeof(err));
        ck_assert_msg(body != NULL, "%s", err);
        uuid_v4(id);
        at += sprintf(at, "%s%s", i ? "," : "", id);
        m.routing_key = ev_routing_key(EV_ORDER_PLACED);
        m.message_id = id;
        m.correlation_id = o->order_id;
        m.body = body;
        m.len = strlen(body);
        ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "%s", err);
        free(body);
        ev_free(&ev);
    }
    mq_free(c);
    sprintf(at, "}");
    ck_assert_msg(tu_await_lock_waiter(10000, "inventory.stock", NULL),
                  "inventory's batch never waited for the lock");
    ck_assert_msg(tu_poll(10000, backlog, NULL), "no backlog in inventory's queue");
    ck_assert_int_eq(available(sku), stock); /* within the deadline, or a 504 */
    waiting = tu_queue_counts("TEST_AMQP_URL", "inventory", NULL);
    r = PQexec(hold, "COMMIT");
    PQclear(r);
    PQfinish(hold);
    ck_assert_msg(waiting > 0, "the backlog was gone before the answer came");
    /* The orders go through; their inventory.reserved is not for this
     * suite's billing (not running): cleared once inventory sent them. */
    tu_await_count(60000, "SELECT count(*) FROM inventory.inbox WHERE message_id = ANY($1::uuid[])",
                   ids, ORDERS);
    tu_await_count(30000, "SELECT count(*) FROM inventory.outbox", NULL, 0);
    tu_purge("TEST_AMQP_URL", purge);
    free(ids);
}
END_TEST

/* rabbitmqctl ARGS in the tests' vhost (-p is appended): its output's
 * first line, without the newline (malloc'd). */
static char *rmqctl_line(const char *args)
{
    struct amqp_connection_info info;
    char cmd[2048], line[1024] = "", *url = strdup(tu_env("TEST_AMQP_URL"));
    FILE *f;
    ck_assert_int_eq(amqp_parse_url(url, &info), AMQP_STATUS_OK);
    snprintf(cmd, sizeof(cmd), "bash %s/scripts/rmqctl.sh -s %s -p '%s' 2>/dev/null",
             tu_env("ORDERSUITE_ROOT"), args, info.vhost);
    free(url);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    while (fgetc(f) != EOF)
        ;
    ck_assert_msg(pclose(f) == 0, "%s failed", cmd);
    line[strcspn(line, "\n")] = '\0';
    return strdup(line);
}

/* inventory's permissions before a test took some away, in a file: a
 * test that fails ends its process before its teardown, so the next
 * setup restores them too. */
static const char *saved_perms_file(void)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/var/check_rpc-inventory-perms", tu_env("ORDERSUITE_ROOT"));
    return path;
}

static void restore_perms(void)
{
    char args[1200], perms[1024];
    FILE *f = fopen(saved_perms_file(), "r");
    if (!f)
        return;
    if (fgets(perms, sizeof(perms), f)) {
        perms[strcspn(perms, "\n")] = '\0';
        snprintf(args, sizeof(args), "set_permissions inventory %s", perms);
        free(rmqctl_line(args));
    }
    fclose(f);
    ck_assert_int_eq(remove(saved_perms_file()), 0);
}

static int consumer_and_relay_up(void *code)
{
    char *body = NULL;
    long c = tu_http("GET", "http://127.0.0.1:" INV_PORT "/readyz", NULL, NULL, 0, &body);
    int up = c == 200 || (body && strstr(body, "consumer up, relay up, database answering"));
    *(long *)code = c;
    free(body);
    return up;
}

static int not_ready_naming_requests(void *unused)
{
    char *body = NULL;
    long c = tu_http("GET", "http://127.0.0.1:" INV_PORT "/readyz", NULL, NULL, 0, &body);
    int ok = c == 503 && body && strstr(body, "request/reply server") != NULL;
    (void)unused;
    free(body);
    return ok;
}

/* Inventory may no longer read inventory.requests (a permission error:
 * the broker refuses the consume with 403): the thread that answers
 * requests cannot serve, so inventory is not ready and its /readyz says
 * why, although its event consumer, relay and database are all up. */
START_TEST(inventory_that_cannot_serve_requests_is_not_ready)
{
    char *cur = rmqctl_line("list_user_permissions inventory"), *tab, *read, *cut, args[1200];
    const char *req = "|inventory\\.requests";
    long code = 0;
    /* "vhost\tconfigure\twrite\tread": keep configure and write as they are */
    tab = strchr(cur, '\t');
    ck_assert_msg(tab && (read = strrchr(cur, '\t')) && read != tab, "permissions: %s", cur);
    {
        FILE *f = fopen(saved_perms_file(), "w");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "'%.*s' '%.*s' '%s'\n", (int)(strchr(tab + 1, '\t') - tab - 1), tab + 1,
                (int)(read - strchr(tab + 1, '\t') - 1), strchr(tab + 1, '\t') + 1, read + 1);
        ck_assert_int_eq(fclose(f), 0);
    }
    cut = strstr(read + 1, req);
    ck_assert_msg(cut != NULL, "inventory's read permission %s lacks %s", read + 1, req);
    memmove(cut, cut + strlen(req), strlen(cut + strlen(req)) + 1);
    tu_svc_stop_ok(&inv);
    snprintf(args, sizeof(args), "set_permissions inventory '%.*s' '%.*s' '%s'",
             (int)(strchr(tab + 1, '\t') - tab - 1), tab + 1,
             (int)(read - strchr(tab + 1, '\t') - 1), strchr(tab + 1, '\t') + 1, read + 1);
    free(rmqctl_line(args));
    free(cur);
    {
        const char *env[] = {"METRICS_PORT=" INV_PORT, NULL};
        const tu_svc_opts o = {.exe = "inventory",
                               .amqp_env = "INVENTORY_AMQP_URL",
                               .db_env = "INVENTORY_DATABASE_URL",
                               .env = env,
                               .log = "rpc-inventory"};
        tu_svc_start(&inv, &o);
    }
    ck_assert_int_ne(ask("TEA-SENCHA", NULL, NULL), 200);
    ck_assert_msg(tu_poll(30000, consumer_and_relay_up, &code),
                  "inventory's consumer and relay not up within 30 s");
    ck_assert_msg(tu_poll(10000, not_ready_naming_requests, NULL),
                  "inventory's /readyz is not a 503 naming the request/reply server (last %ld)",
                  code);
    restore_perms();
}
END_TEST

/* Inventory's database refuses its query (its SELECT on the stock table
 * revoked): inventory answers with an error reply, and order-api answers
 * a 503 problem at once, not a 504 at the deadline. */
START_TEST(inventory_that_cannot_read_its_stock_answers_an_error)
{
    char *body = NULL, *hdrs = NULL;
    long code;
    free(tu_sql(tu_env("OWNER_DATABASE_URL"), "REVOKE SELECT ON inventory.stock FROM inventory", 0,
                NULL));
    code = ask("TEA-SENCHA", &body, &hdrs);
    ck_assert_msg(code == 503 && is_problem(hdrs) && strstr(body, "inventory could not answer"),
                  "%ld: %s", code, body ? body : "");
    free(body);
    free(hdrs);
    grant_stock();
    ck_assert_msg(tu_poll(10000, answers, "TEA-SENCHA"), "no answer after the grant");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rpc");
    TCase *tc = tcase_create("availability");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, the_answer_is_the_stock_in_inventorys_table);
    tcase_add_test(tc, concurrent_asks_get_their_own_answers_and_leave_no_queue_behind);
    tcase_add_test(tc, a_reply_to_that_is_no_direct_reply_to_is_not_answered);
    tcase_add_test(tc, inventory_stopped_is_a_504_at_the_deadline);
    tcase_add_test(tc, a_late_reply_is_dropped_and_the_next_request_gets_its_own);
    tcase_add_test(tc, a_backlog_of_orders_does_not_delay_an_answer);
    tcase_add_test(tc, broker_down_is_a_503);
    tcase_add_test(tc, no_request_queue_is_a_503_at_once);
    tcase_add_test(tc, inventory_that_cannot_serve_requests_is_not_ready);
    tcase_add_test(tc, inventory_that_cannot_read_its_stock_answers_an_error);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
