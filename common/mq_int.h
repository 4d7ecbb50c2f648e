/*
 * mq_int.h — what the files of the messaging helper share, and services
 * never see: the body of the opaque mq_conn and the functions one mq_*.c
 * file calls in another (prefix mq__). Services include mq.h only.
 *
 * The files (each says what it is for at its top):
 *   mq_conn.c     the handle, URL, socket/TLS, login, (re)connecting
 *   mq_topology.c exchanges, queues and bindings
 *   mq_publish.c  publishing with confirms, heartbeats of a publisher
 *   mq_consume.c  the consume loop: batches, settling, forwarding
 *   mq_tool.c     the DLQ tool's one-off get / settle / depth / purge
 *   mq_msg.c      the pure parts: header tables, a delivery's event type,
 *                 the retry-tier choice, queue names (no socket: a unit
 *                 test links it alone)
 */
#ifndef ORDERSUITE_MQ_INT_H
#define ORDERSUITE_MQ_INT_H

#include "mq.h"

#include <amqp.h>

#define MQ_CHANNEL 1 /* the one channel of every connection */

/* TLS settings from an amqps:// URL's query (see mq_check_url); they point
 * into the URL buffer. */
typedef struct {
    const char *cacertfile; /* the CA that signed the broker's certificate */
    const char *certfile;   /* optional client certificate ... */
    const char *keyfile;    /* ... and its unencrypted PEM key */
} mq__tls_opts;

/* One broker endpoint of the URL list; its strings point into the URL buffer. */
typedef struct {
    struct amqp_connection_info info;
    mq__tls_opts tls;
} mq__endpoint;

struct mq_conn {
    char *url_buf; /* amqp_parse_url points the endpoints' strings into this */
    mq__endpoint ep[MQ_MAX_ENDPOINTS];
    int nep; /* how many endpoints the URL list has (1..MQ_MAX_ENDPOINTS) */
    int cur; /* the endpoint of the last connection that opened; -1 = none yet */
    /* The current endpoint's (copies of ep[cur]'s, or of the one being tried). */
    struct amqp_connection_info info;
    mq__tls_opts tls;
    char *app_id;
    const mq_topology *topo;
    int prefetch, heartbeat;
    amqp_connection_state_t conn;
    int connected;
    metrics *metrics;
    uint64_t next_seq; /* publisher: delivery tag of the next publish */
    int reopen;        /* publisher: nacked; the next publish opens a new connection */
    int reply_code;    /* of the broker's last channel.close / connection.close; 0 = none */
    mq_stats stats;
};

#define MQ_STAT_ADD(c, f, n) __atomic_fetch_add(&(c)->stats.f, (n), __ATOMIC_RELAXED)
/* `connected` is read by health checks on other threads. */
#define MQ_SET_CONNECTED(c, v) __atomic_store_n(&(c)->connected, (v), __ATOMIC_RELAXED)

/* ------------------------------------------------------------ mq_conn.c */

/* Turns an RPC reply into an mq_status and a message in err; records the
 * broker's reply code in c->reply_code (0 when there was none). */
int mq__rpc_check(mq_conn *c, amqp_rpc_reply_t r, const char *what, char *err, size_t errlen);

/* Drops any connection and opens a new one: socket, login, channel. */
int mq__open_connection(mq_conn *c, char *err, size_t errlen);

/* ------------------------------------------------------------- mq_msg.c */

/* Splits buf (an AMQP URL, modified in place) into the URL proper, parsed
 * into info (its strings point into buf), and its TLS query parameters.
 * Returns 0, or -1 with the reason. */
int mq__parse_url(char *buf, struct amqp_connection_info *info, mq__tls_opts *t, char *err,
                  size_t errlen);

/* Splits buf (a comma-separated list of AMQP URLs, modified in place) into
 * at most max endpoints with mq__parse_url, into ep, and sets *n. Every
 * endpoint must name the same user and vhost (they are one broker: a
 * cluster's nodes). Returns 0, or -1 with the reason (naming the endpoint
 * by its place in the list when there are several). */
int mq__parse_urls(char *buf, mq__endpoint *ep, int max, int *n, char *err, size_t errlen);

/* A table entry pointing at k and v (not copied). */
void mq__arg_str(amqp_table_entry_t *e, const char *k, const char *v);
void mq__arg_int(amqp_table_entry_t *e, const char *k, int64_t v);

/* The headers table of a publish of m into hdr (pointing into m): its
 * schema_version, then m's own headers. Returns the number of entries, at
 * most MQ_MAX_HEADERS. */
int mq__headers_encode(const mq_msg *m, amqp_table_entry_t hdr[MQ_MAX_HEADERS]);

/* Reads header key of t: any AMQP integer kind into *out (a u64 past
 * INT64_MAX, which a foreign client may send, as INT64_MAX), or a longstr or
 * bytes value into out (size bytes, NUL-terminated, cut at size - 1).
 * Return 0, or -1 when the key is absent or of another kind. */
int mq__header_int(const amqp_table_t *t, const char *key, int64_t *out);
int mq__header_str(const amqp_table_t *t, const char *key, char *out, size_t size);

/* Fills d from env, delivered to the queues of service own (own_user its
 * broker user); the event type is mq_event_type's. Returns 0, or -1 with
 * the reason in why when the delivery is forged (not to be handled; d is
 * filled all the same, its routing key set to own, which no handler takes,
 * so the dead-letter copy made from d names no event and a replay of it is
 * refused again; the key it came under stays in why). d->body points into
 * env. */
int mq__to_delivery(const amqp_envelope_t *env, const char *own, const char *own_user,
                    mq_delivery *d, char *why, size_t whylen);

#endif
