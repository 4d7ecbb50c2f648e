/*
 * mq_topology.c — the messaging helper's topology (see mq.h): the shared
 * exchanges the administrator declares, and each consuming service's work
 * queue, retry tiers and dead-letter queue with their bindings.
 */
#include "mq_int.h"
#include "events.h"
#include "mq_rpc.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

int mq_declare_exchanges(mq_conn *c, char *err, size_t errlen)
{
    static const char *const ex[] = {MQ_EXCHANGE, MQ_RETRY_EXCHANGE, MQ_DLX, MQ_RPC_EXCHANGE};
    for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
        char what[100];
        int rc;
        snprintf(what, sizeof(what), "exchange.declare %s", ex[i]);
        amqp_exchange_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(ex[i]),
                              amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
        rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
        if (rc != MQ_OK && c->reply_code == AMQP_PRECONDITION_FAILED && i > 0) {
            /* sales.retry and sales.dlx were direct exchanges before their
             * routing keys were checked (topic permissions apply to topic
             * exchanges only): replace them. Their bindings go with them;
             * each service's --declare-topology binds its queues again. */
            log_warn("%s has another type; replacing it with a topic exchange", ex[i]);
            if ((rc = mq__open_connection(c, err, errlen)) != MQ_OK)
                return rc;
            amqp_exchange_delete(c->conn, MQ_CHANNEL, amqp_cstring_bytes(ex[i]), 0);
            if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "exchange.delete", err,
                                    errlen)) != MQ_OK)
                return rc;
            amqp_exchange_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(ex[i]),
                                  amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
            rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
        }
        if (rc != MQ_OK)
            return rc;
    }
    return MQ_OK;
}

/* After a refused declare: the channel the broker closed is opened again. */
static int reopen_channel(mq_conn *c, char *err, size_t errlen)
{
    amqp_channel_close_ok_t ok;
    if (amqp_send_method(c->conn, MQ_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) !=
        AMQP_STATUS_OK) {
        snprintf(err, errlen, "channel.close-ok could not be sent");
        return MQ_ERR;
    }
    amqp_channel_open(c->conn, MQ_CHANNEL);
    return mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "channel.open", err, errlen);
}

/* Declares a queue with the arguments it must have from the start. One
 * that exists with other arguments (406: declared by an older version, e.g.
 * with x-delivery-limit, which is now a policy; RabbitMQ 3.10 applies the
 * lower of the argument and the policy, so a higher DELIVERY_LIMIT would
 * never be in force):
 *   - a worker (migrate = 0) uses it as it is, with a warning, so that it
 *     starts and handles what the queue holds;
 *   - `make migrate` (migrate = 1, the administrator, services stopped)
 *     deletes it when it is empty and has no consumer and declares it with
 *     today's arguments; one that holds messages or has a consumer is an
 *     error naming the migration step (README: let it drain, run it again).
 *     (Quorum queues refuse queue.delete if-empty, hence the look first.) */
static int declare_queue(mq_conn *c, const char *name, amqp_table_entry_t *args, int nargs,
                         int migrate, char *err, size_t errlen)
{
    amqp_table_t t = {nargs, args};
    amqp_queue_declare_ok_t *ok;
    char what[200], why[MQ_ERR_LEN];
    int rc;
    amqp_queue_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(name), 0, 1, 0, 0, t);
    snprintf(what, sizeof(what), "queue.declare %s", name);
    rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
    if (rc == MQ_OK || c->reply_code != AMQP_PRECONDITION_FAILED)
        return rc;
    snprintf(why, sizeof(why), "%s", err);
    if ((rc = reopen_channel(c, err, errlen)) != MQ_OK)
        return rc;
    if (!migrate)
        log_warn("%s; using the queue as it is: its own arguments stay in force (an "
                 "x-delivery-limit: the lower of it and DELIVERY_LIMIT) until make migrate "
                 "declares it anew",
                 why);
    ok = amqp_queue_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(name), 1, 0, 0, 0,
                            amqp_empty_table);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen)) != MQ_OK ||
        !migrate)
        return rc;
    if (!ok || ok->message_count > 0 || ok->consumer_count > 0) {
        snprintf(err, errlen,
                 "%s was declared by an older version with other arguments and holds %u "
                 "message(s), %u consumer(s): stop the services, let it drain, run make "
                 "migrate again (README: DELIVERY_LIMIT)",
                 name, ok ? ok->message_count : 0, ok ? ok->consumer_count : 0);
        return MQ_ERR_CONFIG;
    }
    amqp_queue_delete(c->conn, MQ_CHANNEL, amqp_cstring_bytes(name), 0, 0);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "queue.delete", err, errlen)) != MQ_OK)
        return rc;
    log_info("%s: it was empty and unused, so it is declared anew with today's arguments", why);
    amqp_queue_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(name), 0, 1, 0, 0, t);
    return mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
}

static int bind_queue(mq_conn *c, const char *queue, const char *exchange, const char *key,
                      char *err, size_t errlen)
{
    char what[300];
    amqp_queue_bind(c->conn, MQ_CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    snprintf(what, sizeof(what), "queue.bind %s to %s/%s", queue, exchange, key);
    return mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
}

static int handles(const mq_topology *t, const char *key)
{
    for (const char *const *k = t->keys; k && *k; k++) {
        if (strcmp(*k, key) == 0)
            return 1;
    }
    return 0;
}

static int declare_topology(mq_conn *c, const mq_topology *t, const char *const *bound, int migrate,
                            char *err, size_t errlen)
{
    amqp_table_entry_t a[7];
    char name[MQ_NAME_LEN];
    int rc;

    /* The work queue. Only what cannot change goes into its arguments; the
     * delivery limit is a policy (`make migrate`, scripts/broker-perms.sh). */
    mq__arg_str(&a[0], "x-queue-type", "quorum");
    mq__arg_str(&a[1], "x-dead-letter-exchange", MQ_DLX);
    mq__arg_str(&a[2], "x-dead-letter-routing-key", t->queue);
    mq__arg_str(&a[3], "x-dead-letter-strategy", "at-least-once");
    mq__arg_str(&a[4], "x-overflow", "reject-publish");
    if ((rc = declare_queue(c, t->queue, a, 5, migrate, err, errlen)) != MQ_OK)
        return rc;
    for (const char *const *k = t->keys; k && *k; k++) {
        if ((rc = bind_queue(c, t->queue, MQ_EXCHANGE, *k, err, errlen)) != MQ_OK)
            return rc;
    }
    /* The bindings follow the routes: every event key of the contract that
     * the service no longer handles is unbound (a no-op when it never was).
     * Only by `make migrate`'s administrator: a service's own user may bind
     * (read) on sales.events only the keys it handles (scripts/broker-perms.sh),
     * so an unbind of any other is refused, 403 on the channel. */
    for (int e = 0; migrate && e < EV__COUNT; e++) {
        const char *key = ev_routing_key((ev_type)e);
        char what[300];
        if (handles(t, key))
            continue;
        amqp_queue_unbind(c->conn, MQ_CHANNEL, amqp_cstring_bytes(t->queue),
                          amqp_cstring_bytes(MQ_EXCHANGE), amqp_cstring_bytes(key),
                          amqp_empty_table);
        snprintf(what, sizeof(what), "queue.unbind %s from %s/%s", t->queue, MQ_EXCHANGE, key);
        if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen)) != MQ_OK)
            return rc;
    }
    /* A key the contract no longer has (an event type removed or renamed)
     * is not in that loop: make migrate lists what is bound (bound). */
    for (const char *const *k = bound; k && *k; k++) {
        char what[300];
        if (handles(t, *k))
            continue;
        amqp_queue_unbind(c->conn, MQ_CHANNEL, amqp_cstring_bytes(t->queue),
                          amqp_cstring_bytes(MQ_EXCHANGE), amqp_cstring_bytes(*k),
                          amqp_empty_table);
        snprintf(what, sizeof(what), "queue.unbind %s from %s/%s", t->queue, MQ_EXCHANGE, *k);
        if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen)) != MQ_OK)
            return rc;
        log_info("%s: unbound %s, a key it no longer handles", t->queue, *k);
    }
    if ((rc = bind_queue(c, t->queue, MQ_RETRY_EXCHANGE, t->queue, err, errlen)) != MQ_OK)
        return rc;
    /* Retry tiers: wait out the TTL, then dead-letter back to the work queue. */
    for (int i = 0; i < MQ_MAX_TIERS && t->retry_ms[i] > 0; i++) {
        if (mq_retry_queue_name(t->queue, t->retry_ms[i], name, sizeof(name)) < 0)
            goto too_long;
        mq__arg_str(&a[0], "x-queue-type", "quorum");
        mq__arg_str(&a[1], "x-dead-letter-exchange", MQ_RETRY_EXCHANGE);
        mq__arg_str(&a[2], "x-dead-letter-routing-key", t->queue);
        mq__arg_str(&a[3], "x-dead-letter-strategy", "at-least-once");
        mq__arg_str(&a[4], "x-overflow", "reject-publish");
        mq__arg_int(&a[5], "x-message-ttl", t->retry_ms[i]);
        if ((rc = declare_queue(c, name, a, 6, migrate, err, errlen)) != MQ_OK)
            return rc;
        if ((rc = bind_queue(c, name, MQ_RETRY_EXCHANGE, name, err, errlen)) != MQ_OK)
            return rc;
    }
    /* The dead-letter queue. */
    if (mq_dlq_name(t->queue, name, sizeof(name)) < 0)
        goto too_long;
    mq__arg_str(&a[0], "x-queue-type", "quorum");
    if ((rc = declare_queue(c, name, a, 1, migrate, err, errlen)) != MQ_OK)
        return rc;
    return bind_queue(c, name, MQ_DLX, t->queue, err, errlen);
too_long:
    snprintf(err, errlen, "queue names of %.64s... are longer than %d bytes", t->queue,
             MQ_NAME_LEN - 1);
    return MQ_ERR_CONFIG;
}

int mq_declare_topology(mq_conn *c, const mq_topology *t, char *err, size_t errlen)
{
    return declare_topology(c, t, NULL, 0, err, errlen);
}

int mq_migrate_topology(mq_conn *c, const mq_topology *t, const char *const *bound, char *err,
                        size_t errlen)
{
    return declare_topology(c, t, bound, 1, err, errlen);
}
