/*
 * testutil_sql.c — see testutil.h: SQL against the real database (tu_sql,
 * counts and their polls, lock waiters) and pg_ctl (tu_postgres).
 */
#include "testutil.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static PGresult *run(const char *url, const char *sql, int nparams, const char *const *params,
                     PGconn **out)
{
    PGconn *c = PQconnectdb(url);
    PGresult *r;
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    /* Without parameters, the simple protocol: several statements may run. */
    r = nparams ? PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    *out = c;
    return r;
}

char *tu_sql(const char *url, const char *sql, int nparams, const char *const *params)
{
    PGconn *c;
    PGresult *r = run(url, sql, nparams, params, &c);
    char *v;
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK,
                  "%s: %s", sql, PQresultErrorMessage(r));
    if (PQntuples(r) == 0 || PQnfields(r) == 0)
        v = strdup("");
    else if (PQgetisnull(r, 0, 0))
        v = NULL;
    else
        v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

long long tu_sql_int(const char *url, const char *sql, int nparams, const char *const *params)
{
    char *v = tu_sql(url, sql, nparams, params);
    long long n;
    ck_assert_msg(v && *v, "%s: no value", sql);
    n = strtoll(v, NULL, 10);
    free(v);
    return n;
}

int tu_sql_try(const char *url, const char *sql, char *err, size_t errlen)
{
    PGconn *c;
    PGresult *r = run(url, sql, 0, NULL, &c);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(err, errlen, "%s: %s", st ? st : "?", PQresultErrorMessage(r));
    }
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}

long tu_lock_waiters(const char *rel, const char *mode)
{
    const char *p[] = {rel, mode};
    return (long)tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                            "SELECT count(*) FROM pg_locks WHERE NOT granted"
                            " AND relation = $1::regclass AND ($2::text IS NULL OR mode = $2)",
                            2, p);
}

typedef struct {
    const char *rel, *mode;
} tu_lock_arg;

static int lock_waited(void *arg)
{
    const tu_lock_arg *a = arg;
    return tu_lock_waiters(a->rel, a->mode) >= 1;
}

int tu_await_lock_waiter(int ms, const char *rel, const char *mode)
{
    tu_lock_arg a = {rel, mode};
    return tu_poll(ms, lock_waited, &a);
}

long tu_count(const char *sql, const char *param)
{
    const char *p[] = {param};
    return (long)tu_sql_int(tu_env("OWNER_DATABASE_URL"), sql, param ? 1 : 0, p);
}

typedef struct {
    const char *sql, *param;
    long want;
} tu_count_arg;

static int count_is(void *arg)
{
    tu_count_arg *a = arg;
    return tu_count(a->sql, a->param) == a->want;
}

void tu_await_count(int ms, const char *sql, const char *param, long want)
{
    tu_count_arg a = {sql, param, want};
    if (tu_poll(ms, count_is, &a))
        return;
    ck_abort_msg("%s [%s]: %ld after %d ms, want %ld", sql, param ? param : "",
                 tu_count(sql, param), ms, want);
}

int tu_postgres(const char *verb)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D %s/postgres/data %s -w "
             "-t 60 -o '-p %s' -l %s/log/postgresql/startup.log >/dev/null",
             tu_env("ORDERSUITE_VAR"), verb, tu_env("PG_PORT"), tu_env("ORDERSUITE_VAR"));
    return system(cmd);
}
