/*
 * check_db.c — the PostgreSQL helper (common/db.c) and the database layout
 * from the migrations, against the real cluster started by `make up`.
 *
 * One file (over 600 lines) on purpose: the german cases classify the
 * helper's own errors again on the cluster answering in German, so they sit
 * beside the English cases they mirror.
 */
#include "db.h"
#include "testutil.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static db_conn *connect_as(const char *env)
{
    char err[DB_ERR_LEN];
    db_conn *db = db_new(tu_env(env), "check_db");
    ck_assert_ptr_nonnull(db);
    ck_assert_msg(db_connect_retry(db, 10000, NULL, err, sizeof(err)) == DB_OK, "%s", err);
    return db;
}

START_TEST(exec_binds_parameters_and_returns_rows)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    PGresult *r;
    const char *p[] = {"it's; DROP TABLE x --", "41"};

    ck_assert_int_eq(
        db_exec(db, "SELECT $1::text AS s, $2::int + 1 AS n", 2, p, &r, err, sizeof(err)), DB_OK);
    ck_assert_str_eq(db_get(r, 0, "s"), "it's; DROP TABLE x --");
    ck_assert_str_eq(db_get(r, 0, "n"), "42");
    ck_assert_ptr_null(db_get(r, 0, "missing"));
    PQclear(r);
    db_free(db);
}
END_TEST

/* The set-based statements pass a column as one array literal: every text
 * comes back from unnest as it went in, in order, a NULL as NULL, however
 * many elements (the literal grows past its first buffer). */
START_TEST(an_array_literal_round_trips_any_text_through_unnest)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    static const char *const v[] = {
        "plain", "",   "with space", "a,b",  "{braces}", "\"q\"", "back\\slash",
        "NULL",  NULL, "ünïcödé",    "it's", "\\\"",     " lead", "trail "};
    enum { NV = sizeof(v) / sizeof(v[0]), REPS = 40 };
    char err[DB_ERR_LEN];
    const char *p[1];
    db_array a;
    PGresult *r;

    db_array_init(&a);
    for (int k = 0; k < REPS; k++)
        for (int i = 0; i < NV; i++)
            db_array_add(&a, v[i]);
    ck_assert_ptr_nonnull(p[0] = db_array_text(&a));
    ck_assert_int_eq(db_exec(db,
                             "SELECT x FROM unnest($1::text[]) WITH ORDINALITY AS u(x, i)"
                             " ORDER BY i",
                             1, p, &r, err, sizeof(err)),
                     DB_OK);
    ck_assert_int_eq(PQntuples(r), NV * REPS);
    for (int k = 0; k < NV * REPS; k++) {
        const char *got = db_get(r, k, "x");
        if (!v[k % NV])
            ck_assert_ptr_null(got);
        else
            ck_assert_str_eq(got, v[k % NV]);
    }
    PQclear(r);
    db_array_release(&a);
    db_array_init(&a);
    ck_assert_str_eq(db_array_text(&a), "{}");
    db_array_release(&a);
    db_free(db);
}
END_TEST

/* db_exec_arrays passes each column of a set as one parameter and frees
 * the literals whatever happens; more columns than it takes is an error
 * named by the statement, with nothing sent. */
START_TEST(exec_arrays_runs_columns_as_parameters_and_refuses_too_many)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    db_array c[DB_ARRAYS_MAX + 1];
    PGresult *r = NULL;

    for (int k = 0; k < 2; k++)
        db_array_init(&c[k]);
    db_array_add(&c[0], "a");
    db_array_add(&c[0], "b");
    db_array_add_i64(&c[1], 1);
    db_array_add_i64(&c[1], 2);
    ck_assert_int_eq(db_exec_arrays(db, "t_arrays",
                                    "SELECT x, n FROM unnest($1::text[], $2::bigint[]) AS u(x, n)"
                                    " ORDER BY n",
                                    c, 2, &r, err, sizeof(err)),
                     DB_OK);
    ck_assert_int_eq(PQntuples(r), 2);
    ck_assert_str_eq(db_get(r, 1, "x"), "b");
    PQclear(r);
    ck_assert_ptr_null(c[0].s); /* released */

    for (int k = 0; k <= DB_ARRAYS_MAX; k++) {
        db_array_init(&c[k]);
        db_array_add(&c[k], "x");
    }
    r = (PGresult *)1;
    ck_assert_int_eq(
        db_exec_arrays(db, "t_too_many", "SELECT 1", c, DB_ARRAYS_MAX + 1, &r, err, sizeof(err)),
        DB_ERR);
    ck_assert_msg(strstr(err, "t_too_many") != NULL, "%s", err);
    for (int k = 0; k <= DB_ARRAYS_MAX; k++)
        ck_assert_ptr_null(c[k].s);
    db_free(db);
}
END_TEST

START_TEST(errors_carry_sqlstate_and_are_classified)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    PGresult *r = (PGresult *)1;

    ck_assert_int_eq(db_exec(db, "SELEC 1", 0, NULL, &r, err, sizeof(err)), DB_ERR);
    ck_assert_ptr_null(r);
    ck_assert_str_eq(db_last_sqlstate(db), "42601");
    ck_assert_msg(strncmp(err, "42601: ", 7) == 0, "%s", err);
    ck_assert_int_eq(db_exec(db, "SELECT 1/0", 0, NULL, NULL, err, sizeof(err)), DB_ERR);
    ck_assert_str_eq(db_last_sqlstate(db), "22012");
    /* The connection stays usable after a statement error. */
    ck_assert_int_eq(db_exec(db, "SELECT 1", 0, NULL, NULL, err, sizeof(err)), DB_OK);
    db_free(db);
}
END_TEST

START_TEST(rollback_discards_and_commit_keeps)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    PGresult *r;

    ck_assert_int_eq(db_exec(db, "CREATE TEMP TABLE t (v int)", 0, NULL, NULL, err, sizeof(err)),
                     DB_OK);
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_exec(db, "INSERT INTO t VALUES (1)", 0, NULL, NULL, err, sizeof(err)),
                     DB_OK);
    db_rollback(db);
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_exec(db, "INSERT INTO t VALUES (2)", 0, NULL, NULL, err, sizeof(err)),
                     DB_OK);
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(
        db_exec(db, "SELECT string_agg(v::text, ',') AS v FROM t", 0, NULL, &r, err, sizeof(err)),
        DB_OK);
    ck_assert_str_eq(db_get(r, 0, "v"), "2");
    PQclear(r);

    /* A COMMIT of a transaction that failed is reported, not taken as done. */
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_exec(db, "SELECT 1/0", 0, NULL, NULL, err, sizeof(err)), DB_ERR);
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_ERR);
    db_free(db);
}
END_TEST

/* Callbacks for db_after_commit: each counts its runs. */
static int ran_a, ran_b, ran_c;
static void count_a(void)
{
    ran_a++;
}
static void count_b(void)
{
    ran_b++;
}
static void count_c(void)
{
    ran_c++;
}

/* A transaction that both adds outbox rows and records mail asks for two
 * wake-ups: each callback runs once after COMMIT (the same one asked for
 * twice runs once), none after a rollback, and one past the cap is an
 * error, not silently dropped. */
START_TEST(every_after_commit_callback_runs_once)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];

    ran_a = ran_b = ran_c = 0;
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_after_commit(db, count_a, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_after_commit(db, count_b, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_after_commit(db, count_a, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_OK);
    ck_assert_msg(ran_a == 1 && ran_b == 1, "after COMMIT: first callback ran %d, second %d", ran_a,
                  ran_b);
    /* Nothing is left over for the next transaction, and a rollback runs none. */
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_after_commit(db, count_c, err, sizeof(err)), DB_OK);
    db_rollback(db);
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_OK);
    ck_assert_msg(ran_a == 1 && ran_b == 1 && ran_c == 0, "ran %d %d %d", ran_a, ran_b, ran_c);
    db_free(db);
}
END_TEST

static void count_d(void)
{
}
static void count_e(void)
{
}

/* One more distinct callback than DB_AFTER_COMMIT_MAX is an error (with a
 * reason), not a wake-up silently lost; the ones before it still run. */
START_TEST(after_commit_callbacks_past_the_cap_are_an_error)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    void (*fn[])(void) = {count_a, count_b, count_c, count_d, count_e};
    int n = (int)(sizeof(fn) / sizeof(fn[0]));

    ck_assert_int_lt(DB_AFTER_COMMIT_MAX, n);
    ran_a = ran_b = ran_c = 0;
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    for (int i = 0; i < DB_AFTER_COMMIT_MAX; i++)
        ck_assert_int_eq(db_after_commit(db, fn[i], err, sizeof(err)), DB_OK);
    err[0] = '\0';
    ck_assert_int_eq(db_after_commit(db, fn[DB_AFTER_COMMIT_MAX], err, sizeof(err)), DB_ERR);
    ck_assert_msg(err[0] != '\0', "no reason given");
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_OK);
    ck_assert_msg(ran_a == 1 && ran_b == 1, "ran %d %d", ran_a, ran_b);
    db_free(db);
}
END_TEST

START_TEST(prepared_statements_survive_a_reconnect)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    PGresult *r;
    const char *p[] = {"7"};

    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(
            db_execp(db, "twice", "SELECT $1::int * 2 AS v", 1, p, &r, err, sizeof(err)), DB_OK);
        ck_assert_str_eq(db_get(r, 0, "v"), "14");
        PQclear(r);
    }
    ck_assert_int_eq(db_connect(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_execp(db, "twice", "SELECT $1::int * 2 AS v", 1, p, &r, err, sizeof(err)),
                     DB_OK);
    PQclear(r);
    db_free(db);
}
END_TEST

/* The cache of prepared statements has no fixed size: every name past the
 * 64th used to be prepared again on each call, which PostgreSQL refuses
 * with 42P05 (the statement exists). Names need not be literals. */
START_TEST(many_prepared_statements_all_run_twice)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN], names[100][16], want[16];
    PGresult *r;

    for (int i = 0; i < 100; i++)
        snprintf(names[i], sizeof(names[i]), "stmt_%d", i);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 100; i++) {
            const char *p[1];
            snprintf(want, sizeof(want), "%d", i);
            p[0] = want;
            ck_assert_msg(
                db_execp(db, names[i], "SELECT $1::int AS v", 1, p, &r, err, sizeof(err)) == DB_OK,
                "round %d, %s: %s", round, names[i], err);
            ck_assert_str_eq(db_get(r, 0, "v"), want);
            PQclear(r);
        }
    }
    db_free(db);
}
END_TEST

/* One name, two texts: the second call is an error at once, and never runs
 * the first text in its place. */
START_TEST(a_name_bound_to_other_sql_is_an_error)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];
    PGresult *r = NULL;

    ck_assert_int_eq(db_execp(db, "same", "SELECT 1 AS v", 0, NULL, &r, err, sizeof(err)), DB_OK);
    PQclear(r);
    r = NULL;
    ck_assert_int_eq(db_execp(db, "same", "SELECT 2 AS v", 0, NULL, &r, err, sizeof(err)), DB_ERR);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(err, "same"), "%s", err);
    /* The first binding still works, also after a reconnect. */
    ck_assert_int_eq(db_execp(db, "same", "SELECT 1 AS v", 0, NULL, &r, err, sizeof(err)), DB_OK);
    ck_assert_str_eq(db_get(r, 0, "v"), "1");
    PQclear(r);
    ck_assert_int_eq(db_connect(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_execp(db, "same", "SELECT 2 AS v", 0, NULL, &r, err, sizeof(err)), DB_ERR);
    db_free(db);
}
END_TEST

/* The server ends our backend (as on a restart or failover): the statement
 * fails as transient, and the next db_ensure reconnects. */
START_TEST(a_killed_backend_is_transient_and_reconnects)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN], pid[32];
    PGresult *r;
    const char *p[1];

    ck_assert_int_eq(db_exec(db, "SELECT pg_backend_pid() AS p", 0, NULL, &r, err, sizeof(err)),
                     DB_OK);
    snprintf(pid, sizeof(pid), "%s", db_get(r, 0, "p"));
    PQclear(r);
    p[0] = pid;
    free(tu_sql(tu_env("OWNER_DATABASE_URL"), "SELECT pg_terminate_backend($1::int)", 1, p));
    ck_assert_int_eq(db_exec(db, "SELECT 1", 0, NULL, NULL, err, sizeof(err)), DB_ERR_TRANSIENT);
    ck_assert_int_eq(db_ensure(db, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(db_exec(db, "SELECT 1", 0, NULL, NULL, err, sizeof(err)), DB_OK);
    db_free(db);
}
END_TEST

/* A real restart of the cluster: the helper reconnects with backoff. */
START_TEST(reconnects_after_the_server_restarts)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN], cmd[1024];
    int rc;

    snprintf(cmd, sizeof(cmd),
             "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D %s/postgres/data "
             "restart -m fast -w -t 60 -o '-p %s' >/dev/null",
             tu_env("ORDERSUITE_VAR"), tu_env("PG_PORT"));
    ck_assert_int_eq(system(cmd), 0);
    rc = db_exec(db, "SELECT 1", 0, NULL, NULL, err, sizeof(err));
    ck_assert_int_eq(rc, DB_ERR_TRANSIENT);
    ck_assert_msg(db_connect_retry(db, 30000, NULL, err, sizeof(err)) == DB_OK, "%s", err);
    ck_assert_int_eq(db_exec(db, "SELECT 1", 0, NULL, NULL, err, sizeof(err)), DB_OK);
    db_free(db);
}
END_TEST

START_TEST(connect_retry_gives_up_at_its_deadline)
{
    char err[DB_ERR_LEN];
    /* Port 1 on loopback: refused at once, every time. */
    db_conn *db = db_new("postgresql://nobody:x@127.0.0.1:1/none", "check_db");
    int64_t t0 = util_now_ms();
    ck_assert_int_eq(db_connect_retry(db, 700, NULL, err, sizeof(err)), DB_ERR_TRANSIENT);
    ck_assert_int_lt(util_now_ms() - t0, 5000);
    ck_assert_msg(strstr(err, "connect"), "%s", err);
    db_free(db);
}
END_TEST

START_TEST(a_wrong_password_is_permanent)
{
    char err[DB_ERR_LEN], url[256];
    db_conn *db;
    snprintf(url, sizeof(url), "postgresql://billing:wrong@127.0.0.1:%s/ordersuite",
             tu_env("PG_PORT"));
    db = db_new(url, "check_db");
    ck_assert_msg(db_connect_retry(db, 20000, NULL, err, sizeof(err)) == DB_ERR, "%s", err);
    /* Classified by the server's SQLSTATE (invalid_password), which is the
     * same in every server locale; the message is kept for the log. */
    ck_assert_str_eq(db_last_sqlstate(db), "28P01");
    ck_assert_msg(err[0] != '\0', "no message for the log");
    db_free(db);
}
END_TEST

START_TEST(a_missing_database_is_permanent_3D000)
{
    char err[DB_ERR_LEN], url[512];
    const char *owner = tu_env("OWNER_DATABASE_URL");
    const char *slash = strrchr(owner, '/');
    db_conn *db;

    ck_assert_ptr_nonnull(slash);
    snprintf(url, sizeof(url), "%.*s/no_such_database_here", (int)(slash - owner), owner);
    db = db_new(url, "check_db");
    ck_assert_msg(db_connect_retry(db, 20000, NULL, err, sizeof(err)) == DB_ERR, "%s", err);
    ck_assert_str_eq(db_last_sqlstate(db), "3D000");
    db_free(db);
}
END_TEST

/* Parameters libpq itself refuses (no server involved) are permanent too;
 * a server that cannot be reached is transient, with no SQLSTATE. */
START_TEST(bad_parameters_are_permanent_and_no_server_is_transient)
{
    char err[DB_ERR_LEN];
    db_conn *db = db_new("postgresql://nobody:x@127.0.0.1:1/none?sslmode=sometimes", "check_db");
    ck_assert_msg(db_connect(db, err, sizeof(err)) == DB_ERR, "%s", err);
    db_free(db);
    db = db_new("not a url = = =", "check_db");
    ck_assert_msg(db_connect(db, err, sizeof(err)) == DB_ERR, "%s", err);
    db_free(db);
    db = db_new("postgresql://nobody:x@127.0.0.1:1/none", "check_db");
    ck_assert_msg(db_connect(db, err, sizeof(err)) == DB_ERR_TRANSIENT, "%s", err);
    ck_assert_str_eq(db_last_sqlstate(db), "");
    db_free(db);
}
END_TEST

/* Each service role reads and writes its own schema and nothing else. */
START_TEST(billing_role_cannot_touch_the_orders_schema)
{
    char err[512];
    const char *url = tu_env("BILLING_DATABASE_URL");

    ck_assert_int_eq(tu_sql_try(url, "SELECT count(*) FROM orders.products", err, sizeof(err)), -1);
    ck_assert_msg(strncmp(err, "42501", 5) == 0 && strstr(err, "permission denied"), "%s", err);
    ck_assert_int_eq(
        tu_sql_try(url,
                   "INSERT INTO orders.outbox (message_id, routing_key, correlation_id, body)"
                   " VALUES (gen_random_uuid(), 'x', gen_random_uuid(), '{}')",
                   err, sizeof(err)),
        -1);
    ck_assert_msg(strncmp(err, "42501", 5) == 0, "%s", err);
    ck_assert_int_eq(tu_sql_try(url, "SELECT count(*) FROM inventory.stock", err, sizeof(err)), -1);
    ck_assert_msg(strncmp(err, "42501", 5) == 0, "%s", err);
    /* Its own schema works, unqualified (search_path is the service's schema). */
    ck_assert_int_eq(tu_sql_try(url, "SELECT count(*) FROM inbox", err, sizeof(err)), 0);
}
END_TEST

START_TEST(each_role_is_refused_on_every_other_schema)
{
    static const struct {
        const char *env, *schema;
    } roles[] = {{"ORDERS_DATABASE_URL", "orders"},
                 {"INVENTORY_DATABASE_URL", "inventory"},
                 {"BILLING_DATABASE_URL", "billing"},
                 {"EMAIL_DATABASE_URL", "email"}};
    char err[512], sql[128];
    for (size_t i = 0; i < 4; i++) {
        for (size_t j = 0; j < 4; j++) {
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.inbox", roles[j].schema);
            if (i == j) {
                ck_assert_msg(tu_sql_try(tu_env(roles[i].env), sql, err, sizeof(err)) == 0,
                              "%s on its own schema: %s", roles[i].env, err);
                continue;
            }
            ck_assert_msg(tu_sql_try(tu_env(roles[i].env), sql, err, sizeof(err)) == -1,
                          "%s could read %s", roles[i].env, roles[j].schema);
            ck_assert_msg(strncmp(err, "42501", 5) == 0, "%s on %s: %s", roles[i].env,
                          roles[j].schema, err);
        }
    }
}
END_TEST

START_TEST(service_roles_cannot_run_ddl)
{
    static const char *const roles[] = {"ORDERS_DATABASE_URL", "INVENTORY_DATABASE_URL",
                                        "BILLING_DATABASE_URL", "EMAIL_DATABASE_URL"};
    char err[512];
    for (size_t i = 0; i < 4; i++) {
        const char *url = tu_env(roles[i]);
        ck_assert_int_eq(tu_sql_try(url, "CREATE TABLE sneaky (x int)", err, sizeof(err)), -1);
        ck_assert_msg(strncmp(err, "42501", 5) == 0, "%s: %s", roles[i], err);
        ck_assert_int_eq(tu_sql_try(url, "DROP TABLE outbox", err, sizeof(err)), -1);
        ck_assert_msg(strncmp(err, "42501", 5) == 0, "%s: %s", roles[i], err);
        ck_assert_int_eq(tu_sql_try(url, "CREATE TABLE public.sneaky (x int)", err, sizeof(err)),
                         -1);
    }
}
END_TEST

START_TEST(seed_catalog_has_something_to_sell_and_to_reject)
{
    const char *owner = tu_env("OWNER_DATABASE_URL");
    ck_assert_int_ge(tu_sql_int(owner, "SELECT count(*) FROM orders.products", 0, NULL), 20);
    ck_assert_int_eq(tu_sql_int(owner,
                                "SELECT count(*) FROM orders.products p FULL JOIN inventory.stock s"
                                " USING (sku) WHERE p.sku IS NULL OR s.sku IS NULL",
                                0, NULL),
                     0);
    ck_assert_int_ge(
        tu_sql_int(owner, "SELECT count(*) FROM inventory.stock WHERE on_hand = 0", 0, NULL), 1);
    ck_assert_int_ge(tu_sql_int(owner,
                                "SELECT count(*) FROM inventory.stock"
                                " WHERE on_hand > 0 AND on_hand <= low_stock_threshold * 2",
                                0, NULL),
                     1);
    ck_assert_int_eq(
        tu_sql_int(
            owner,
            "SELECT count(*) FROM public.schema_migrations WHERE checksum !~ '^[0-9a-f]{64}$'", 0,
            NULL),
        0);
}
END_TEST

/* ------------------------------------------- a server in another language */

/* The server's messages follow lc_messages (Debian ships the translations);
 * the cluster runs in C.UTF-8, so English text would pass any classifier.
 * These tests set the whole cluster to German (ALTER SYSTEM: refused
 * connections are answered before a session's settings apply) and check
 * that every classification is unchanged. A classifier that looked at
 * English words ("authentication failed", "does not exist", "lock") would
 * fail here. */
#define GERMAN "de_DE.UTF-8"

/* Runs sql as the cluster's superuser (over the Unix socket, peer
 * authentication); returns psql's exit status. */
static int superuser_sql(const char *sql)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h %s/postgres/run -p %s"
             " -d postgres -c \"%s\" -c 'SELECT pg_reload_conf()' >>%s/log/tests/check_db.psql.log"
             " 2>&1",
             tu_env("ORDERSUITE_VAR"), tu_env("PG_PORT"), sql, tu_env("ORDERSUITE_VAR"));
    return system(cmd);
}

static int sessions_speak(void *lang)
{
    char *v = tu_sql(tu_env("OWNER_DATABASE_URL"), "SHOW lc_messages", 0, NULL);
    int yes = v && strcmp(v, lang) == 0;
    free(v);
    return yes;
}

static void german_server(void)
{
    /* A server started before the locale was generated (make deps) cannot
     * load it (glibc reads its locale archive once): restart it then. */
    if (superuser_sql("ALTER SYSTEM SET lc_messages = '" GERMAN "'") != 0) {
        ck_assert_int_eq(tu_postgres("restart"), 0);
        ck_assert_msg(superuser_sql("ALTER SYSTEM SET lc_messages = '" GERMAN "'") == 0,
                      "the server refuses lc_messages " GERMAN " (is the locale installed? make "
                      "deps generates it; see var/log/tests/check_db.psql.log)");
    }
    ck_assert_msg(tu_poll(10000, sessions_speak, GERMAN), "new sessions do not use " GERMAN);
}

/* Unchecked (in the runner, after the case, also when a test failed), so
 * no later suite finds the server in German. */
static void english_server(void)
{
    if (superuser_sql("ALTER SYSTEM RESET lc_messages") != 0)
        fprintf(stderr, "check_db: resetting lc_messages failed: ALTER SYSTEM RESET lc_messages "
                        "as postgres, then SELECT pg_reload_conf()\n");
}

/* err holds a German message, not the English one. */
static void german(const char *err, const char *german_words, const char *english_words)
{
    ck_assert_msg(strstr(err, german_words) && !strstr(err, english_words),
                  "the server did not answer in German: %s", err);
}

/* A statement's errors in German: classified and carrying the same
 * SQLSTATE as in English. */
START_TEST(statement_errors_are_classified_the_same_in_german)
{
    db_conn *db = connect_as("OWNER_DATABASE_URL"), *other = connect_as("OWNER_DATABASE_URL");
    char err[DB_ERR_LEN];

    ck_assert_int_eq(db_exec(db, "SELECT 1/0", 0, NULL, NULL, err, sizeof(err)), DB_ERR);
    german(err, "Division durch Null", "division by zero");
    ck_assert_str_eq(db_last_sqlstate(db), "22012");
    /* An undefined relation (once read as "does not exist"). */
    ck_assert_int_eq(
        db_exec(db, "SELECT * FROM no_such_table_here", 0, NULL, NULL, err, sizeof(err)), DB_ERR);
    german(err, "existiert nicht", "does not exist");
    ck_assert_str_eq(db_last_sqlstate(db), "42P01");
    /* A unique violation: permanent, 23505 (order-api's Idempotency-Key race
     * is decided on it). */
    ck_assert_int_eq(
        db_exec(db, "CREATE TEMP TABLE u (k int PRIMARY KEY)", 0, NULL, NULL, err, sizeof(err)),
        DB_OK);
    ck_assert_int_eq(db_exec(db, "INSERT INTO u VALUES (1)", 0, NULL, NULL, err, sizeof(err)),
                     DB_OK);
    ck_assert_int_eq(db_exec(db, "INSERT INTO u VALUES (1)", 0, NULL, NULL, err, sizeof(err)),
                     DB_ERR);
    ck_assert_str_eq(db_last_sqlstate(db), "23505");
    /* A lock wait past lock_timeout: transient, 55P03. */
    /* A lock wait past lock_timeout: transient, 55P03 (a stock row, held by
     * another session). */
    ck_assert_int_eq(db_begin(other, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(
        db_exec(other, "SELECT on_hand FROM inventory.stock WHERE sku = 'MUG-WHITE' FOR UPDATE", 0,
                NULL, NULL, err, sizeof(err)),
        DB_OK);
    ck_assert_int_eq(db_exec(db, "SET lock_timeout = 200", 0, NULL, NULL, err, sizeof(err)), DB_OK);
    ck_assert_int_eq(
        db_exec(db, "SELECT on_hand FROM inventory.stock WHERE sku = 'MUG-WHITE' FOR UPDATE", 0,
                NULL, NULL, err, sizeof(err)),
        DB_ERR_TRANSIENT);
    ck_assert_str_eq(db_last_sqlstate(db), "55P03");
    db_rollback(other);
    /* A statement past statement_timeout: transient, 57014. */
    ck_assert_int_eq(db_exec(db, "SET statement_timeout = 100", 0, NULL, NULL, err, sizeof(err)),
                     DB_OK);
    ck_assert_int_eq(db_exec(db, "SELECT pg_sleep(5)", 0, NULL, NULL, err, sizeof(err)),
                     DB_ERR_TRANSIENT);
    ck_assert_str_eq(db_last_sqlstate(db), "57014");
    db_free(other);
    db_free(db);
}
END_TEST

/* A refused connection in German: a wrong password and a missing database
 * are permanent (28P01, 3D000), a schema of another role is refused with
 * 42501: the code comes from libpq's verbose layout, not the words. */
START_TEST(refusals_are_classified_the_same_in_german)
{
    char err[DB_ERR_LEN], url[512];
    const char *owner = tu_env("OWNER_DATABASE_URL");
    const char *slash = strrchr(owner, '/');
    db_conn *db;

    snprintf(url, sizeof(url), "postgresql://billing:wrong@127.0.0.1:%s/ordersuite",
             tu_env("PG_PORT"));
    db = db_new(url, "check_db");
    ck_assert_msg(db_connect_retry(db, 20000, NULL, err, sizeof(err)) == DB_ERR,
                  "a wrong password was not permanent: %s", err);
    german(err, "Passwort", "password authentication failed");
    ck_assert_str_eq(db_last_sqlstate(db), "28P01");
    db_free(db);

    ck_assert_ptr_nonnull(slash);
    snprintf(url, sizeof(url), "%.*s/no_such_database_here", (int)(slash - owner), owner);
    db = db_new(url, "check_db");
    ck_assert_msg(db_connect_retry(db, 20000, NULL, err, sizeof(err)) == DB_ERR,
                  "a missing database was not permanent: %s", err);
    german(err, "existiert nicht", "does not exist");
    ck_assert_str_eq(db_last_sqlstate(db), "3D000");
    db_free(db);

    db = connect_as("BILLING_DATABASE_URL");
    ck_assert_int_eq(
        db_exec(db, "SELECT count(*) FROM orders.orders", 0, NULL, NULL, err, sizeof(err)), DB_ERR);
    german(err, "Schema", "permission denied");
    ck_assert_str_eq(db_last_sqlstate(db), "42501");
    db_free(db);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("db");
    TCase *h = tcase_create("helper");
    TCase *l = tcase_create("layout");
    TCase *g = tcase_create("german");

    tcase_set_timeout(h, 90);
    tcase_add_test(h, exec_binds_parameters_and_returns_rows);
    tcase_add_test(h, an_array_literal_round_trips_any_text_through_unnest);
    tcase_add_test(h, exec_arrays_runs_columns_as_parameters_and_refuses_too_many);
    tcase_add_test(h, errors_carry_sqlstate_and_are_classified);
    tcase_add_test(h, rollback_discards_and_commit_keeps);
    tcase_add_test(h, every_after_commit_callback_runs_once);
    tcase_add_test(h, after_commit_callbacks_past_the_cap_are_an_error);
    tcase_add_test(h, prepared_statements_survive_a_reconnect);
    tcase_add_test(h, many_prepared_statements_all_run_twice);
    tcase_add_test(h, a_name_bound_to_other_sql_is_an_error);
    tcase_add_test(h, a_killed_backend_is_transient_and_reconnects);
    tcase_add_test(h, reconnects_after_the_server_restarts);
    tcase_add_test(h, connect_retry_gives_up_at_its_deadline);
    tcase_add_test(h, a_wrong_password_is_permanent);
    tcase_add_test(h, a_missing_database_is_permanent_3D000);
    tcase_add_test(h, bad_parameters_are_permanent_and_no_server_is_transient);
    tcase_add_test(l, billing_role_cannot_touch_the_orders_schema);
    tcase_add_test(l, each_role_is_refused_on_every_other_schema);
    tcase_add_test(l, service_roles_cannot_run_ddl);
    tcase_add_test(l, seed_catalog_has_something_to_sell_and_to_reject);
    suite_add_tcase(s, h);
    tcase_set_timeout(g, 90);
    tcase_add_checked_fixture(g, german_server, NULL);
    tcase_add_unchecked_fixture(g, NULL, english_server);
    tcase_add_test(g, statement_errors_are_classified_the_same_in_german);
    tcase_add_test(g, refusals_are_classified_the_same_in_german);
    suite_add_tcase(s, l);
    suite_add_tcase(s, g);
    return tu_run(s);
}
