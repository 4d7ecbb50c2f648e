/*
 * db.c — the PostgreSQL helper (see db.h).
 */
#include "db.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A statement name and the SQL it stands for. The binding lasts as long as
 * the handle, so a name cannot change its SQL even across a reconnect;
 * `prepared` says whether the current connection has it yet. */
typedef struct {
    char *name;
    char *sql;
    int prepared;
} db_stmt;

struct db_conn {
    char *conninfo;
    char *appname;
    PGconn *pg;
    char sqlstate[6];
    db_stmt *stmts;    /* grows as needed: no cap on the number of names */
    char options[192]; /* "-c statement_timeout=..." for every connection; "" for none */
    size_t nstmts, capstmts;
    void (*after_commit[DB_AFTER_COMMIT_MAX])(void); /* run once each after COMMIT */
    int nafter;                                      /* how many of them are set */
};

db_conn *db_new(const char *conninfo, const char *application_name)
{
    db_conn *db = calloc(1, sizeof(*db));
    if (!db)
        return NULL;
    db->conninfo = strdup(conninfo);
    db->appname = strdup(application_name ? application_name : "ordersuite");
    if (!db->conninfo || !db->appname) {
        db_free(db);
        return NULL;
    }
    return db;
}

void db_set_timeouts(db_conn *db, const db_timeouts *t)
{
    const char *names[] = {"statement_timeout", "lock_timeout",
                           "idle_in_transaction_session_timeout"};
    const long vals[] = {t->statement_ms, t->lock_ms, t->idle_tx_ms};
    size_t n = 0;

    db->options[0] = '\0';
    for (int i = 0; i < 3; i++) {
        if (vals[i] < 0)
            continue;
        n += (size_t)snprintf(db->options + n, sizeof(db->options) - n, "%s-c %s=%ld", n ? " " : "",
                              names[i], vals[i]);
        /* Three names and values of at most 7 digits (cfg's ranges) fit;
         * past the end, the next size would wrap around. */
        assert(n < sizeof(db->options));
    }
}

static void db_close(db_conn *db)
{
    if (db->pg)
        PQfinish(db->pg);
    db->pg = NULL;
    for (size_t i = 0; i < db->nstmts; i++)
        db->stmts[i].prepared = 0;
}

void db_free(db_conn *db)
{
    if (!db)
        return;
    db_close(db);
    for (size_t i = 0; i < db->nstmts; i++) {
        free(db->stmts[i].name);
        free(db->stmts[i].sql);
    }
    free(db->stmts);
    free(db->conninfo);
    free(db->appname);
    free(db);
}

/* Copies libpq's message without its trailing newline. */
static void set_err(char *err, size_t errlen, const char *prefix, const char *msg)
{
    size_t n;
    snprintf(err, errlen, "%s%s", prefix, msg ? msg : "unknown error");
    n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
        err[--n] = '\0';
}

/* The SQLSTATE a server sent while refusing a connection. libpq keeps no
 * PGresult for a failed connection, so the connection is made with
 * PQERRORS_VERBOSE, in which libpq lays an error out as "SEVERITY:  SQLSTATE:
 * message"; the code is taken from that layout (the last one, when libpq
 * tried more than once), never from the words, which the server translates.
 * Writes "" when the server sent no error (unreachable, timeout). */
static void connect_sqlstate(const char *msg, char out[6])
{
    out[0] = '\0';
    for (const char *p = strstr(msg, ":  "); p; p = strstr(p + 1, ":  ")) {
        const char *c = p + 3;
        size_t n = strspn(c, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        if (n == 5 && c[5] == ':') {
            memcpy(out, c, 5);
            out[5] = '\0';
        }
    }
}

#define DB_CONNECT_TIMEOUT_S "5" /* db_connect's, unless the URL sets its own */

/* connect_timeout in ms of opts' value (libpq's rules: at least 2 s; 0 or
 * unset means none, -1); dflt when opts does not set it. */
static int connect_timeout_of(PQconninfoOption *opts, long dflt)
{
    long s = dflt;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val)
            s = strtol(o->val, NULL, 10);
    }
    if (s <= 0)
        return -1;
    return (int)(s < 2 ? 2 : s > 3600 ? 3600 : s) * 1000;
}

static int connect_timeout_ms(PGconn *pg)
{
    PQconninfoOption *opts = PQconninfo(pg);
    int ms = connect_timeout_of(opts, 0);
    PQconninfoFree(opts);
    return ms;
}

int db_connect_timeout_ms(const char *conninfo)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    int ms;
    if (!opts)
        return -2;
    ms = connect_timeout_of(opts, strtol(DB_CONNECT_TIMEOUT_S, NULL, 10));
    PQconninfoFree(opts);
    return ms;
}

/* Drives PQconnectPoll until pg is connected (0), failed (-1) or the
 * connect_timeout passed (-2). */
static int connect_poll(PGconn *pg)
{
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    int timeout = connect_timeout_ms(pg);
    int64_t end = timeout < 0 ? -1 : util_now_ms() + timeout;

    for (;;) {
        struct pollfd fd;
        int n;
        int64_t left = end < 0 ? -1 : end - util_now_ms();
        if (st == PGRES_POLLING_OK)
            return 0;
        if (st == PGRES_POLLING_FAILED || PQstatus(pg) == CONNECTION_BAD)
            return -1;
        if (end >= 0 && left <= 0)
            return -2;
        fd.fd = PQsocket(pg);
        fd.events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
        fd.revents = 0;
        if (fd.fd < 0)
            return -1;
        n = poll(&fd, 1, left < 0 || left > 1000 ? 1000 : (int)left);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0)
            st = PQconnectPoll(pg);
    }
}

/* Whether a refusal with this SQLSTATE will happen again on retry: bad
 * credentials or no pg_hba entry (class 28), an unknown database (3D000), no
 * CONNECT privilege (42501). Anything else the server says (too many
 * connections 53300, starting up 57P03, ...) may pass. */
static int connect_permanent(const char *st)
{
    return strncmp(st, "28", 2) == 0 || strcmp(st, "3D000") == 0 || strcmp(st, "42501") == 0;
}

int db_connect(db_conn *db, char *err, size_t errlen)
{
    /* Defaults first; the caller's URL (expanded from "dbname") comes last
     * and overrides any of them. */
    const char *keys[] = {"connect_timeout",  "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout", "application_name",
                          "options",          "dbname",           NULL};
    const char *vals[] = {DB_CONNECT_TIMEOUT_S, "10",        "5",          "3", "15000",
                          db->appname,          db->options, db->conninfo, NULL};
    PQconninfoOption *parsed;
    char *perr = NULL;
    int rc;

    db_close(db);
    db->sqlstate[0] = '\0';
    /* A URL or key=value string that does not parse never will. */
    parsed = PQconninfoParse(db->conninfo, &perr);
    if (!parsed) {
        set_err(err, errlen, "connect: ", perr ? perr : "out of memory");
        rc = perr ? DB_ERR : DB_ERR_TRANSIENT;
        PQfreemem(perr);
        return rc;
    }
    PQconninfoFree(parsed);
    db->pg = PQconnectStartParams(keys, vals, 1);
    if (!db->pg) {
        snprintf(err, errlen, "out of memory");
        return DB_ERR_TRANSIENT;
    }
    PQsetErrorVerbosity(db->pg, PQERRORS_VERBOSE);
    rc = connect_poll(db->pg);
    if (rc == 0) {
        PQsetErrorVerbosity(db->pg, PQERRORS_DEFAULT);
        return DB_OK;
    }
    if (rc == -2) {
        snprintf(err, errlen, "connect: no answer within connect_timeout");
        db_close(db);
        return DB_ERR_TRANSIENT;
    }
    set_err(err, errlen, "connect: ", PQerrorMessage(db->pg));
    connect_sqlstate(PQerrorMessage(db->pg), db->sqlstate);
    db_close(db);
    if (db->sqlstate[0])
        return connect_permanent(db->sqlstate) ? DB_ERR : DB_ERR_TRANSIENT;
    /* No word from a server: unreachable (transient), or parameters that
     * libpq refused before trying (a bad sslmode, ...), which it reports as
     * PQPING_NO_ATTEMPT. */
    return PQpingParams(keys, vals, 1) == PQPING_NO_ATTEMPT ? DB_ERR : DB_ERR_TRANSIENT;
}

int db_connect_retry(db_conn *db, int timeout_ms, volatile sig_atomic_t *stop, char *err,
                     size_t errlen)
{
    backoff b;
    int64_t wait;
    int rc;

    backoff_init(&b, 100, 5000);
    backoff_until(&b, timeout_ms);
    for (;;) {
        rc = db_connect(db, err, errlen);
        if (rc != DB_ERR_TRANSIENT || (wait = backoff_next(&b)) < 0 || util_sleep_ms(wait, stop))
            return rc;
    }
}

int db_ensure(db_conn *db, char *err, size_t errlen)
{
    if (db->pg && PQstatus(db->pg) == CONNECTION_OK)
        return DB_OK;
    return db_connect(db, err, errlen) == DB_OK ? DB_OK : DB_ERR_TRANSIENT;
}

static int classify(db_conn *db, const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    snprintf(db->sqlstate, sizeof(db->sqlstate), "%s", st ? st : "");
    if (!db->pg || PQstatus(db->pg) != CONNECTION_OK || !st)
        return DB_ERR_TRANSIENT;
    if (strncmp(st, "08", 2) == 0 ||  /* connection exception */
        strcmp(st, "40001") == 0 ||   /* serialization failure */
        strcmp(st, "40P01") == 0 ||   /* deadlock detected */
        strncmp(st, "57P", 3) == 0 || /* admin/crash shutdown, cannot connect now */
        strncmp(st, "53", 2) == 0 ||  /* insufficient resources */
        strcmp(st, "55P03") == 0 ||   /* lock not available */
        strcmp(st, "57014") == 0)     /* statement timeout / cancel */
        return DB_ERR_TRANSIENT;
    return DB_ERR;
}

static int check_result(db_conn *db, PGresult *r, PGresult **res, char *err, size_t errlen)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc;

    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        db->sqlstate[0] = '\0';
        if (res)
            *res = r;
        else
            PQclear(r);
        return DB_OK;
    }
    rc = classify(db, r);
    if (r && PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY))
        snprintf(err, errlen, "%s: %s", db->sqlstate,
                 PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
    else
        set_err(err, errlen, "", db->pg ? PQerrorMessage(db->pg) : "not connected");
    PQclear(r);
    /* A connection that died mid-statement is dropped so the next call
     * reconnects. */
    if (db->pg && PQstatus(db->pg) != CONNECTION_OK)
        db_close(db);
    return rc;
}

int db_exec(db_conn *db, const char *sql, int nparams, const char *const *params, PGresult **res,
            char *err, size_t errlen)
{
    if (res)
        *res = NULL;
    if (!db->pg) {
        snprintf(err, errlen, "not connected");
        return DB_ERR_TRANSIENT;
    }
    return check_result(db, PQexecParams(db->pg, sql, nparams, NULL, params, NULL, NULL, 0), res,
                        err, errlen);
}

/* The binding of name, made on first use. NULL with err when name is bound
 * to other SQL already, or when out of memory. */
static db_stmt *stmt_for(db_conn *db, const char *name, const char *sql, char *err, size_t errlen)
{
    db_stmt *st;

    for (size_t i = 0; i < db->nstmts; i++) {
        st = &db->stmts[i];
        if (strcmp(st->name, name) != 0)
            continue;
        if (strcmp(st->sql, sql) != 0) {
            snprintf(err, errlen, "prepared statement \"%.64s\" is already bound to other SQL",
                     name);
            return NULL;
        }
        return st;
    }
    if (db->nstmts == db->capstmts) {
        size_t cap = db->capstmts ? db->capstmts * 2 : 32;
        db_stmt *grown = realloc(db->stmts, cap * sizeof(*grown));
        if (!grown)
            goto oom;
        db->stmts = grown;
        db->capstmts = cap;
    }
    st = &db->stmts[db->nstmts];
    st->name = strdup(name);
    st->sql = strdup(sql);
    st->prepared = 0;
    if (!st->name || !st->sql) {
        free(st->name);
        free(st->sql);
        goto oom;
    }
    db->nstmts++;
    return st;
oom:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

int db_execp(db_conn *db, const char *name, const char *sql, int nparams, const char *const *params,
             PGresult **res, char *err, size_t errlen)
{
    db_stmt *st;
    int rc;

    if (res)
        *res = NULL;
    db->sqlstate[0] = '\0';
    if (!(st = stmt_for(db, name, sql, err, errlen)))
        return DB_ERR;
    if (!db->pg) {
        snprintf(err, errlen, "not connected");
        return DB_ERR_TRANSIENT;
    }
    if (!st->prepared) {
        rc = check_result(db, PQprepare(db->pg, name, sql, nparams, NULL), NULL, err, errlen);
        if (rc != DB_OK)
            return rc;
        st->prepared = 1;
    }
    return check_result(db, PQexecPrepared(db->pg, name, nparams, params, NULL, NULL, 0), res, err,
                        errlen);
}

int db_begin(db_conn *db, char *err, size_t errlen)
{
    db->nafter = 0;
    return db_exec(db, "BEGIN", 0, NULL, NULL, err, errlen);
}

int db_after_commit(db_conn *db, void (*fn)(void), char *err, size_t errlen)
{
    for (int i = 0; i < db->nafter; i++) {
        if (db->after_commit[i] == fn)
            return DB_OK; /* asked for by every outbox row: once is enough */
    }
    if (db->nafter == DB_AFTER_COMMIT_MAX) {
        snprintf(err, errlen, "more than %d after-commit callbacks in one transaction",
                 DB_AFTER_COMMIT_MAX);
        return DB_ERR;
    }
    db->after_commit[db->nafter++] = fn;
    return DB_OK;
}

int db_commit(db_conn *db, char *err, size_t errlen)
{
    PGresult *r = NULL;
    int rc = db_exec(db, "COMMIT", 0, NULL, &r, err, errlen);
    /* COMMIT of a failed transaction "succeeds" with the tag ROLLBACK. */
    if (rc == DB_OK && strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
        snprintf(err, errlen, "transaction was rolled back");
        rc = DB_ERR;
    }
    PQclear(r);
    for (int i = 0; rc == DB_OK && i < db->nafter; i++)
        db->after_commit[i]();
    db->nafter = 0;
    return rc;
}

void db_rollback(db_conn *db)
{
    char err[DB_ERR_LEN];
    db->nafter = 0;
    if (db->pg && PQstatus(db->pg) == CONNECTION_OK && PQtransactionStatus(db->pg) != PQTRANS_IDLE)
        (void)db_exec(db, "ROLLBACK", 0, NULL, NULL, err, sizeof(err));
}

const char *db_last_sqlstate(const db_conn *db)
{
    return db->sqlstate;
}

PGconn *db_pg(db_conn *db)
{
    return db->pg;
}

const char *db_get(const PGresult *res, int row, const char *col)
{
    int c = PQfnumber(res, col);
    if (c < 0 || row >= PQntuples(res) || PQgetisnull(res, row, c))
        return NULL;
    return PQgetvalue(res, row, c);
}

/* ----------------------------------------------------------- array literal */

void db_array_init(db_array *a)
{
    memset(a, 0, sizeof(*a));
}

/* Appends n bytes of s; remembers a failed allocation. */
static void array_put(db_array *a, const char *s, size_t n)
{
    if (a->failed)
        return;
    if (a->len + n + 2 > a->cap) { /* room for the closing brace and the NUL */
        size_t cap = a->cap ? a->cap : 256;
        char *t;
        while (a->len + n + 2 > cap)
            cap *= 2;
        if (!(t = realloc(a->s, cap))) {
            a->failed = 1;
            return;
        }
        a->s = t;
        a->cap = cap;
    }
    memcpy(a->s + a->len, s, n);
    a->len += n;
}

void db_array_add(db_array *a, const char *v)
{
    array_put(a, a->n ? "," : "{", 1);
    a->n++;
    if (!v) {
        array_put(a, "NULL", 4);
        return;
    }
    array_put(a, "\"", 1);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            array_put(a, "\\", 1);
        array_put(a, p, 1);
    }
    array_put(a, "\"", 1);
}

void db_array_add_i64(db_array *a, long long v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%lld", v);
    db_array_add(a, buf);
}

const char *db_array_text(db_array *a)
{
    if (a->n == 0)
        array_put(a, "{", 1);
    array_put(a, "}", 1);
    if (a->failed)
        return NULL;
    a->s[a->len] = '\0'; /* array_put kept room for it */
    a->n++;              /* so a second call cannot open it again */
    return a->s;
}

void db_array_release(db_array *a)
{
    free(a->s);
    db_array_init(a);
}

int db_exec_arrays(db_conn *db, const char *name, const char *sql, db_array *cols, int n,
                   PGresult **res, char *err, size_t errlen)
{
    const char *p[DB_ARRAYS_MAX];
    int rc = DB_OK;

    if (n < 0 || n > DB_ARRAYS_MAX) {
        snprintf(err, errlen, "%s: %d array parameters, at most %d", name, n, DB_ARRAYS_MAX);
        rc = DB_ERR;
        if (res)
            *res = NULL;
        n = n < 0 ? 0 : n;
    }
    for (int c = 0; rc == DB_OK && c < n; c++) {
        if (!(p[c] = db_array_text(&cols[c]))) {
            snprintf(err, errlen, "out of memory");
            rc = DB_ERR_TRANSIENT;
        }
    }
    if (rc == DB_OK)
        rc = db_execp(db, name, sql, n, p, res, err, errlen);
    for (int c = 0; c < n; c++)
        db_array_release(&cols[c]);
    return rc;
}
