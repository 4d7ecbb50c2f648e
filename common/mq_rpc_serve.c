/*
 * mq_rpc_serve.c — the answering side of request/reply (see mq_rpc.h): the
 * request queue's declaration, the consume loop that answers each request
 * through the default exchange to its reply_to, and the pure helpers.
 *
 * Two connections, as a worker has: one consumes the request queue (manual
 * acks, its own prefetch), one publishes the replies in confirm mode, so
 * waiting for a confirm never steps over a request.
 */
#include "mq_rpc.h"
#include "log.h"
#include "mq_int.h"
#include "trace.h"
#include "util.h"
#include "uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLY_CONFIRM_MS 5000

int mq_rpc_queue_name(const char *service, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s.requests", service);
    return n >= 0 && (size_t)n < outlen ? 0 : -1;
}

int mq_rpc_expiration(int timeout_ms, char *out, size_t outlen)
{
    int n;
    if (timeout_ms < 1 || timeout_ms > 600000)
        return -1;
    n = snprintf(out, outlen, "%d", timeout_ms);
    return n >= 0 && (size_t)n < outlen ? 0 : -1;
}

int mq_rpc_declare(mq_conn *c, const char *service, const char *const *keys, char *err,
                   size_t errlen)
{
    char q[MQ_NAME_LEN];
    int rc;
    if (mq_rpc_queue_name(service, q, sizeof(q)) < 0) {
        snprintf(err, errlen, "service name too long");
        return MQ_ERR_CONFIG;
    }
    /* A classic durable queue: requests are transient and expire with their
     * deadline, so a quorum queue's replication would buy nothing. */
    amqp_queue_declare(c->conn, MQ_CHANNEL, amqp_cstring_bytes(q), 0, 1, 0, 0, amqp_empty_table);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "queue.declare requests", err,
                            errlen)) != MQ_OK)
        return rc;
    for (size_t i = 0; keys && keys[i]; i++) {
        amqp_queue_bind(c->conn, MQ_CHANNEL, amqp_cstring_bytes(q),
                        amqp_cstring_bytes(MQ_RPC_EXCHANGE), amqp_cstring_bytes(keys[i]),
                        amqp_empty_table);
        if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "queue.bind requests", err,
                                errlen)) != MQ_OK)
            return rc;
    }
    return MQ_OK;
}

/* The consumer: the request queue, qos, basic.consume (manual acks). */
static int connect_consumer(mq_conn *c, const char *queue, char *err, size_t errlen)
{
    int rc = mq__open_connection(c, err, errlen);
    if (rc != MQ_OK)
        return rc;
    amqp_basic_qos(c->conn, MQ_CHANNEL, 0, (uint16_t)c->prefetch, 0);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "basic.qos", err, errlen)) != MQ_OK)
        goto fail;
    amqp_basic_consume(c->conn, MQ_CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "basic.consume requests", err,
                            errlen)) != MQ_OK)
        goto fail;
    return MQ_OK;
fail:
    /* A missing queue (404) is `make migrate` not run yet: try again later. */
    if (c->reply_code == AMQP_NOT_FOUND)
        rc = MQ_ERR;
    mq_disconnect(c);
    return rc;
}

/* Publishes the reply to reply_to through the default exchange and waits
 * for its confirm. Not mandatory: RabbitMQ returns every mandatory message
 * to a reply-to name. */
static int publish_reply(mq_conn *pub, amqp_bytes_t reply_to, amqp_bytes_t corr, const char *key,
                         const char *body, size_t len, char *err, size_t errlen)
{
    amqp_basic_properties_t p;
    char id[UUID_STR_LEN], type[MQ_NAME_LEN + 8];
    uint64_t seq;
    int64_t deadline;
    int st;

    if (uuid_v4(id) < 0) {
        snprintf(err, errlen, "no randomness for a message id");
        return MQ_ERR;
    }
    snprintf(type, sizeof(type), "%.*s.reply", MQ_NAME_LEN - 1, key);
    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_USER_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 1;
    p.message_id = amqp_cstring_bytes(id);
    p.correlation_id = corr;
    p.type = amqp_cstring_bytes(type);
    p.timestamp = (uint64_t)(util_wall_us() / 1000000);
    p.app_id = amqp_cstring_bytes(pub->app_id);
    p.user_id = amqp_cstring_bytes(pub->info.user);
    amqp_maybe_release_buffers(pub->conn);
    st = amqp_basic_publish(pub->conn, MQ_CHANNEL, amqp_empty_bytes, reply_to, 0, 0, &p,
                            (amqp_bytes_t){len, (void *)body});
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "basic.publish reply: %s", amqp_error_string2(st));
        return MQ_ERR;
    }
    seq = pub->next_seq++;
    deadline = util_now_ms() + REPLY_CONFIRM_MS;
    for (;;) {
        amqp_frame_t f;
        int64_t left = deadline - util_now_ms();
        struct timeval tv;
        if (left <= 0) {
            snprintf(err, errlen, "no confirm of a reply within %d ms", REPLY_CONFIRM_MS);
            return MQ_ERR;
        }
        tv.tv_sec = left / 1000;
        tv.tv_usec = (left % 1000) * 1000;
        st = amqp_simple_wait_frame_noblock(pub->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK) {
            snprintf(err, errlen, "waiting for a reply's confirm: %s", amqp_error_string2(st));
            return MQ_ERR;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->delivery_tag == seq || (a->multiple && a->delivery_tag > seq))
                return MQ_OK;
        } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            snprintf(err, errlen, "the broker refused a reply (basic.nack)");
            return MQ_ERR_NACKED;
        } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                   f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
            mq__rpc_check(pub,
                          (amqp_rpc_reply_t){AMQP_RESPONSE_SERVER_EXCEPTION, f.payload.method, 0},
                          "reply", err, errlen);
            return pub->reply_code == AMQP_ACCESS_REFUSED ? MQ_ERR_CONFIG : MQ_ERR;
        }
    }
}

/* What every reply_to the broker sets for direct reply-to begins with. */
#define DIRECT_REPLY_TO "amq.rabbitmq.reply-to."

/* A copy of b as a C string in out (cut to fit). */
static void str_of(amqp_bytes_t b, char *out, size_t size)
{
    size_t n = b.len < size - 1 ? b.len : size - 1;
    memcpy(out, b.bytes, n);
    out[n] = '\0';
}

/* The answer's span (OpenTelemetry messaging conventions, "process"):
 * SERVER, the counterpart of the asker's CLIENT call span (mq_rpc.c), and
 * its child when the request carries a valid traceparent (as a longstr or
 * as bytes); an absent, invalid or oversized one starts a new trace. */
static void answer_span_start(trace_span *sp, const amqp_basic_properties_t *p, const char *key,
                              const char *corr, const char *queue)
{
    char name[TRACE_NAME_MAX], tp[MQ_TRACEPARENT_MAX] = "", ts[MQ_TRACESTATE_MAX] = "",
                               id[MQ_ID_LEN] = "";
    trace_ctx parent;
    int has = 0;

    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        mq__header_str(&p->headers, MQ_H_TRACEPARENT, tp, sizeof(tp));
        mq__header_str(&p->headers, MQ_H_TRACESTATE, ts, sizeof(ts));
        has = tp[0] && trace_parse(tp, ts, &parent) == 0;
    }
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        str_of(p->message_id, id, sizeof(id));
    snprintf(name, sizeof(name), "process %.80s", key);
    trace_span_start(sp, name, TRACE_KIND_SERVER, has ? &parent : NULL);
    trace_span_str(sp, "messaging.system", "rabbitmq");
    trace_span_str(sp, "messaging.operation.type", "process");
    trace_span_str(sp, "messaging.operation.name", "process");
    trace_span_str(sp, "messaging.destination.name", MQ_RPC_EXCHANGE);
    trace_span_str(sp, "messaging.rabbitmq.destination.routing_key", key);
    trace_span_str(sp, "messaging.message.id", id);
    trace_span_str(sp, "messaging.message.conversation_id", corr);
    trace_span_str(sp, "messaging.consumer.group.name", queue);
}

static int serve_one_in(mq_conn *cons, mq_conn *pub, const amqp_envelope_t *env, mq_rpc_fn fn,
                        void *ctx, metrics *m, const char *key, const char *corr, trace_span *sp);

/* Answers one request in its span. MQ_OK when it was settled (answered or
 * dropped), else the failure of a connection (the request is left unacked:
 * it comes again). */
static int serve_one(mq_conn *cons, mq_conn *pub, const amqp_envelope_t *env, mq_rpc_fn fn,
                     void *ctx, metrics *m, const char *queue)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    char key[MQ_NAME_LEN], corr[MQ_ID_LEN];
    const trace_ctx *prev;
    trace_span sp;
    int rc;

    str_of(env->routing_key, key, sizeof(key));
    corr[0] = '\0';
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        str_of(p->correlation_id, corr, sizeof(corr));
    answer_span_start(&sp, p, key, corr, queue);
    /* Current while the handler runs: its log lines carry the trace. */
    prev = trace_set_current(&sp.ctx);
    rc = serve_one_in(cons, pub, env, fn, ctx, m, key, corr, &sp);
    trace_set_current(prev);
    trace_span_end(&sp, NULL);
    return rc;
}

static int serve_one_in(mq_conn *cons, mq_conn *pub, const amqp_envelope_t *env, mq_rpc_fn fn,
                        void *ctx, metrics *m, const char *key, const char *corr, trace_span *sp)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    char err[MQ_ERR_LEN], *reply = NULL;
    size_t rlen = 0;
    int rc = MQ_OK;
    mq_rpc_request req;

    if (!(p->_flags & AMQP_BASIC_REPLY_TO_FLAG) || !p->reply_to.len || !corr[0] ||
        p->correlation_id.len >= MQ_ID_LEN) {
        log_warn("request %s without reply_to or a correlation id (of at most %d bytes): dropped",
                 key, MQ_ID_LEN - 1);
        trace_span_fail(sp, "dropped: no reply_to or correlation id");
    } else if (p->reply_to.len <= strlen(DIRECT_REPLY_TO) ||
               memcmp(p->reply_to.bytes, DIRECT_REPLY_TO, strlen(DIRECT_REPLY_TO)) != 0) {
        /* The answerer may publish to the default exchange, which routes to
         * any queue by name: answering such a reply_to would let any asker
         * put a message with this service's user_id into any queue. Only a
         * direct reply-to name (amq.rabbitmq.reply-to.<token>) is answered. */
        log_write(LOG_WARN, corr, NULL, "request %s: reply_to is no direct reply-to name: dropped",
                  key);
        trace_span_fail(sp, "dropped: reply_to is no direct reply-to name");
    } else {
        req = (mq_rpc_request){key, corr, env->message.body.bytes, env->message.body.len};
        if (fn(&req, &reply, &rlen, ctx, err, sizeof(err)) < 0) {
            log_write(LOG_WARN, corr, NULL, "request %s not answered: %s", key, err);
            trace_span_fail(sp, err);
        } else {
            rc = publish_reply(pub, p->reply_to, p->correlation_id, key, reply, rlen, err,
                               sizeof(err));
            free(reply);
            if (rc != MQ_OK) {
                log_write(LOG_WARN, corr, NULL, "reply to %s not sent: %s", key, err);
                trace_span_fail(sp, err);
                /* Back to the queue, answered after the reconnect if its
                 * deadline has not passed by then. */
                if (amqp_basic_nack(cons->conn, MQ_CHANNEL, env->delivery_tag, 0, 1) !=
                    AMQP_STATUS_OK)
                    return MQ_ERR;
                return rc;
            }
            metrics_count(m, M_RPC_ANSWERED, key, 1);
        }
    }
    if (amqp_basic_ack(cons->conn, MQ_CHANNEL, env->delivery_tag, 0) != AMQP_STATUS_OK)
        return MQ_ERR;
    return MQ_OK;
}

static void set_serving(const mq_rpc_server_opts *o, int v)
{
    if (o->serving)
        __atomic_store_n(o->serving, v, __ATOMIC_RELAXED);
}

int mq_rpc_serve(const mq_rpc_server_opts *o, mq_rpc_fn fn, void *ctx, volatile sig_atomic_t *stop,
                 char *err, size_t errlen)
{
    mq_opts co = {.url = o->url,
                  .app_id = o->app_id,
                  .prefetch = o->prefetch > 0 ? o->prefetch : 16,
                  .heartbeat_s = o->heartbeat_s,
                  .metrics = o->metrics};
    mq_conn *cons = mq_new(&co), *pub = mq_new(&co);
    int64_t last_tick = util_now_ms();
    backoff b;
    int rc = 0;

    backoff_init(&b, 200, 10000);
    if (!cons || !pub) {
        snprintf(err, errlen, "out of memory, or not an AMQP URL");
        rc = -1;
        goto out;
    }
    while (!*stop) {
        amqp_envelope_t env;
        amqp_rpc_reply_t r;
        struct timeval tv = {0, 250000};
        int st = MQ_OK;

        if (!pub->connected || !cons->connected) {
            if (!pub->connected)
                st = mq_connect_publisher(pub, err, errlen);
            if (st == MQ_OK && !cons->connected)
                st = connect_consumer(cons, o->queue, err, errlen);
            if (st != MQ_OK) {
                int64_t wait = backoff_next(&b);
                /* A permission error is not the end: the thread waits for
                 * an operator's fix, not ready (/readyz names it). */
                if (st == MQ_ERR_CONFIG)
                    log_error("requests: refused by the broker (%s): not serving; retrying in "
                              "%lld ms",
                              err, (long long)wait);
                else
                    log_warn("requests: broker not reachable (%s); retrying in %lld ms", err,
                             (long long)wait);
                MQ_SET_CONNECTED(cons, 0);
                mq_disconnect(cons);
                MQ_SET_CONNECTED(pub, 0);
                mq_disconnect(pub);
                util_sleep_ms(wait, stop);
            } else {
                backoff_reset(&b);
                set_serving(o, 1);
                log_info("answering requests from %s, prefetch %d", o->queue, co.prefetch);
            }
            continue;
        }
        if (util_now_ms() - last_tick >= 1000) {
            last_tick = util_now_ms();
            if (mq_tick(pub) != MQ_OK) {
                set_serving(o, 0); /* no replies until pub is back */
                continue;
            }
        }
        amqp_maybe_release_buffers(cons->conn);
        r = amqp_consume_message(cons->conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            st = serve_one(cons, pub, &env, fn, ctx, o->metrics, o->queue);
            amqp_destroy_envelope(&env);
            if (st == MQ_ERR_CONFIG)
                log_error("requests: replies refused: check the broker permissions; "
                          "reconnecting");
        } else if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                   r.library_error == AMQP_STATUS_TIMEOUT) {
            continue;
        } else {
            st = MQ_ERR;
            log_warn("requests: lost the broker connection; reconnecting");
        }
        if (st != MQ_OK) {
            /* Unacked requests go back to the queue with the connection. */
            set_serving(o, 0);
            MQ_SET_CONNECTED(cons, 0);
            mq_disconnect(cons);
            MQ_SET_CONNECTED(pub, 0);
            mq_disconnect(pub);
        }
    }
out:
    set_serving(o, 0);
    mq_free(cons);
    mq_free(pub);
    return rc;
}
