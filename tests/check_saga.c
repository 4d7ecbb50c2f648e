/*
 * check_saga.c — the saga's timeout (issue #17, item 2) against the real
 * RabbitMQ and PostgreSQL: the real order-api (ORDER_TIMEOUT_S short),
 * inventory, billing and email (delivering to the project's mail catcher),
 * each as its own database role and broker user. A service is stopped, an
 * order goes in over HTTP and outlives its deadline; the assertions read the
 * API, the services' tables, the mail catcher and the ledger.
 *
 * Every test starts the four services and the catcher (a checked fixture),
 * so a test that stops one leaves nothing behind for the next.
 *
 * One file (over 600 lines) on purpose: every test is one way an order's
 * deadline meets the rest of the flow (a service down, the order done, an
 * event late, a race held open with a lock), on that one fixture, read
 * through the same helpers (the order's status over HTTP, the services'
 * tables, the catcher's mails, the ledger); a split would copy the fixture
 * and the helpers or move them to testutil, where no other suite needs them.
 */
#include "events.h"
#include "testutil.h"
#include "util.h"

#include <cJSON.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define API   "http://127.0.0.1:18090"
#define TOKEN "saga-suite-token-Qw3Er5Ty7Ui9Op1As2Df4Gh6"
#define AUTH  "Authorization: Bearer " TOKEN
/* The deadline under test, short, and the relay's timer that looks for it. */
#define TIMEOUT_S "4"
#define SKU       "FLT-PAPER"

enum { INV, BIL, MAIL, API_SVC, NSVC };
static const char *const names[NSVC] = {"inventory", "billing", "email", "order-api"};
static const char *const urls[NSVC] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                       "EMAIL_DATABASE_URL", "ORDERS_DATABASE_URL"};
static const char *const amqp[NSVC] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL", "EMAIL_AMQP_URL",
                                       "ORDER_API_AMQP_URL"};
static tu_svc svcs[NSVC];
static tu_svc inv2; /* a second inventory, for a test that races two */
static tu_catcher mc;
static char tokens_env[600], smtp_env[64];
/* The test's customer_id, new for each: the ledger checks its orders only
 * (--tag), not those of the suites before (which this order-api's short
 * deadline expires too). */
static char tag[32];

/* ------------------------------------------------------------- services */

static void write_tokens(const char *path)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(EVP_Digest(TOKEN, strlen(TOKEN), md, &n, EVP_sha256(), NULL) == 1);
    fprintf(f, "saga ");
    for (unsigned int i = 0; i < n; i++)
        fprintf(f, "%02x", md[i]);
    fprintf(f, "\n");
    ck_assert_int_eq(fclose(f), 0);
}

/* Starts service i (without waiting when spawn_only), with up to three
 * more NAME=VALUE settings (extra, NULL-ended; NULL: none). */
static void start_with(int i, int spawn_only, const char *const *extra)
{
    char port[32], log[64], ready[128];
    const char *env[] = {"HTTP_PORT=18090",
                         "OPS_PORT=19190",
                         port,
                         tokens_env,
                         smtp_env,
                         "ORDER_TIMEOUT_S=" TIMEOUT_S,
                         "OUTBOX_SWEEP_MS=200",
                         "RETRY_DELAYS_MS=200,400",
                         "MAIL_RETRY_MAX_MS=500",
                         NULL,
                         NULL,
                         NULL,
                         NULL};
    tu_svc_opts o = {.exe = names[i],
                     .amqp_env = amqp[i],
                     .db_env = urls[i],
                     .env = env,
                     .log = log,
                     .ready_url = ready};
    for (int k = 0; extra && extra[k] && k < 3; k++)
        env[9 + k] = extra[k];
    snprintf(port, sizeof(port), "METRICS_PORT=%d", 19191 + i);
    snprintf(log, sizeof(log), "saga-%s", names[i]);
    if (i == API_SVC)
        snprintf(ready, sizeof(ready), API "/readyz");
    else
        snprintf(ready, sizeof(ready), "http://127.0.0.1:%d/readyz", 19191 + i);
    if (spawn_only)
        tu_svc_spawn(&svcs[i], &o);
    else
        tu_svc_start(&svcs[i], &o);
}

static void start(int i, int spawn_only)
{
    start_with(i, spawn_only, NULL);
}

static void setup(void)
{
    char tokens[512], u[UUID_STR_LEN];
    uuid_v4(u);
    snprintf(tag, sizeof(tag), "saga-%.8s", u);
    snprintf(tokens, sizeof(tokens), "%s/log/tests/saga-api-tokens", tu_env("ORDERSUITE_VAR"));
    write_tokens(tokens);
    snprintf(tokens_env, sizeof(tokens_env), "API_TOKENS_FILE=%s", tokens);
    mc = tu_catcher_start(0, 0, NULL, "saga-mailcatcher");
    snprintf(smtp_env, sizeof(smtp_env), "SMTP_URL=smtp://127.0.0.1:%d", mc.smtp);
    for (int i = 0; i < NSVC; i++)
        start(i, 1);
    for (int i = 0; i < NSVC; i++)
        tu_svc_await(&svcs[i]);
}

static void teardown(void)
{
    if (inv2.pid)
        tu_svc_stop_ok(&inv2);
    for (int i = NSVC - 1; i >= 0; i--) {
        if (svcs[i].pid) {
            kill(svcs[i].pid, SIGCONT); /* a test that failed holding it */
            tu_svc_stop_ok(&svcs[i]);
        }
    }
    tu_catcher_stop(&mc);
}

/* -------------------------------------------------------------- helpers */

static void set_stock(const char *sku, long n)
{
    char v[24];
    const char *p[] = {sku, util_i64(v, n)};
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "SELECT inventory.adjust_stock(sku, $2::bigint - on_hand, 'test: set stock')"
                " FROM inventory.stock WHERE sku = $1",
                2, p));
}

static long stock(void)
{
    return tu_count("SELECT on_hand FROM inventory.stock WHERE sku = $1", SKU);
}

/* A mailbox of this test's own, so the catcher's count is this order's. */
static void mailbox(char out[64])
{
    char u[UUID_STR_LEN];
    uuid_v4(u);
    snprintf(out, 64, "saga-%.8s@example.com", u);
}

/* POSTs an order of 3 x SKU for email; 201 and the id, or the test fails. */
static void place(const char *email, char id[UUID_STR_LEN])
{
    char body[512], *resp = NULL;
    const char *hdrs[] = {"Content-Type: application/json", AUTH, NULL};
    cJSON *j;
    long code;
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"%s\",\"customer_email\":\"%s\",\"currency\":\"EUR\","
             "\"items\":[{\"sku\":\"" SKU "\",\"quantity\":3}]}",
             tag, email);
    code = tu_http("POST", API "/orders", hdrs, body, strlen(body), &resp);
    ck_assert_msg(code == 201, "POST /orders: %ld %.300s", code, resp ? resp : "");
    j = cJSON_Parse(resp);
    ck_assert(j && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "id")));
    snprintf(id, UUID_STR_LEN, "%s", cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    free(resp);
}

/* The order's status and reason from GET /orders/{id} (reason may be NULL). */
static void order_status(const char *id, char *status, size_t n, char *reason, size_t rn)
{
    char url[256], *resp = NULL;
    const char *hdrs[] = {AUTH, NULL};
    cJSON *j;
    const cJSON *s, *r;
    snprintf(url, sizeof(url), API "/orders/%s", id);
    ck_assert_int_eq(tu_http("GET", url, hdrs, NULL, 0, &resp), 200);
    j = cJSON_Parse(resp);
    ck_assert_ptr_nonnull(j);
    s = cJSON_GetObjectItemCaseSensitive(j, "status");
    r = cJSON_GetObjectItemCaseSensitive(j, "reason");
    snprintf(status, n, "%s", cJSON_IsString(s) ? s->valuestring : "?");
    if (reason)
        snprintf(reason, rn, "%s", cJSON_IsString(r) ? r->valuestring : "");
    cJSON_Delete(j);
    free(resp);
}

typedef struct {
    const char *id, *want;
} status_arg;

static int has_status(void *arg)
{
    const status_arg *a = arg;
    char st[32];
    order_status(a->id, st, sizeof(st), NULL, 0);
    return strcmp(st, a->want) == 0;
}

static void await_status(const char *id, const char *want)
{
    status_arg a = {id, want};
    char st[32];
    if (!tu_poll(30000, has_status, &a)) {
        order_status(id, st, sizeof(st), NULL, 0);
        ck_abort_msg("order %s is %s, never %s", id, st, want);
    }
}

/* GET /orders?status=EXPIRED lists the order (the client's newest). */
static void listed_as_expired(const char *id)
{
    char *resp = NULL;
    const char *hdrs[] = {AUTH, NULL};
    long code = tu_http("GET", API "/orders?status=EXPIRED&limit=100", hdrs, NULL, 0, &resp);
    ck_assert_msg(code == 200, "GET /orders?status=EXPIRED: %ld %.300s", code, resp ? resp : "");
    ck_assert_msg(strstr(resp, id) != NULL, "%s not listed as EXPIRED: %.500s", id, resp);
    free(resp);
}

/* Mails the catcher holds for rcpt. */
static long mails_at_server(const char *rcpt)
{
    char url[128], *body = NULL;
    long n = 0;
    cJSON *a, *m;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/messages", mc.http);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, 0, &body), 200);
    a = cJSON_Parse(body);
    ck_assert_msg(cJSON_IsArray(a), "not a JSON array: %.200s", body);
    cJSON_ArrayForEach(m, a)
    {
        cJSON *r;
        cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(m, "rcpt_tos"))
        {
            n += cJSON_IsString(r) && strcmp(r->valuestring, rcpt) == 0;
        }
    }
    cJSON_Delete(a);
    free(body);
    return n;
}

static int one_mail_at_server(void *rcpt)
{
    return mails_at_server(rcpt) == 1;
}

/* Every work queue empty and the services' outboxes too: what was sent
 * has been handled. */
static int quiet(void *arg)
{
    (void)arg;
    for (int i = 0; i < NSVC; i++) {
        if (tu_queue_counts("TEST_AMQP_URL", names[i], NULL) != 0)
            return 0;
    }
    /* Parked rows aside: an earlier suite's, which only an operator moves. */
    return tu_count("SELECT (SELECT count(*) FROM orders.outbox WHERE parked_at IS NULL)"
                    " + (SELECT count(*) FROM inventory.outbox WHERE parked_at IS NULL)"
                    " + (SELECT count(*) FROM billing.outbox WHERE parked_at IS NULL)"
                    " + (SELECT count(*) FROM email.outbox WHERE parked_at IS NULL)"
                    " + (SELECT count(*) FROM email.messages WHERE status = 'pending')",
                    NULL) == 0;
}

static void await_quiet(void)
{
    char *rows;
    if (tu_poll(30000, quiet, NULL))
        return;
    rows = tu_sql(tu_env("OWNER_DATABASE_URL"),
                  "SELECT string_agg(x, ' ') FROM (SELECT 'orders.outbox ' || routing_key AS x"
                  " FROM orders.outbox WHERE parked_at IS NULL UNION ALL SELECT 'inventory.outbox '"
                  " || routing_key FROM inventory.outbox WHERE parked_at IS NULL UNION ALL"
                  " SELECT 'billing.outbox ' || routing_key FROM billing.outbox WHERE parked_at IS"
                  " NULL UNION ALL SELECT 'pending mail ' || kind FROM email.messages"
                  " WHERE status = 'pending') q",
                  0, NULL);
    ck_abort_msg("the suite never went quiet: queues %ld %ld %ld %ld; rows: %s",
                 tu_queue_counts("TEST_AMQP_URL", names[0], NULL),
                 tu_queue_counts("TEST_AMQP_URL", names[1], NULL),
                 tu_queue_counts("TEST_AMQP_URL", names[2], NULL),
                 tu_queue_counts("TEST_AMQP_URL", names[3], NULL), rows ? rows : "?");
}

static long count_for(const char *sql, const char *id)
{
    return tu_count(sql, id);
}

/* The ledger over the given orders (loadgen's ids file) of the test's tag:
 * clean, or the test fails with its report. */
static void ledger_clean(const char *const *ids, size_t n)
{
    char path[512], *out = NULL;
    char *argv[] = {"ledger", "--tag", tag, "--ids", path, "--wait", "30", NULL};
    const tu_svc_opts o = {.exe = "ledger",
                           .amqp_env = "TEST_AMQP_URL",
                           .db_env = "OWNER_DATABASE_URL",
                           .argv = argv,
                           .log = "saga-ledger"};
    FILE *f;
    int rc;
    snprintf(path, sizeof(path), "%s/log/tests/saga-ids", tu_env("ORDERSUITE_VAR"));
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "O - %s\n", ids[i]);
    ck_assert_int_eq(fclose(f), 0);
    rc = tu_tool(&o, &out);
    ck_assert_msg(rc == 0 && strstr(out, "RESULT lost=0 duplicated=0 stuck=0 inconsistent=0 ok=1"),
                  "the ledger is not clean (exit %d):\n%s", rc, out);
    free(out);
}

/* Holds the order's deadline: a transaction of the test's that keeps a
 * FOR KEY SHARE lock on the order's row. The deadline's sweep takes rows FOR
 * UPDATE SKIP LOCKED, so it passes this order by; order-api's handlers
 * (an UPDATE of the status, no key) are not held. So the order reaches the
 * status a test wants before its deadline however slow the machine is, and
 * expires as soon as the test lets go (release_deadline). */
static PGconn *hold_deadline(const char *id)
{
    const char *p[] = {id};
    PGconn *c = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    PGresult *r;
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    r = PQexec(c, "BEGIN");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexecParams(c, "SELECT 1 FROM orders.orders WHERE id = $1::uuid FOR KEY SHARE", 1, NULL, p,
                     NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s",
                  PQerrorMessage(c));
    PQclear(r);
    return c;
}

static void release_deadline(PGconn *c)
{
    PGresult *r = PQexec(c, "ROLLBACK");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(c);
}

/* ----------------------------------------------------------------- tests */

/* The test: billing is down past the deadline. The order expires,
 * its stock comes back, the customer gets one mail; billing comes back,
 * handles what waited for it (the reservation and the expiry), and nothing
 * the customer sees changes: the order stays EXPIRED, the invoice billing
 * made late is void, still one mail, and the ledger is clean. */
START_TEST(an_order_past_its_deadline_expires_and_every_step_is_compensated)
{
    char id[UUID_STR_LEN], rcpt[64], st[32], reason[256];
    const char *ids[] = {id};
    PGconn *hold;

    set_stock(SKU, 500);
    mailbox(rcpt);
    tu_svc_stop_ok(&svcs[BIL]);
    place(rcpt, id);
    hold = hold_deadline(id); /* RESERVED is seen however slow inventory is */
    await_status(id, "RESERVED");
    ck_assert_int_eq(stock(), 497);
    release_deadline(hold);
    await_status(id, "EXPIRED");
    order_status(id, st, sizeof(st), reason, sizeof(reason));
    ck_assert_msg(strstr(reason, "ORDER_TIMEOUT_S (" TIMEOUT_S " s)"), "reason: %s", reason);
    listed_as_expired(id);
    tu_await_count(20000, "SELECT on_hand FROM inventory.stock WHERE sku = $1", SKU, 500);
    tu_await_count(20000,
                   "SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid"
                   " AND status = 'RELEASED'",
                   id, 1);
    ck_assert_msg(tu_poll(20000, one_mail_at_server, rcpt), "not one mail for %s: %ld", rcpt,
                  mails_at_server(rcpt));
    ck_assert_int_eq(count_for("SELECT count(*) FROM email.messages WHERE correlation_id ="
                               " $1::uuid AND kind = 'order_expired'",
                               id),
                     1);

    start(BIL, 0);
    tu_await_count(20000, "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", id, 1);
    await_quiet();
    /* Nothing changed: the order, the stock, the mail; the invoice made
     * from the late reservation is void. */
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "EXPIRED");
    ck_assert_int_eq(stock(), 500);
    ck_assert_int_eq(mails_at_server(rcpt), 1);
    ck_assert_int_eq(count_for("SELECT count(*) FROM billing.invoices i WHERE order_id = $1::uuid"
                               " AND NOT EXISTS (SELECT 1 FROM billing.voids v"
                               "  WHERE v.invoice_id = i.id)",
                               id),
                     0);
    ck_assert_int_eq(count_for("SELECT count(*) FROM email.messages WHERE correlation_id ="
                               " $1::uuid",
                               id),
                     1);
    ledger_clean(ids, 1);
}
END_TEST

/* A deadline that passes after the order completed changes nothing. The
 * second order, placed later with billing stopped, expires: by then the
 * relay has looked past the first order's deadline too. */
START_TEST(a_deadline_after_the_order_completed_changes_nothing)
{
    char done[UUID_STR_LEN], late[UUID_STR_LEN], rcpt[64], rcpt2[64], st[32];
    const char *ids[] = {done, late};
    PGconn *hold;

    set_stock(SKU, 500);
    mailbox(rcpt);
    mailbox(rcpt2);
    place(rcpt, done);
    hold = hold_deadline(done); /* it completes however slow the services are */
    await_status(done, "CONFIRMED");
    release_deadline(hold);
    tu_svc_stop_ok(&svcs[BIL]);
    place(rcpt2, late);
    await_status(late, "EXPIRED");
    ck_assert_msg(tu_poll(20000, one_mail_at_server, rcpt2), "no expiry mail");

    order_status(done, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "CONFIRMED");
    ck_assert_int_eq(count_for("SELECT count(*) FROM orders.order_timeline WHERE order_id ="
                               " $1::uuid AND status = 'EXPIRED'",
                               done),
                     0);
    ck_assert_int_eq(
        count_for("SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", done), 0);
    ck_assert_int_eq(count_for("SELECT count(*) FROM inventory.reservations WHERE order_id ="
                               " $1::uuid AND status = 'RESERVED'",
                               done),
                     1);
    ck_assert_int_eq(mails_at_server(rcpt), 1); /* the confirmation, alone */
    start(BIL, 0);
    await_quiet();
    ledger_clean(ids, 2);
}
END_TEST

/* Inventory is down past the deadline: the order expires while PENDING.
 * When inventory comes back it reserves the order (order.placed comes
 * first in its queue) and emits the late inventory.reserved, then the
 * expiry releases the stock; billing, which had the expiry first, makes no
 * invoice from the late reservation; the customer is told once. */
START_TEST(a_reservation_after_the_expiry_is_compensated)
{
    char id[UUID_STR_LEN], rcpt[64], st[32];
    const char *ids[] = {id};

    set_stock(SKU, 500);
    mailbox(rcpt);
    tu_svc_stop_ok(&svcs[INV]);
    place(rcpt, id);
    await_status(id, "EXPIRED");
    ck_assert_msg(tu_poll(20000, one_mail_at_server, rcpt), "no expiry mail");
    start(INV, 0);
    tu_await_count(20000,
                   "SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid"
                   " AND status = 'RELEASED'",
                   id, 1);
    tu_await_count(20000, "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", id, 1);
    await_quiet();
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "EXPIRED");
    ck_assert_int_eq(stock(), 500);
    /* Billing, up all along, had the expiry before the late reservation:
     * no invoice was made for it. */
    ck_assert_int_eq(
        count_for("SELECT count(*) FROM billing.invoices WHERE order_id = $1::uuid", id), 0);
    ck_assert_int_eq(count_for("SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid"
                               " AND invoice_id IS NULL",
                               id),
                     1);
    ck_assert_int_eq(mails_at_server(rcpt), 1);
    ledger_clean(ids, 1);
}
END_TEST

/* The other order of arrival: the expiry reaches inventory and billing
 * before the order's own events (a redelivery, a retry tier). Then the late
 * order.placed reserves nothing and the late inventory.reserved is not
 * invoiced. The test plays order-api and inventory with their own users. */
/* Billing held (SIGSTOP) while the order expires and the late reservation
 * arrives after the expiry: both reach billing in one batch, expiry first.
 * A batch is applied in order of arrival, also across event types, so the
 * void comes first and the reservation makes no invoice (applied route by
 * route, the reservation's set ran first: an invoice, a confirmation mail,
 * then the void). */
START_TEST(an_expiry_and_a_late_reservation_in_one_batch_are_applied_in_order)
{
    char id[UUID_STR_LEN], rcpt[64], st[32];
    const char *ids[] = {id};

    set_stock(SKU, 500);
    mailbox(rcpt);
    tu_svc_stop_ok(&svcs[INV]);
    ck_assert_int_eq(kill(svcs[BIL].pid, SIGSTOP), 0);
    place(rcpt, id);
    await_status(id, "EXPIRED");
    start(INV, 0);
    /* Inventory reserved late and released: its inventory.reserved is in
     * billing's queue behind the order.expired. */
    tu_await_count(20000,
                   "SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid"
                   " AND status = 'RELEASED'",
                   id, 1);
    ck_assert_int_eq(kill(svcs[BIL].pid, SIGCONT), 0);
    tu_await_count(20000, "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", id, 1);
    await_quiet();
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "EXPIRED");
    ck_assert_int_eq(
        count_for("SELECT count(*) FROM billing.invoices WHERE order_id = $1::uuid", id), 0);
    ck_assert_int_eq(mails_at_server(rcpt), 1);
    ledger_clean(ids, 1);
}
END_TEST

START_TEST(events_of_an_order_after_its_expiry_do_nothing)
{
    mq_conn *api = tu_publisher("ORDER_API_AMQP_URL", "order-api");
    mq_conn *inv = tu_publisher("INVENTORY_AMQP_URL", "inventory");
    ev_event ex, placed;
    order_placed *o = &placed.u.order_placed;
    char err[MQ_ERR_LEN], mid[UUID_STR_LEN], *body;
    mq_msg m = {0};

    set_stock(SKU, 500);
    ev_init(&ex, EV_ORDER_EXPIRED);
    uuid_v4(ex.u.order_expired.order_id);
    strcpy(ex.u.order_expired.customer_email, "saga-events@example.com");
    strcpy(ex.u.order_expired.reason, "test: expired first");
    ev_init(&placed, EV_ORDER_PLACED);
    strcpy(o->order_id, ex.u.order_expired.order_id);
    strcpy(o->customer_id, "saga");
    strcpy(o->customer_email, "saga-events@example.com");
    strcpy(o->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&o->lines, 1), 0);
    strcpy(o->lines.items[0].sku, SKU);
    o->lines.items[0].quantity = 3;
    o->lines.items[0].unit_price = 100;
    o->total = 300;

    /* order.expired first, then order.placed, as order-api. */
    for (int k = 0; k < 2; k++) {
        const ev_event *ev = k == 0 ? &ex : &placed;
        body = ev_to_json(ev, NULL, err, sizeof(err));
        ck_assert_msg(body != NULL, "%s", err);
        uuid_v4(mid);
        m = (mq_msg){.routing_key = ev_routing_key(ev->type),
                     .message_id = mid,
                     .correlation_id = o->order_id,
                     .body = body,
                     .len = strlen(body)};
        ck_assert_msg(mq_publish(api, &m, err, sizeof(err)) == MQ_OK, "%s", err);
        free(body);
        if (k == 0)
            tu_await_count(20000,
                           "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid"
                           " AND invoice_id IS NULL",
                           o->order_id, 1);
    }
    /* and a late inventory.reserved, as inventory. */
    placed.type = EV_INVENTORY_RESERVED;
    body = ev_to_json(&placed, NULL, err, sizeof(err));
    ck_assert_msg(body != NULL, "%s", err);
    uuid_v4(mid);
    m.routing_key = RK_INVENTORY_RESERVED;
    m.body = body;
    m.len = strlen(body);
    ck_assert_msg(mq_publish(inv, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    free(body);
    await_quiet();

    ck_assert_int_eq(stock(), 500);
    ck_assert_int_eq(count_for("SELECT count(*) FROM inventory.reservation_lines WHERE order_id"
                               " = $1::uuid",
                               o->order_id),
                     0);
    ck_assert_int_eq(count_for("SELECT count(*) FROM inventory.reservations WHERE order_id"
                               " = $1::uuid AND status = 'RELEASED'",
                               o->order_id),
                     1);
    ck_assert_int_eq(
        count_for("SELECT count(*) FROM billing.invoices WHERE order_id = $1::uuid", o->order_id),
        0);
    ck_assert_int_eq(count_for("SELECT count(*) FROM email.messages WHERE correlation_id ="
                               " $1::uuid",
                               o->order_id),
                     1);
    ev_free(&placed);
    mq_free(api);
    mq_free(inv);
}
END_TEST

/* Billing's invoice and its mail are out, email has handled billing's
 * events: what billing said of the order has reached the customer. */
static int billing_said_it(void *arg)
{
    return tu_count("SELECT count(*) FROM billing.invoices WHERE order_id = $1::uuid", arg) == 1 &&
           tu_count("SELECT count(*) FROM billing.outbox WHERE parked_at IS NULL", NULL) == 0 &&
           tu_queue_counts("TEST_AMQP_URL", "email", NULL) == 0;
}

/* The review's interleaving: billing invoices the order, and its deadline
 * passes before order-api hears of the invoice (order-api's consumer is
 * held: the test locks orders.inbox, which the consumer writes first and
 * the deadline's sweep never touches). The order ends EXPIRED, so the
 * customer is told that and nothing else: one mail, the expiry's, no
 * confirmation before it; the invoice void, the stock back, the ledger
 * clean. The deadline is held (hold_deadline) until billing has invoiced,
 * so a slow billing cannot expire the order first (review of #17, item 8:
 * with billing held 6 s past the deadline, the old test failed "is EXPIRED
 * before its deadline"). */
START_TEST(a_deadline_that_passes_while_billing_invoices_tells_the_customer_once)
{
    char id[UUID_STR_LEN], rcpt[64], st[32];
    const char *ids[] = {id};
    /* order-api's consumer waits for the test's lock however long. */
    const char *const extra[] = {"DB_LOCK_TIMEOUT_MS=0", NULL};
    PGconn *op, *hold;
    PGresult *res;

    set_stock(SKU, 500);
    mailbox(rcpt);
    tu_svc_stop_ok(&svcs[API_SVC]);
    start_with(API_SVC, 0, extra);
    op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res = PQexec(op, "BEGIN; LOCK TABLE orders.inbox IN SHARE ROW EXCLUSIVE MODE");
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(op));
    PQclear(res);
    place(rcpt, id);
    /* Its deadline waits for billing, however slow billing is. */
    hold = hold_deadline(id);
    ck_assert_msg(tu_poll(20000, billing_said_it, id), "billing never invoiced %s", id);
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_msg(strcmp(st, "PENDING") == 0, "order %s is %s before its deadline", id, st);
    release_deadline(hold);
    await_status(id, "EXPIRED");
    res = PQexec(op, "ROLLBACK");
    PQclear(res);
    PQfinish(op);
    tu_await_count(20000,
                   "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid"
                   " AND invoice_id IS NOT NULL",
                   id, 1);
    ck_assert_msg(tu_poll(20000, one_mail_at_server, rcpt), "not one mail for %s: %ld", rcpt,
                  mails_at_server(rcpt));
    await_quiet();
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "EXPIRED");
    ck_assert_int_eq(stock(), 500);
    ck_assert_int_eq(mails_at_server(rcpt), 1);
    ck_assert_int_eq(count_for("SELECT count(*) FROM email.messages WHERE correlation_id ="
                               " $1::uuid AND kind = 'order_expired'",
                               id),
                     1);
    ck_assert_int_eq(count_for("SELECT count(*) FROM email.messages WHERE correlation_id ="
                               " $1::uuid",
                               id),
                     1);
    ledger_clean(ids, 1);
}
END_TEST

/* Both of inventory's processes run with PREFETCH=1 (each holds one message,
 * so the second message goes to the other) and lock waits unbounded. */
static void two_inventories(void)
{
    const char *const extra[] = {"PREFETCH=1", "DB_LOCK_TIMEOUT_MS=0", NULL};
    const char *env[] = {"METRICS_PORT=19199", "PREFETCH=1", "DB_LOCK_TIMEOUT_MS=0",
                         "RETRY_DELAYS_MS=200,400", NULL};
    const tu_svc_opts o = {.exe = "inventory",
                           .amqp_env = amqp[INV],
                           .db_env = urls[INV],
                           .env = env,
                           .log = "saga-inventory2",
                           .ready_url = "http://127.0.0.1:19199/readyz"};
    tu_svc_stop_ok(&svcs[INV]);
    start_with(INV, 0, extra);
    tu_svc_start(&inv2, &o);
}

typedef struct {
    const char *id;
} expiry_arg;

/* The expiry has been handled by inventory (a reservation row says how),
 * or waits for the order's lock, which the rejection holds: an inventory
 * connection waiting on this order's advisory key (services/inventory/
 * stock.c, inv_lock_orders: the two keys are pg_locks' classid and objid),
 * not any advisory waiter in the database (review of #17, item 5: a psql
 * waiting on pg_advisory_lock(42) passed the old test). */
static int expiry_decided_or_waiting(void *arg)
{
    const expiry_arg *a = arg;
    return tu_count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid",
                    a->id) > 0 ||
           tu_count("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 2"
                    " AND s.application_name = 'inventory' AND s.datname = current_database()"
                    " AND l.classid = hashtext('inventory.order')::oid"
                    " AND l.objid = hashtext($1::uuid::text)::oid",
                    a->id) >= 1;
}

/* The #15 review's race: inventory rejects an order (not enough stock)
 * while, in another of its processes, the order's expiry decides it. The
 * test holds the rejection's INSERT (a lock on inventory.rejections that a
 * read passes) until the expiry is decided or waits. Inventory must end
 * with one decision for the order, not a rejection and a release. */
START_TEST(a_rejection_and_an_expiry_at_once_leave_one_decision)
{
    char id[UUID_STR_LEN], rcpt[64], st[32];
    const char *ids[] = {id};
    expiry_arg ea = {id};
    PGconn *op;
    PGresult *res;

    set_stock(SKU, 1); /* the order asks for 3: rejected */
    mailbox(rcpt);
    two_inventories();
    op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res = PQexec(op, "BEGIN; LOCK TABLE inventory.rejections IN SHARE ROW EXCLUSIVE MODE");
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(op));
    PQclear(res);
    place(rcpt, id);
    ck_assert_msg(tu_await_lock_waiter(20000, "inventory.rejections", NULL),
                  "inventory never came to write the rejection");
    await_status(id, "EXPIRED");
    ck_assert_msg(tu_poll(20000, expiry_decided_or_waiting, &ea),
                  "inventory's second process never took the expiry");
    res = PQexec(op, "ROLLBACK");
    PQclear(res);
    PQfinish(op);
    await_quiet();
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "EXPIRED");
    ck_assert_msg(
        count_for("SELECT (SELECT count(*) FROM inventory.reservations WHERE order_id ="
                  " $1::uuid) + (SELECT count(*) FROM inventory.rejections"
                  " WHERE order_id = $1::uuid)",
                  id) == 1,
        "inventory decided order %s twice: %ld reservation row(s), %ld rejection(s)", id,
        count_for("SELECT count(*) FROM inventory.reservations WHERE order_id = $1::uuid", id),
        count_for("SELECT count(*) FROM inventory.rejections WHERE order_id = $1::uuid", id));
    ck_assert_int_eq(stock(), 1);
    ck_assert_msg(tu_poll(20000, one_mail_at_server, rcpt), "not one mail for %s: %ld", rcpt,
                  mails_at_server(rcpt));
    ledger_clean(ids, 1);
}
END_TEST

/* The deadline's sweep runs on order-api's outbox relay, so it must never
 * hold up publishing: with orders.orders locked by an operator (LOCK TABLE,
 * which SKIP LOCKED does not skip) and order-api's own lock waits unbounded
 * (DB_LOCK_TIMEOUT_MS=0, statements up to a minute), a row in order-api's
 * outbox is still published and handled while the table is held. */
START_TEST(an_operator_holding_the_orders_table_does_not_stop_publishing)
{
    char oid[UUID_STR_LEN], mid[UUID_STR_LEN], body[256];
    const char *p[3] = {mid, oid, body};
    /* Its lock waits unbounded, and its statements' too (for a minute;
     * the writer's wait must be longer, or it does not start). */
    const char *const extra[] = {"DB_LOCK_TIMEOUT_MS=0", "DB_STATEMENT_TIMEOUT_MS=60000",
                                 "ORDER_WRITE_TIMEOUT_MS=70000", NULL};
    PGconn *op;
    PGresult *res;

    tu_svc_stop_ok(&svcs[API_SVC]);
    start_with(API_SVC, 0, extra);
    op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res = PQexec(op, "BEGIN; LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE");
    ck_assert_int_eq(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    /* The sweep waits on the table now (and gives up: it must). */
    ck_assert_msg(tu_await_lock_waiter(20000, "orders.orders", NULL),
                  "the deadline's sweep never waited on the held table");

    uuid_v4(oid);
    uuid_v4(mid);
    snprintf(body, sizeof(body),
             "{\"order_id\":\"%s\",\"customer_email\":\"saga-lock@example.com\","
             "\"reason\":\"test: the orders table held\"}",
             oid);
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "INSERT INTO orders.outbox (message_id, routing_key, correlation_id, body)"
                " VALUES ($1::uuid, 'order.expired', $2::uuid, $3) RETURNING 1",
                3, p));
    tu_await_count(20000, "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", oid, 1);
    /* Still held: what was published went out while the table was locked. */
    ck_assert_int_eq(PQtransactionStatus(op), PQTRANS_INTRANS);
    res = PQexec(op, "ROLLBACK");
    PQclear(res);
    PQfinish(op);
}
END_TEST

/* Review of #17, item 2: billing refuses the payment (a credit limit of
 * 0.01) while inventory is held (SIGSTOP), so the release that would cancel
 * the order does not come. The order, PAYMENT_FAILED, must still be closed
 * at its deadline: EXPIRED. When inventory comes back its stock is released
 * once (the payment failure and the expiry both ask), the customer has one
 * mail (the payment failure's: migration 0019 keeps the expiry's out), and
 * the ledger is clean. */
START_TEST(a_failed_payment_with_inventory_down_expires)
{
    char id[UUID_STR_LEN], rcpt[64], st[32];
    const char *ids[] = {id};
    const char *const extra[] = {"CREDIT_LIMIT_MINOR=1", NULL};
    PGconn *hold;

    set_stock(SKU, 500);
    mailbox(rcpt);
    tu_svc_stop_ok(&svcs[BIL]);
    start_with(BIL, 0, extra);
    ck_assert_int_eq(kill(svcs[BIL].pid, SIGSTOP), 0);
    place(rcpt, id);
    hold = hold_deadline(id);
    await_status(id, "RESERVED");
    ck_assert_int_eq(kill(svcs[INV].pid, SIGSTOP), 0);
    ck_assert_int_eq(kill(svcs[BIL].pid, SIGCONT), 0);
    await_status(id, "PAYMENT_FAILED");
    ck_assert_int_eq(stock(), 497);
    release_deadline(hold);
    await_status(id, "EXPIRED");
    ck_assert_int_eq(stock(), 497); /* inventory is still held */
    ck_assert_int_eq(kill(svcs[INV].pid, SIGCONT), 0);
    tu_await_count(20000, "SELECT on_hand FROM inventory.stock WHERE sku = $1", SKU, 500);
    await_quiet();
    order_status(id, st, sizeof(st), NULL, 0);
    ck_assert_str_eq(st, "EXPIRED");
    ck_assert_int_eq(stock(), 500);
    ck_assert_int_eq(count_for("SELECT count(*) FROM inventory.reservations WHERE order_id ="
                               " $1::uuid AND status = 'RELEASED'",
                               id),
                     1);
    ck_assert_int_eq(mails_at_server(rcpt), 1);
    ck_assert_int_eq(count_for("SELECT count(*) FROM email.messages WHERE correlation_id ="
                               " $1::uuid",
                               id),
                     1);
    ledger_clean(ids, 1);
}
END_TEST

/* Review of #17, item 4: billing's lock on an order is one lock whatever
 * the case of the id's text (the contract accepts upper-case UUIDs), the
 * same key inventory takes: hashtext of the canonical (lower-case) uuid
 * text. The test holds that key for the order's lower-case id and sends
 * order.expired with the id in upper case: billing must wait for the key
 * (before, it hashed the raw text, took another key, and voided at once). */
typedef struct {
    const char *id;
} key_arg;

static int billing_waits_on_key(void *arg)
{
    const key_arg *a = arg;
    return tu_count("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 2"
                    " AND s.application_name = 'billing' AND s.datname = current_database()"
                    " AND l.classid = hashtext('billing.order')::oid"
                    " AND l.objid = hashtext($1::uuid::text)::oid",
                    a->id) >= 1;
}

START_TEST(billing_locks_an_order_whatever_the_case_of_its_id)
{
    mq_conn *api = tu_publisher("ORDER_API_AMQP_URL", "order-api");
    char oid[UUID_STR_LEN], upper[UUID_STR_LEN], mid[UUID_STR_LEN], err[MQ_ERR_LEN], *body;
    const char *p[] = {oid};
    key_arg ka = {oid};
    ev_event ex;
    mq_msg m;
    PGconn *op;
    PGresult *res;

    uuid_v4(oid);
    for (size_t i = 0; i <= strlen(oid); i++)
        upper[i] = (char)(oid[i] >= 'a' && oid[i] <= 'f' ? oid[i] - 'a' + 'A' : oid[i]);
    op = PQconnectdb(tu_env("OWNER_DATABASE_URL"));
    ck_assert_int_eq(PQstatus(op), CONNECTION_OK);
    res = PQexec(op, "BEGIN");
    PQclear(res);
    res = PQexecParams(op,
                       "SELECT pg_advisory_xact_lock(hashtext('billing.order'),"
                       " hashtext($1::uuid::text))",
                       1, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQerrorMessage(op));
    PQclear(res);

    ev_init(&ex, EV_ORDER_EXPIRED);
    strcpy(ex.u.order_expired.order_id, upper);
    strcpy(ex.u.order_expired.customer_email, "saga-case@example.com");
    strcpy(ex.u.order_expired.reason, "test: an upper-case id");
    body = ev_to_json(&ex, NULL, err, sizeof(err));
    ck_assert_msg(body != NULL, "%s", err);
    uuid_v4(mid);
    m = (mq_msg){.routing_key = RK_ORDER_EXPIRED,
                 .message_id = mid,
                 .correlation_id = upper,
                 .body = body,
                 .len = strlen(body)};
    ck_assert_msg(mq_publish(api, &m, err, sizeof(err)) == MQ_OK, "%s", err);
    free(body);
    ck_assert_msg(tu_poll(20000, billing_waits_on_key, &ka),
                  "billing never waited for order %s's lock (voids now: %ld)", oid,
                  count_for("SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", oid));
    ck_assert_int_eq(count_for("SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", oid),
                     0);
    res = PQexec(op, "ROLLBACK");
    PQclear(res);
    PQfinish(op);
    tu_await_count(20000, "SELECT count(*) FROM billing.voids WHERE order_id = $1::uuid", oid, 1);
    mq_free(api);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("saga");
    TCase *t = tcase_create("timeout");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 240);
    tcase_add_test(t, an_order_past_its_deadline_expires_and_every_step_is_compensated);
    tcase_add_test(t, a_deadline_after_the_order_completed_changes_nothing);
    tcase_add_test(t, a_reservation_after_the_expiry_is_compensated);
    tcase_add_test(t, an_expiry_and_a_late_reservation_in_one_batch_are_applied_in_order);
    tcase_add_test(t, events_of_an_order_after_its_expiry_do_nothing);
    tcase_add_test(t, an_operator_holding_the_orders_table_does_not_stop_publishing);
    tcase_add_test(t, a_deadline_that_passes_while_billing_invoices_tells_the_customer_once);
    tcase_add_test(t, a_rejection_and_an_expiry_at_once_leave_one_decision);
    tcase_add_test(t, a_failed_payment_with_inventory_down_expires);
    tcase_add_test(t, billing_locks_an_order_whatever_the_case_of_its_id);
    suite_add_tcase(s, t);
    return tu_run(s);
}
