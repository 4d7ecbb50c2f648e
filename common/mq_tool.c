/*
 * mq_tool.c — the messaging helper's one-off queue operations for
 * tools/dlq (see mq.h): take a message without acking it (basic.get),
 * settle it, count a queue's ready messages, purge a queue.
 */
#include "mq_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mq_got {
    amqp_envelope_t env; /* message and delivery tag of a basic.get */
    mq_delivery d;
};

int mq_get(mq_conn *c, const char *queue, mq_got **out, char *err, size_t errlen)
{
    amqp_rpc_reply_t r;
    mq_got *g;
    int rc;

    *out = NULL;
    if (!c->connected) {
        snprintf(err, errlen, "not connected");
        return MQ_ERR;
    }
    if (strlen(queue) >= MQ_NAME_LEN) {
        snprintf(err, errlen, "queue name %.64s... is longer than %d bytes", queue,
                 MQ_NAME_LEN - 1);
        return MQ_ERR_CONFIG;
    }
    r = amqp_basic_get(c->conn, MQ_CHANNEL, amqp_cstring_bytes(queue), 0);
    if ((rc = mq__rpc_check(c, r, "basic.get", err, errlen)) != MQ_OK) {
        MQ_SET_CONNECTED(c, 0);
        mq_disconnect(c);
        return rc;
    }
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
        return 0; /* basic.get-empty */
    g = calloc(1, sizeof(*g));
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return MQ_ERR;
    }
    {
        amqp_basic_get_ok_t *ok = r.reply.decoded;
        g->env.delivery_tag = ok->delivery_tag;
        g->env.redelivered = ok->redelivered;
        g->env.routing_key = amqp_bytes_malloc_dup(ok->routing_key);
        g->env.exchange = amqp_bytes_malloc_dup(ok->exchange);
    }
    r = amqp_read_message(c->conn, MQ_CHANNEL, &g->env.message, 0);
    if ((rc = mq__rpc_check(c, r, "reading a message", err, errlen)) != MQ_OK) {
        amqp_bytes_free(g->env.routing_key);
        amqp_bytes_free(g->env.exchange);
        free(g);
        MQ_SET_CONNECTED(c, 0);
        mq_disconnect(c);
        return rc;
    }
    {
        /* A DLQ's copy is shown and replayed, forged or not; a forged one
         * gets the key S (see mq__to_delivery), which no handler takes.
         * The service is the queue's name without ".dlq". */
        char why[MQ_ERR_LEN], own[MQ_NAME_LEN];
        size_t n = strlen(queue); /* < MQ_NAME_LEN, checked above */
        if (n > 4 && strcmp(queue + n - 4, ".dlq") == 0)
            n -= 4;
        memcpy(own, queue, n);
        own[n] = '\0';
        mq__to_delivery(&g->env, own, c->info.user, &g->d, why, sizeof(why));
    }
    *out = g;
    return 1;
}

const mq_delivery *mq_got_delivery(const mq_got *g)
{
    return &g->d;
}

int mq_settle(mq_conn *c, const mq_got *g, int ack, char *err, size_t errlen)
{
    int st = ack ? amqp_basic_ack(c->conn, MQ_CHANNEL, g->env.delivery_tag, 0)
                 : amqp_basic_nack(c->conn, MQ_CHANNEL, g->env.delivery_tag, 0, 1);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "%s: %s", ack ? "basic.ack" : "basic.nack", amqp_error_string2(st));
        return MQ_ERR;
    }
    return MQ_OK;
}

void mq_got_free(mq_got *g)
{
    if (!g)
        return;
    amqp_destroy_message(&g->env.message);
    amqp_bytes_free(g->env.routing_key);
    amqp_bytes_free(g->env.exchange);
    free(g);
}

long mq_queue_depth(mq_conn *c, const char *queue, char *err, size_t errlen)
{
    amqp_queue_declare_ok_t *ok;
    int rc;
    if (!c->connected) {
        snprintf(err, errlen, "not connected");
        return MQ_ERR;
    }
    ok = amqp_queue_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(queue), 1, 0, 0, 0,
                            amqp_empty_table);
    if (ok)
        return (long)ok->message_count;
    rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), queue, err, errlen);
    /* A failed passive declare closes the channel: start afresh. */
    MQ_SET_CONNECTED(c, 0);
    mq_disconnect(c);
    return c->reply_code == AMQP_NOT_FOUND ? MQ_ERR_CONFIG : (rc == MQ_OK ? MQ_ERR : rc);
}

long mq_purge(mq_conn *c, const char *queue, char *err, size_t errlen)
{
    amqp_queue_purge_ok_t *ok;
    if (!c->connected) {
        snprintf(err, errlen, "not connected");
        return MQ_ERR;
    }
    ok = amqp_queue_purge(c->conn, MQ_CHANNEL, amqp_cstring_bytes(queue));
    if (ok)
        return (long)ok->message_count;
    mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "queue.purge", err, errlen);
    MQ_SET_CONNECTED(c, 0);
    mq_disconnect(c);
    return MQ_ERR;
}
