/*
 * db.h — the PostgreSQL helper (libpq).
 *
 * A db_conn wraps one PGconn for one thread. It connects from a URL or
 * conninfo string (DATABASE_URL), retries with capped exponential backoff,
 * reconnects after the server restarts, and runs parameterised statements
 * whose results are always checked. Errors are classified so that callers can
 * tell "try again later" (connection lost, deadlock, serialization failure,
 * server shutting down) from "this will never work" (bad SQL, constraint,
 * permission).
 */
#ifndef ORDERSUITE_DB_H
#define ORDERSUITE_DB_H

#include <libpq-fe.h>
#include <signal.h>
#include <stddef.h>

#define DB_ERR_LEN 512 /* what callers here give as errlen; a longer error text is cut */

typedef enum {
    DB_OK = 0,
    DB_ERR = -1,           /* permanent: the same statement will fail again */
    DB_ERR_TRANSIENT = -2, /* retry later: connection, deadlock, shutdown, ... */
} db_status;

typedef struct db_conn db_conn;

/* Makes a handle for conninfo (a postgresql:// URL or key=value string);
 * application_name names the process in pg_stat_activity. Does not connect.
 * Returns NULL when out of memory. Free with db_free. */
db_conn *db_new(const char *conninfo, const char *application_name);

/* Server-side limits set on every connection the handle makes (as
 * `options=-c ...`; a URL that sets `options` itself replaces them). A
 * statement that runs longer than statement_ms fails with 57014, a lock
 * wait longer than lock_ms with 55P03 (both transient: the caller retries),
 * and a session idle in a transaction longer than idle_tx_ms is ended by the
 * server (25P03), so an open transaction can neither hang this process nor,
 * left open by it, block others. 0 turns a limit off; -1 leaves the
 * server's setting. */
typedef struct {
    long statement_ms;
    long lock_ms;
    long idle_tx_ms;
} db_timeouts;

/* Sets t for the next connections of db (call before db_connect). */
void db_set_timeouts(db_conn *db, const db_timeouts *t);

/* The longest db_connect waits for a connection to conninfo, in ms: its
 * connect_timeout (libpq's rules: at least 2 s), 5 s when it sets none; -1
 * when it turns the limit off (0), -2 when conninfo does not parse. */
int db_connect_timeout_ms(const char *conninfo);

/* Closes the connection and frees the handle. db_free(NULL) is a no-op. */
void db_free(db_conn *db);

/* One connection attempt (connect_timeout 5 s). Returns DB_OK, or
 * DB_ERR_TRANSIENT / DB_ERR with the reason in err and the server's SQLSTATE
 * in db_last_sqlstate ("" when no server answered). Classified by code, not
 * by message text: DB_ERR for a conninfo that does not parse or that libpq
 * refuses before trying (PQpingParams says PQPING_NO_ATTEMPT), and for a
 * server refusal of class 28 (bad password, no pg_hba.conf entry), 3D000
 * (no such database) or 42501 (no CONNECT privilege); every other refusal
 * (53300 too many connections, 57P03 starting up, ...), no answer, and a
 * timeout are DB_ERR_TRANSIENT. */
int db_connect(db_conn *db, char *err, size_t errlen);

/* Connects, retrying transient failures with capped exponential backoff
 * (100 ms doubling to 5 s) until timeout_ms passes (-1: no limit) or *stop
 * becomes non-zero (stop may be NULL). Returns DB_OK or the last error. */
int db_connect_retry(db_conn *db, int timeout_ms, volatile sig_atomic_t *stop, char *err,
                     size_t errlen);

/* Makes sure the connection is up: reconnects once if it was lost. Returns
 * DB_OK or DB_ERR_TRANSIENT. Never call inside a transaction you mean to keep. */
int db_ensure(db_conn *db, char *err, size_t errlen);

/* Runs sql with nparams text parameters (NULL entries are SQL NULL). On
 * success returns DB_OK and, when res is not NULL, the result in *res (caller
 * PQclear()s it). On failure returns DB_ERR / DB_ERR_TRANSIENT, sets *res to
 * NULL, and writes "SQLSTATE: message" to err. */
int db_exec(db_conn *db, const char *sql, int nparams, const char *const *params, PGresult **res,
            char *err, size_t errlen);

/* Like db_exec, through a named prepared statement that is prepared on first
 * use on this connection (and again after a reconnect). The handle binds
 * name to sql on first use (it keeps copies) and there is no limit on the
 * number of names; calling it again with the same name and other SQL is
 * DB_ERR at once, on this connection and any later one. */
int db_execp(db_conn *db, const char *name, const char *sql, int nparams, const char *const *params,
             PGresult **res, char *err, size_t errlen);

/* BEGIN / COMMIT / ROLLBACK. db_commit reports a failed COMMIT (the
 * transaction was rolled back) as an error. db_rollback never fails loudly: a
 * lost connection has rolled back already. */
int db_begin(db_conn *db, char *err, size_t errlen);
int db_commit(db_conn *db, char *err, size_t errlen);
/* Runs fn once right after the open transaction commits (not after a
 * rollback or a failed COMMIT): how the outbox wakes its relay and email its
 * mailer. Up to DB_AFTER_COMMIT_MAX distinct callbacks per transaction run,
 * in the order asked; the same fn asked for again is run once. Returns
 * DB_OK, or DB_ERR with err when a callback past the cap is asked for (a
 * wake-up is never dropped silently: the caller fails its transaction). */
#define DB_AFTER_COMMIT_MAX 4
int db_after_commit(db_conn *db, void (*fn)(void), char *err, size_t errlen);
void db_rollback(db_conn *db);

/* SQLSTATE of the last failed statement or connection attempt ("" if
 * none, or when no server answered). */
const char *db_last_sqlstate(const db_conn *db);

/* The libpq connection, for LISTEN/NOTIFY and socket waits. NULL when not
 * connected. Do not PQfinish it. */
PGconn *db_pg(db_conn *db);

/* Reads column `col` of row 0 of res by name into a C string (NULL when the
 * column is missing or SQL NULL). The string belongs to res. */
const char *db_get(const PGresult *res, int row, const char *col);

/* A PostgreSQL array literal ("{"a","b",NULL}") built element by element,
 * for the set-based statements that pass a column of a batch as ONE
 * parameter ($1::uuid[], $2::text[], ... read back by unnest): each element
 * is quoted, with its '"' and '\\' escaped, so any text round-trips. A
 * failed allocation is remembered and reported by db_array_text. Zero it
 * (or db_array_init) before use; db_array_release frees it. */
typedef struct {
    char *s;
    size_t len, cap;
    size_t n;   /* elements added */
    int failed; /* out of memory on some add */
} db_array;

void db_array_init(db_array *a);

/* Adds v (NULL: an SQL NULL element). */
void db_array_add(db_array *a, const char *v);

/* Adds v in decimal. */
void db_array_add_i64(db_array *a, long long v);

/* Ends the literal and returns it ("{}" when empty), owned by a, or NULL
 * when an add ran out of memory. Called once: nothing is added after. */
const char *db_array_text(db_array *a);

void db_array_release(db_array *a);

/* The most columns db_exec_arrays takes. */
#define DB_ARRAYS_MAX 16

/* Ends the n (at most DB_ARRAYS_MAX) literals of cols and runs sql with
 * them as its parameters $1..$n, as db_execp (res likewise); releases cols
 * whatever the outcome. An add that ran out of memory is DB_ERR_TRANSIENT. */
int db_exec_arrays(db_conn *db, const char *name, const char *sql, db_array *cols, int n,
                   PGresult **res, char *err, size_t errlen);

#endif
