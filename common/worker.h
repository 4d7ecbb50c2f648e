/*
 * worker.h — the runtime every consuming service shares.
 *
 * A service is a name, a table of {event type, handler}, and optional app
 * state. worker_main reads the configuration, connects, starts the outbox
 * relay, and consumes. For each delivery it checks the envelope, decodes the
 * event, and in ONE database transaction records the message_id in the
 * service's inbox, runs the handler (whose writes and outbox rows join that
 * transaction), and commits; only then is the message acked. A message whose
 * id is already in the inbox is acked without running the handler again.
 *
 * The deliveries that arrive together (up to BATCH_MAX, 64) share that
 * transaction and its one COMMIT: their inbox rows are inserted by ONE
 * statement, whose RETURNING tells the new messages from duplicates; then
 * the new ones go to their handlers grouped by route, in the order of the
 * route table (so order-api's table lists its statuses in the order they
 * are reached), in order of arrival within a route. A route has a handler
 * for one message (worker_fn) or for the set of them (worker_set_fn, see
 * there). When anything in the batch fails, it is rolled back and each
 * delivery is applied again in its own transaction, so one bad message
 * never holds back the others.
 *
 * Handlers return MQ_DONE, MQ_RETRY (transient: database busy, mail server
 * down) or MQ_REJECT (permanent: the message can never succeed). Envelope and
 * decoding failures are rejected for them, with the reason, so a poison
 * message goes to the service's DLQ at once.
 *
 * Environment: AMQP_URL, DATABASE_URL (or their _FILE forms), LOG_LEVEL,
 * PREFETCH, RETRY_DELAYS_MS ("1000,10000,60000"),
 * HEARTBEAT_S, READY_MAX_OUTBOX (10000 rows), READY_MAX_OUTBOX_AGE_S (60),
 * the database limits of every
 * connection DB_STATEMENT_TIMEOUT_MS (15000), DB_LOCK_TIMEOUT_MS (5000) and
 * DB_IDLE_TX_TIMEOUT_MS (60000) (see db_timeouts; 0 = off), and for the HTTP server the port
 * variable (METRICS_PORT, or HTTP_PORT for order-api), HTTP_BIND
 * (127.0.0.1), HTTP_THREADS (4), MAX_BODY_BYTES (65536), HTTP_TIMEOUT_S (10),
 * HTTP_CONN_LIMIT (1000), HTTP_PER_IP_LIMIT (200), HTTP_QUEUE_MAX (256 requests waiting for
 * a job thread) and HTTP_QUEUE_DEADLINE_MS (5000), and for the outbox relay OUTBOX_PARK_AFTER
 * (5 returns), OUTBOX_PARK_MIN_AGE_S (30) and OUTBOX_SWEEP_MS (1000: how often it looks for
 * rows no wake-up announced), RPC_PREFETCH (16: requests in hand at once, for a service
 * that answers requests), and for the inbox's retention (retention.h)
 * INBOX_RETENTION_HOURS (336), DLQ_REPLAY_HOURS (168), RETENTION_BATCH (500)
 * and RETENTION_EVERY_S (60); a window shorter than DLQ_REPLAY_HOURS plus
 * the retry tiers stops the service at start. SIGTERM/SIGINT stop consuming, finish the
 * message in hand, flush the outbox, and exit 0.
 */
#ifndef ORDERSUITE_WORKER_H
#define ORDERSUITE_WORKER_H

#include "db.h"
#include "events.h"
#include "http.h"
#include "mq.h"
#include "mq_rpc.h"
#include "trace.h"

typedef struct worker worker;

/* A request the service answers (request/reply, mq_rpc.h): from req (its
 * body not NUL-terminated) the reply into *reply (malloc'd) and *reply_len,
 * reading the service's tables on db (the answering thread's own
 * connection). 0, or -1 with err when it cannot answer (the request is
 * dropped; the asker meets its deadline). */
typedef int (*worker_rpc_fn)(worker *w, db_conn *db, const mq_rpc_request *req, char **reply,
                             size_t *reply_len, char *err, size_t errlen);

typedef struct {
    const char *key; /* the routing key on sales.rpc, e.g. "inventory.availability" */
    worker_rpc_fn fn;
} worker_rpc_route;

/* A handler for one message: env and the decoded ev, applied with db in the
 * worker's open transaction (its writes and worker_emit's events commit with
 * the inbox row). The simple entry point: write a new service's work here. */
typedef mq_result (*worker_fn)(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen);

/* One message of a set, as a set handler sees it. */
typedef struct {
    const ev_envelope *env;
    const ev_event *ev;
    const trace_ctx *trace; /* its process span: what it emits is its child */
} worker_msg;

/* A set handler: all n (>= 1) new messages of one event type that arrived
 * in one batch, in order of arrival, applied in the batch's transaction with
 * a few statements for the whole set (multi-row inserts, one UPDATE ... FROM
 * unnest(...), worker_emit_all) instead of a few per message. It returns
 * MQ_DONE when every message of the set is applied. Anything else fails the
 * batch: it is rolled back and each of its messages is applied again in its
 * own transaction, the set handler then called with n = 1, and that answer
 * (MQ_RETRY, MQ_REJECT with err) is the message's. So a set handler must do
 * for a set what it would do for each message alone in arrival order, and
 * need not find out which message failed. */
typedef mq_result (*worker_set_fn)(worker *w, db_conn *db, const worker_msg *msgs, size_t n,
                                   char *err, size_t errlen);

/* A route: an event type and exactly one of its two entry points. fn, one
 * message at a time, is the simple one (the template, email); set is for a
 * busy service whose statements per message count ({EV_X, NULL, x_set}). */
typedef struct {
    ev_type type;
    worker_fn fn;      /* one message at a time, or */
    worker_set_fn set; /* the batch's messages of this type together */
} worker_route;

typedef struct {
    const char *service; /* queue, schema and role name */
    const worker_route *routes;
    size_t nroutes;
    void *app; /* handed back by worker_app() */
    /* The HTTP server every service runs: /healthz, /readyz, /metrics, or,
     * with these routes (order-api's API), /healthz and /readyz (its 503
     * without detail) beside them and no /metrics (that is on the
     * operations listener). port_var names the variable with the port
     * (default "METRICS_PORT"); 0 turns the server off. */
    const http_route *http_routes;
    size_t n_http_routes;
    void *http_cls;                   /* the routes' cls */
    void (*http_thread_exit)(void *); /* frees http_thread_local values */
    const char *port_var;
    int default_port;
    /* A second, operations-only listener with just /healthz, /readyz and
     * /metrics (never http_routes), for a service whose main port carries an
     * API behind a token: its port is in the variable ops_port_var (NULL: no
     * such listener; default ops_default_port, 0 turns it off), its address
     * in OPS_BIND (127.0.0.1). */
    const char *ops_port_var;
    int ops_default_port;
    /* More to readiness than the worker knows (email's mailer): asked on
     * every /readyz, on an HTTP thread, so it must answer from memory.
     * Returns 1 when ready, else 0 with why filled. NULL: nothing more. */
    int (*ready)(void *app, char *why, size_t whylen);
    /* Scheduled work, run by the outbox relay on its timer with app as its
     * argument (outbox_relay_opts.due says how): order-api's saga timeout.
     * NULL: none. */
    int (*due)(db_conn *db, void *app, char *err, size_t errlen);
    int due_batch; /* outbox_relay_opts.due_batch */
    /* Request/reply (mq_rpc.h), the asking side: when not NULL, worker_main
     * starts a client on the service's AMQP_URL (its requests counted in
     * /metrics), puts it here before the HTTP server starts, and stops it
     * after the server has stopped. */
    mq_rpc_client **rpc_client;
    /* The answering side: the requests the service answers, from its
     * request queue <service>.requests (bound to sales.rpc with each key by
     * --declare-topology), on a thread of its own with its own broker and
     * database connections and RPC_PREFETCH (16) requests in hand, so that a
     * backlog in the work queue never delays an answer. */
    const worker_rpc_route *rpc_routes;
    size_t n_rpc_routes;
    /* More for /metrics (order-api's price cache): Prometheus text written
     * to buf (at most len bytes, NUL-terminated) from memory, on an HTTP
     * thread, with http_cls; appended after the worker's own. NULL: none. */
    void (*metrics_more)(void *http_cls, char *buf, size_t len);
} worker_def;

/* Runs the worker until SIGTERM/SIGINT. Returns the process exit code: 0
 * after a clean stop, 1 on bad configuration or a permanent error.
 *
 * With the argument --declare-topology it only declares the service's
 * exchanges and queues (reads AMQP_URL, LOG_LEVEL and RETRY_DELAYS_MS
 * only: no DATABASE_URL, no listener settings) and exits: `make migrate`
 * runs this for every service so that no event is published before the
 * queues that must receive it exist. */
int worker_main(const worker_def *def, int argc, char **argv);

/* A worker program's modes, as cfg_group bits: it runs, or (with
 * --declare-topology) only declares. A service keeps its own settings in a
 * cfg_group read in WORKER_RUN only, so that `make migrate` never reads
 * them. */
enum { WORKER_RUN = 1, WORKER_DECLARE = 2 };

/* The mode argv asks for: WORKER_DECLARE for --declare-topology, else
 * WORKER_RUN (worker_main refuses any other argument). */
unsigned worker_mode(int argc, char **argv);

/* Fills topo (and keys, at least EV__COUNT + 1 entries) for def's routes,
 * with the retry tiers given. (The delivery limit is no queue argument:
 * worker_delivery_limit, and make migrate's policy.) */
void worker_topology(const worker_def *def, const char **keys, const int *tiers, mq_topology *topo);

/* Declares the shared exchanges and def's queues on the broker at amqp_url
 * (the administrator's: `make migrate`) and returns 0, or -1 with err.
 * bound: the keys the work queue has on sales.events now, separated by
 * spaces ("" or NULL: none known; make migrate passes them as BOUND_KEYS):
 * each one def does not handle is unbound. At most WORKER_BOUND_MAX keys,
 * each a routing key of [A-Za-z0-9._-], or -1 with err. */
#define WORKER_BOUND_MAX 64
#define WORKER_RPC_MAX   16 /* rpc_routes of a service, at most */
int worker_declare_topology(const worker_def *def, const char *amqp_url, const int *tiers,
                            const char *bound, char *err, size_t errlen);

/* The app state of worker_def. */
void *worker_app(worker *w);

/* Emits ev as a consequence of the message `cause`, through the outbox, in
 * the handler's transaction: same correlation_id, causation_id = the cause's
 * message_id. Returns DB_OK / DB_ERR / DB_ERR_TRANSIENT with err. */
int worker_emit(worker *w, db_conn *db, const ev_envelope *cause, const ev_event *ev, char *err,
                size_t errlen);

/* One event of worker_emit_all and the message of the set that caused it
 * (its correlation id, its message id as the causation id, its span as the
 * parent). */
typedef struct {
    const worker_msg *cause;
    const ev_event *ev;
} worker_out;

/* worker_emit for n events in ONE statement (outbox_add_all): what a set
 * handler emits. n 0 does nothing. */
int worker_emit_all(worker *w, db_conn *db, const worker_out *outs, size_t n, char *err,
                    size_t errlen);

/* Reads DB_STATEMENT_TIMEOUT_MS, DB_LOCK_TIMEOUT_MS and DB_IDLE_TX_TIMEOUT_MS
 * (defaults 15000, 5000, 60000; 0 = off) into t. 0, or -1 with err. */
int worker_db_timeouts(db_timeouts *t, char *err, size_t errlen);

/* Reads the delivery limit of service: <NAME>_DELIVERY_LIMIT (NAME: service
 * in capitals, '-' as '_'), else DELIVERY_LIMIT, else 20; 1..1000. The
 * worker dead-letters, unhandled, a delivery the broker has handed out that
 * many times before (x-delivery-count), so the limit holds with no policy
 * at all and changes with a restart; `make migrate` sets the same numbers as
 * the queues' policies, the broker's backstop (the lower of the two holds).
 * 0, or -1 with err. */
int worker_delivery_limit(const char *service, long *limit, char *err, size_t errlen);

/* Maps a db status to a handler result: transient → retry, else reject. */
mq_result worker_db_result(int status);

/* A handler's claim on its work: runs the statement (db_execp's name, sql,
 * nparams, params, err), one whose rows say the work is this delivery's to
 * do: an INSERT ... ON CONFLICT DO NOTHING RETURNING, an UPDATE ... WHERE
 * status = ... RETURNING. Returns MQ_DONE with *res holding its rows (at
 * least one; the caller clears it) when the handler goes on. Else *res is
 * NULL and the handler returns what this returns: worker_db_result's answer
 * when the statement failed (err says why), or MQ_DONE when it returned no
 * row (the work was done before, or is not to be done), after logging fmt
 * at info with env's ids (fmt NULL: nothing logged). So a handler reads
 *     if ((res = worker_claim(...)) != MQ_DONE || !r) return res; */
mq_result worker_claim(db_conn *db, const char *name, const char *sql, int nparams,
                       const char *const *params, PGresult **res, char *err, size_t errlen,
                       const ev_envelope *env, const char *fmt, ...)
    __attribute__((format(printf, 10, 11)));

/* The envelope a handler sees, from delivery d (whose routing key is a
 * known event type): ids, type, app_id, timestamp, versions. Returns
 * MQ_DONE, or MQ_REJECT with the reason in err when the message_id or the
 * correlation_id is not a UUID (checked whole, never cut to fit), or the
 * key or the app_id is longer than env->type or env->app_id holds
 * (EV_KEY_MAX, EV_APP_ID_MAX: 47 bytes; never cut either). Pure. */
mq_result worker_envelope_of(const mq_delivery *d, ev_envelope *env, char *err, size_t errlen);

/* The batch fallback: how delivery i of a batch ends, given what its
 * decoding said (decoded: MQ_DONE when it can be applied, else the
 * rejection that stands), whether the database answered (db_up), and
 * whether the batch's one transaction committed. Nothing is acked that was
 * not committed, and one failing delivery never holds back the others: a
 * failed batch has each decodable delivery applied again on its own. Pure. */
typedef enum {
    WORKER_BATCH_ACK,   /* committed with the batch: acked (MQ_DONE) */
    WORKER_BATCH_KEEP,  /* undecodable: its rejection stands, never applied */
    WORKER_BATCH_RETRY, /* the database is away: MQ_RETRY, through a retry tier */
    WORKER_BATCH_ALONE, /* the batch failed: applied again in its own transaction */
} worker_batch_fate;
worker_batch_fate worker_batch_fate_of(mq_result decoded, int db_up, int committed);

/* Parses "1000,10000,60000" into ms (at most MQ_MAX_TIERS ascending values in
 * [1, 86400000]); the rest of ms is zeroed. Returns 0 or -1 with err. */
int worker_parse_tiers(const char *s, int ms[MQ_MAX_TIERS], char *err, size_t errlen);

#endif
