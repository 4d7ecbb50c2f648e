/*
 * mq_msg.c — the pure parts of the messaging helper (see mq.h, mq_int.h):
 * parsing an AMQP URL, writing and reading header tables (every AMQP
 * integer kind a foreign client may send), reading the x-death header, the
 * one rule for a delivery's event type (mq_event_type), turning an envelope
 * into an mq_delivery, the retry-tier choice (mq_settle_plan) and the names
 * of the retry and dead-letter queues.
 *
 * Nothing here opens a socket or keeps state: every function depends only
 * on its arguments: tests/check_units_mq.c calls them with no broker.
 */
#include "mq_int.h"
#include "events.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

int mq_retry_queue_name(const char *service, int ms, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s.retry.%dms", service, ms);
    return n >= 0 && (size_t)n < outlen ? 0 : -1;
}

int mq_dlq_name(const char *service, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s.dlq", service);
    return n >= 0 && (size_t)n < outlen ? 0 : -1;
}

/* ----------------------------------------------------------------- URLs */

int mq__parse_url(char *buf, struct amqp_connection_info *info, mq__tls_opts *t, char *err,
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

int mq__parse_urls(char *buf, mq__endpoint *ep, int max, int *n, char *err, size_t errlen)
{
    char *p = buf, *comma;
    char why[MQ_ERR_LEN];
    int k = 0, many = strchr(buf, ',') != NULL;

    *n = 0;
    do {
        comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        if (k == max) {
            snprintf(err, errlen, "more than %d endpoints", max);
            return -1;
        }
        if (!*p && many) {
            snprintf(err, errlen, "endpoint %d is empty (a stray comma?)", k + 1);
            return -1;
        }
        if (mq__parse_url(p, &ep[k].info, &ep[k].tls, why, sizeof(why)) < 0) {
            if (many)
                snprintf(err, errlen, "endpoint %d: %s", k + 1, why);
            else
                snprintf(err, errlen, "%s", why);
            return -1;
        }
        if (k > 0 && (strcmp(ep[k].info.user, ep[0].info.user) != 0 ||
                      strcmp(ep[k].info.vhost, ep[0].info.vhost) != 0)) {
            snprintf(err, errlen,
                     "endpoint %d names another user or vhost than endpoint 1: the endpoints are "
                     "the nodes of one broker",
                     k + 1);
            return -1;
        }
        k++;
        p = comma ? comma + 1 : NULL;
    } while (p);
    *n = k;
    return 0;
}

/* -------------------------------------------------------- header tables */

void mq__arg_str(amqp_table_entry_t *e, const char *k, const char *v)
{
    e->key = amqp_cstring_bytes(k);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = amqp_cstring_bytes(v);
}

void mq__arg_int(amqp_table_entry_t *e, const char *k, int64_t v)
{
    e->key = amqp_cstring_bytes(k);
    e->value.kind = AMQP_FIELD_KIND_I64;
    e->value.value.i64 = v;
}

static void set_header(amqp_table_entry_t *e, const mq_header *h)
{
    if (h->str)
        mq__arg_str(e, h->key, h->str);
    else
        mq__arg_int(e, h->key, h->num);
}

int mq__headers_encode(const mq_msg *m, amqp_table_entry_t hdr[MQ_MAX_HEADERS])
{
    int nh = 0;
    /* Every caller sends a handful (mq_forward six): more is a bug, not a
     * message to cut short. */
    assert(m->nheaders < MQ_MAX_HEADERS - 2);
    if (m->schema_version >= 0)
        mq__arg_int(&hdr[nh++], MQ_H_SCHEMA_VERSION,
                    m->schema_version ? m->schema_version : EV_SCHEMA_VERSION);
    for (size_t i = 0; i < m->nheaders && nh < MQ_MAX_HEADERS - 2; i++)
        set_header(&hdr[nh++], &m->headers[i]);
    /* The two slots kept free above: the trace context. */
    if (m->traceparent && *m->traceparent) {
        mq__arg_str(&hdr[nh++], MQ_H_TRACEPARENT, m->traceparent);
        if (m->tracestate && *m->tracestate)
            mq__arg_str(&hdr[nh++], MQ_H_TRACESTATE, m->tracestate);
    }
    return nh;
}

static void copy_bytes(char *dst, size_t size, amqp_bytes_t b)
{
    size_t n = b.len < size - 1 ? b.len : size - 1;
    memcpy(dst, b.bytes, n);
    dst[n] = '\0';
}

int mq__header_int(const amqp_table_t *t, const char *key, int64_t *out)
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
            /* Clamped: past every limit a caller checks, never negative. */
            *out =
                e->value.value.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)e->value.value.u64;
            return 0;
        default:
            return -1;
        }
    }
    return -1;
}

int mq__header_str(const amqp_table_t *t, const char *key, char *out, size_t size)
{
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len != strlen(key) || memcmp(e->key.bytes, key, e->key.len) != 0)
            continue;
        if (e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES)
            return -1;
        /* A NUL inside would cut the C string: "valid prefix\0junk" is not
         * the valid prefix, it is no value of ours. */
        if (e->value.value.bytes.len &&
            memchr(e->value.value.bytes.bytes, '\0', e->value.value.bytes.len))
            return -1;
        copy_bytes(out, size, e->value.value.bytes);
        return 0;
    }
    return -1;
}

/* The x-death header's first entry (the last death): its queue, exchange
 * and first routing key into r (pointing into buf). */
static void death_of(const amqp_table_t *h, mq_route *r, char buf[3][MQ_NAME_LEN])
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
        if (mq__header_str(first, "queue", buf[0], sizeof(buf[0])) == 0)
            r->death_queue = buf[0];
        if (mq__header_str(first, "exchange", buf[1], sizeof(buf[1])) == 0)
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

/* ------------------------------------------------- a delivery's event type */

static int str_is(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* Whether broker user `user` may publish `key` on sales.events: the key's
 * prefix (up to its first dot) is the user's topic, as scripts/suite.sh
 * and broker-perms.sh grant it (the user is the service's name; a service's
 * prefix is its name but for order-api's "order", and pos publishes
 * "sale"). */
static int key_owned_by(const char *key, const char *user)
{
    static const struct {
        const char *prefix, *user;
    } named[] = {{"order", "order-api"}, {"sale", "pos"}};
    const char *dot = key ? strchr(key, '.') : NULL;
    size_t n;

    if (!dot || !user || dot == key)
        return 0;
    n = (size_t)(dot - key);
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        if (strlen(named[i].prefix) == n && memcmp(key, named[i].prefix, n) == 0)
            return strcmp(user, named[i].user) == 0;
        if (strcmp(user, named[i].user) == 0)
            return 0;
    }
    return strlen(user) == n && memcmp(key, user, n) == 0;
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
 *     routing key, believed only when the broker-checked user-id is that
 *     key's owner (key_owned_by): x-death is the publisher's to pre-set and
 *     the broker only counts up an entry naming the same queue and reason,
 *     so a forged entry survives our work queue's delivery limit into our
 *     DLQ; an x-original-routing-key on it is its publisher's, never
 *     believed), or when it carries our broker user as user-id (the broker
 *     refuses a user-id that is not the publisher's own, and every publish of
 *     mq_publish.c sets it, so only our own retry copies do):
 *     x-original-routing-key.
 *     Anything else: forged. */
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
        if (!key_owned_by(r->death_key, r->user_id)) {
            snprintf(why, whylen, "forged: x-death's %s published by %s, not by its owner",
                     r->death_key, r->user_id ? r->user_id : "no user-id");
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

/* See mq_int.h. */
int mq__to_delivery(const amqp_envelope_t *env, const char *own, const char *own_user,
                    mq_delivery *d, char *why, size_t whylen)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    static const amqp_table_t empty = {0, NULL};
    const amqp_table_t *h = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : &empty;
    /* AMQP shortstrs (at most 255 bytes) fit whole. */
    char ex[MQ_NAME_LEN], rk[MQ_NAME_LEN], orig[MQ_NAME_LEN], user[MQ_NAME_LEN];
    char dbuf[3][MQ_NAME_LEN];
    mq_route r = {0};
    int64_t v;
    int forged;

    memset(d, 0, sizeof(*d));
    copy_bytes(ex, sizeof(ex), env->exchange);
    copy_bytes(rk, sizeof(rk), env->routing_key);
    snprintf(d->exchange, sizeof(d->exchange), "%s", ex);
    r.exchange = ex;
    r.routing_key = rk;
    if (mq__header_str(h, MQ_H_ORIGINAL_KEY, orig, sizeof(orig)) == 0)
        r.original_key = orig;
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG) {
        copy_bytes(user, sizeof(user), p->user_id);
        r.user_id = user;
    }
    death_of(h, &r, dbuf);
    forged = mq_event_type(&r, own, own_user, d->routing_key, sizeof(d->routing_key), why, whylen);
    /* Not the key it came under: a forged event dead-lettered onto
     * sales.events arrives under the event's own key, and the copy the
     * worker sends to its DLQ (x-original-routing-key from d, user-id its
     * own) would be believed when the DLQ is replayed. */
    if (forged)
        snprintf(d->routing_key, sizeof(d->routing_key), "%s", own);
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
        mq__header_int(h, MQ_H_SCHEMA_VERSION, &v) == 0 && v >= 0 && v < 1000000 ? (int)v : -1;
    d->attempt = mq__header_int(h, MQ_H_ATTEMPT, &v) == 0 && v >= 0 && v < 1000 ? (int)v : 0;
    mq__header_str(h, MQ_H_REASON, d->reason, sizeof(d->reason));
    mq__header_str(h, MQ_H_ERROR, d->error, sizeof(d->error));
    mq__header_str(h, MQ_H_SERVICE, d->failed_service, sizeof(d->failed_service));
    mq__header_str(h, MQ_H_TRACEPARENT, d->traceparent, sizeof(d->traceparent));
    mq__header_str(h, MQ_H_TRACESTATE, d->tracestate, sizeof(d->tracestate));
    if (mq__header_int(h, MQ_H_FAILED_AT, &v) == 0)
        d->failed_at = v;
    d->redelivered = env->redelivered;
    d->delivery_count =
        mq__header_int(h, MQ_H_DELIVERY_COUNT, &v) == 0 && v >= 0 && v < 1000000 ? (int)v : 0;
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

/* ----------------------------------------------------- retry-tier choice */

static int ntiers(const mq_topology *t)
{
    int n = 0;
    while (n < MQ_MAX_TIERS && t->retry_ms[n] > 0)
        n++;
    return n;
}

void mq_settle_plan(const mq_topology *t, int attempts, mq_result r, mq_plan *p)
{
    int fits;
    memset(p, 0, sizeof(*p));
    p->tier = -1;
    if (r == MQ_RETRY) {
        p->forward = 1;
        p->attempt = attempts + 1;
        if (p->attempt <= ntiers(t)) {
            p->tier = p->attempt - 1;
            assert(p->tier >= 0 && p->tier < MQ_MAX_TIERS);
            p->exchange = MQ_RETRY_EXCHANGE;
            /* It fits: mq_declare_topology declared the queue by this name. */
            fits = mq_retry_queue_name(t->queue, t->retry_ms[p->tier], p->routing_key,
                                       sizeof(p->routing_key)) == 0;
            assert(fits);
            (void)fits;
            return;
        }
        p->exchange = MQ_DLX;
        p->reason = "retries-exhausted";
    } else if (r == MQ_REJECT) {
        p->forward = 1;
        p->attempt = attempts;
        p->exchange = MQ_DLX;
        p->reason = "rejected";
    } else {
        assert(r == MQ_DONE); /* a handler answers one of the three */
        return;               /* ack */
    }
    /* The broker took the queue by this name: at most 255 bytes. */
    fits = snprintf(p->routing_key, sizeof(p->routing_key), "%s", t->queue) <
           (int)sizeof(p->routing_key);
    assert(fits);
    (void)fits;
}
