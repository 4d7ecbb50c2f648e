/*
 * check_pos.c — the pos till's spool (store and forward) with two tills of
 * one store sharing it, against the real RabbitMQ and the real billing
 * worker: what is confirmed is counted in billing.invoices.
 */
#include "mq.h"
#include "testutil.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { PER_TILL = 100 };

static char path_of[2][512];

static int consuming(void *arg)
{
    int consumers = 0;
    (void)arg;
    return tu_queue_counts("TEST_AMQP_URL", "billing", &consumers) >= 0 && consumers >= 1;
}

static pid_t billing_start(void)
{
    static char env[3][1200];
    const char *envp[4];
    char *argv[] = {"billing", NULL};
    char path[512], log[512];
    snprintf(env[0], sizeof(env[0]), "AMQP_URL=%s", tu_env("BILLING_AMQP_URL"));
    snprintf(env[1], sizeof(env[1]), "DATABASE_URL=%s", tu_env("BILLING_DATABASE_URL"));
    snprintf(env[2], sizeof(env[2]), "METRICS_PORT=0");
    for (int k = 0; k < 3; k++)
        envp[k] = env[k];
    envp[3] = NULL;
    snprintf(path, sizeof(path), "%s/billing", tu_env("ORDERSUITE_BIN"));
    snprintf(log, sizeof(log), "%s/log/tests/pos-billing.log", tu_env("ORDERSUITE_VAR"));
    return tu_spawn(path, argv, envp, log);
}

/* A till of store, selling PER_TILL sales to email at 100 a second, with a
 * catalog from a file (order-api is not needed). Its log goes to log. */
static pid_t till_start(const char *store, const char *email, const char *log)
{
    static char env[4][1200];
    const char *envp[5];
    char *argv[] = {"pos",     "--count",     "100",     "--rate",      "100",
                    "--store", (char *)store, "--email", (char *)email, NULL};
    char path[512];
    snprintf(env[0], sizeof(env[0]), "AMQP_URL=%s", tu_env("POS_AMQP_URL"));
    snprintf(env[1], sizeof(env[1]), "CATALOG_FILE=%s/log/tests/pos-catalog.json",
             tu_env("ORDERSUITE_VAR"));
    snprintf(env[2], sizeof(env[2]), "POS_SPOOL_DIR=%s/log/tests", tu_env("ORDERSUITE_VAR"));
    snprintf(env[3], sizeof(env[3]), "POS_FLUSH_TIMEOUT_S=120");
    for (int k = 0; k < 4; k++)
        envp[k] = env[k];
    envp[4] = NULL;
    snprintf(path, sizeof(path), "%s/pos", tu_env("ORDERSUITE_BIN"));
    unlink(log);
    return tu_spawn(path, argv, envp, log);
}

static int file_has(const char *path, const char *needle)
{
    char line[4096];
    int found = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
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
    char path[512], line[16384];
    long n = 0;
    FILE *f;
    snprintf(path, sizeof(path), "%s/log/tests/pos-%s.spool", tu_env("ORDERSUITE_VAR"), store);
    f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        n++;
    fclose(f);
    return n;
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

static long invoices(const char *email)
{
    const char *p[] = {email};
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                      "SELECT count(*) FROM billing.invoices WHERE customer_email = $1", 1, p);
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
    static const char *const queues[] = {"inventory", "email"};
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_pos");
    char err[MQ_ERR_LEN];
    for (size_t i = 0; i < sizeof(queues) / sizeof(queues[0]); i++)
        ck_assert_msg(mq_purge(c, queues[i], err, sizeof(err)) >= 0, "purge %s: %s", queues[i],
                      err);
    mq_free(c);
}

/* Two tills of one store share its spool while the broker is down: every
 * sale of both must be in the spool, and once the broker is back each is
 * confirmed and invoiced exactly once. */
START_TEST(two_tills_on_one_spool_lose_no_sale_and_send_each_once)
{
    char id[UUID_STR_LEN], store[32], email[64], spool[512];
    child till[2];
    pid_t billing;
    inv_arg want;

    uuid_v4(id);
    snprintf(store, sizeof(store), "TWO-%.8s", id);
    snprintf(email, sizeof(email), "till-%.8s@example.com", id);
    snprintf(spool, sizeof(spool), "%s/log/tests/pos-%s.spool", tu_env("ORDERSUITE_VAR"), store);
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
    billing = billing_start();
    ck_assert_msg(tu_poll(30000, consuming, NULL), "billing did not start consuming");

    tu_broker("stop_app");
    for (int i = 0; i < 2; i++) {
        snprintf(path_of[i], sizeof(path_of[i]), "%s/log/tests/pos-till%d.log",
                 tu_env("ORDERSUITE_VAR"), i);
        till[i] = (child){till_start(store, email, path_of[i]), 0, 0};
    }
    ck_assert_msg(tu_poll(60000, both_rung_up, NULL), "the tills did not finish selling");
    /* Every sale of both tills is in the spool. */
    ck_assert_int_eq(spool_lines(store), 2 * PER_TILL);

    tu_broker("start_app");
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(tu_poll(120000, exited, &till[i]), "till %d did not finish", i);
        ck_assert_msg(WIFEXITED(till[i].status) && WEXITSTATUS(till[i].status) == 0,
                      "till %d exited with status %d: not every sale was confirmed", i,
                      till[i].status);
    }
    ck_assert_int_eq(spool_lines(store), 0);
    want = (inv_arg){email, 2 * PER_TILL};
    ck_assert_msg(tu_poll(30000, invoiced, &want), "%ld invoices, want %d", invoices(email),
                  2 * PER_TILL);
    ck_assert_int_eq(invoices(email), 2 * PER_TILL);
    {
        int st = tu_stop(billing, SIGTERM, 20000);
        ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "billing did not stop cleanly (status %d)", st);
    }
    unlink(spool);
    purge_others();
}
END_TEST

/* Runs in the parent after the test, also when it failed with the broker
 * stopped: the suites after this one need it. */
static void broker_back(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "bash %s/scripts/rmqctl.sh -q start_app >/dev/null 2>&1",
             tu_env("ORDERSUITE_ROOT"));
    if (system(cmd) != 0)
        fprintf(stderr, "check_pos: rabbitmqctl start_app failed\n");
}

int main(void)
{
    Suite *s = suite_create("pos");
    TCase *t = tcase_create("spool");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, NULL, broker_back);
    tcase_add_test(t, two_tills_on_one_spool_lose_no_sale_and_send_each_once);
    suite_add_tcase(s, t);
    return tu_run(s);
}
