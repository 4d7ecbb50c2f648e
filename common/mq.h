/*
 * mq.h — the messaging helper (rabbitmq-c 0.11).
 *
 * An mq_conn is one AMQP connection with one channel, used by one thread, in
 * one of two roles:
 *   - a publisher: channel in confirm mode; mq_publish / mq_publish_batch
 *     return only after the broker's basic.ack, with `mandatory` set, so a
 *     nack or an unroutable message (basic.return) is an error the caller sees;
 *   - a consumer: declares its service's topology, sets QoS, consumes with
 *     manual acks (never auto-ack), and hands each delivery to a handler
 *     through mq_consume_batches, which acks only after the handler said "done".
 * Roles are kept on separate connections so that waiting for a confirm never
 * has to step over a delivery (0.11 has no per-channel wait in its API).
 *
 * The exchanges are shared and declared only by the administrator
 * (`make migrate` runs each service's --declare-topology with the admin's
 * URL, which calls mq_declare_exchanges): sales.events, sales.retry,
 * sales.dlx and sales.rpc (request/reply: mq_rpc.h), all topic exchanges,
 * so that the broker checks every routing
 * key against the publisher's topic permissions. Every consumer (re)connect
 * declares the service's own queues, idempotently:
 *   S           quorum work queue bound to sales.events with S's keys (and
 *               unbound from every other event key) and to sales.retry with
 *               key S; dead-letters to sales.dlx/S, at-least-once,
 *               reject-publish. Its delivery limit is no argument: the
 *               worker enforces DELIVERY_LIMIT from x-delivery-count, and
 *               `make migrate` sets it as a policy, the broker's backstop
 *               (worker_delivery_limit): only arguments that never change are given
 *               on declare, and a queue that exists with other arguments
 *               (an older version's) is used as it is.
 *   S.retry.Nms quorum queues with x-message-ttl N, bound to sales.retry with
 *               their own name, dead-lettering to sales.retry/S (back to the
 *               work queue)
 *   S.dlq       quorum queue bound to sales.dlx with key S
 * A service's broker user may publish on sales.retry and sales.dlx only keys
 * named after itself (S, S.*), so its retries and dead letters reach only its
 * own queues (scripts/broker-perms.sh). A delivery's event type is its
 * routing key; the x-original-routing-key header is believed only on
 * deliveries that came through sales.retry or sales.dlx, and a delivery whose
 * `type` contradicts its key goes to the DLQ unhandled.
 *
 * rabbitmq-c does not recover by itself: connections that fail are torn
 * down and made again with capped exponential backoff by the callers here.
 *
 * The helper is one file per role, and this header has a section for each:
 * mq_conn.c (the handle, connecting), mq_topology.c, mq_publish.c (with
 * confirms), mq_consume.c (batches and settling), mq_tool.c (tools/dlq's
 * one-off get/settle/purge) and mq_msg.c, the pure decisions (header
 * tables, a delivery's event type, the retry-tier choice), which opens no
 * socket. mq_int.h holds what they share; services never include it.
 */
#ifndef ORDERSUITE_MQ_H
#define ORDERSUITE_MQ_H

#include "metrics.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define MQ_EXCHANGE       "sales.events"
#define MQ_DLX            "sales.dlx"
#define MQ_RETRY_EXCHANGE "sales.retry"
/* The limits. Error texts go into the caller's err of errlen bytes, cut to
 * fit (MQ_ERR_LEN is what the callers here give). */
#define MQ_ERR_LEN     512
#define MQ_MAX_TIERS   8   /* retry tiers of a service */
#define MQ_MAX_HEADERS 14  /* headers of a publish, schema_version and trace context included */
#define MQ_NAME_LEN    256 /* a queue or exchange name, routing key or type: an AMQP shortstr */
#define MQ_ID_LEN      64  /* a delivery's message_id, correlation_id, app_id, ... (cut to 63) */

/* Headers the helper writes on retried and dead-lettered messages. */
#define MQ_H_SCHEMA_VERSION "schema_version"
#define MQ_H_ATTEMPT        "x-attempt" /* failed attempts so far */
#define MQ_H_ORIGINAL_KEY   "x-original-routing-key"
#define MQ_H_REASON         "x-reason" /* rejected | retries-exhausted | undecodable */
#define MQ_H_ERROR          "x-error"  /* the handler's error text */
#define MQ_H_SERVICE        "x-failed-service"
#define MQ_H_FAILED_AT      "x-failed-at"      /* seconds since the epoch */
#define MQ_H_DELIVERY_COUNT "x-delivery-count" /* set by a quorum queue on a redelivery */
/* W3C trace context (trace.h), written on every publish that has one and
 * read as a longstr or as bytes (other clients send either). */
#define MQ_H_TRACEPARENT   "traceparent"
#define MQ_H_TRACESTATE    "tracestate"
#define MQ_TRACEPARENT_MAX 128 /* a longer traceparent is invalid anyway */
#define MQ_TRACESTATE_MAX  514 /* one past TRACE_STATE_MAX: a longer one is seen as too long */

typedef enum {
    MQ_OK = 0,
    MQ_ERR = -1,          /* connection or protocol failure: reconnect and try again */
    MQ_ERR_NACKED = -2,   /* the broker refused the message (basic.nack) */
    MQ_ERR_RETURNED = -3, /* unroutable: no queue is bound for its routing key */
    MQ_ERR_CONFIG = -4,   /* bad URL, credentials or permissions: retrying won't help */
} mq_status;

typedef struct mq_conn mq_conn;

/* One consuming service's place in the topology. */
typedef struct {
    const char *queue;          /* the service name: work queue S */
    const char *const *keys;    /* routing keys on sales.events, NULL-terminated */
    int retry_ms[MQ_MAX_TIERS]; /* delay tiers in ms, ascending; 0 ends the list */
} mq_topology;

typedef struct {
    const char *url;         /* amqp[s]://user:pass@host:port/vhost[?tls options], or a
                                comma-separated list of such URLs (mq_check_url) */
    const char *app_id;      /* the service name, set on every publish */
    const mq_topology *topo; /* consumers: their queue; NULL for publishers */
    int prefetch;            /* consumers: basic.qos prefetch count; 0 = 32 */
    int heartbeat_s;         /* 0 = 30 */
    metrics *metrics;        /* counts retried / dead-lettered / published; may be NULL */
} mq_opts;

typedef struct {
    const char *key;
    const char *str; /* a string header, or NULL for an integer */
    int64_t num;
} mq_header;

/* A message to publish. exchange NULL = sales.events; "" = the default
 * exchange (routing_key is then a queue name). */
typedef struct {
    const char *exchange;
    const char *routing_key;
    const char *message_id;
    const char *correlation_id;
    const char *type;   /* NULL = routing_key */
    int64_t timestamp;  /* seconds; 0 = now */
    const char *app_id; /* NULL = the connection's app_id */
    const void *body;
    size_t len;
    const mq_header *headers; /* extra headers, besides schema_version */
    size_t nheaders;          /* < MQ_MAX_HEADERS (asserted) */
    int schema_version;       /* 0 = EV_SCHEMA_VERSION */
    const char *traceparent;  /* the publish span's context, or NULL / "" */
    const char *tracestate;   /* NULL / "" for none */
} mq_msg;

/* A delivery handed to a handler. Strings are NUL-terminated copies, "" when
 * the property was absent. */
typedef struct {
    char routing_key[MQ_NAME_LEN]; /* the original key, also after a trip through a retry tier */
    char exchange[MQ_NAME_LEN]; /* the exchange it came through (sales.events, sales.retry, ...) */
    char message_id[MQ_ID_LEN]; /* these three are cut to fit: a cut id is no UUID */
    char correlation_id[MQ_ID_LEN];
    char type[MQ_NAME_LEN];
    char app_id[MQ_ID_LEN];
    int64_t timestamp;
    int schema_version; /* -1 when the header is missing or not an integer */
    int attempt;        /* failed attempts before this one (0 the first time) */
    int redelivered;
    int delivery_count; /* times the broker handed it out before (quorum queues'
                           x-delivery-count: returns, a consumer gone), 0 the first time */
    const char *body;   /* len bytes, NOT NUL-terminated */
    size_t len;
    uint64_t delivery_tag;
    /* Set on dead-lettered copies (see the MQ_H_* headers), "" otherwise;
     * cut to fit. */
    char reason[MQ_ID_LEN];
    char error[MQ_ERR_LEN];
    char failed_service[MQ_ID_LEN];
    int64_t failed_at;
    /* The headers traceparent / tracestate as they came, "" when absent or
     * of another kind; cut to fit (trace_parse refuses what was cut). */
    char traceparent[MQ_TRACEPARENT_MAX];
    char tracestate[MQ_TRACESTATE_MAX];
} mq_delivery;

typedef enum {
    MQ_DONE = 0,   /* effect committed: ack */
    MQ_RETRY = 1,  /* transient failure: through the next retry tier, or the DLQ after the last */
    MQ_REJECT = 2, /* permanent failure: straight to the DLQ with the reason */
} mq_result;

/* ------------------------------------ the handle, connecting (mq_conn.c) */

/* Makes a handle; copies what it needs from opts. Does not connect. Returns
 * NULL when out of memory. */
mq_conn *mq_new(const mq_opts *opts);

/* Closes and frees. mq_free(NULL) is a no-op. */
void mq_free(mq_conn *c);

/* Checks an AMQP URL without connecting: 0, or -1 with the reason.
 *
 * url may be a list of up to MQ_MAX_ENDPOINTS URLs separated by commas (the
 * nodes of one cluster: each must name the same user and vhost; a comma in
 * a password must be written %2C). A connection tries them in order and
 * takes the first that answers; after a connection ends, the next attempt
 * starts with the endpoint after the one it was on, tries each once, and
 * only then fails (the caller backs off and tries the round again), so a
 * client moves off a node that went away instead of waiting for it.
 *
 * amqp://user:password@host:port/vhost is plain TCP. amqps://... is TLS 1.2
 * or later and needs ?cacertfile=PATH, the PEM CA file the broker's
 * certificate must be signed by; the certificate must also name the URL's
 * host (a DNS subjectAltName: rabbitmq-c 0.11 ignores IP entries), or the
 * connection is refused (MQ_ERR_CONFIG). &certfile=PATH&keyfile=PATH add a
 * client certificate (the key unencrypted PEM). Parameter names follow
 * RabbitMQ's URI query parameters; values are taken literally (no %-escapes,
 * no '&'). TLS parameters on amqp:// and unknown parameters are errors, and
 * every named file must be readable. */
#define MQ_MAX_ENDPOINTS 8
int mq_check_url(const char *url, char *err, size_t errlen);

/* One connection attempt as a publisher (confirm mode).
 * Returns MQ_OK, MQ_ERR (unreachable: try later) or MQ_ERR_CONFIG. */
int mq_connect_publisher(mq_conn *c, char *err, size_t errlen);

/* One attempt as a consumer: declares the topology, QoS, basic.consume. */
int mq_connect_consumer(mq_conn *c, char *err, size_t errlen);

/* Connects (publisher or consumer per `consumer`) with capped exponential
 * backoff (200 ms doubling to 10 s) until it works, a permanent error, a
 * timeout (timeout_ms; -1 = none) or *stop. Returns MQ_OK or the last error. */
int mq_connect_retry(mq_conn *c, int consumer, int timeout_ms, volatile sig_atomic_t *stop,
                     char *err, size_t errlen);

/* Safe to call from any thread (health checks). */
int mq_is_connected(const mq_conn *c);

/* Drops the connection (after an error); the next connect starts afresh. */
void mq_disconnect(mq_conn *c);

/* Counters since start, for /metrics and tests. acked counts deliveries,
 * ack_frames the basic.ack frames that settled them (a batch's successes
 * share one multiple-ack). */
typedef struct {
    uint64_t consumed, acked, retried, dead_lettered, published, reconnects, ack_frames;
} mq_stats;
void mq_get_stats(const mq_conn *c, mq_stats *out);

/* -------------------------------------------- topology (mq_topology.c) */

/* Declares the shared exchanges (topic), replacing one of another type.
 * Needs the administrator's configure rights. */
int mq_declare_exchanges(mq_conn *c, char *err, size_t errlen);

/* Declares topo's queues and bindings on c's channel (idempotent; not the
 * exchanges). Used by consumers on connect and by --declare-topology. */
int mq_declare_topology(mq_conn *c, const mq_topology *topo, char *err, size_t errlen);

/* The same for `make migrate` (the administrator, services stopped): a queue
 * an older version declared with other arguments (x-delivery-limit) is
 * deleted and declared anew when it is empty and has no consumer; one that
 * holds messages or has a consumer is MQ_ERR_CONFIG with the migration step
 * in err. (mq_declare_topology, a worker's, uses such a queue as it is.) */
/* bound: the keys the work queue is bound with on sales.events now, as
 * `make migrate` read them from the management API (AMQP cannot list
 * bindings), NULL-terminated, or NULL: each one not in topo's keys is
 * unbound, also a key the contract no longer has (which mq_declare_topology,
 * knowing only the contract's keys, cannot see). */
int mq_migrate_topology(mq_conn *c, const mq_topology *topo, const char *const *bound, char *err,
                        size_t errlen);

/* ------------------------------- publishing with confirms (mq_publish.c) */

/* Publishes n messages pipelined and waits (up to 30 s) for every confirm.
 * status[i] (may be NULL) receives MQ_OK or the message's error. Returns
 * MQ_OK when all were acked, else the first error seen; on MQ_ERR the
 * connection is dropped and messages not yet confirmed are MQ_ERR in status.
 * Connects first if needed (one attempt). */
int mq_publish_batch(mq_conn *c, const mq_msg *msgs, size_t n, int *status, char *err,
                     size_t errlen);

/* The broker's own words for a message it returned: reply code and text of
 * its basic.return, e.g. "312 NO_ROUTE", cut to MQ_REPLY_LEN - 1 bytes (the
 * code stays whole; only a long text loses its end). */
#define MQ_REPLY_LEN 96

/* As mq_publish_batch; replies[i] (may be NULL) receives the basic.return
 * of message i when the broker returned it ("312 NO_ROUTE"), "" otherwise. */
int mq_publish_batch_replies(mq_conn *c, const mq_msg *msgs, size_t n, int *status,
                             char (*replies)[MQ_REPLY_LEN], char *err, size_t errlen);

/* One message; returns after its confirm. */
int mq_publish(mq_conn *c, const mq_msg *m, char *err, size_t errlen);

/* Lets rabbitmq-c send and check heartbeats on an idle connection. Call it
 * now and then (at most every heartbeat/2) from a thread that does not
 * otherwise read from c. Returns MQ_OK, or MQ_ERR when the connection died. */
int mq_tick(mq_conn *c);

/* Publishes a copy of d, with its original properties, body and trace
 * context (traceparent, tracestate), to exchange / routing_key, with the helper's headers: attempt,
 * the original routing key, the error, `service` as the failed service, and reason when not NULL.
 * Waits for the confirm. Used for retries, dead-lettering and DLQ replays. */
int mq_forward(mq_conn *pub, const char *service, const mq_delivery *d, int attempt,
               const char *exchange, const char *routing_key, const char *reason, const char *error,
               char *err, size_t errlen);

/* -------------------------------- consuming and settling (mq_consume.c) */

/* Handles n deliveries together (e.g. in one database transaction) and sets
 * res[i] (MQ_DONE, MQ_RETRY or MQ_REJECT) and, for the last two, a short
 * reason in errs[i], for each. */
typedef void (*mq_batch_handler)(const mq_delivery *d, size_t n, mq_result *res,
                                 char (*errs)[MQ_ERR_LEN], void *ctx);

/* Consumes until *stop. Deliveries that have already arrived (up to max,
 * never waiting for more) go to bh together, so a busy consumer commits once
 * per batch and an idle one still handles each message as it comes. Then
 * the batch is settled: MQ_RETRY republishes a delivery (with confirm, then
 * acks it) to the next retry tier or, after the last, to the DLQ; MQ_REJECT
 * sends it to the DLQ with the reason; after those, one multiple-ack settles
 * every MQ_DONE delivery of the batch. Lost connections
 * are made again with backoff and the topology re-declared. Unacked messages
 * in hand when the connection drops are redelivered by the broker. Returns 0
 * after a clean stop, -1 on a permanent error (bad credentials or
 * permissions) with the reason in err.
 *
 * consumer and publisher are two handles for the same service (consumer made
 * with opts.topo set). on_idle, when not NULL, runs about once a second. */
int mq_consume_batches(mq_conn *consumer, mq_conn *publisher, mq_batch_handler bh, size_t max,
                       void *ctx, void (*on_idle)(void *ctx), volatile sig_atomic_t *stop,
                       char *err, size_t errlen);

/* ----------------------------- one-off queue tools for tools/dlq (mq_tool.c) */

typedef struct mq_got mq_got;

/* Takes the next message of queue without acking it (basic.get) on c, a
 * connection made with mq_connect_publisher or mq_connect_consumer. Returns 1
 * and *out (free with mq_got_free) when there was one, 0 when the queue is
 * empty, or an mq_status < 0 with err. The message stays unacked until
 * mq_settle, or until the connection closes (then the broker requeues it). */
int mq_get(mq_conn *c, const char *queue, mq_got **out, char *err, size_t errlen);

/* The delivery of a message taken with mq_get. */
const mq_delivery *mq_got_delivery(const mq_got *g);

/* ack = 1 acks the message (it leaves the queue); 0 returns it (requeue). */
int mq_settle(mq_conn *c, const mq_got *g, int ack, char *err, size_t errlen);

void mq_got_free(mq_got *g);

/* Messages ready in queue (passive declare): >= 0, or an mq_status < 0 (a
 * queue that does not exist is MQ_ERR_CONFIG; the connection is then reset). */
long mq_queue_depth(mq_conn *c, const char *queue, char *err, size_t errlen);

/* Removes every ready message of queue; returns how many, or < 0. */
long mq_purge(mq_conn *c, const char *queue, char *err, size_t errlen);

/* ------------------------------------ pure decisions, no socket (mq_msg.c) */

/* What decides a delivery's event type (mq_event_type); every string may be
 * NULL when the delivery does not have it. */
typedef struct {
    const char *exchange;       /* it was published to (or dead-lettered into) */
    const char *routing_key;    /* it was delivered with */
    const char *original_key;   /* header x-original-routing-key */
    const char *user_id;        /* property user-id (the broker checked it) */
    int has_death;              /* it carries an x-death header */
    const char *death_queue;    /* x-death[0]: the queue it last died in, */
    const char *death_exchange; /* the exchange it was published to before, */
    const char *death_key;      /* and the first key it was published with */
} mq_route;

/* The event type of a delivery to the queues of service `own`, whose broker
 * user is own_user, into out. Returns 0, or -1 with the reason in why when
 * the delivery is forged (not to be handled). Pure. */
int mq_event_type(const mq_route *r, const char *own, const char *own_user, char *out,
                  size_t outlen, char *why, size_t whylen);

/* Where a delivery goes once its handler said r (mq_consume_batches), for
 * a delivery that failed `attempts` times before (its x-attempt). */
typedef struct {
    int forward;          /* 0: only acked (MQ_DONE); 1: a copy is published here, then acked */
    int attempt;          /* the copy's x-attempt: failed attempts so far */
    int tier;             /* the retry tier (0 .. MQ_MAX_TIERS - 1), or -1: not a retry */
    const char *exchange; /* MQ_RETRY_EXCHANGE or MQ_DLX; NULL when not forwarded */
    char routing_key[MQ_NAME_LEN]; /* S.retry.<ms>ms, or S (the DLQ's binding) */
    const char *reason;            /* NULL, "retries-exhausted" or "rejected" */
} mq_plan;

/* The retry-tier choice. MQ_RETRY goes to the next tier of t (attempt
 * attempts + 1 to tier attempts), or after the last tier to the DLQ as
 * retries-exhausted; MQ_REJECT goes to the DLQ as rejected with attempt
 * unchanged; MQ_DONE is acked. Pure. */
void mq_settle_plan(const mq_topology *t, int attempts, mq_result r, mq_plan *out);

/* Names: S.retry.<ms>ms and S.dlq, written into out (MQ_NAME_LEN bytes
 * hold every name of a service whose name is at most 200 bytes). Return 0,
 * or -1 when the name does not fit in outlen (out is then cut: do not use
 * it). */
int mq_retry_queue_name(const char *service, int ms, char *out, size_t outlen);
int mq_dlq_name(const char *service, char *out, size_t outlen);

#endif
