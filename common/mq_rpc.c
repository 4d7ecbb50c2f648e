/*
 * mq_rpc.c — the asking side of request/reply (see mq_rpc.h).
 *
 * rabbitmq-c allows one thread per connection, and many HTTP threads ask at
 * once, so one thread owns the connection: callers hand it their call (a
 * struct on the caller's stack, linked into the client's list under its
 * mutex), wake it through a pipe, and wait on a condition variable until
 * the reply or their deadline. The thread publishes what is waiting to be
 * sent, then reads every frame that has arrived: a reply goes to the call
 * with its correlation id, or, when no call waits for that id any more
 * (its caller gave up at the deadline and unlinked it), is dropped and
 * counted as late. A call is only touched under the mutex while it is in
 * the list, so a caller that has left never sees a late write.
 */
#include "mq_rpc.h"
#include "log.h"
#include "mq_int.h"
#include "trace.h"
#include "util.h"
#include "uuid.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { CALL_QUEUED, CALL_SENT, CALL_DONE };

typedef struct call {
    char corr[UUID_STR_LEN];
    const char *key;
    const void *body;
    size_t len;
    int timeout_ms;
    int state;    /* CALL_* */
    uint64_t seq; /* delivery tag of its publish, for a basic.nack */
    /* The call span's context, sent as the request's traceparent /
     * tracestate headers ("" for none). */
    char traceparent[TRACE_PARENT_LEN];
    const char *tracestate;
    int rc;
    char *reply;
    size_t reply_len;
    char err[MQ_ERR_LEN];
    struct call *next;
} call;

struct mq_rpc_client {
    mq_conn *mq;
    metrics *metrics;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a call is done */
    int wake[2];       /* a call waits to be sent, or stop */
    call *calls;       /* queued and sent calls, under mu */
    int up;            /* the connection is up, under mu */
    atomic_int stop;
    mq_rpc_stats st; /* under mu */
};

/* Marks c done with rc (under mu). */
static void finish(mq_rpc_client *cl, call *c, int rc, const char *why)
{
    c->state = CALL_DONE;
    c->rc = rc;
    if (why)
        snprintf(c->err, sizeof(c->err), "%s", why);
    pthread_cond_broadcast(&cl->cv);
}

/* Unlinks c from the list (under mu). */
static void unlink_call(mq_rpc_client *cl, call *c)
{
    for (call **p = &cl->calls; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            return;
        }
    }
}

/* The connection is gone: every call in the list fails (under mu). */
static void fail_all(mq_rpc_client *cl, const char *why)
{
    while (cl->calls) {
        call *c = cl->calls;
        cl->calls = c->next;
        cl->st.failed++;
        finish(cl, c, MQ_ERR, why);
    }
}

static void drop_connection(mq_rpc_client *cl, const char *why)
{
    pthread_mutex_lock(&cl->mu);
    cl->up = 0;
    fail_all(cl, why);
    pthread_mutex_unlock(&cl->mu);
    MQ_SET_CONNECTED(cl->mq, 0);
    mq_disconnect(cl->mq);
}

/* One attempt: a publisher (confirm mode) that also consumes the reply-to
 * pseudo-queue, no-ack, before anything is published on the channel. */
static int connect_once(mq_rpc_client *cl, char *err, size_t errlen)
{
    int rc = mq_connect_publisher(cl->mq, err, errlen);
    if (rc != MQ_OK)
        return rc;
    amqp_basic_consume(cl->mq->conn, MQ_CHANNEL, amqp_cstring_bytes(MQ_RPC_REPLY_TO),
                       amqp_empty_bytes, 0, 1 /* no-ack: required for direct reply-to */, 0,
                       amqp_empty_table);
    rc = mq__rpc_check(cl->mq, amqp_get_rpc_reply(cl->mq->conn), "basic.consume reply-to", err,
                       errlen);
    if (rc != MQ_OK)
        mq_disconnect(cl->mq);
    return rc;
}

/* Publishes one queued call (under mu). MQ_ERR when the connection failed. */
static int send_call(mq_rpc_client *cl, call *c)
{
    amqp_basic_properties_t p;
    amqp_table_entry_t hdr[2];
    char exp[16];
    int st, nh = 0;

    memset(&p, 0, sizeof(p));
    if (c->traceparent[0]) {
        mq__arg_str(&hdr[nh++], MQ_H_TRACEPARENT, c->traceparent);
        if (c->tracestate[0])
            mq__arg_str(&hdr[nh++], MQ_H_TRACESTATE, c->tracestate);
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers = (amqp_table_t){nh, hdr};
    }
    p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_TYPE_FLAG |
                AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_USER_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 1; /* transient: a question is asked again, not kept */
    p.message_id = amqp_cstring_bytes(c->corr);
    p.correlation_id = amqp_cstring_bytes(c->corr);
    p.reply_to = amqp_cstring_bytes(MQ_RPC_REPLY_TO);
    mq_rpc_expiration(c->timeout_ms, exp, sizeof(exp)); /* checked by mq_rpc_call */
    p.expiration = amqp_cstring_bytes(exp);
    p.type = amqp_cstring_bytes(c->key);
    p.timestamp = (uint64_t)(util_wall_us() / 1000000);
    p.app_id = amqp_cstring_bytes(cl->mq->app_id);
    p.user_id = amqp_cstring_bytes(cl->mq->info.user);
    st = amqp_basic_publish(cl->mq->conn, MQ_CHANNEL, amqp_cstring_bytes(MQ_RPC_EXCHANGE),
                            amqp_cstring_bytes(c->key), 1 /* mandatory: no queue is an error */, 0,
                            &p, (amqp_bytes_t){c->len, (void *)c->body});
    if (st != AMQP_STATUS_OK)
        return MQ_ERR;
    c->state = CALL_SENT;
    c->seq = cl->mq->next_seq++;
    cl->st.sent++;
    metrics_count(cl->metrics, M_RPC_SENT, c->key, 1);
    return MQ_OK;
}

/* The call in the list with correlation id (b), or NULL (under mu). */
static call *find_corr(mq_rpc_client *cl, amqp_bytes_t b)
{
    for (call *c = cl->calls; c; c = c->next) {
        if (c->state == CALL_SENT && b.len == strlen(c->corr) &&
            memcmp(b.bytes, c->corr, b.len) == 0)
            return c;
    }
    return NULL;
}

/* A message's content follows method frame f (a delivery or a return):
 * hands it to its call. MQ_ERR when reading it failed. */
static int on_content(mq_rpc_client *cl, const amqp_frame_t *f, int returned, const char *why)
{
    amqp_message_t m;
    amqp_rpc_reply_t r = amqp_read_message(cl->mq->conn, f->channel, &m, 0);
    call *c;
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return MQ_ERR;
    pthread_mutex_lock(&cl->mu);
    c = (m.properties._flags & AMQP_BASIC_CORRELATION_ID_FLAG)
            ? find_corr(cl, m.properties.correlation_id)
            : NULL;
    if (c && returned) {
        unlink_call(cl, c);
        cl->st.failed++;
        finish(cl, c, MQ_ERR_RETURNED, why);
    } else if (c && (c->reply = malloc(m.body.len + 1)) != NULL) {
        memcpy(c->reply, m.body.bytes, m.body.len);
        c->reply[m.body.len] = '\0';
        c->reply_len = m.body.len;
        unlink_call(cl, c);
        cl->st.answered++;
        finish(cl, c, MQ_OK, NULL);
    } else if (c) {
        unlink_call(cl, c);
        cl->st.failed++;
        finish(cl, c, MQ_ERR, "out of memory for the reply");
    } else if (!returned) {
        /* Its caller gave up at its deadline (or it is no reply of ours):
         * counted under the key it answers (its type, "<key>.reply"). */
        char key[MQ_NAME_LEN] = "unknown";
        if ((m.properties._flags & AMQP_BASIC_TYPE_FLAG) && m.properties.type.len > 6 &&
            m.properties.type.len < sizeof(key) &&
            memcmp((char *)m.properties.type.bytes + m.properties.type.len - 6, ".reply", 6) == 0)
            snprintf(key, sizeof(key), "%.*s", (int)m.properties.type.len - 6,
                     (char *)m.properties.type.bytes);
        cl->st.late++;
        metrics_count(cl->metrics, M_RPC_LATE, key, 1);
        log_write(LOG_INFO, NULL, NULL,
                  "a reply nobody waits for (late: past its deadline) dropped");
    }
    pthread_mutex_unlock(&cl->mu);
    amqp_destroy_message(&m);
    return MQ_OK;
}

/* Fails the calls a basic.nack covers (under mu). */
static void on_nack(mq_rpc_client *cl, uint64_t tag, int multiple)
{
    for (call *c = cl->calls, *next; c; c = next) {
        next = c->next;
        if (c->state == CALL_SENT && (c->seq == tag || (multiple && c->seq < tag))) {
            unlink_call(cl, c);
            cl->st.failed++;
            finish(cl, c, MQ_ERR_NACKED, "the broker refused the request (basic.nack)");
        }
    }
}

/* Reads every frame that has arrived. MQ_ERR when the connection failed. */
static int read_frames(mq_rpc_client *cl)
{
    for (;;) {
        amqp_frame_t f;
        struct timeval tv = {0, 0};
        int st = amqp_simple_wait_frame_noblock(cl->mq->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            return MQ_OK;
        if (st != AMQP_STATUS_OK)
            return MQ_ERR;
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD:
            if (on_content(cl, &f, 0, NULL) != MQ_OK)
                return MQ_ERR;
            break;
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_basic_return_t *ret = f.payload.method.decoded;
            char why[MQ_REPLY_LEN + 64];
            snprintf(why, sizeof(why), "no request queue for it: %u %.*s", ret->reply_code,
                     (int)ret->reply_text.len, (char *)ret->reply_text.bytes);
            if (on_content(cl, &f, 1, why) != MQ_OK)
                return MQ_ERR;
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *n = f.payload.method.decoded;
            pthread_mutex_lock(&cl->mu);
            on_nack(cl, n->delivery_tag, n->multiple);
            pthread_mutex_unlock(&cl->mu);
            break;
        }
        case AMQP_BASIC_ACK_METHOD:
            break; /* accepted; the reply settles the call */
        case AMQP_CONNECTION_CLOSE_METHOD:
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_BASIC_CANCEL_METHOD:
            return MQ_ERR;
        default:
            break;
        }
    }
}

static void *client_thread(void *arg)
{
    mq_rpc_client *cl = arg;
    char err[MQ_ERR_LEN];
    int64_t retry_at = 0, last_tick = util_now_ms();
    backoff b;

    backoff_init(&b, 200, 5000);
    while (!atomic_load(&cl->stop)) {
        struct pollfd pf[2] = {{cl->wake[0], POLLIN, 0}, {-1, POLLIN, 0}};
        int timeout = 200, rc = MQ_OK;
        char buf[64];

        if (!cl->mq->connected && util_now_ms() >= retry_at) {
            if (connect_once(cl, err, sizeof(err)) == MQ_OK) {
                backoff_reset(&b);
                pthread_mutex_lock(&cl->mu);
                cl->up = 1;
                pthread_mutex_unlock(&cl->mu);
                log_info("request/reply: connected, replies on %s", MQ_RPC_REPLY_TO);
            } else {
                int64_t wait = backoff_next(&b);
                retry_at = util_now_ms() + wait;
                log_warn("request/reply: broker not reachable (%s); retrying in %lld ms", err,
                         (long long)wait);
            }
        }
        if (cl->mq->connected) {
            pthread_mutex_lock(&cl->mu);
            for (call *c = cl->calls; c && rc == MQ_OK; c = c->next) {
                if (c->state == CALL_QUEUED)
                    rc = send_call(cl, c);
            }
            pthread_mutex_unlock(&cl->mu);
            if (rc == MQ_OK && util_now_ms() - last_tick >= 1000) {
                last_tick = util_now_ms();
                amqp_maybe_release_buffers(cl->mq->conn);
            }
            if (rc == MQ_OK)
                rc = read_frames(cl);
            if (rc != MQ_OK) {
                log_warn("request/reply: lost the broker connection; reconnecting");
                drop_connection(cl, "lost the broker connection while waiting for the reply");
                continue;
            }
            /* TLS may hold decoded bytes the socket no longer shows: the
             * short timeout bounds how long they could wait. */
            if (amqp_data_in_buffer(cl->mq->conn) || amqp_frames_enqueued(cl->mq->conn))
                timeout = 0;
            pf[1].fd = amqp_get_sockfd(cl->mq->conn);
        }
        if (poll(pf, 2, timeout) > 0 && (pf[0].revents & POLLIN)) {
            while (read(cl->wake[0], buf, sizeof(buf)) > 0) {
            }
        }
    }
    drop_connection(cl, "request/reply client stopping");
    return NULL;
}

mq_rpc_client *mq_rpc_client_start(const mq_opts *o, char *err, size_t errlen)
{
    mq_rpc_client *cl = calloc(1, sizeof(*cl));
    pthread_condattr_t ca;
    if (!cl || !(cl->mq = mq_new(o))) {
        free(cl);
        snprintf(err, errlen, "out of memory, or AMQP_URL is not an AMQP URL");
        return NULL;
    }
    cl->metrics = o->metrics;
    pthread_mutex_init(&cl->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cl->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pipe2(cl->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&cl->thread, NULL, client_thread, cl) != 0) {
        snprintf(err, errlen, "cannot start the request/reply thread");
        close(cl->wake[0]);
        close(cl->wake[1]);
        goto fail;
    }
    return cl;
fail:
    pthread_cond_destroy(&cl->cv);
    pthread_mutex_destroy(&cl->mu);
    mq_free(cl->mq);
    free(cl);
    return NULL;
}

void mq_rpc_client_stop(mq_rpc_client *cl)
{
    if (!cl)
        return;
    atomic_store(&cl->stop, 1);
    if (write(cl->wake[1], "s", 1) < 0) {
        /* full pipe: the thread is awake anyway */
    }
    pthread_join(cl->thread, NULL);
    close(cl->wake[0]);
    close(cl->wake[1]);
    pthread_cond_destroy(&cl->cv);
    pthread_mutex_destroy(&cl->mu);
    mq_free(cl->mq);
    free(cl);
}

int mq_rpc_client_connected(const mq_rpc_client *cl)
{
    return mq_is_connected(cl->mq);
}

void mq_rpc_client_stats(mq_rpc_client *cl, mq_rpc_stats *out)
{
    pthread_mutex_lock(&cl->mu);
    *out = cl->st;
    pthread_mutex_unlock(&cl->mu);
}

/* The call's span (OpenTelemetry messaging conventions, "send"): CLIENT,
 * not PRODUCER, because it lasts until the reply, like an RPC client span,
 * and its SERVER counterpart is inventory's answer (mq_rpc_serve.c). The
 * child of the calling thread's current span (the HTTP request's). */
static void call_span_start(trace_span *sp, const call *c)
{
    char name[TRACE_NAME_MAX];
    snprintf(name, sizeof(name), "send %.80s", c->key);
    trace_span_start(sp, name, TRACE_KIND_CLIENT, trace_current());
    trace_span_str(sp, "messaging.system", "rabbitmq");
    trace_span_str(sp, "messaging.operation.type", "send");
    trace_span_str(sp, "messaging.operation.name", "send");
    trace_span_str(sp, "messaging.destination.name", MQ_RPC_EXCHANGE);
    trace_span_str(sp, "messaging.rabbitmq.destination.routing_key", c->key);
    trace_span_str(sp, "messaging.message.id", c->corr);
    trace_span_str(sp, "messaging.message.conversation_id", c->corr);
}

static int do_call(mq_rpc_client *cl, call *c, char **reply, size_t *reply_len, char *err,
                   size_t errlen);

int mq_rpc_call(mq_rpc_client *cl, const char *key, const void *body, size_t len, int timeout_ms,
                char **reply, size_t *reply_len, char *err, size_t errlen)
{
    call c;
    trace_span sp;
    char exp[16];
    int rc;

    *reply = NULL;
    *reply_len = 0;
    if (mq_rpc_expiration(timeout_ms, exp, sizeof(exp)) < 0 || strlen(key) >= MQ_NAME_LEN) {
        snprintf(err, errlen, "a deadline of 1..600000 ms and a routing key of at most %d bytes",
                 MQ_NAME_LEN - 1);
        return MQ_ERR_CONFIG;
    }
    memset(&c, 0, sizeof(c));
    if (uuid_v4(c.corr) < 0) {
        snprintf(err, errlen, "no randomness for a correlation id");
        return MQ_ERR;
    }
    c.key = key;
    c.body = body;
    c.len = len;
    c.timeout_ms = timeout_ms;
    call_span_start(&sp, &c);
    c.tracestate = sp.ctx.state;
    if (trace_valid(&sp.ctx))
        trace_format(&sp.ctx, c.traceparent);
    rc = do_call(cl, &c, reply, reply_len, err, errlen);
    if (rc != MQ_OK)
        trace_span_fail(&sp, err);
    trace_span_end(&sp, NULL);
    return rc;
}

/* Queues c, wakes the thread and waits for the reply or the deadline. */
static int do_call(mq_rpc_client *cl, call *c, char **reply, size_t *reply_len, char *err,
                   size_t errlen)
{
    const char *key = c->key;
    int timeout_ms = c->timeout_ms;
    struct timespec deadline;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&cl->mu);
    if (!cl->up) {
        cl->st.failed++;
        pthread_mutex_unlock(&cl->mu);
        snprintf(err, errlen, "the broker is not reachable");
        return MQ_ERR;
    }
    c->next = cl->calls;
    /* The call lives on mq_rpc_call's stack while it is linked: it is
     * unlinked (by the thread when settled, or below at the deadline)
     * before we return. */
    // cppcheck-suppress autoVariables
    cl->calls = c;
    pthread_mutex_unlock(&cl->mu);
    if (write(cl->wake[1], "c", 1) < 0) {
        /* full pipe: the thread is awake anyway */
    }
    pthread_mutex_lock(&cl->mu);
    while (c->state != CALL_DONE) {
        if (pthread_cond_timedwait(&cl->cv, &cl->mu, &deadline) == ETIMEDOUT &&
            c->state != CALL_DONE) {
            /* Unlinked under the mutex: a reply after this is late. */
            unlink_call(cl, c);
            cl->st.timed_out++;
            metrics_count(cl->metrics, M_RPC_TIMED_OUT, key, 1);
            c->rc = MQ_RPC_TIMEOUT;
            snprintf(c->err, sizeof(c->err), "no reply to %s within %d ms", key, timeout_ms);
            break;
        }
    }
    pthread_mutex_unlock(&cl->mu);
    if (c->rc != MQ_OK) {
        snprintf(err, errlen, "%s", c->err);
        free(c->reply);
        return c->rc;
    }
    *reply = c->reply;
    *reply_len = c->reply_len;
    return MQ_OK;
}
