/*
 * mq.c — the messaging helper (see mq.h).
 */
#include "mq.h"
#include "events.h"
#include "log.h"
#include "util.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define CHANNEL            1
#define CONFIRM_TIMEOUT_MS 30000
#define FRAME_MAX          131072

/* TLS settings from an amqps:// URL's query (see mq.h); they point into the
 * URL buffer. */
typedef struct {
    const char *cacertfile; /* the CA that signed the broker's certificate */
    const char *certfile;   /* optional client certificate ... */
    const char *keyfile;    /* ... and its unencrypted PEM key */
} tls_opts;

struct mq_conn {
    char *url_buf; /* amqp_parse_url points info's strings into this */
    struct amqp_connection_info info;
    tls_opts tls;
    char *app_id;
    const mq_topology *topo;
    int prefetch, heartbeat;
    amqp_connection_state_t conn;
    int connected;
    metrics *metrics;
    uint64_t next_seq; /* publisher: delivery tag of the next publish */
    int reply_code;    /* of the broker's last channel.close / connection.close; 0 = none */
    mq_stats stats;
};

#define STAT_ADD(c, f, n) __atomic_fetch_add(&(c)->stats.f, (n), __ATOMIC_RELAXED)
/* `connected` is read by health checks on other threads. */
#define SET_CONNECTED(c, v) __atomic_store_n(&(c)->connected, (v), __ATOMIC_RELAXED)

void mq_retry_queue_name(const char *service, int ms, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.retry.%dms", service, ms);
}

void mq_dlq_name(const char *service, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.dlq", service);
}

/* Splits buf (an AMQP URL, modified in place) into the URL proper, parsed into
 * info, and its TLS query parameters. Returns 0, or -1 with the reason. */
static int parse_url(char *buf, struct amqp_connection_info *info, tls_opts *t, char *err,
                     size_t errlen)
{
    char *q = strchr(buf, '?'), *p;

    memset(t, 0, sizeof(*t));
    if (q)
        *q++ = '\0';
    if (amqp_parse_url(buf, info) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "not an AMQP URL (amqp[s]://user:password@host:port/vhost)");
        return -1;
    }
    for (p = q; p && *p;) {
        char *next = strchr(p, '&'), *val = strchr(p, '=');
        if (next)
            *next++ = '\0';
        if (!val || val == p || !val[1]) {
            snprintf(err, errlen, "URL query: \"%.64s\" is not name=value", p);
            return -1;
        }
        *val++ = '\0';
        if (strchr(val, '%')) {
            snprintf(err, errlen, "URL query: %.32s: percent-escapes are not supported", p);
            return -1;
        }
        if (strcmp(p, "cacertfile") == 0)
            t->cacertfile = val;
        else if (strcmp(p, "certfile") == 0)
            t->certfile = val;
        else if (strcmp(p, "keyfile") == 0)
            t->keyfile = val;
        else {
            snprintf(err, errlen,
                     "URL query: unknown parameter \"%.32s\" (cacertfile, certfile, keyfile)", p);
            return -1;
        }
        p = next;
    }
    if (!info->ssl && (t->cacertfile || t->certfile || t->keyfile)) {
        snprintf(err, errlen, "cacertfile, certfile and keyfile need an amqps:// URL");
        return -1;
    }
    if (info->ssl && !t->cacertfile) {
        snprintf(err, errlen,
                 "amqps:// needs ?cacertfile=PATH (the CA that signed the broker's certificate)");
        return -1;
    }
    if (!t->certfile != !t->keyfile) {
        snprintf(err, errlen,
                 "certfile and keyfile go together (a client certificate and its key)");
        return -1;
    }
    return 0;
}

int mq_check_url(const char *url, char *err, size_t errlen)
{
    struct amqp_connection_info info;
    tls_opts t;
    char *buf = strdup(url);
    int rc = -1;
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (parse_url(buf, &info, &t, err, errlen) < 0)
        goto out;
    /* Files that cannot be read stop the process now, not at every connect. */
    {
        const char *const files[] = {t.cacertfile, t.certfile, t.keyfile};
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
        parse_url(c->url_buf, &c->info, &c->tls, err, sizeof(err)) < 0) {
        mq_free(c);
        return NULL;
    }
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
        amqp_channel_close(c->conn, CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c->conn);
    c->conn = NULL;
    SET_CONNECTED(c, 0);
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
}

/* Turns an RPC reply into a status and a message. Access refused, a missing
 * vhost and mismatched queue arguments will not get better by retrying. */
static int rpc_check(mq_conn *c, amqp_rpc_reply_t r, const char *what, char *err, size_t errlen)
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

static int open_connection(mq_conn *c, char *err, size_t errlen);

int mq_declare_exchanges(mq_conn *c, char *err, size_t errlen)
{
    static const char *const ex[] = {MQ_EXCHANGE, MQ_RETRY_EXCHANGE, MQ_DLX};
    for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
        char what[100];
        int rc;
        snprintf(what, sizeof(what), "exchange.declare %s", ex[i]);
        amqp_exchange_declare(c->conn, CHANNEL, amqp_cstring_bytes(ex[i]),
                              amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
        rc = rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
        if (rc != MQ_OK && c->reply_code == AMQP_PRECONDITION_FAILED && i > 0) {
            /* sales.retry and sales.dlx were direct exchanges before their
             * routing keys were checked (topic permissions apply to topic
             * exchanges only): replace them. Their bindings go with them;
             * each service's --declare-topology binds its queues again. */
            log_warn("%s has another type; replacing it with a topic exchange", ex[i]);
            if ((rc = open_connection(c, err, errlen)) != MQ_OK)
                return rc;
            amqp_exchange_delete(c->conn, CHANNEL, amqp_cstring_bytes(ex[i]), 0);
            if ((rc = rpc_check(c, amqp_get_rpc_reply(c->conn), "exchange.delete", err, errlen)) !=
                MQ_OK)
                return rc;
            amqp_exchange_declare(c->conn, CHANNEL, amqp_cstring_bytes(ex[i]),
                                  amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
            rc = rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
        }
        if (rc != MQ_OK)
            return rc;
    }
    return MQ_OK;
}

static void arg_str(amqp_table_entry_t *e, const char *k, const char *v)
{
    e->key = amqp_cstring_bytes(k);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = amqp_cstring_bytes(v);
}

static void arg_int(amqp_table_entry_t *e, const char *k, int64_t v)
{
    e->key = amqp_cstring_bytes(k);
    e->value.kind = AMQP_FIELD_KIND_I64;
    e->value.value.i64 = v;
}

/* Declares a queue with the arguments it must have from the start. One
 * that exists with other arguments (406: declared by an older version, e.g.
 * with x-delivery-limit, which is now a policy) is used as it is: the
 * channel the refusal closed is opened again and the queue looked up. */
static int declare_queue(mq_conn *c, const char *name, amqp_table_entry_t *args, int nargs,
                         char *err, size_t errlen)
{
    amqp_table_t t = {nargs, args};
    amqp_channel_close_ok_t ok;
    char what[200];
    int rc;
    amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(name), 0, 1, 0, 0, t);
    snprintf(what, sizeof(what), "queue.declare %s", name);
    rc = rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
    if (rc == MQ_OK || c->reply_code != AMQP_PRECONDITION_FAILED)
        return rc;
    log_warn("%s; keeping the queue as it is (delete it when empty to take the new arguments)",
             err);
    if (amqp_send_method(c->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK)
        return MQ_ERR;
    amqp_channel_open(c->conn, CHANNEL);
    if ((rc = rpc_check(c, amqp_get_rpc_reply(c->conn), "channel.open", err, errlen)) != MQ_OK)
        return rc;
    amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(name), 1, 0, 0, 0, amqp_empty_table);
    return rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
}

static int bind_queue(mq_conn *c, const char *queue, const char *exchange, const char *key,
                      char *err, size_t errlen)
{
    char what[300];
    amqp_queue_bind(c->conn, CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    snprintf(what, sizeof(what), "queue.bind %s to %s/%s", queue, exchange, key);
    return rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen);
}

static int handles(const mq_topology *t, const char *key)
{
    for (const char *const *k = t->keys; k && *k; k++) {
        if (strcmp(*k, key) == 0)
            return 1;
    }
    return 0;
}

int mq_declare_topology(mq_conn *c, const mq_topology *t, char *err, size_t errlen)
{
    amqp_table_entry_t a[7];
    char name[160];
    int rc;

    /* The work queue. Only what cannot change goes into its arguments; the
     * delivery limit is a policy (`make migrate`, scripts/broker-perms.sh). */
    arg_str(&a[0], "x-queue-type", "quorum");
    arg_str(&a[1], "x-dead-letter-exchange", MQ_DLX);
    arg_str(&a[2], "x-dead-letter-routing-key", t->queue);
    arg_str(&a[3], "x-dead-letter-strategy", "at-least-once");
    arg_str(&a[4], "x-overflow", "reject-publish");
    if ((rc = declare_queue(c, t->queue, a, 5, err, errlen)) != MQ_OK)
        return rc;
    for (const char *const *k = t->keys; k && *k; k++) {
        if ((rc = bind_queue(c, t->queue, MQ_EXCHANGE, *k, err, errlen)) != MQ_OK)
            return rc;
    }
    /* The bindings follow the routes: every event key of the contract that
     * the service no longer handles is unbound (a no-op when it never was). */
    for (int e = 0; e < EV__COUNT; e++) {
        const char *key = ev_routing_key((ev_type)e);
        char what[300];
        if (handles(t, key))
            continue;
        amqp_queue_unbind(c->conn, CHANNEL, amqp_cstring_bytes(t->queue),
                          amqp_cstring_bytes(MQ_EXCHANGE), amqp_cstring_bytes(key),
                          amqp_empty_table);
        snprintf(what, sizeof(what), "queue.unbind %s from %s/%s", t->queue, MQ_EXCHANGE, key);
        if ((rc = rpc_check(c, amqp_get_rpc_reply(c->conn), what, err, errlen)) != MQ_OK)
            return rc;
    }
    if ((rc = bind_queue(c, t->queue, MQ_RETRY_EXCHANGE, t->queue, err, errlen)) != MQ_OK)
        return rc;
    /* Retry tiers: wait out the TTL, then dead-letter back to the work queue. */
    for (int i = 0; i < MQ_MAX_TIERS && t->retry_ms[i] > 0; i++) {
        mq_retry_queue_name(t->queue, t->retry_ms[i], name, sizeof(name));
        arg_str(&a[0], "x-queue-type", "quorum");
        arg_str(&a[1], "x-dead-letter-exchange", MQ_RETRY_EXCHANGE);
        arg_str(&a[2], "x-dead-letter-routing-key", t->queue);
        arg_str(&a[3], "x-dead-letter-strategy", "at-least-once");
        arg_str(&a[4], "x-overflow", "reject-publish");
        arg_int(&a[5], "x-message-ttl", t->retry_ms[i]);
        if ((rc = declare_queue(c, name, a, 6, err, errlen)) != MQ_OK)
            return rc;
        if ((rc = bind_queue(c, name, MQ_RETRY_EXCHANGE, name, err, errlen)) != MQ_OK)
            return rc;
    }
    /* The dead-letter queue. */
    mq_dlq_name(t->queue, name, sizeof(name));
    arg_str(&a[0], "x-queue-type", "quorum");
    if ((rc = declare_queue(c, name, a, 1, err, errlen)) != MQ_OK)
        return rc;
    return bind_queue(c, name, MQ_DLX, t->queue, err, errlen);
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
    return rpc_check(c,
                     amqp_login_with_properties(c->conn, c->info.vhost, 0, FRAME_MAX, c->heartbeat,
                                                &prop_table, AMQP_SASL_METHOD_PLAIN, c->info.user,
                                                c->info.password),
                     "login", err, errlen);
}

static int open_connection(mq_conn *c, char *err, size_t errlen)
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
    SET_CONNECTED(c, 1);
    amqp_channel_open(c->conn, CHANNEL);
    rc = rpc_check(c, amqp_get_rpc_reply(c->conn), "channel.open", err, errlen);
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
    int rc = open_connection(c, err, errlen);
    if (rc != MQ_OK)
        return rc;
    amqp_confirm_select(c->conn, CHANNEL);
    if ((rc = rpc_check(c, amqp_get_rpc_reply(c->conn), "confirm.select", err, errlen)) != MQ_OK)
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
    if ((rc = open_connection(c, err, errlen)) != MQ_OK)
        return rc;
    if ((rc = mq_declare_topology(c, c->topo, err, errlen)) != MQ_OK)
        goto fail;
    amqp_basic_qos(c->conn, CHANNEL, 0, (uint16_t)c->prefetch, 0);
    if ((rc = rpc_check(c, amqp_get_rpc_reply(c->conn), "basic.qos", err, errlen)) != MQ_OK)
        goto fail;
    amqp_basic_consume(c->conn, CHANNEL, amqp_cstring_bytes(c->topo->queue), amqp_empty_bytes, 0,
                       0 /* manual ack */, 0, amqp_empty_table);
    if ((rc = rpc_check(c, amqp_get_rpc_reply(c->conn), "basic.consume", err, errlen)) != MQ_OK)
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
    int64_t deadline = timeout_ms < 0 ? -1 : util_now_ms() + timeout_ms;
    int rc;

    backoff_init(&b, 200, 10000);
    for (;;) {
        int64_t wait;
        rc = consumer ? mq_connect_consumer(c, err, errlen) : mq_connect_publisher(c, err, errlen);
        if (rc == MQ_OK || rc == MQ_ERR_CONFIG)
            return rc;
        wait = backoff_next(&b);
        if (deadline >= 0 && util_now_ms() + wait > deadline)
            return rc;
        log_warn("broker not reachable (%s); retrying in %lld ms", err, (long long)wait);
        if (util_sleep_ms(wait, stop))
            return rc;
    }
}

/* ------------------------------------------------------------ publishing */

static void set_header(amqp_table_entry_t *e, const mq_header *h)
{
    if (h->str)
        arg_str(e, h->key, h->str);
    else
        arg_int(e, h->key, h->num);
}

static int publish_one(mq_conn *c, const mq_msg *m, char *err, size_t errlen)
{
    amqp_basic_properties_t p;
    amqp_table_entry_t hdr[MQ_MAX_HEADERS + 1];
    int nh = 0, st;

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
    if (m->schema_version >= 0)
        arg_int(&hdr[nh++], MQ_H_SCHEMA_VERSION,
                m->schema_version ? m->schema_version : EV_SCHEMA_VERSION);
    for (size_t i = 0; i < m->nheaders && nh < MQ_MAX_HEADERS; i++)
        set_header(&hdr[nh++], &m->headers[i]);
    p.headers.num_entries = nh;
    p.headers.entries = hdr;

    st = amqp_basic_publish(c->conn, CHANNEL,
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
        (*pending)--;
    }
}

int mq_publish_batch(mq_conn *c, const mq_msg *msgs, size_t n, int *status_out, char *err,
                     size_t errlen)
{
    int *status, *returned;
    uint64_t first_seq;
    size_t pending = n, sent = 0;
    int64_t deadline;
    int rc = MQ_OK;

    if (n == 0)
        return MQ_OK;
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
            amqp_message_t rm;
            amqp_rpc_reply_t r = amqp_read_message(c->conn, f.channel, &rm, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL) {
                rpc_check(c, r, "reading a returned message", err, errlen);
                rc = MQ_ERR;
                break;
            }
            for (size_t i = 0; i < n; i++) {
                if ((rm.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
                    rm.properties.message_id.len == strlen(msgs[i].message_id) &&
                    memcmp(rm.properties.message_id.bytes, msgs[i].message_id,
                           rm.properties.message_id.len) == 0)
                    returned[i] = 1;
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
        SET_CONNECTED(c, 0); /* the channel state is unknown: start afresh */
        mq_disconnect(c);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (status[i] != MQ_OK && rc == MQ_OK) {
                rc = status[i];
                snprintf(err, errlen, "%s %s",
                         rc == MQ_ERR_RETURNED ? "unroutable (no queue bound for)" : "nacked:",
                         msgs[i].routing_key);
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (status[i] == MQ_OK) {
            STAT_ADD(c, published, 1);
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
    SET_CONNECTED(c, 0);
    mq_disconnect(c);
    return MQ_ERR;
}

/* ------------------------------------------------------------- consuming */

static void copy_bytes(char *dst, size_t size, amqp_bytes_t b)
{
    size_t n = b.len < size - 1 ? b.len : size - 1;
    memcpy(dst, b.bytes, n);
    dst[n] = '\0';
}

static int header_int(const amqp_table_t *t, const char *key, int64_t *out)
{
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len != strlen(key) || memcmp(e->key.bytes, key, e->key.len) != 0)
            continue;
        switch (e->value.kind) {
        case AMQP_FIELD_KIND_I8:
            *out = e->value.value.i8;
            return 0;
        case AMQP_FIELD_KIND_U8:
            *out = e->value.value.u8;
            return 0;
        case AMQP_FIELD_KIND_I16:
            *out = e->value.value.i16;
            return 0;
        case AMQP_FIELD_KIND_U16:
            *out = e->value.value.u16;
            return 0;
        case AMQP_FIELD_KIND_I32:
            *out = e->value.value.i32;
            return 0;
        case AMQP_FIELD_KIND_U32:
            *out = e->value.value.u32;
            return 0;
        case AMQP_FIELD_KIND_I64:
            *out = e->value.value.i64;
            return 0;
        case AMQP_FIELD_KIND_U64:
            *out = (int64_t)e->value.value.u64;
            return 0;
        default:
            return -1;
        }
    }
    return -1;
}

static int header_str(const amqp_table_t *t, const char *key, char *out, size_t size)
{
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len != strlen(key) || memcmp(e->key.bytes, key, e->key.len) != 0)
            continue;
        if (e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES)
            return -1;
        copy_bytes(out, size, e->value.value.bytes);
        return 0;
    }
    return -1;
}

/* The x-death header's first entry (the last death): its queue, exchange
 * and first routing key into r (pointing into buf). */
static void death_of(const amqp_table_t *h, mq_route *r, char buf[3][160])
{
    for (int i = 0; i < h->num_entries; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        const amqp_array_t *deaths;
        const amqp_table_t *first;
        if (e->key.len != 7 || memcmp(e->key.bytes, "x-death", 7) != 0)
            continue;
        r->has_death = 1;
        if (e->value.kind != AMQP_FIELD_KIND_ARRAY)
            return;
        deaths = &e->value.value.array;
        if (deaths->num_entries < 1 || deaths->entries[0].kind != AMQP_FIELD_KIND_TABLE)
            return;
        first = &deaths->entries[0].value.table;
        if (header_str(first, "queue", buf[0], sizeof(buf[0])) == 0)
            r->death_queue = buf[0];
        if (header_str(first, "exchange", buf[1], sizeof(buf[1])) == 0)
            r->death_exchange = buf[1];
        for (int k = 0; k < first->num_entries; k++) {
            const amqp_table_entry_t *f = &first->entries[k];
            if (f->key.len == 12 && memcmp(f->key.bytes, "routing-keys", 12) == 0 &&
                f->value.kind == AMQP_FIELD_KIND_ARRAY && f->value.value.array.num_entries > 0 &&
                (f->value.value.array.entries[0].kind == AMQP_FIELD_KIND_UTF8 ||
                 f->value.value.array.entries[0].kind == AMQP_FIELD_KIND_BYTES)) {
                copy_bytes(buf[2], sizeof(buf[2]), f->value.value.array.entries[0].value.bytes);
                r->death_key = buf[2];
            }
        }
        return;
    }
}

static int str_is(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* The one rule for a delivery's event type. The broker checks the publisher's
 * topic permission on the key it publishes with, and nothing else: not the
 * CC/BCC keys it also routes to, not the key a queue's dead-letter arguments
 * name, not what an exchange-to-exchange binding forwards. So:
 *   - through sales.events, the type is the routing key; a copy with x-death
 *     was dead-lettered into sales.events by someone's queue (ours never
 *     do), under a key nobody checked: forged;
 *   - through sales.retry or sales.dlx, only a delivery under our own key
 *     (own: our retry tiers dead-letter to it, our DLQ is bound to it, and
 *     only we and the administrator may publish it) is ours; under any other
 *     key it came by CC/BCC or a binding: forged. Its type is then, without
 *     x-death, the x-original-routing-key we (or the administrator's replay)
 *     wrote: mq_forward always overwrites it with the type we trusted. With
 *     x-death it was dead-lettered into the exchange under our key, which any
 *     queue's arguments can do; it is ours when the broker dead-lettered it
 *     from our own work queue right after it arrived on sales.events (the
 *     type is then the key it was published with there, x-death[0]'s
 *     routing key; an x-original-routing-key on it is its publisher's, never
 *     believed), or when it carries our broker user as user-id (the broker
 *     refuses a user-id that is not the publisher's own, and every publish of
 *     mq.c sets it, so only our own retry copies do): x-original-routing-key.
 *     Anything else: forged.
 * Weak spot: x-death can be pre-set by a publisher and the broker only counts
 * up a matching entry; a forged one matching (own, delivery_limit) survives
 * only if our work queue gives up on the message, i.e. into the DLQ. */
int mq_event_type(const mq_route *r, const char *own, const char *own_user, char *out,
                  size_t outlen, char *why, size_t whylen)
{
    const char *type = r->routing_key ? r->routing_key : "";
    int retry = str_is(r->exchange, MQ_RETRY_EXCHANGE) || str_is(r->exchange, MQ_DLX);

    if (outlen)
        out[0] = '\0';
    if (!retry) {
        if (r->has_death && str_is(r->exchange, MQ_EXCHANGE)) {
            snprintf(why, whylen, "forged: %s dead-lettered into %s by a queue", type, MQ_EXCHANGE);
            return -1;
        }
    } else if (!str_is(r->routing_key, own)) {
        snprintf(why, whylen, "forged: %s through %s, not under %s's own key", type, r->exchange,
                 own);
        return -1;
    } else if (r->has_death && str_is(r->death_queue, own) &&
               str_is(r->death_exchange, MQ_EXCHANGE)) {
        if (!r->death_key) {
            snprintf(why, whylen, "forged: x-death without a routing key");
            return -1;
        }
        type = r->death_key;
    } else if (r->has_death && !str_is(r->user_id, own_user) && !str_is(r->user_id, own)) {
        snprintf(why, whylen, "forged: dead-lettered into %s under %s by another's queue",
                 r->exchange, own);
        return -1;
    } else if (!r->original_key || !r->original_key[0]) {
        snprintf(why, whylen, "forged: no %s through %s", MQ_H_ORIGINAL_KEY, r->exchange);
        return -1;
    } else {
        type = r->original_key;
    }
    snprintf(out, outlen, "%s", type);
    return 0;
}

/* Fills d from env, delivered to the queues of service own (own_user its
 * broker user); the event type is mq_event_type's. Returns 0, or -1 with
 * the reason in why when the delivery is forged (not to be handled). */
static int to_delivery(const amqp_envelope_t *env, const char *own, const char *own_user,
                       mq_delivery *d, char *why, size_t whylen)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    static const amqp_table_t empty = {0, NULL};
    const amqp_table_t *h = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : &empty;
    char ex[128], rk[128], orig[128], user[128], dbuf[3][160];
    mq_route r = {0};
    int64_t v;
    int forged;

    memset(d, 0, sizeof(*d));
    copy_bytes(ex, sizeof(ex), env->exchange);
    copy_bytes(rk, sizeof(rk), env->routing_key);
    r.exchange = ex;
    r.routing_key = rk;
    if (header_str(h, MQ_H_ORIGINAL_KEY, orig, sizeof(orig)) == 0)
        r.original_key = orig;
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG) {
        copy_bytes(user, sizeof(user), p->user_id);
        r.user_id = user;
    }
    death_of(h, &r, dbuf);
    forged = mq_event_type(&r, own, own_user, d->routing_key, sizeof(d->routing_key), why, whylen);
    if (forged)
        copy_bytes(d->routing_key, sizeof(d->routing_key), env->routing_key);
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        copy_bytes(d->message_id, sizeof(d->message_id), p->message_id);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        copy_bytes(d->correlation_id, sizeof(d->correlation_id), p->correlation_id);
    if (p->_flags & AMQP_BASIC_TYPE_FLAG)
        copy_bytes(d->type, sizeof(d->type), p->type);
    if (p->_flags & AMQP_BASIC_APP_ID_FLAG)
        copy_bytes(d->app_id, sizeof(d->app_id), p->app_id);
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
        d->timestamp = (int64_t)p->timestamp;
    d->schema_version =
        header_int(h, MQ_H_SCHEMA_VERSION, &v) == 0 && v >= 0 && v < 1000000 ? (int)v : -1;
    d->attempt = header_int(h, MQ_H_ATTEMPT, &v) == 0 && v >= 0 && v < 1000 ? (int)v : 0;
    header_str(h, MQ_H_REASON, d->reason, sizeof(d->reason));
    header_str(h, MQ_H_ERROR, d->error, sizeof(d->error));
    header_str(h, MQ_H_SERVICE, d->failed_service, sizeof(d->failed_service));
    if (header_int(h, MQ_H_FAILED_AT, &v) == 0)
        d->failed_at = v;
    d->redelivered = env->redelivered;
    d->body = env->message.body.bytes;
    d->len = env->message.body.len;
    d->delivery_tag = env->delivery_tag;
    if (forged)
        return -1;
    if (d->type[0] && strcmp(d->type, d->routing_key) != 0) {
        snprintf(why, whylen, "forged: type %s on a message routed as %s", d->type, d->routing_key);
        return -1;
    }
    return 0;
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
    return mq_publish(pub, &m, err, errlen);
}

static int ntiers(const mq_topology *t)
{
    int n = 0;
    while (n < MQ_MAX_TIERS && t->retry_ms[n] > 0)
        n++;
    return n;
}

/* Runs the handler on one delivery and settles it. Returns MQ_OK, or MQ_ERR
 * when a connection failed (the caller reconnects). */
/* Acks, forwards or requeues one delivery after its handler said r. MQ_ERR
 * when the connection failed. */
static int settle_delivery(mq_conn *cons, mq_conn *pub, const mq_delivery *dd, mq_result r,
                           const char *herr)
{
    mq_delivery d = *dd;
    char perr[MQ_ERR_LEN], dest[160];
    int rc = MQ_OK, attempt;

    if (r == MQ_RETRY) {
        attempt = d.attempt + 1;
        if (attempt <= ntiers(cons->topo)) {
            mq_retry_queue_name(cons->topo->queue, cons->topo->retry_ms[attempt - 1], dest,
                                sizeof(dest));
            rc = mq_forward(pub, cons->topo->queue, &d, attempt, MQ_RETRY_EXCHANGE, dest, NULL,
                            herr, perr, sizeof(perr));
            if (rc == MQ_OK) {
                STAT_ADD(cons, retried, 1);
                metrics_count(cons->metrics, M_RETRIED, d.routing_key, 1);
                log_write(LOG_WARN, d.correlation_id, d.message_id,
                          "%s failed (attempt %d): %s; retrying via %s", d.routing_key, attempt,
                          herr, dest);
            }
        } else {
            rc = mq_forward(pub, cons->topo->queue, &d, attempt, MQ_DLX, cons->topo->queue,
                            "retries-exhausted", herr, perr, sizeof(perr));
            if (rc == MQ_OK) {
                STAT_ADD(cons, dead_lettered, 1);
                metrics_count(cons->metrics, M_DEAD_LETTERED, d.routing_key, 1);
                log_write(LOG_ERROR, d.correlation_id, d.message_id,
                          "%s failed %d times, last: %s; sent to the dead-letter queue",
                          d.routing_key, attempt, herr);
            }
        }
    } else if (r == MQ_REJECT) {
        rc = mq_forward(pub, cons->topo->queue, &d, d.attempt, MQ_DLX, cons->topo->queue,
                        "rejected", herr, perr, sizeof(perr));
        if (rc == MQ_OK) {
            STAT_ADD(cons, dead_lettered, 1);
            metrics_count(cons->metrics, M_DEAD_LETTERED, d.routing_key, 1);
            log_write(LOG_ERROR, d.correlation_id, d.message_id,
                      "%s rejected: %s; sent to the dead-letter queue", d.routing_key, herr);
        }
    }
    if (rc != MQ_OK) {
        /* The copy was not confirmed: hand the message back to the broker
         * rather than lose it. It will be delivered again. */
        log_write(LOG_WARN, d.correlation_id, d.message_id,
                  "could not forward %s (%s); requeueing it", d.routing_key, perr);
        if (amqp_basic_nack(cons->conn, CHANNEL, d.delivery_tag, 0, 1) != AMQP_STATUS_OK)
            return MQ_ERR;
        return MQ_OK;
    }
    if (amqp_basic_ack(cons->conn, CHANNEL, d.delivery_tag, 0) != AMQP_STATUS_OK)
        return MQ_ERR; /* the broker will redeliver; the inbox absorbs it */
    STAT_ADD(cons, acked, 1);
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
    STAT_ADD(cons, consumed, n);
    for (size_t i = 0; i < n && rc == MQ_OK; i++) {
        if (to_delivery(&env[i], cons->topo->queue, cons->info.user, &d[k], errs[k], MQ_ERR_LEN) <
            0) {
            rc = settle_delivery(cons, pub, &d[k], MQ_REJECT, errs[k]);
            continue;
        }
        res[k] = MQ_RETRY;
        errs[k][0] = '\0';
        k++;
    }
    if (rc != MQ_OK)
        return rc;
    if (k > 0)
        bh(d, k, res, errs, ctx);
    for (size_t i = 0; i < k && rc == MQ_OK; i++)
        rc = settle_delivery(cons, pub, &d[i], res[i], errs[i]);
    /* On MQ_ERR the rest stay unacked: the broker delivers them again. */
    return rc;
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
                STAT_ADD(cons, reconnects, 1);
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
            rpc_check(cons, r, "consume", err, errlen);
            log_warn("lost the broker connection: %s; reconnecting", err);
            st = MQ_ERR;
        }
        if (st != MQ_OK) {
            SET_CONNECTED(cons, 0);
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

/* ----------------------------------------------------------- queue tools */

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
    r = amqp_basic_get(c->conn, CHANNEL, amqp_cstring_bytes(queue), 0);
    if ((rc = rpc_check(c, r, "basic.get", err, errlen)) != MQ_OK) {
        SET_CONNECTED(c, 0);
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
    r = amqp_read_message(c->conn, CHANNEL, &g->env.message, 0);
    if ((rc = rpc_check(c, r, "reading a message", err, errlen)) != MQ_OK) {
        amqp_bytes_free(g->env.routing_key);
        amqp_bytes_free(g->env.exchange);
        free(g);
        SET_CONNECTED(c, 0);
        mq_disconnect(c);
        return rc;
    }
    {
        /* A DLQ's copy is shown and replayed, forged or not; a forged one
         * keeps the key it was delivered under (S), which no handler takes.
         * The service is the queue's name without ".dlq". */
        char why[MQ_ERR_LEN], own[128];
        size_t n = strlen(queue);
        if (n > 4 && strcmp(queue + n - 4, ".dlq") == 0)
            n -= 4;
        snprintf(own, sizeof(own), "%.*s", (int)n, queue);
        to_delivery(&g->env, own, c->info.user, &g->d, why, sizeof(why));
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
    int st = ack ? amqp_basic_ack(c->conn, CHANNEL, g->env.delivery_tag, 0)
                 : amqp_basic_nack(c->conn, CHANNEL, g->env.delivery_tag, 0, 1);
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
    ok = amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(queue), 1, 0, 0, 0,
                            amqp_empty_table);
    if (ok)
        return (long)ok->message_count;
    rc = rpc_check(c, amqp_get_rpc_reply(c->conn), queue, err, errlen);
    /* A failed passive declare closes the channel: start afresh. */
    SET_CONNECTED(c, 0);
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
    ok = amqp_queue_purge(c->conn, CHANNEL, amqp_cstring_bytes(queue));
    if (ok)
        return (long)ok->message_count;
    rpc_check(c, amqp_get_rpc_reply(c->conn), "queue.purge", err, errlen);
    SET_CONNECTED(c, 0);
    mq_disconnect(c);
    return MQ_ERR;
}
