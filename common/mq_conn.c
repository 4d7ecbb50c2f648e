/*
 * mq_conn.c — the messaging helper's connection (see mq.h, mq_int.h): the
 * handle, checking a URL, the socket (plain or TLS), the login, the channel,
 * connecting as a publisher or a consumer, with backoff, and the broker's
 * replies turned into an mq_status.
 */
#include "mq_int.h"
#include "log.h"
#include "util.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define FRAME_MAX 131072

int mq_check_url(const char *url, char *err, size_t errlen)
{
    mq__endpoint ep[MQ_MAX_ENDPOINTS];
    char *buf = strdup(url);
    int rc = -1, n;
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (mq__parse_urls(buf, ep, MQ_MAX_ENDPOINTS, &n, err, errlen) < 0)
        goto out;
    /* Files that cannot be read stop the process now, not at every connect. */
    for (int k = 0; k < n; k++) {
        const char *const files[] = {ep[k].tls.cacertfile, ep[k].tls.certfile, ep[k].tls.keyfile};
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
            if (files[i] && access(files[i], R_OK) != 0) {
                snprintf(err, errlen, "cannot read %s", files[i]);
                goto out;
            }
        }
    }
    rc = 0;
out:
    free(buf);
    return rc;
}

mq_conn *mq_new(const mq_opts *o)
{
    char err[MQ_ERR_LEN];
    mq_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->url_buf = strdup(o->url);
    c->app_id = strdup(o->app_id ? o->app_id : "ordersuite");
    if (!c->url_buf || !c->app_id ||
        mq__parse_urls(c->url_buf, c->ep, MQ_MAX_ENDPOINTS, &c->nep, err, sizeof(err)) < 0) {
        mq_free(c);
        return NULL;
    }
    c->cur = -1;
    c->info = c->ep[0].info;
    c->tls = c->ep[0].tls;
    c->topo = o->topo;
    c->metrics = o->metrics;
    c->prefetch = o->prefetch > 0 ? o->prefetch : 32;
    c->heartbeat = o->heartbeat_s > 0 ? o->heartbeat_s : 30;
    return c;
}

void mq_disconnect(mq_conn *c)
{
    if (!c->conn)
        return;
    if (c->connected) {
        /* Best effort: the peer may be gone already. */
        amqp_channel_close(c->conn, MQ_CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c->conn);
    c->conn = NULL;
    c->reopen = 0;
    MQ_SET_CONNECTED(c, 0);
}

void mq_free(mq_conn *c)
{
    if (!c)
        return;
    mq_disconnect(c);
    free(c->url_buf);
    free(c->app_id);
    free(c);
}

int mq_is_connected(const mq_conn *c)
{
    return __atomic_load_n(&c->connected, __ATOMIC_RELAXED);
}

void mq_get_stats(const mq_conn *c, mq_stats *out)
{
    out->consumed = __atomic_load_n(&c->stats.consumed, __ATOMIC_RELAXED);
    out->acked = __atomic_load_n(&c->stats.acked, __ATOMIC_RELAXED);
    out->retried = __atomic_load_n(&c->stats.retried, __ATOMIC_RELAXED);
    out->dead_lettered = __atomic_load_n(&c->stats.dead_lettered, __ATOMIC_RELAXED);
    out->published = __atomic_load_n(&c->stats.published, __ATOMIC_RELAXED);
    out->reconnects = __atomic_load_n(&c->stats.reconnects, __ATOMIC_RELAXED);
    out->ack_frames = __atomic_load_n(&c->stats.ack_frames, __ATOMIC_RELAXED);
}

/* Turns an RPC reply into a status and a message. Access refused, a missing
 * vhost and mismatched queue arguments will not get better by retrying. */
int mq__rpc_check(mq_conn *c, amqp_rpc_reply_t r, const char *what, char *err, size_t errlen)
{
    c->reply_code = 0;
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return MQ_OK;
    case AMQP_RESPONSE_NONE:
        snprintf(err, errlen, "%s: no reply", what);
        return MQ_ERR;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(err, errlen, "%s: %s", what, amqp_error_string2(r.library_error));
        return MQ_ERR;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            c->reply_code = m->reply_code;
            snprintf(err, errlen, "%s: connection closed by broker: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (char *)m->reply_text.bytes);
            return m->reply_code == AMQP_ACCESS_REFUSED || m->reply_code == AMQP_NOT_ALLOWED
                       ? MQ_ERR_CONFIG
                       : MQ_ERR;
        }
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            c->reply_code = m->reply_code;
            snprintf(err, errlen, "%s: channel closed by broker: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (char *)m->reply_text.bytes);
            return m->reply_code == AMQP_ACCESS_REFUSED || m->reply_code == AMQP_PRECONDITION_FAILED
                       ? MQ_ERR_CONFIG
                       : MQ_ERR;
        }
        snprintf(err, errlen, "%s: unexpected method 0x%08x from broker", what, r.reply.id);
        return MQ_ERR;
    }
    snprintf(err, errlen, "%s: unknown reply", what);
    return MQ_ERR;
}

/* The socket for c: plain TCP, or for amqps:// TLS 1.2 or later that verifies
 * the broker's certificate against the URL's CA and its name against the
 * URL's host, with the client certificate when the URL names one. A setting
 * that fails (a bad CA or key file) is MQ_ERR_CONFIG. */
static int new_socket(mq_conn *c, amqp_socket_t **out, char *err, size_t errlen)
{
    amqp_socket_t *sock;
    int st;

    *out = NULL;
    if (!c->info.ssl) {
        if (!(*out = amqp_tcp_socket_new(c->conn))) {
            snprintf(err, errlen, "cannot create socket");
            return MQ_ERR;
        }
        return MQ_OK;
    }
    if (!(sock = amqp_ssl_socket_new(c->conn))) {
        snprintf(err, errlen, "cannot create TLS socket");
        return MQ_ERR;
    }
    st = amqp_ssl_socket_set_ssl_versions(sock, AMQP_TLSv1_2, AMQP_TLSvLATEST);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "TLS 1.2: %s", amqp_error_string2(st));
        return MQ_ERR_CONFIG;
    }
    st = amqp_ssl_socket_set_cacert(sock, c->tls.cacertfile);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "cacertfile %s: %s", c->tls.cacertfile, amqp_error_string2(st));
        return MQ_ERR_CONFIG;
    }
    if (c->tls.certfile) {
        st = amqp_ssl_socket_set_key(sock, c->tls.certfile, c->tls.keyfile);
        if (st != AMQP_STATUS_OK) {
            snprintf(err, errlen, "certfile %s / keyfile %s: %s", c->tls.certfile, c->tls.keyfile,
                     amqp_error_string2(st));
            return MQ_ERR_CONFIG;
        }
    }
    /* Both are on by default in 0.11; said here so that nobody has to know. */
    amqp_ssl_socket_set_verify_peer(sock, 1);
    amqp_ssl_socket_set_verify_hostname(sock, 1);
    *out = sock;
    return MQ_OK;
}

/* Logs in, telling the broker what we understand: basic.cancel when our
 * queue goes away (consumer_cancel_notify; without it the broker cancels a
 * consumer silently), and connection.close with a reply code when the login
 * is refused (authentication_failure_close). */
static int login(mq_conn *c, char *err, size_t errlen)
{
    amqp_table_entry_t caps[3], props[2];
    amqp_table_t cap_table = {3, caps}, prop_table = {2, props};
    static const char *const names[] = {"consumer_cancel_notify", "authentication_failure_close",
                                        "publisher_confirms"};
    for (int i = 0; i < 3; i++) {
        caps[i].key = amqp_cstring_bytes(names[i]);
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table = cap_table;
    props[1].key = amqp_cstring_bytes("product");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("ordersuite");
    return mq__rpc_check(
        c,
        amqp_login_with_properties(c->conn, c->info.vhost, 0, FRAME_MAX, c->heartbeat, &prop_table,
                                   AMQP_SASL_METHOD_PLAIN, c->info.user, c->info.password),
        "login", err, errlen);
}

static int open_endpoint(mq_conn *c, char *err, size_t errlen);

/* Tries the endpoints in turn (mq_check_url says in which order) until one
 * opens. A refusal that is the same on every node (the login, the TLS
 * settings: MQ_ERR_CONFIG) ends the round at once. */
int mq__open_connection(mq_conn *c, char *err, size_t errlen)
{
    int start = c->cur < 0 ? 0 : (c->cur + 1) % c->nep, rc = MQ_ERR;

    for (int k = 0; k < c->nep; k++) {
        int i = (start + k) % c->nep;
        c->info = c->ep[i].info;
        c->tls = c->ep[i].tls;
        rc = open_endpoint(c, err, errlen);
        if (rc == MQ_OK) {
            if (c->nep > 1)
                log_info("broker: connected to endpoint %d of %d (%s:%d)", i + 1, c->nep,
                         c->info.host, c->info.port);
            c->cur = i;
            return MQ_OK;
        }
        if (rc == MQ_ERR_CONFIG)
            return rc;
    }
    if (c->nep > 1) {
        char last[MQ_ERR_LEN];
        snprintf(last, sizeof(last), "%s", err);
        snprintf(err, errlen, "none of the %d endpoints answered (the last: %s)", c->nep, last);
    }
    return rc;
}

/* One attempt at the endpoint in c->info / c->tls. */
static int open_endpoint(mq_conn *c, char *err, size_t errlen)
{
    amqp_socket_t *sock;
    struct timeval tv = {5, 0}, rpc = {30, 0};
    int st, rc;

    mq_disconnect(c);
    c->conn = amqp_new_connection();
    if (!c->conn) {
        snprintf(err, errlen, "out of memory");
        return MQ_ERR;
    }
    if ((rc = new_socket(c, &sock, err, errlen)) != MQ_OK) {
        amqp_destroy_connection(c->conn);
        c->conn = NULL;
        return rc;
    }
    st = amqp_socket_open_noblock(sock, c->info.host, c->info.port, &tv);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "connect to %s:%d: %s", c->info.host, c->info.port,
                 amqp_error_string2(st));
        /* A broker whose certificate we do not trust will not be trusted
         * on the next attempt either. */
        if (st == AMQP_STATUS_SSL_PEER_VERIFY_FAILED ||
            st == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED) {
            amqp_destroy_connection(c->conn);
            c->conn = NULL;
            return MQ_ERR_CONFIG;
        }
        goto fail;
    }
    /* Without an RPC timeout a broker that stops answering hangs us forever. */
    amqp_set_rpc_timeout(c->conn, &rpc);
    rc = login(c, err, errlen);
    if (rc != MQ_OK) {
        amqp_destroy_connection(c->conn);
        c->conn = NULL;
        return rc;
    }
    MQ_SET_CONNECTED(c, 1);
    amqp_channel_open(c->conn, MQ_CHANNEL);
    rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "channel.open", err, errlen);
    if (rc != MQ_OK) {
        mq_disconnect(c);
        return rc;
    }
    return MQ_OK;
fail:
    amqp_destroy_connection(c->conn);
    c->conn = NULL;
    return MQ_ERR;
}

int mq_connect_publisher(mq_conn *c, char *err, size_t errlen)
{
    int rc = mq__open_connection(c, err, errlen);
    if (rc != MQ_OK)
        return rc;
    amqp_confirm_select(c->conn, MQ_CHANNEL);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "confirm.select", err, errlen)) !=
        MQ_OK)
        goto fail;
    c->next_seq = 1;
    return MQ_OK;
fail:
    mq_disconnect(c);
    return rc;
}

int mq_connect_consumer(mq_conn *c, char *err, size_t errlen)
{
    int rc;
    if (!c->topo) {
        snprintf(err, errlen, "consumer has no topology");
        return MQ_ERR_CONFIG;
    }
    if ((rc = mq__open_connection(c, err, errlen)) != MQ_OK)
        return rc;
    if ((rc = mq_declare_topology(c, c->topo, err, errlen)) != MQ_OK)
        goto fail;
    amqp_basic_qos(c->conn, MQ_CHANNEL, 0, (uint16_t)c->prefetch, 0);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "basic.qos", err, errlen)) != MQ_OK)
        goto fail;
    amqp_basic_consume(c->conn, MQ_CHANNEL, amqp_cstring_bytes(c->topo->queue), amqp_empty_bytes, 0,
                       0 /* manual ack */, 0, amqp_empty_table);
    if ((rc = mq__rpc_check(c, amqp_get_rpc_reply(c->conn), "basic.consume", err, errlen)) != MQ_OK)
        goto fail;
    return MQ_OK;
fail:
    mq_disconnect(c);
    return rc;
}

int mq_connect_retry(mq_conn *c, int consumer, int timeout_ms, volatile sig_atomic_t *stop,
                     char *err, size_t errlen)
{
    backoff b;
    int64_t wait;
    int rc;

    backoff_init(&b, 200, 10000);
    backoff_until(&b, timeout_ms);
    for (;;) {
        rc = consumer ? mq_connect_consumer(c, err, errlen) : mq_connect_publisher(c, err, errlen);
        if (rc == MQ_OK || rc == MQ_ERR_CONFIG || (wait = backoff_next(&b)) < 0)
            return rc;
        log_warn("broker not reachable (%s); retrying in %lld ms", err, (long long)wait);
        if (util_sleep_ms(wait, stop))
            return rc;
    }
}
