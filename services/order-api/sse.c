/*
 * sse.c — GET /orders/{id}/events: an order's status changes as Server-Sent
 * Events, live, from whichever order-api instance consumed them.
 *
 * Each event is one entry of the order's timeline:
 *
 *   id: <the entry's seq>
 *   data: {"order_id":"…","status":"RESERVED","at":"…"}
 *
 * A stream starts with the entries after Last-Event-ID (all of them without
 * one: the last is the order's current state), then sends each new entry as
 * it commits, and ends after a final status (api_status_final). Coming back
 * with the final entry's id gets 204, which tells an EventSource to stop
 * reconnecting.
 *
 * No thread waits for a stream. A job thread checks the request (the
 * client's order, the limits) and hands the connection a stream (http.h):
 * while it has nothing to send, libmicrohttpd holds it suspended. One
 * thread per instance, the hub, holds a database connection that LISTENs on
 * order_events (a trigger on orders.order_timeline NOTIFYs the order id at
 * each commit, migrations/0017), reads the new entries of the orders that
 * have streams, appends them to those streams and wakes them; it also
 * writes the keep-alive comments and ends idle streams. After losing the
 * database it reconnects and reads every stream's order again, so a change
 * missed meanwhile is still sent.
 *
 * Bounds: SSE_MAX_STREAMS per instance (503 past it), SSE_CLIENT_MAX_STREAMS
 * per client, i.e. per token (429), and the HTTP server's per-IP connection
 * limit; a stream with no status change for SSE_IDLE_TIMEOUT_MS is ended
 * (the client may come back with Last-Event-ID), and a comment is sent
 * every SSE_KEEPALIVE_MS, which is also how a client that went away is
 * noticed (a suspended connection is not watched by libmicrohttpd).
 *
 * Locks: the hub's (its list and counts) is never held while a connection
 * is woken, and the server's threads never take it: they take only a
 * stream's own lock (its buffer), so the hub's lock cannot wait on
 * libmicrohttpd's. Only the hub unlinks and frees a stream, so it walks the
 * list without the lock (new streams are only ever put at its head).
 *
 * Just over 600 lines: the route, the hub and a stream share the stream's
 * fields and the lock rules above, which read best in one file.
 */
#include "api.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SSE_CHANNEL    "order_events"
#define SSE_BUF_MAX    65536 /* bytes a stream may hold unsent before it is ended */
#define SSE_RETRY_MS   3000  /* the reconnection delay an EventSource is told */
#define SSE_BACKOFF_MS 1000  /* between the hub's attempts to reach the database */

typedef struct sse_stream sse_stream;

struct sse_stream {
    sse_stream *next; /* in the hub's list */
    api_sse *hub;
    http_stream *hs;
    char order_id[UUID_STR_LEN];
    char client[API_CLIENT_MAX + 1];
    /* The hub thread's own. */
    long long after; /* the last entry sent (its seq) */
    int dirty;       /* the order may have new entries: read them */
    int queried;     /* in this round's query */
    int ended;       /* nothing more is appended */
    int touched;     /* appended to this round: wake it */
    int64_t event_ms, write_ms;
    /* Shared with the server's threads. */
    pthread_mutex_t lock;
    char *buf; /* unsent bytes: buf[off..len) */
    size_t len, off, cap;
    int end;  /* the body ends once buf is sent */
    int gone; /* the server is done with it: the hub frees it */
};

struct api_sse {
    api_sse_opts o;
    pthread_t th;
    int wake_fd;
    atomic_int stop;
    pthread_mutex_t lock;
    sse_stream *head; /* under lock for insert and unlink; see the banner */
    int total;        /* streams in the list */
};

/* ------------------------------------------------------------- pure parts */

int api_status_final(const char *status)
{
    static const char *const finals[] = {"CONFIRMED", "REJECTED", "CANCELLED", "EXPIRED"};
    for (size_t i = 0; status && i < sizeof(finals) / sizeof(finals[0]); i++) {
        if (strcmp(status, finals[i]) == 0)
            return 1;
    }
    return 0;
}

int api_last_event_id(const char *v, long long *out)
{
    long long n = 0;
    size_t i = 0;
    *out = 0;
    if (!v)
        return 0;
    for (; v[i]; i++) {
        if (v[i] < '0' || v[i] > '9' || i >= 18)
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    if (i == 0)
        return -1;
    *out = n;
    return 0;
}

api_sse_admission api_sse_admit(int total, int of_client, int max_total, int max_client)
{
    if (of_client >= max_client)
        return API_SSE_CLIENT_FULL;
    if (total >= max_total)
        return API_SSE_FULL;
    return API_SSE_ADMIT;
}

/* ---------------------------------------------------------- one stream */

static void hub_wake(api_sse *h)
{
    uint64_t one = 1;
    (void)!write(h->wake_fd, &one, sizeof(one));
}

/* Appends text to st's unsent bytes (under its lock); past SSE_BUF_MAX (a
 * client that does not read) or out of memory, the stream ends instead. */
static void stream_append(sse_stream *st, const char *text, int end)
{
    size_t n = strlen(text);
    pthread_mutex_lock(&st->lock);
    if (st->off > 0 && st->off == st->len)
        st->off = st->len = 0;
    if (st->len + n > st->cap && st->len + n <= SSE_BUF_MAX) {
        size_t cap = st->cap ? st->cap : 512;
        char *b;
        while (cap < st->len + n)
            cap *= 2;
        if ((b = realloc(st->buf, cap)) != NULL) {
            st->buf = b;
            st->cap = cap;
        }
    }
    if (st->len + n <= st->cap) {
        memcpy(st->buf + st->len, text, n);
        st->len += n;
    } else {
        log_warn("sse: a stream of order %s ends: %zu bytes unsent", st->order_id, st->len);
        end = 1;
    }
    st->end |= end;
    pthread_mutex_unlock(&st->lock);
    st->touched = 1;
    st->ended |= end;
    st->write_ms = util_now_ms();
}

/* http_stream_read_fn, on an MHD thread. */
static long stream_read(void *cls, char *buf, size_t max)
{
    sse_stream *st = cls;
    long n;
    pthread_mutex_lock(&st->lock);
    n = (long)(st->len - st->off < max ? st->len - st->off : max);
    if (n > 0) {
        memcpy(buf, st->buf + st->off, (size_t)n);
        st->off += (size_t)n;
    }
    if (n == 0 && st->end)
        n = -1;
    pthread_mutex_unlock(&st->lock);
    return n;
}

/* The server is done with it: the hub unlinks and frees it. */
static void stream_closed(void *cls)
{
    sse_stream *st = cls;
    pthread_mutex_lock(&st->lock);
    st->gone = 1;
    pthread_mutex_unlock(&st->lock);
    hub_wake(st->hub);
}

static void stream_free(sse_stream *st)
{
    http_stream_free(st->hs);
    pthread_mutex_destroy(&st->lock);
    free(st->buf);
    free(st);
}

/* ------------------------------------------------------------- the hub */

/* The first stream of the list, as the hub walks it. */
static sse_stream *first(api_sse *h)
{
    sse_stream *st;
    pthread_mutex_lock(&h->lock);
    st = h->head;
    pthread_mutex_unlock(&h->lock);
    return st;
}

/* Unlinks and frees the streams the server is done with. */
static void reap(api_sse *h)
{
    sse_stream *dead = NULL, **pp;
    pthread_mutex_lock(&h->lock);
    for (pp = &h->head; *pp;) {
        sse_stream *st = *pp;
        int gone;
        pthread_mutex_lock(&st->lock);
        gone = st->gone;
        pthread_mutex_unlock(&st->lock);
        if (gone) {
            *pp = st->next;
            st->next = dead;
            dead = st;
            h->total--;
        } else {
            pp = &st->next;
        }
    }
    pthread_mutex_unlock(&h->lock);
    while (dead) {
        sse_stream *next = dead->next;
        stream_free(dead);
        dead = next;
    }
}

static void mark_dirty(api_sse *h, const char *order_id)
{
    for (sse_stream *st = first(h); st; st = st->next) {
        if (!order_id || strcmp(st->order_id, order_id) == 0)
            st->dirty = 1;
    }
}

/* Connects and LISTENs; 0, or -1 with err. */
static int hub_connect(db_conn *db, char *err, size_t errlen)
{
    if (db_connect(db, err, errlen) != DB_OK)
        return -1;
    return db_exec(db, "LISTEN " SSE_CHANNEL, 0, NULL, NULL, err, errlen) == DB_OK ? 0 : -1;
}

/* Waits up to ms for a NOTIFY or a wake; marks the notified orders' streams.
 * -1 when the connection broke. */
static int hub_wait(api_sse *h, db_conn *db, int ms)
{
    PGconn *pg = db ? db_pg(db) : NULL;
    struct pollfd fds[2] = {{.fd = h->wake_fd, .events = POLLIN}, {.fd = -1}};
    uint64_t v;
    PGnotify *n;
    int nfds = 1;

    if (pg && PQsocket(pg) >= 0) {
        fds[1] = (struct pollfd){.fd = PQsocket(pg), .events = POLLIN};
        nfds = 2;
        /* A NOTIFY that arrived while refresh's query waited for its
         * result was read by libpq then: it is queued already and the
         * socket shows nothing, so poll would sit out the timer (up to
         * 1 s) before it is seen. Taken now, and no wait. */
        while ((n = PQnotifies(pg)) != NULL) {
            mark_dirty(h, n->extra);
            PQfreemem(n);
            ms = 0;
        }
    }
    if (poll(fds, (nfds_t)nfds, ms) < 0 && errno != EINTR)
        return -1;
    if (fds[0].revents & POLLIN)
        (void)!read(h->wake_fd, &v, sizeof(v));
    if (!pg)
        return 0;
    if (!PQconsumeInput(pg))
        return -1;
    while ((n = PQnotifies(pg)) != NULL) {
        mark_dirty(h, n->extra);
        PQfreemem(n);
    }
    return PQstatus(pg) == CONNECTION_OK ? 0 : -1;
}

/* Reads the new entries of every dirty stream's order in one query and
 * appends them. DB_OK, or the query's error (the streams stay dirty). */
static int refresh(api_sse *h, db_conn *db)
{
    static const char sql[] =
        "SELECT t.order_id::text AS order_id, t.seq, t.status,"
        " json_build_object('order_id', t.order_id, 'status', t.status, 'at', t.at)::text AS data"
        " FROM (SELECT order_id, min(after) AS after FROM json_to_recordset($1::json)"
        "   AS w(order_id uuid, after bigint) GROUP BY order_id) w"
        " JOIN order_timeline t ON t.order_id = w.order_id AND t.seq > w.after"
        " ORDER BY t.order_id, t.seq";
    char err[DB_ERR_LEN], *param = NULL;
    size_t len = 0, cap = 0;
    PGresult *res = NULL;
    int rc, any = 0;

    for (sse_stream *st = first(h); st; st = st->next) {
        char item[96 + UUID_STR_LEN];
        size_t n;
        st->queried = 0;
        if (!st->dirty || st->ended)
            continue;
        st->queried = 1;
        n = (size_t)snprintf(item, sizeof(item), "%s{\"order_id\":\"%s\",\"after\":%lld}",
                             any ? "," : "[", st->order_id, st->after);
        if (len + n + 2 > cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            char *p;
            while (ncap < len + n + 2)
                ncap *= 2;
            if (!(p = realloc(param, ncap))) {
                free(param);
                return DB_ERR_TRANSIENT;
            }
            param = p;
            cap = ncap;
        }
        memcpy(param + len, item, n + 1);
        len += n;
        any = 1;
    }
    if (!any)
        return DB_OK;
    memcpy(param + len, "]", 2);
    {
        const char *p[] = {param};
        rc = db_execp(db, "sse_entries", sql, 1, p, &res, err, sizeof(err));
    }
    free(param);
    if (rc != DB_OK) {
        log_warn("sse: reading new timeline entries: %s", err);
        return rc;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        const char *oid = db_get(res, i, "order_id"), *status = db_get(res, i, "status");
        const char *data = db_get(res, i, "data"), *seqs = db_get(res, i, "seq");
        long long seq = seqs ? strtoll(seqs, NULL, 10) : 0;
        int final = api_status_final(status);
        if (!oid || !data || seq <= 0)
            continue;
        for (sse_stream *st = first(h); st; st = st->next) {
            char *ev;
            size_t n;
            if (!st->dirty || st->ended || seq <= st->after || strcmp(st->order_id, oid) != 0)
                continue;
            n = strlen(data) + 64;
            if (!(ev = malloc(n)))
                continue; /* stays dirty: read again next round */
            snprintf(ev, n, "id: %lld\ndata: %s\n\n", seq, data);
            stream_append(st, ev, final);
            free(ev);
            st->after = seq;
            st->event_ms = util_now_ms();
        }
    }
    PQclear(res);
    /* Every stream the query read for is up to date now (one opened since
     * stays dirty: it was not in the query). */
    for (sse_stream *st = first(h); st; st = st->next) {
        if (st->queried)
            st->dirty = 0;
    }
    return DB_OK;
}

/* Keep-alive comments and idle ends; returns the ms until the next one is
 * due (at most 1000). */
static int timers(api_sse *h)
{
    int64_t now = util_now_ms(), next = 1000;
    char text[96];
    for (sse_stream *st = first(h); st; st = st->next) {
        int64_t idle_at = st->event_ms + h->o.idle_ms, ka_at = st->write_ms + h->o.keepalive_ms;
        if (st->ended)
            continue;
        if (now >= idle_at) {
            snprintf(text, sizeof(text), ": no change for %ld ms; reconnect with Last-Event-ID\n\n",
                     h->o.idle_ms);
            stream_append(st, text, 1);
            continue;
        }
        if (now >= ka_at) {
            stream_append(st, ": keep-alive\n\n", 0);
            ka_at = now + h->o.keepalive_ms;
        }
        if (idle_at - now < next)
            next = idle_at - now;
        if (ka_at - now < next)
            next = ka_at - now;
    }
    return next < 10 ? 10 : (int)next;
}

static void wake_touched(api_sse *h)
{
    for (sse_stream *st = first(h); st; st = st->next) {
        if (st->touched) {
            st->touched = 0;
            http_stream_wake(st->hs);
        }
    }
}

static void *hub_main(void *arg)
{
    api_sse *h = arg;
    db_conn *db = db_new(h->o.database_url, ORDER_SERVICE "-sse");
    char err[DB_ERR_LEN];
    int connected = 0, wait_ms = 0;
    int64_t retry_at = 0;

    if (!db) {
        log_error("sse: out of memory");
        return NULL;
    }
    db_set_timeouts(db, h->o.timeouts);
    while (!atomic_load(&h->stop)) {
        if (!connected && util_now_ms() >= retry_at) {
            if (hub_connect(db, err, sizeof(err)) == 0) {
                connected = 1;
                mark_dirty(h, NULL); /* what changed while not listening */
                log_info("sse: listening on %s", SSE_CHANNEL);
            } else {
                log_warn("sse: database: %s", err);
                retry_at = util_now_ms() + SSE_BACKOFF_MS;
            }
        }
        if (hub_wait(h, connected ? db : NULL, wait_ms) < 0) {
            log_warn("sse: the database connection broke; reconnecting");
            connected = 0;
        }
        reap(h);
        if (connected && refresh(h, db) == DB_ERR_TRANSIENT &&
            (!db_pg(db) || PQstatus(db_pg(db)) != CONNECTION_OK))
            connected = 0;
        wait_ms = timers(h);
        if (!connected && wait_ms > SSE_BACKOFF_MS)
            wait_ms = SSE_BACKOFF_MS;
        wake_touched(h);
    }
    db_free(db);
    return NULL;
}

api_sse *api_sse_start(const api_sse_opts *o, char *err, size_t errlen)
{
    api_sse *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->o = *o;
    pthread_mutex_init(&h->lock, NULL);
    atomic_init(&h->stop, 0);
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->wake_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&h->th, NULL, hub_main, h) != 0) {
        snprintf(err, errlen, "cannot start the event stream thread");
        close(h->wake_fd);
        goto fail;
    }
    return h;
fail:
    pthread_mutex_destroy(&h->lock);
    free(h);
    return NULL;
}

void api_sse_stop(api_sse *h)
{
    if (!h)
        return;
    atomic_store(&h->stop, 1);
    hub_wake(h);
    pthread_join(h->th, NULL);
    /* The HTTP server has stopped: it is done with every stream. */
    while (h->head) {
        sse_stream *st = h->head;
        h->head = st->next;
        stream_free(st);
    }
    close(h->wake_fd);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

/* ------------------------------------------------------------- the route */

static void unavailable(http_resp *out, int status, const char *title, const char *detail)
{
    http_problem(out, status, title, detail, NULL);
    http_add_header(out, "Retry-After", status == 429 ? "5" : "2");
}

/* A new stream of client on order_id after `after`, admitted and in the
 * hub's list, answering r; NULL with out filled (429, 503). */
static sse_stream *stream_open(api_sse *h, http_req *r, const char *client, const char *order_id,
                               long long after, http_resp *out)
{
    sse_stream *st = calloc(1, sizeof(*st));
    char detail[160], retry[32];
    int of_client = 0;
    api_sse_admission a;

    if (!st) {
        unavailable(out, 503, "Service Unavailable", "out of memory");
        return NULL;
    }
    pthread_mutex_init(&st->lock, NULL);
    st->hub = h;
    snprintf(st->order_id, sizeof(st->order_id), "%s", order_id);
    snprintf(st->client, sizeof(st->client), "%s", client);
    st->after = after;
    st->dirty = 1;
    st->event_ms = st->write_ms = util_now_ms();
    snprintf(retry, sizeof(retry), "retry: %d\n\n", SSE_RETRY_MS);
    stream_append(st, retry, 0); /* so the headers go out at once */
    st->touched = 0;
    pthread_mutex_lock(&h->lock);
    for (sse_stream *s = h->head; s; s = s->next)
        of_client += strcmp(s->client, client) == 0;
    a = api_sse_admit(h->total, of_client, h->o.max_streams, h->o.client_max_streams);
    if (a == API_SSE_ADMIT && !(st->hs = http_stream_new(r, stream_read, stream_closed, st)))
        a = API_SSE_FULL;
    if (a == API_SSE_ADMIT) {
        st->next = h->head;
        h->head = st;
        h->total++;
    }
    pthread_mutex_unlock(&h->lock);
    if (a == API_SSE_ADMIT)
        return st;
    if (a == API_SSE_CLIENT_FULL) {
        snprintf(detail, sizeof(detail),
                 "this client has %d event streams open, the most it may (SSE_CLIENT_MAX_STREAMS)",
                 of_client);
        unavailable(out, 429, "Too Many Requests", detail);
    } else {
        snprintf(detail, sizeof(detail),
                 "this server holds %d event streams, the most it may (SSE_MAX_STREAMS)",
                 h->o.max_streams);
        unavailable(out, 503, "Service Unavailable", detail);
    }
    log_info("sse: stream of order %s for %s refused: %s", order_id, client, detail);
    stream_free(st);
    return NULL;
}

void api_sse_get(http_req *r, const api_ctx *ctx, db_conn *db, const char *client, const char *rest,
                 http_resp *out)
{
    static const char sql[] = "SELECT o.status, coalesce((SELECT max(t.seq) FROM order_timeline t"
                              " WHERE t.order_id = o.id), 0) AS last FROM orders o"
                              " WHERE o.id = $1::uuid AND o.client_id = $2";
    char id[UUID_STR_LEN], err[DB_ERR_LEN];
    const char *p[] = {id, client};
    long long after, last;
    PGresult *res;
    int rc, final;
    sse_stream *st;

    if (strlen(rest) != UUID_STR_LEN - 1 + strlen("/events")) {
        http_problem(out, 404, "Not Found", "not an order id", NULL);
        return;
    }
    memcpy(id, rest, UUID_STR_LEN - 1);
    id[UUID_STR_LEN - 1] = '\0';
    if (!uuid_valid(id)) {
        http_problem(out, 404, "Not Found", "not an order id", NULL);
        return;
    }
    if (api_last_event_id(http_header(r, "Last-Event-ID"), &after) < 0) {
        http_problem(out, 400, "Bad Request",
                     "Last-Event-ID must be the id of an event of this stream (1-18 digits)",
                     "Last-Event-ID");
        return;
    }
    rc = db_execp(db, "sse_order", sql, 2, p, &res, err, sizeof(err));
    if (rc != DB_OK) {
        log_error("database: %s", err);
        if (rc == DB_ERR_TRANSIENT)
            unavailable(out, 503, "Service Unavailable",
                        "the database is unavailable; retry later");
        else
            http_problem(out, 500, "Internal Server Error", "the order could not be read", NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        http_problem(out, 404, "Not Found", "no such order", NULL);
        return;
    }
    final = api_status_final(db_get(res, 0, "status"));
    last = strtoll(db_get(res, 0, "last") ? db_get(res, 0, "last") : "0", NULL, 10);
    PQclear(res);
    if (after > last) {
        /* seq is one counter over all orders: an id past this order's last
         * entry is no event of its stream (another order's, or made up).
         * Resuming after it would skip this order's next entries, the final
         * one too, and the stream would never end. */
        http_problem(out, 400, "Bad Request",
                     "Last-Event-ID is past this order's last event; reconnect without it",
                     "Last-Event-ID");
        return;
    }
    if (final && after >= last) {
        /* Nothing after the final entry: 204 tells an EventSource to stop. */
        http_respond(out, 204, NULL, NULL);
        return;
    }
    if (!(st = stream_open(ctx->sse, r, client, id, after, out)))
        return;
    http_stream_respond(out, "text/event-stream", st->hs);
    http_add_header(out, "Cache-Control", "no-store");
    hub_wake(ctx->sse);
}
