/*
 * mq_rpc.h — request/reply over the broker: a question one service answers
 * for another while the caller waits, with RabbitMQ's direct reply-to.
 *
 * The asker publishes a request on the topic exchange sales.rpc (declared by
 * `make migrate`; its broker user may publish there only the keys it asks,
 * scripts/broker-perms.sh) with reply_to = amq.rabbitmq.reply-to and a fresh
 * correlation id, an `expiration` equal to its deadline (so a request nobody
 * took in time leaves the queue by itself), and waits for the reply with that
 * correlation id until the deadline. The reply arrives on the asker's own
 * channel, which consumes the pseudo-queue amq.rabbitmq.reply-to in no-ack
 * mode (RabbitMQ requires that consume before the first publish): no reply
 * queue is declared, so none is ever left behind. A reply whose correlation
 * id nobody waits for any more (it came after its deadline) is dropped and
 * counted.
 *
 * The answerer consumes its own request queue <service>.requests (a classic
 * queue bound to sales.rpc with the keys it answers; declared by `make
 * migrate`) on its own connection, with its own prefetch and manual acks, and
 * publishes each reply to the default exchange with the request's reply_to as
 * the routing key and its correlation id, on a second connection in confirm
 * mode (not `mandatory`: RabbitMQ returns every mandatory message to a
 * reply-to name, even one it delivered).
 *
 * Requests and replies are transient (delivery_mode 1): a question is worth
 * asking again, not keeping. Nothing here touches a database.
 *
 * Tracing (docs/TRACING.md): a call is a CLIENT span "send <key>", the child
 * of the calling thread's current context, whose context the request
 * carries as its traceparent / tracestate headers; the answerer handles it
 * in a SERVER span "process <key>", the child of that context, current on
 * its thread while the handler runs.
 */
#ifndef ORDERSUITE_MQ_RPC_H
#define ORDERSUITE_MQ_RPC_H

#include "mq.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define MQ_RPC_EXCHANGE "sales.rpc"
#define MQ_RPC_REPLY_TO "amq.rabbitmq.reply-to"
#define MQ_RPC_TIMEOUT  (-10) /* mq_rpc_call: no reply before the deadline */

/* ------------------------------------------------------------ the asker */

typedef struct mq_rpc_client mq_rpc_client;

/* Starts a client: a thread that owns one connection (o->url, o->app_id,
 * o->heartbeat_s; o->metrics counts its requests), connects in the
 * background and again with backoff after a loss. Returns NULL with err
 * when out of memory or the URL is bad. */
mq_rpc_client *mq_rpc_client_start(const mq_opts *o, char *err, size_t errlen);

/* Stops the thread, fails the calls in flight (MQ_ERR), frees c. NULL: no-op. */
void mq_rpc_client_stop(mq_rpc_client *c);

/* 1 when the client's connection is up (any thread). */
int mq_rpc_client_connected(const mq_rpc_client *c);

/* Asks routing_key on sales.rpc with body (len bytes) and waits at most
 * timeout_ms (1..600000) for the reply. Thread-safe: any number of threads
 * may call at once. Returns MQ_OK with *reply (malloc'd, NUL-terminated,
 * the caller frees it) and *reply_len; MQ_RPC_TIMEOUT when no reply came in
 * time (a reply that comes later is dropped); MQ_ERR when the broker is not
 * reachable now or the connection was lost while waiting; MQ_ERR_RETURNED
 * when no request queue is bound for routing_key; MQ_ERR_NACKED when the
 * broker refused the request. err says why when not MQ_OK. */
int mq_rpc_call(mq_rpc_client *c, const char *routing_key, const void *body, size_t len,
                int timeout_ms, char **reply, size_t *reply_len, char *err, size_t errlen);

/* Counters since start (tests, /metrics). */
typedef struct {
    uint64_t sent, answered, timed_out, late, failed;
} mq_rpc_stats;
void mq_rpc_client_stats(mq_rpc_client *c, mq_rpc_stats *out);

/* ---------------------------------------------------------- the answerer */

/* A request handed to the answerer's handler. */
typedef struct {
    const char *routing_key;    /* what was asked (NUL-terminated) */
    const char *correlation_id; /* the asker's */
    const char *body;           /* len bytes, NOT NUL-terminated */
    size_t len;
} mq_rpc_request;

/* Answers req: 0 with *reply (malloc'd; the server frees it) and *reply_len,
 * or -1 with err when it cannot answer at all (the request is then dropped
 * and the asker meets its deadline): a handler answers a request it cannot
 * serve (its database fails, the body is undecodable) with its contract's
 * error reply instead, 0. Runs on the server's thread. */
typedef int (*mq_rpc_fn)(const mq_rpc_request *req, char **reply, size_t *reply_len, void *ctx,
                         char *err, size_t errlen);

typedef struct {
    const char *url;    /* the answering service's broker user */
    const char *app_id; /* its name */
    const char *queue;  /* its request queue (mq_rpc_queue_name) */
    int prefetch;       /* requests in hand at once; 0 = 16 */
    int heartbeat_s;    /* 0 = 30 */
    metrics *metrics;   /* may be NULL */
    int *serving;       /* may be NULL: 1 while consuming the queue, else 0 (atomic) */
} mq_rpc_server_opts;

/* Consumes o->queue and answers each request with fn until *stop: a
 * request without reply_to or correlation id is dropped (acked, logged),
 * any other is answered, then acked. Reconnects with backoff, also after
 * a permanent error (credentials, permissions: logged; an operator may
 * fix them while it waits), with *o->serving 0 until it consumes again.
 * Returns 0 after a clean stop, -1 with err when out of memory or the
 * URL is bad. Blocks: run it on a thread of its own. */
int mq_rpc_serve(const mq_rpc_server_opts *o, mq_rpc_fn fn, void *ctx, volatile sig_atomic_t *stop,
                 char *err, size_t errlen);

/* Declares service's request queue, bound to sales.rpc with keys
 * (NULL-ended), on c (the administrator's connection: `make migrate`).
 * Idempotent. MQ_OK or an mq_status with err. */
int mq_rpc_declare(mq_conn *c, const char *service, const char *const *keys, char *err,
                   size_t errlen);

/* ----------------------------------------------------- pure, no socket */

/* service's request queue, "<service>.requests", into out. 0, or -1 when it
 * does not fit (out is then cut: do not use it). */
int mq_rpc_queue_name(const char *service, char *out, size_t outlen);

/* The AMQP expiration property (decimal milliseconds) of a request with
 * timeout_ms into out. 0, or -1 when timeout_ms is not 1..600000. */
int mq_rpc_expiration(int timeout_ms, char *out, size_t outlen);

#endif
