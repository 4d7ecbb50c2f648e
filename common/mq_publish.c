/*
 * mq_publish.c — the messaging helper's publisher (see mq.h): messages
 * pipelined on a channel in confirm mode, each matched to its basic.ack,
 * basic.nack or basic.return by delivery tag and message_id; copies of a
 * delivery forwarded to a retry tier or a DLQ; heartbeats of an idle
 * publisher.
 */
#include "mq_int.h"
#include "util.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define CONFIRM_TIMEOUT_MS 30000

static int publish_one(mq_conn *c, const mq_msg *m, char *err, size_t errlen)
{
    amqp_basic_properties_t p;
    amqp_table_entry_t hdr[MQ_MAX_HEADERS];
    int st;

    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
               AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 2; /* persistent */
    p.message_id = amqp_cstring_bytes(m->message_id);
    if (m->correlation_id && *m->correlation_id) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = amqp_cstring_bytes(m->correlation_id);
    }
    p.type = amqp_cstring_bytes(m->type ? m->type : m->routing_key);
    p.timestamp = (uint64_t)(m->timestamp ? m->timestamp : util_wall_us() / 1000000);
    p.app_id = amqp_cstring_bytes(m->app_id ? m->app_id : c->app_id);
    /* The broker refuses a user-id that is not the connection's user: a
     * consumer knows its own retry copies by it (mq_event_type). */
    p._flags |= AMQP_BASIC_USER_ID_FLAG;
    p.user_id = amqp_cstring_bytes(c->info.user);
    p.headers.num_entries = mq__headers_encode(m, hdr);
    p.headers.entries = hdr;

    st = amqp_basic_publish(c->conn, MQ_CHANNEL,
                            amqp_cstring_bytes(m->exchange ? m->exchange : MQ_EXCHANGE),
                            amqp_cstring_bytes(m->routing_key), 1 /* mandatory */, 0, &p,
                            (amqp_bytes_t){m->len, (void *)m->body});
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "basic.publish: %s", amqp_error_string2(st));
        return MQ_ERR;
    }
    return MQ_OK;
}

/* Settles messages [first, tag] (or just tag) with result r. */
static void settle(int *status, int *returned, uint64_t first_seq, size_t n, uint64_t tag,
                   int multiple, int r, size_t *pending)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t seq = first_seq + i;
        if (status[i] != 1 || seq > tag || (!multiple && seq != tag))
            continue;
        status[i] = returned[i] && r == MQ_OK ? MQ_ERR_RETURNED : r;
        assert(*pending > 0); /* each message waits for one confirm */
        (*pending)--;
    }
}

int mq_publish_batch(mq_conn *c, const mq_msg *msgs, size_t n, int *status_out, char *err,
                     size_t errlen)
{
    return mq_publish_batch_replies(c, msgs, n, status_out, NULL, err, errlen);
}

int mq_publish_batch_replies(mq_conn *c, const mq_msg *msgs, size_t n, int *status_out,
                             char (*replies)[MQ_REPLY_LEN], char *err, size_t errlen)
{
    int *status, *returned;
    uint64_t first_seq;
    size_t pending = n, sent = 0;
    int64_t deadline;
    int rc = MQ_OK;

    for (size_t i = 0; replies && i < n; i++)
        replies[i][0] = '\0';
    if (n == 0)
        return MQ_OK;
    if (c->reopen)
        mq_disconnect(c); /* nacked before: a new channel (see below) */
    if (!c->connected && (rc = mq_connect_publisher(c, err, errlen)) != MQ_OK) {
        for (size_t i = 0; status_out && i < n; i++)
            status_out[i] = rc;
        return rc;
    }
    /* The confirms of the last batch were decoded into the connection's
     * pools; nothing refers to them now. Without this the pools only grow
     * (seen in make soak: ~2 MB per 60 000 messages). */
    amqp_maybe_release_buffers(c->conn);
    status = calloc(n, sizeof(int));
    returned = calloc(n, sizeof(int));
    if (!status || !returned) {
        free(status);
        free(returned);
        snprintf(err, errlen, "out of memory");
        return MQ_ERR;
    }
    first_seq = c->next_seq;
    for (; sent < n; sent++) {
        if ((rc = publish_one(c, &msgs[sent], err, errlen)) != MQ_OK)
            break;
        status[sent] = 1; /* waiting for its confirm */
        c->next_seq++;
    }
    for (size_t i = sent; i < n; i++) {
        status[i] = MQ_ERR;
        pending--;
    }

    deadline = util_now_ms() + CONFIRM_TIMEOUT_MS;
    while (pending > 0 && rc == MQ_OK) {
        amqp_frame_t f;
        int64_t left = deadline - util_now_ms();
        struct timeval tv;
        int st;

        if (left <= 0) {
            snprintf(err, errlen, "no publisher confirm within %d ms", CONFIRM_TIMEOUT_MS);
            rc = MQ_ERR;
            break;
        }
        tv.tv_sec = left / 1000;
        tv.tv_usec = (left % 1000) * 1000;
        st = amqp_simple_wait_frame_noblock(c->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK) {
            snprintf(err, errlen, "waiting for confirms: %s", amqp_error_string2(st));
            rc = MQ_ERR;
            break;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            settle(status, returned, first_seq, n, a->delivery_tag, a->multiple, MQ_OK, &pending);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *a = f.payload.method.decoded;
            settle(status, returned, first_seq, n, a->delivery_tag, a->multiple, MQ_ERR_NACKED,
                   &pending);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            /* The returned message's content follows; its message_id says
             * which one it was. Its basic.ack comes after. */
            amqp_basic_return_t *ret = f.payload.method.decoded;
            char reply[MQ_REPLY_LEN];
            amqp_message_t rm;
            amqp_rpc_reply_t r;
            /* Copied before the content is read into the same pools. */
            snprintf(reply, sizeof(reply), "%u %.*s", ret->reply_code, (int)ret->reply_text.len,
                     (char *)ret->reply_text.bytes);
            r = amqp_read_message(c->conn, f.channel, &rm, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL) {
                mq__rpc_check(c, r, "reading a returned message", err, errlen);
                rc = MQ_ERR;
                break;
            }
            for (size_t i = 0; i < n; i++) {
                if ((rm.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
                    rm.properties.message_id.len == strlen(msgs[i].message_id) &&
                    memcmp(rm.properties.message_id.bytes, msgs[i].message_id,
                           rm.properties.message_id.len) == 0) {
                    returned[i] = 1;
                    if (replies)
                        snprintf(replies[i], MQ_REPLY_LEN, "%s", reply);
                }
            }
            amqp_destroy_message(&rm);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            amqp_channel_close_t *m = f.payload.method.decoded;
            c->reply_code = m->reply_code;
            snprintf(err, errlen, "channel closed by broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (char *)m->reply_text.bytes);
            rc = m->reply_code == AMQP_ACCESS_REFUSED ? MQ_ERR_CONFIG : MQ_ERR;
            break;
        }
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_connection_close_t *m = f.payload.method.decoded;
            amqp_connection_close_ok_t ok;
            snprintf(err, errlen, "connection closed by broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (char *)m->reply_text.bytes);
            amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            rc = MQ_ERR;
            break;
        }
        default:
            break;
        }
    }
    if (rc != MQ_OK) {
        for (size_t i = 0; i < n; i++) {
            if (status[i] == 1)
                status[i] = rc;
        }
        MQ_SET_CONNECTED(c, 0); /* the channel state is unknown: start afresh */
        mq_disconnect(c);
    } else {
        int nacked = 0;
        for (size_t i = 0; i < n; i++) {
            nacked |= status[i] == MQ_ERR_NACKED;
            if (status[i] != MQ_OK && rc == MQ_OK) {
                rc = status[i];
                snprintf(err, errlen, "%s %s",
                         rc == MQ_ERR_RETURNED ? "unroutable (no queue bound for)" : "nacked:",
                         msgs[i].routing_key);
            }
        }
        /* After a nack the next publish goes on a new connection (opened
         * at the start of the next call: until then the caller still sees
         * the connection up and the broker's refusal as one). RabbitMQ 3.10's quorum queue client
         * in a channel that published while a queue's leader was lost (a
         * cluster node killed) goes on nacking every publish to that queue
         * for minutes, after the new leader is elected, while a new channel
         * is accepted at once: a till's spool stayed nacked to the end of
         * its run (make chaos's cluster scenario). Every publisher of the
         * helper gets this: the outbox relay, the till, the consumers'
         * retry and dead-letter copies, loadgen. A nack for a full queue
         * costs a reconnect, after which the callers back off as before. */
        if (nacked)
            c->reopen = 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (status[i] == MQ_OK) {
            MQ_STAT_ADD(c, published, 1);
            metrics_count(c->metrics, M_PUBLISHED, msgs[i].routing_key, 1);
        }
    }
    if (status_out)
        memcpy(status_out, status, n * sizeof(int));
    free(status);
    free(returned);
    return rc;
}

int mq_publish(mq_conn *c, const mq_msg *m, char *err, size_t errlen)
{
    return mq_publish_batch(c, m, 1, NULL, err, errlen);
}

int mq_tick(mq_conn *c)
{
    amqp_frame_t f;
    struct timeval tv = {0, 0};
    int st;
    if (!c->connected)
        return MQ_ERR;
    /* Reading with a zero timeout lets rabbitmq-c send a due heartbeat and
     * notice a dead peer. A publisher gets no unsolicited frames but
     * connection.close, which is a reason to reconnect anyway. */
    st = amqp_simple_wait_frame_noblock(c->conn, &f, &tv);
    if (st == AMQP_STATUS_TIMEOUT)
        return MQ_OK;
    if (st == AMQP_STATUS_OK && f.frame_type == AMQP_FRAME_METHOD &&
        f.payload.method.id != AMQP_CONNECTION_CLOSE_METHOD &&
        f.payload.method.id != AMQP_CHANNEL_CLOSE_METHOD)
        return MQ_OK;
    MQ_SET_CONNECTED(c, 0);
    mq_disconnect(c);
    return MQ_ERR;
}

int mq_forward(mq_conn *pub, const char *service, const mq_delivery *d, int attempt,
               const char *exchange, const char *rk, const char *reason, const char *error,
               char *err, size_t errlen)
{
    mq_header h[6];
    mq_msg m;
    size_t nh = 0;

    h[nh++] = (mq_header){MQ_H_ATTEMPT, NULL, attempt};
    h[nh++] = (mq_header){MQ_H_ORIGINAL_KEY, d->routing_key, 0};
    if (error)
        h[nh++] = (mq_header){MQ_H_ERROR, error, 0};
    h[nh++] = (mq_header){MQ_H_SERVICE, service, 0};
    h[nh++] = (mq_header){MQ_H_FAILED_AT, NULL, util_wall_us() / 1000000};
    if (reason)
        h[nh++] = (mq_header){MQ_H_REASON, reason, 0};
    assert(nh <= sizeof(h) / sizeof(h[0]));
    memset(&m, 0, sizeof(m));
    m.exchange = exchange;
    m.routing_key = rk;
    m.message_id = d->message_id[0] ? d->message_id : "missing";
    m.correlation_id = d->correlation_id;
    m.type = d->type[0] ? d->type : d->routing_key;
    m.timestamp = d->timestamp;
    m.app_id = d->app_id[0] ? d->app_id : NULL;
    m.body = d->body;
    m.len = d->len;
    m.headers = h;
    m.nheaders = nh;
    /* Keep the original schema_version (also an unsupported one); 0 would
     * mean "current", so a missing or zero version stays absent. */
    m.schema_version = d->schema_version > 0 ? d->schema_version : -1;
    /* A retried, dead-lettered or replayed copy keeps the context of the
     * publish that made the original: its next handling is a child of it
     * too, in the same trace. */
    m.traceparent = d->traceparent;
    m.tracestate = d->tracestate;
    return mq_publish(pub, &m, err, errlen);
}
