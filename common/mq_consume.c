/*
 * mq_consume.c — the messaging helper's consumer (see mq.h): the loop of
 * mq_consume_batches, which takes the deliveries that have arrived, hands
 * them to the handler together, and settles them (a retry tier or the DLQ
 * for each that failed, as mq_settle_plan decides, then one multiple-ack for
 * all that succeeded), reconnecting with backoff.
 */
#include "mq_int.h"
#include "log.h"
#include "trace.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* Acks, forwards or requeues one delivery after its handler said r (with
 * the reason herr). MQ_ERR when the connection failed. */
static int settle_one(mq_conn *cons, mq_conn *pub, const mq_delivery *d, mq_result r,
                      const char *herr);

/* The lines logged here (retrying, dead-lettered, requeued) come after the
 * message's process span ended: they carry the trace the message carries
 * (with its publish span's id), so a failure is found by its trace id. */
static int settle_delivery(mq_conn *cons, mq_conn *pub, const mq_delivery *d, mq_result r,
                           const char *herr)
{
    trace_ctx ctx;
    const trace_ctx *prev = NULL;
    int has = trace_parse(d->traceparent[0] ? d->traceparent : NULL, NULL, &ctx) == 0, rc;
    if (has)
        prev = trace_set_current(&ctx);
    rc = settle_one(cons, pub, d, r, herr);
    if (has)
        trace_set_current(prev);
    return rc;
}

static int settle_one(mq_conn *cons, mq_conn *pub, const mq_delivery *d, mq_result r,
                      const char *herr)
{
    char perr[MQ_ERR_LEN];
    mq_plan plan;
    int rc = MQ_OK;

    mq_settle_plan(cons->topo, d->attempt, r, &plan);
    if (plan.forward) {
        rc = mq_forward(pub, cons->topo->queue, d, plan.attempt, plan.exchange, plan.routing_key,
                        plan.reason, herr, perr, sizeof(perr));
        if (rc == MQ_OK && plan.tier >= 0) {
            MQ_STAT_ADD(cons, retried, 1);
            metrics_count(cons->metrics, M_RETRIED, d->routing_key, 1);
            log_write(LOG_WARN, d->correlation_id, d->message_id,
                      "%s failed (attempt %d): %s; retrying via %s", d->routing_key, plan.attempt,
                      herr, plan.routing_key);
        } else if (rc == MQ_OK && r == MQ_RETRY) {
            MQ_STAT_ADD(cons, dead_lettered, 1);
            metrics_count(cons->metrics, M_DEAD_LETTERED, d->routing_key, 1);
            log_write(LOG_ERROR, d->correlation_id, d->message_id,
                      "%s failed %d times, last: %s; sent to the dead-letter queue", d->routing_key,
                      plan.attempt, herr);
        } else if (rc == MQ_OK) {
            MQ_STAT_ADD(cons, dead_lettered, 1);
            metrics_count(cons->metrics, M_DEAD_LETTERED, d->routing_key, 1);
            log_write(LOG_ERROR, d->correlation_id, d->message_id,
                      "%s rejected: %s; sent to the dead-letter queue", d->routing_key, herr);
        }
    }
    if (rc != MQ_OK) {
        /* The copy was not confirmed: hand the message back to the broker
         * rather than lose it. It will be delivered again. */
        log_write(LOG_WARN, d->correlation_id, d->message_id,
                  "could not forward %s (%s); requeueing it", d->routing_key, perr);
        if (amqp_basic_nack(cons->conn, MQ_CHANNEL, d->delivery_tag, 0, 1) != AMQP_STATUS_OK)
            return MQ_ERR;
        return MQ_OK;
    }
    if (amqp_basic_ack(cons->conn, MQ_CHANNEL, d->delivery_tag, 0) != AMQP_STATUS_OK)
        return MQ_ERR; /* the broker will redeliver; the inbox absorbs it */
    MQ_STAT_ADD(cons, acked, 1);
    MQ_STAT_ADD(cons, ack_frames, 1);
    return MQ_OK;
}

/* Settles a handled batch: first each delivery that was not MQ_DONE on its
 * own (its copy forwarded and confirmed, then acked, or nacked back), then
 * every MQ_DONE one with a single multiple-ack of the highest such tag. A
 * multiple-ack covers every unsettled tag up to it on the channel: by then
 * those are exactly the batch's MQ_DONE deliveries (earlier batches are
 * settled, later deliveries have higher tags), so nothing is acked that was
 * not committed. MQ_ERR when the connection failed: what is not settled yet
 * is redelivered (the inbox absorbs the committed ones). */
static int settle_batch(mq_conn *cons, mq_conn *pub, const mq_delivery *d, const mq_result *res,
                        char (*errs)[MQ_ERR_LEN], size_t n)
{
    uint64_t top = 0;
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        if (res[i] != MQ_DONE) {
            if (settle_delivery(cons, pub, &d[i], res[i], errs[i]) != MQ_OK)
                return MQ_ERR;
            continue;
        }
        done++;
        if (d[i].delivery_tag > top)
            top = d[i].delivery_tag;
    }
    if (done == 0)
        return MQ_OK;
    if (amqp_basic_ack(cons->conn, MQ_CHANNEL, top, done > 1) != AMQP_STATUS_OK)
        return MQ_ERR;
    MQ_STAT_ADD(cons, acked, done);
    MQ_STAT_ADD(cons, ack_frames, 1);
    return MQ_OK;
}

#define BATCH_MAX 256

/* A frame that is not a delivery arrived: see what it was. Returns MQ_OK
 * to carry on, MQ_ERR to reconnect. */
static int other_frame(mq_conn *c)
{
    amqp_frame_t f;
    int st = amqp_simple_wait_frame(c->conn, &f);
    if (st != AMQP_STATUS_OK)
        return MQ_ERR;
    if (f.frame_type != AMQP_FRAME_METHOD)
        return MQ_OK;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD:
        return MQ_OK;
    case AMQP_BASIC_CANCEL_METHOD:
        log_warn("the broker cancelled our consumer (queue deleted?); reconnecting");
        return MQ_ERR;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *m = f.payload.method.decoded;
        log_warn("channel closed by broker: %u %.*s", m->reply_code, (int)m->reply_text.len,
                 (char *)m->reply_text.bytes);
        return MQ_ERR;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *m = f.payload.method.decoded;
        amqp_connection_close_ok_t ok;
        log_warn("connection closed by broker: %u %.*s", m->reply_code, (int)m->reply_text.len,
                 (char *)m->reply_text.bytes);
        amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        return MQ_ERR;
    }
    default:
        return MQ_OK;
    }
}

/* Handles and settles the n envelopes in env; MQ_ERR when the connection failed. */
static int handle_batch(mq_conn *cons, mq_conn *pub, amqp_envelope_t *env, size_t n,
                        mq_batch_handler bh, void *ctx, mq_delivery *d, mq_result *res,
                        char (*errs)[MQ_ERR_LEN])
{
    int rc = MQ_OK;
    size_t k = 0;
    MQ_STAT_ADD(cons, consumed, n);
    for (size_t i = 0; i < n && rc == MQ_OK; i++) {
        if (mq__to_delivery(&env[i], cons->topo->queue, cons->info.user, &d[k], errs[k],
                            MQ_ERR_LEN) < 0) {
            rc = settle_delivery(cons, pub, &d[k], MQ_REJECT, errs[k]);
            continue;
        }
        res[k] = MQ_RETRY;
        errs[k][0] = '\0';
        k++;
    }
    if (rc != MQ_OK)
        return rc;
    if (k == 0)
        return MQ_OK;
    bh(d, k, res, errs, ctx);
    return settle_batch(cons, pub, d, res, errs, k);
}

int mq_consume_batches(mq_conn *cons, mq_conn *pub, mq_batch_handler bh, size_t max, void *ctx,
                       void (*on_idle)(void *ctx), volatile sig_atomic_t *stop, char *err,
                       size_t errlen)
{
    int64_t last_idle = util_now_ms();
    int first = 1, rc = 0;
    amqp_envelope_t *env;
    mq_delivery *d;
    mq_result *res;
    char(*errs)[MQ_ERR_LEN];

    max = max < 1 ? 1 : max > BATCH_MAX ? BATCH_MAX : max;
    env = calloc(max, sizeof(*env));
    d = calloc(max, sizeof(*d));
    res = calloc(max, sizeof(*res));
    errs = calloc(max, MQ_ERR_LEN);
    if (!env || !d || !res || !errs) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
        goto out;
    }
    while (!*stop) {
        amqp_rpc_reply_t r;
        struct timeval tv = {0, 250000};
        size_t n = 0;
        int st = MQ_OK;

        if (!cons->connected || !pub->connected) {
            if (!first)
                MQ_STAT_ADD(cons, reconnects, 1);
            first = 0;
            if (!pub->connected) {
                st = mq_connect_retry(pub, 0, -1, stop, err, errlen);
                if (st == MQ_ERR_CONFIG) {
                    rc = -1;
                    goto out;
                }
            }
            if (st == MQ_OK && !cons->connected) {
                st = mq_connect_retry(cons, 1, -1, stop, err, errlen);
                if (st == MQ_ERR_CONFIG) {
                    rc = -1;
                    goto out;
                }
                if (st == MQ_OK)
                    log_info("consuming from %s", cons->topo->queue);
            }
            continue;
        }
        if (util_now_ms() - last_idle >= 1000) {
            last_idle = util_now_ms();
            if (mq_tick(pub) != MQ_OK)
                continue;
            if (on_idle)
                on_idle(ctx);
        }
        amqp_maybe_release_buffers(cons->conn);
        /* The first delivery waits up to 250 ms; the rest of the batch is
         * only what has already arrived. */
        for (;;) {
            r = amqp_consume_message(cons->conn, &env[n], &tv, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                break;
            if (++n == max)
                break;
            tv.tv_sec = tv.tv_usec = 0;
        }
        if (n > 0) {
            st = handle_batch(cons, pub, env, n, bh, ctx, d, res, errs);
            for (size_t i = 0; i < n; i++)
                amqp_destroy_envelope(&env[i]);
        }
        if (st != MQ_OK || r.reply_type == AMQP_RESPONSE_NORMAL) {
            /* settling failed (reconnect below), or the batch was full */
        } else if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                   r.library_error == AMQP_STATUS_TIMEOUT) {
            continue;
        } else if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                   r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            st = other_frame(cons);
        } else {
            mq__rpc_check(cons, r, "consume", err, errlen);
            log_warn("lost the broker connection: %s; reconnecting", err);
            st = MQ_ERR;
        }
        if (st != MQ_OK) {
            MQ_SET_CONNECTED(cons, 0);
            mq_disconnect(cons);
            if (!pub->connected)
                mq_disconnect(pub);
        }
    }
out:
    /* Unacked deliveries, if any, go back to the queue when we close. */
    mq_disconnect(cons);
    mq_disconnect(pub);
    free(env);
    free(d);
    free(res);
    free(errs);
    return rc;
}
