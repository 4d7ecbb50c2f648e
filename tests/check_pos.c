/*
 * check_pos.c — the pos till's spool (store and forward) with two tills of
 * one store sharing it, against the real RabbitMQ and the real billing
 * worker: what is confirmed is counted in billing.invoices, and what is
 * published in a queue of the suite's own bound to sale.completed (billing
 * drops a second copy of a sale, so only that queue sees one).
 */
#include "mq.h"
#include "testutil.h"
#include "util.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { PER_TILL = 100 };

static char path_of[2][512];

/* Starts billing and waits until it consumes. */
static void billing_start(tu_svc *s)
{
    const tu_svc_opts o = {.exe = "billing",
                           .amqp_env = "BILLING_AMQP_URL",
                           .db_env = "BILLING_DATABASE_URL",
                           .log = "pos-billing",
                           .ready_queue = "billing"};
    tu_svc_start(s, &o);
}

/* A till of store, selling count sales to email at 100 a second, with a
 * catalog from a file (order-api is not needed). Its log goes to log. */
static pid_t till_start(const char *store, const char *email, int count, const char *log)
{
    char n[16], catalog[600], spool[600];
    char *argv[] = {"pos",     "--count",     n,         "--rate",      "100",
                    "--store", (char *)store, "--email", (char *)email, NULL};
    const char *env[] = {catalog, spool, "POS_FLUSH_TIMEOUT_S=120", NULL};
    const tu_svc_opts o = {
        .exe = "pos", .amqp_env = "POS_AMQP_URL", .env = env, .argv = argv, .log = log};
    tu_svc s;
    snprintf(n, sizeof(n), "%d", count);
    snprintf(catalog, sizeof(catalog), "CATALOG_FILE=%s/log/tests/pos-catalog.json",
             tu_env("ORDERSUITE_VAR"));
    snprintf(spool, sizeof(spool), "POS_SPOOL_DIR=%s/log/tests", tu_env("ORDERSUITE_VAR"));
    unlink(log);
    tu_svc_spawn(&s, &o);
    return s.pid;
}

static int file_has(const char *path, const char *needle)
{
    return tu_file_count(path, needle, NULL) > 0;
}

/* Both tills have rung up all their sales (pos logs it before its last
 * flush). */
static int both_rung_up(void *arg)
{
    (void)arg;
    return file_has(path_of[0], "rung up") && file_has(path_of[1], "rung up");
}

static long spool_lines(const char *store)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/log/tests/pos-%s.spool", tu_env("ORDERSUITE_VAR"), store);
    return tu_file_count(path, NULL, NULL);
}

typedef struct {
    pid_t pid;
    int status, done;
} child;

static int exited(void *arg)
{
    child *c = arg;
    if (!c->done && waitpid(c->pid, &c->status, WNOHANG) == c->pid)
        c->done = 1;
    return c->done;
}

/* Both tills end within 2 min, each with 0 (every sale confirmed). */
static void tills_confirm_all(child till[2])
{
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(tu_poll(120000, exited, &till[i]), "till %d did not finish", i);
        ck_assert_msg(WIFEXITED(till[i].status) && WEXITSTATUS(till[i].status) == 0,
                      "till %d exited with status %d: not every sale was confirmed", i,
                      till[i].status);
    }
}

static long invoices(const char *email)
{
    return tu_count("SELECT count(*) FROM billing.invoices WHERE customer_email = $1", email);
}

typedef struct {
    const char *email;
    long want;
} inv_arg;

static int invoiced(void *arg)
{
    inv_arg *a = arg;
    return invoices(a->email) >= a->want;
}

/* The sales this suite publishes also reach the queues of services it does
 * not run (inventory, email): empty them, so the next suite's workers do not
 * take this suite's sales off their stock. */
static void purge_others(void)
{
    static const char *const queues[] = {"inventory", "email", NULL};
    tu_purge("TEST_AMQP_URL", queues);
}

/* ------------------------------------------- what was published, counted */

#define PUBLISHED "pos_published_test"

/* Declares the suite's queue bound to sale.completed, empty. */
static void published_open(void)
{
    static const char *const keys[] = {"sale.completed", NULL};
    const mq_topology topo = {.queue = PUBLISHED, .keys = keys, .retry_ms = {1000}};
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_pos");
    char err[MQ_ERR_LEN];
    ck_assert_msg(mq_declare_topology(c, &topo, err, sizeof(err)) == MQ_OK, "%s", err);
    ck_assert_int_ge(mq_purge(c, PUBLISHED, err, sizeof(err)), 0);
    mq_free(c);
}

static int by_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Takes every message from the suite's queue (each confirmed sale is in it
 * by now: a confirm follows the enqueue), on a connection of its own (the
 * broker may have been restarted since the queue was declared), and checks that the sales of store
 * were published want times together, each sale once. */
static void published_once(const char *store, long want)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_pos");
    char(*ids)[UUID_STR_LEN] = NULL;
    size_t cap = 0;
    char err[MQ_ERR_LEN];
    long n = 0, copies = 0;
    mq_got *g;
    int rc;

    while ((rc = mq_get(c, PUBLISHED, &g, err, sizeof(err))) == 1) {
        const mq_delivery *d = mq_got_delivery(g);
        ev_event ev;
        ck_assert_msg(
            ev_from_json(EV_SALE_COMPLETED, d->body, d->len, &ev, NULL, err, sizeof(err)) == 0,
            "a published sale does not decode: %s", err);
        if (strcmp(ev.u.sale_completed.store_id, store) == 0) {
            if ((size_t)n == cap) {
                cap = cap ? 2 * cap : 256;
                char(*more)[UUID_STR_LEN] = realloc(ids, cap * UUID_STR_LEN);
                ck_assert_ptr_nonnull(more);
                ids = more;
            }
            memcpy(ids[n++], ev.u.sale_completed.sale_id, UUID_STR_LEN);
        }
        ev_free(&ev);
        ck_assert_int_eq(mq_settle(c, g, 1, err, sizeof(err)), MQ_OK);
        mq_got_free(g);
    }
    ck_assert_msg(rc == 0, "basic.get on %s: %s", PUBLISHED, err);
    mq_free(c);
    if (n > 0)
        qsort(ids, (size_t)n, UUID_STR_LEN, by_id);
    for (long i = 1; i < n; i++)
        copies += strcmp(ids[i - 1], ids[i]) == 0;
    free(ids);
    ck_assert_msg(copies == 0, "%ld sale(s) of %s were published more than once", copies, store);
    ck_assert_msg(n == want, "%ld sale(s) of %s published, want %ld", n, store, want);
}

/* The tills' catalog, from a file (order-api is not needed). */
static void write_catalog(void)
{
    char cat[512];
    FILE *f;
    snprintf(cat, sizeof(cat), "%s/log/tests/pos-catalog.json", tu_env("ORDERSUITE_VAR"));
    f = fopen(cat, "w");
    ck_assert_ptr_nonnull(f);
    fputs("[{\"sku\":\"FLT-PAPER\",\"price_minor\":350,\"currency\":\"EUR\"},"
          "{\"sku\":\"MUG-WHITE\",\"price_minor\":800,\"currency\":\"EUR\"},"
          "{\"sku\":\"TEA-SENCHA\",\"price_minor\":890,\"currency\":\"EUR\"}]",
          f);
    ck_assert_int_eq(fclose(f), 0);
}

/* Two tills of one store share its spool while the broker is down: every
 * sale of both must be in the spool, and once the broker is back each is
 * confirmed and invoiced exactly once. */
START_TEST(two_tills_on_one_spool_lose_no_sale_and_send_each_once)
{
    char id[UUID_STR_LEN], store[32], email[64], spool[512];
    child till[2];
    tu_svc billing;
    inv_arg want;

    uuid_v4(id);
    snprintf(store, sizeof(store), "TWO-%.8s", id);
    snprintf(email, sizeof(email), "till-%.8s@example.com", id);
    snprintf(spool, sizeof(spool), "%s/log/tests/pos-%s.spool", tu_env("ORDERSUITE_VAR"), store);
    write_catalog();
    published_open();
    billing_start(&billing);

    tu_broker("stop_app");
    for (int i = 0; i < 2; i++) {
        snprintf(path_of[i], sizeof(path_of[i]), "%s/log/tests/pos-till%d.log",
                 tu_env("ORDERSUITE_VAR"), i);
        till[i] = (child){till_start(store, email, PER_TILL, path_of[i]), 0, 0};
    }
    ck_assert_msg(tu_poll(60000, both_rung_up, NULL), "the tills did not finish selling");
    /* Every sale of both tills is in the spool. */
    ck_assert_int_eq(spool_lines(store), 2 * PER_TILL);

    tu_broker("start_app");
    tills_confirm_all(till);
    ck_assert_int_eq(spool_lines(store), 0);
    want = (inv_arg){email, 2 * PER_TILL};
    ck_assert_msg(tu_poll(30000, invoiced, &want), "%ld invoices, want %d", invoices(email),
                  2 * PER_TILL);
    ck_assert_int_eq(invoices(email), 2 * PER_TILL);
    published_once(store, 2 * PER_TILL);
    tu_svc_stop_ok(&billing);
    unlink(spool);
    purge_others();
}
END_TEST

/* 1 when a connection of the pos broker user is blocked by the broker's
 * memory alarm: that till is waiting for its publisher confirms. */
static int pos_blocked(void *arg)
{
    const char *url = tu_env("POS_AMQP_URL"), *u = strstr(url, "://");
    char cmd[1024], user[128], line[512];
    size_t n;
    int found = 0;
    FILE *p;
    (void)arg;
    ck_assert_ptr_nonnull(u);
    u += 3;
    n = strcspn(u, ":@");
    ck_assert_uint_lt(n, sizeof(user));
    memcpy(user, u, n);
    user[n] = '\0';
    snprintf(cmd, sizeof(cmd), "bash %s/scripts/rmqctl.sh -q list_connections user state 2>&1",
             tu_env("ORDERSUITE_ROOT"));
    p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    while (fgets(line, sizeof(line), p)) {
        char *tab = strchr(line, '\t');
        if (tab && (size_t)(tab - line) == n && strncmp(line, user, n) == 0 &&
            strncmp(tab + 1, "blocked", 7) == 0)
            found = 1;
    }
    pclose(p);
    return found;
}

typedef struct {
    const char *store;
    long want;
} spool_arg;

static int spool_has(void *arg)
{
    const spool_arg *a = arg;
    return spool_lines(a->store) >= a->want;
}

/* One till waits for its confirms (the broker's memory alarm blocks its
 * publish): a second till of the store must still append its sale to the
 * spool, and once the broker takes messages again each sale is confirmed
 * and published exactly once. */
START_TEST(a_till_waiting_for_confirms_does_not_stop_another_from_spooling)
{
    char id[UUID_STR_LEN], store[32], email[64], spool[512];
    child till[2];
    spool_arg one, two;

    uuid_v4(id);
    snprintf(store, sizeof(store), "SLOW-%.8s", id);
    snprintf(email, sizeof(email), "slow-%.8s@example.com", id);
    snprintf(spool, sizeof(spool), "%s/log/tests/pos-%s.spool", tu_env("ORDERSUITE_VAR"), store);
    write_catalog();
    published_open();
    one = (spool_arg){store, 1};
    two = (spool_arg){store, 2};

    tu_broker("start_app"); /* a no-op, unless the test before failed with it stopped */
    tu_broker("set_vm_memory_high_watermark 0");
    for (int i = 0; i < 2; i++)
        snprintf(path_of[i], sizeof(path_of[i]), "%s/log/tests/pos-slow%d.log",
                 tu_env("ORDERSUITE_VAR"), i);
    till[0] = (child){till_start(store, email, 1, path_of[0]), 0, 0};
    ck_assert_msg(tu_poll(20000, spool_has, &one), "the first till did not spool its sale");
    ck_assert_msg(tu_poll(30000, pos_blocked, NULL),
                  "the first till's publish was not blocked by the memory alarm");
    till[1] = (child){till_start(store, email, 1, path_of[1]), 0, 0};
    /* Its confirm waits up to 30 s: the second sale must not wait for it. */
    ck_assert_msg(tu_poll(10000, spool_has, &two),
                  "the second till could not spool its sale within 10 s while the first was "
                  "waiting for its confirms (%ld line(s) in the spool)",
                  spool_lines(store));

    tu_broker("set_vm_memory_high_watermark 0.4");
    tills_confirm_all(till);
    ck_assert_int_eq(spool_lines(store), 0);
    published_once(store, 2);
    unlink(spool);
    purge_others();
}
END_TEST

/* Runs in the parent after each test, also when it failed with the broker
 * stopped or its memory alarm set: the suites after this one need it. */
static void broker_back(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "bash %s/scripts/rmqctl.sh -q start_app >/dev/null 2>&1",
             tu_env("ORDERSUITE_ROOT"));
    if (system(cmd) != 0)
        fprintf(stderr, "check_pos: rabbitmqctl start_app failed\n");
    snprintf(cmd, sizeof(cmd),
             "bash %s/scripts/rmqctl.sh -q set_vm_memory_high_watermark 0.4 >/dev/null 2>&1",
             tu_env("ORDERSUITE_ROOT"));
    if (system(cmd) != 0)
        fprintf(stderr, "check_pos: rabbitmqctl set_vm_memory_high_watermark failed\n");
}

int main(void)
{
    Suite *s = suite_create("pos");
    TCase *t = tcase_create("spool");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, NULL, broker_back);
    tcase_add_test(t, two_tills_on_one_spool_lose_no_sale_and_send_each_once);
    tcase_add_test(t, a_till_waiting_for_confirms_does_not_stop_another_from_spooling);
    suite_add_tcase(s, t);
    return tu_run(s);
}
