/*
 * http.c — the HTTP server on libmicrohttpd (see http.h).
 *
 * Over 600 lines: the streamed bodies (http_stream) live here with the
 * requests and the job threads because they share the server's state and
 * its connections' suspend/resume, whose rules (resume only what is
 * suspended, nothing suspended at MHD_stop_daemon) hold across the three.
 */
#include "http.h"
#include "trace.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <cJSON.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct http_server {
    http_opts o;
    struct MHD_Daemon *d;
    pthread_key_t tls;
    /* The job threads that run the routes which may block (everything but
     * http_route.quick), so that MHD's own threads never wait on a database
     * and /healthz is answered whatever the API is waiting for. */
    pthread_t *jobs;
    int njobs;
    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    http_req *qhead, *qtail; /* requests waiting for a job thread */
    int qlen;                /* how many: at most o.queue_max */
    int qstop;
    pthread_mutex_t slock;
    http_stream *streams; /* the streams the server still holds, ended by http_stop */
};

struct http_req {
    http_server *srv;
    struct MHD_Connection *conn;
    char method[16];
    char *path;
    const char *rest;
    char *body;
    size_t len, cap;
    int too_large;  /* the body passed max_body */
    size_t dropped; /* bytes of a too-large body thrown away */
    int answered;
    const http_route *rt; /* the route a job thread runs */
    const char *route;    /* its name for the span when the handler set one */
    http_resp out;        /* its answer */
    atomic_int done;      /* the job thread has filled out (then resumes the connection) */
    int64_t queued_ms;    /* when it joined the job queue */
    http_req *next;       /* in the job queue */
};

/* A streamed body. Two references: the server's (given back once MHD is
 * done with the response, or the request ended before it was sent) and the
 * caller's (http_stream_free). */
struct http_stream {
    pthread_mutex_t lock;
    struct MHD_Connection *conn;
    http_server *srv;
    http_stream_read_fn read;
    void (*closed)(void *);
    void *cls;
    atomic_int refs;
    int paused;               /* suspended by the reader until a wake (under lock) */
    int woken;                /* a wake came since the reader last looked (under lock) */
    int ending;               /* the server stops: end the body (under lock) */
    int done;                 /* the server is done with it (under lock) */
    http_stream *prev, *next; /* in srv->streams, while the server holds it */
};

const char *http_method(const http_req *r)
{
    return r->method;
}

const char *http_path(const http_req *r)
{
    return r->path;
}

void http_set_route(http_req *r, const char *route)
{
    r->route = route;
}

const char *http_path_rest(const http_req *r)
{
    return r->rest ? r->rest : "";
}

const char *http_query(const http_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *http_header(const http_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, key);
}

const char *http_body(const http_req *r, size_t *len)
{
    *len = r->len;
    return r->body ? r->body : "";
}

http_server *http_server_of(const http_req *r)
{
    return r->srv;
}

void *http_thread_local(http_server *s)
{
    return pthread_getspecific(s->tls);
}

void http_set_thread_local(http_server *s, void *v)
{
    pthread_setspecific(s->tls, v);
}

void http_respond(http_resp *out, int status, const char *content_type, char *body)
{
    free(out->body);
    out->status = status;
    out->content_type = content_type;
    out->body = body;
}

void http_json(http_resp *out, int status, char *json)
{
    http_respond(out, status, "application/json", json);
}

void http_problem(http_resp *out, int status, const char *title, const char *detail,
                  const char *field)
{
    cJSON *p = cJSON_CreateObject();
    char *s = NULL;
    if (p && cJSON_AddStringToObject(p, "type", "about:blank") &&
        cJSON_AddStringToObject(p, "title", title) &&
        cJSON_AddNumberToObject(p, "status", status) &&
        (!detail || cJSON_AddStringToObject(p, "detail", detail)) &&
        (!field || cJSON_AddStringToObject(p, "field", field)))
        s = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    http_respond(out, status, "application/problem+json", s ? s : strdup("{}"));
}

/* ------------------------------------------------------------ streams */

static void stream_unref(http_stream *st)
{
    if (atomic_fetch_sub(&st->refs, 1) == 1) {
        pthread_mutex_destroy(&st->lock);
        free(st);
    }
}

http_stream *http_stream_new(http_req *r, http_stream_read_fn read, void (*closed)(void *),
                             void *cls)
{
    http_stream *st = calloc(1, sizeof(*st));
    http_server *s = r->srv;
    if (!st)
        return NULL;
    pthread_mutex_init(&st->lock, NULL);
    st->conn = r->conn;
    st->srv = s;
    st->read = read;
    st->closed = closed;
    st->cls = cls;
    atomic_init(&st->refs, 2);
    pthread_mutex_lock(&s->slock);
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    pthread_mutex_unlock(&s->slock);
    return st;
}

void http_stream_respond(http_resp *out, const char *content_type, http_stream *st)
{
    http_respond(out, 200, content_type, NULL);
    out->stream = st;
}

void http_stream_wake(http_stream *st)
{
    pthread_mutex_lock(&st->lock);
    st->woken = 1;
    /* Resumed only when the reader suspended it: MHD forbids resuming a
     * connection that is not suspended. A paused connection is not being
     * closed by MHD, so none of its callbacks can be waiting on st->lock. */
    if (st->paused && !st->done) {
        st->paused = 0;
        MHD_resume_connection(st->conn);
    }
    pthread_mutex_unlock(&st->lock);
}

void http_stream_free(http_stream *st)
{
    if (st)
        stream_unref(st);
}

/* MHD's content reader: the source's bytes, or a suspended connection
 * when it has none (never 0 without a suspension: MHD would call again at
 * once, a busy loop on its thread). */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_stream *st = cls;
    (void)pos;
    for (;;) {
        long n;
        pthread_mutex_lock(&st->lock);
        if (st->ending) {
            pthread_mutex_unlock(&st->lock);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        st->woken = 0;
        pthread_mutex_unlock(&st->lock);
        n = st->read(st->cls, buf, max);
        if (n != 0)
            return n > 0 ? (ssize_t)n : MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&st->lock);
        if (!st->woken && !st->ending) {
            st->paused = 1;
            MHD_suspend_connection(st->conn);
            pthread_mutex_unlock(&st->lock);
            return 0;
        }
        pthread_mutex_unlock(&st->lock); /* woken meanwhile: read again */
    }
}

/* The server is done with st (MHD's free callback, or the request ended
 * before its answer was sent): the source's closed, then the server's
 * reference. */
static void stream_done(void *cls)
{
    http_stream *st = cls;
    http_server *s = st->srv;
    pthread_mutex_lock(&st->lock);
    st->done = 1;
    pthread_mutex_unlock(&st->lock);
    pthread_mutex_lock(&s->slock);
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    pthread_mutex_unlock(&s->slock);
    st->closed(st->cls);
    stream_unref(st);
}

/* http_stop: every stream still held ends, and a suspended one is resumed
 * (MHD_stop_daemon must not meet a suspended connection). The references
 * taken under slock keep them alive while each is woken outside it. */
static void streams_end(http_server *s)
{
    http_stream **all = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&s->slock);
    for (http_stream *st = s->streams; st; st = st->next)
        cap++;
    all = cap ? calloc(cap, sizeof(*all)) : NULL;
    for (http_stream *st = s->streams; st && all; st = st->next) {
        atomic_fetch_add(&st->refs, 1);
        all[n++] = st;
    }
    pthread_mutex_unlock(&s->slock);
    if (cap && !all)
        log_error("http: out of memory ending %zu streams", cap);
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&all[i]->lock);
        all[i]->ending = 1;
        pthread_mutex_unlock(&all[i]->lock);
        http_stream_wake(all[i]);
        stream_unref(all[i]);
    }
    free(all);
}

int http_add_header(http_resp *out, const char *name, const char *value)
{
    http_header_line *h;
    if (out->nheaders >= HTTP_HEADERS_MAX || strlen(name) >= sizeof(h->name) ||
        strlen(value) >= sizeof(h->value)) {
        log_error("http: header %s not added (%d held, or too long)", name, out->nheaders);
        return -1;
    }
    h = &out->headers[out->nheaders++];
    memcpy(h->name, name, strlen(name) + 1);
    memcpy(h->value, value, strlen(value) + 1);
    return 0;
}

static enum MHD_Result queue_resp(struct MHD_Connection *c, http_resp *out)
{
    struct MHD_Response *resp;
    enum MHD_Result ok;
    char *body = out->body ? out->body : strdup("");
    size_t len = body ? strlen(body) : 0;

    out->body = NULL;
    if (out->stream) {
        http_stream *st = out->stream;
        out->stream = NULL; /* the response has it now, or it is closed here */
        free(body);
        resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_done);
        if (!resp) {
            stream_done(st);
            return MHD_NO;
        }
    } else {
        resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
            free(body);
            return MHD_NO;
        }
    }
    if (out->content_type)
        MHD_add_response_header(resp, "Content-Type", out->content_type);
    if (out->location[0])
        MHD_add_response_header(resp, "Location", out->location);
    /* Every answer: a browser never guesses a type other than the one
     * given (a JSON body sniffed as HTML would run as a page). */
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    for (int i = 0; i < out->nheaders && i < HTTP_HEADERS_MAX; i++)
        MHD_add_response_header(resp, out->headers[i].name, out->headers[i].value);
    ok = MHD_queue_response(c, (unsigned)out->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static void too_large(const http_server *s, http_resp *out)
{
    char detail[96];
    snprintf(detail, sizeof(detail), "the request body is larger than %zu bytes", s->o.max_body);
    http_problem(out, 413, "Content Too Large", detail, NULL);
}

/* A 503 that asks the client to come back (the job queue is full, or the
 * request waited past its deadline). */
static void busy(http_resp *out, const char *detail)
{
    http_problem(out, 503, "Service Unavailable", detail, NULL);
    http_add_header(out, "Retry-After", "1");
}

/* Finds the route; on a known path with another method, fills allow. */
static const http_route *route(const http_server *s, http_req *r, char *allow, size_t allowlen)
{
    allow[0] = '\0';
    for (size_t i = 0; i < s->o.nroutes; i++) {
        const http_route *rt = &s->o.routes[i];
        size_t n = strlen(rt->path);
        int match = rt->prefix ? strncmp(r->path, rt->path, n) == 0 && r->path[n] != '\0'
                               : strcmp(r->path, rt->path) == 0;
        if (!match)
            continue;
        if (strcmp(rt->method, r->method) == 0) {
            r->rest = rt->prefix ? r->path + n : "";
            return rt;
        }
        if (!strstr(allow, rt->method)) {
            size_t k = strlen(allow);
            snprintf(allow + k, allowlen - k, "%s%s", k ? ", " : "", rt->method);
        }
    }
    return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    http_server *s = cls;
    http_req *r = *req_cls;
    http_resp out;
    const http_route *rt;
    char allow[128];

    (void)version;
    memset(&out, 0, sizeof(out));
    if (!r) {
        const char *cl;
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->srv = s;
        r->conn = c;
        snprintf(r->method, sizeof(r->method), "%s", method);
        r->path = strdup(url);
        if (!r->path) {
            free(r);
            return MHD_NO;
        }
        *req_cls = r;
        cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body) {
            /* Refused before a byte of the body is read. MHD 0.9.75 accepts a
             * response on the first call (then closes the connection), or
             * after the whole upload, but not in between. */
            r->answered = 1;
            too_large(s, &out);
            return queue_resp(c, &out);
        }
        return MHD_YES;
    }
    if (r->answered) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (r->too_large || r->len + *upload_data_size > s->o.max_body) {
            /* A chunked body past the limit: drop it, answer 413 at its end;
             * one that keeps coming is cut off. */
            r->too_large = 1;
            r->dropped += *upload_data_size;
            *upload_data_size = 0;
            return r->dropped > 4 * s->o.max_body ? MHD_NO : MHD_YES;
        }
        if (r->len + *upload_data_size + 1 > r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 4096;
            char *b;
            while (cap < r->len + *upload_data_size + 1)
                cap *= 2;
            b = realloc(r->body, cap);
            if (!b)
                return MHD_NO;
            r->body = b;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, *upload_data_size);
        r->len += *upload_data_size;
        r->body[r->len] = '\0';
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->too_large) {
        r->answered = 1;
        too_large(s, &out);
        return queue_resp(c, &out);
    }
    if (atomic_load_explicit(&r->done, memory_order_acquire)) {
        /* Back from a job thread (the connection was resumed). */
        r->answered = 1;
        return queue_resp(c, &r->out);
    }
    rt = route(s, r, allow, sizeof(allow));
    if (rt && !rt->quick && s->njobs > 0) {
        r->rt = rt;
        pthread_mutex_lock(&s->qlock);
        if (s->qlen >= s->o.queue_max) {
            char detail[128];
            pthread_mutex_unlock(&s->qlock);
            snprintf(detail, sizeof(detail),
                     "%d requests are already waiting for the database; try again shortly",
                     s->o.queue_max);
            busy(&out, detail);
            r->answered = 1;
            return queue_resp(c, &out);
        }
        r->queued_ms = util_now_ms();
        s->qlen++;
        MHD_suspend_connection(c);
        if (s->qtail)
            s->qtail->next = r;
        else
            s->qhead = r;
        s->qtail = r;
        pthread_cond_signal(&s->qcond);
        pthread_mutex_unlock(&s->qlock);
        return MHD_YES;
    }
    if (rt) {
        rt->fn(r, rt->cls ? rt->cls : s->o.cls, &out);
    } else if (allow[0]) {
        http_problem(&out, 405, "Method Not Allowed", "see the Allow header", NULL);
        http_add_header(&out, "Allow", allow);
    } else {
        http_problem(&out, 404, "Not Found", "no such resource", NULL);
    }
    if (!out.status)
        http_problem(&out, 500, "Internal Server Error", "the handler gave no answer", NULL);
    r->answered = 1;
    return queue_resp(c, &out);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_req *r = *req_cls;
    (void)cls;
    (void)c;
    (void)toe;
    if (!r)
        return;
    if (r->out.stream)
        stream_done(r->out.stream); /* its answer was never sent */
    free(r->out.body);
    free(r->path);
    free(r->body);
    free(r);
    *req_cls = NULL;
}

/* Every tracestate header field of a request, joined with commas: W3C
 * trace context lets a list be split over several fields, which are one
 * list. A join past TRACE_STATE_MAX is marked over (and dropped). */
typedef struct {
    char buf[TRACE_STATE_MAX + 1];
    size_t len;
    int seen, over;
} tracestate_join;

static enum MHD_Result join_tracestate(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value)
{
    tracestate_join *j = cls;
    size_t n = value ? strlen(value) : 0;
    (void)kind;
    if (!key || strcasecmp(key, "tracestate") != 0)
        return MHD_YES;
    j->seen = 1;
    if (n == 0)
        return MHD_YES;
    if (j->len + (j->len ? 1 : 0) + n > TRACE_STATE_MAX) {
        j->over = 1;
        return MHD_YES;
    }
    if (j->len)
        j->buf[j->len++] = ',';
    memcpy(j->buf + j->len, value, n);
    j->len += n;
    j->buf[j->len] = '\0';
    return MHD_YES;
}

/* Runs r's route as an HTTP server span (OpenTelemetry's HTTP conventions):
 * the child of the request's traceparent when it has a valid one, else the
 * root of a new trace; an invalid or oversized traceparent or tracestate is
 * ignored (trace_parse), never an error. The span is the job thread's
 * current context while the handler runs, so its log lines and the rows it
 * writes carry it. */
static void run_route(http_server *s, http_req *r)
{
    trace_ctx in;
    trace_span sp;
    char name[TRACE_NAME_MAX];
    const trace_ctx *prev;
    tracestate_join ts = {.len = 0};
    int has;

    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, join_tracestate, &ts);
    /* An over-long list is dropped whole, as trace_parse drops one field. */
    has = trace_parse(http_header(r, "traceparent"), ts.seen && !ts.over ? ts.buf : NULL, &in) == 0;

    snprintf(name, sizeof(name), "%s %s%s", r->method, r->rt->path, r->rt->prefix ? "{id}" : "");
    trace_span_start(&sp, name, TRACE_KIND_SERVER, has ? &in : NULL);
    trace_span_str(&sp, "http.request.method", r->method);
    trace_span_str(&sp, "url.path", r->path);
    trace_span_str(&sp, "url.scheme", "http"); /* the server speaks no TLS itself */
    prev = trace_set_current(&sp.ctx);
    r->rt->fn(r, r->rt->cls ? r->rt->cls : s->o.cls, &r->out);
    trace_set_current(prev);
    /* A prefix route's handler that dispatches on what follows the id
     * (GET /orders/{id}/events) names the route it took. */
    if (r->route)
        snprintf(sp.name, sizeof(sp.name), "%s %s", r->method, r->route);
    trace_span_str(&sp, "http.route", sp.name + strlen(r->method) + 1);
    trace_span_int(&sp, "http.response.status_code", r->out.status);
    if (r->out.status >= 500 || !r->out.status)
        trace_span_fail(&sp, "server error");
    trace_span_end(&sp, NULL);
}

/* A job thread: runs queued requests' handlers, then hands each connection
 * back to MHD, which calls on_request again to send the answer. */
static void *job_main(void *arg)
{
    http_server *s = arg;
    for (;;) {
        http_req *r;
        int64_t waited;
        pthread_mutex_lock(&s->qlock);
        while (!s->qhead && !s->qstop)
            pthread_cond_wait(&s->qcond, &s->qlock);
        r = s->qhead;
        if (r) {
            s->qhead = r->next;
            if (!s->qhead)
                s->qtail = NULL;
            s->qlen--;
        }
        pthread_mutex_unlock(&s->qlock);
        if (!r)
            return NULL; /* stopping, and the queue is empty */
        waited = util_now_ms() - r->queued_ms;
        if (waited > s->o.queue_deadline_ms) {
            /* Its client has waited long enough: an answer now beats the
             * work done late (and maybe twice, when the client retries). */
            char detail[128];
            snprintf(detail, sizeof(detail),
                     "the request waited %lld ms for a worker (limit %d ms); try again shortly",
                     (long long)waited, s->o.queue_deadline_ms);
            busy(&r->out, detail);
        } else {
            run_route(s, r);
        }
        if (!r->out.status)
            http_problem(&r->out, 500, "Internal Server Error", "the handler gave no answer", NULL);
        atomic_store_explicit(&r->done, 1, memory_order_release);
        MHD_resume_connection(r->conn);
    }
}

/* Stops the job threads after they have run what is queued. */
static void jobs_stop(http_server *s)
{
    pthread_mutex_lock(&s->qlock);
    s->qstop = 1;
    pthread_cond_broadcast(&s->qcond);
    pthread_mutex_unlock(&s->qlock);
    for (int i = 0; i < s->njobs; i++)
        pthread_join(s->jobs[i], NULL);
    s->njobs = 0;
}

static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_warn("http: %s", msg);
}

http_server *http_start(const http_opts *o, char *err, size_t errlen)
{
    http_server *s = calloc(1, sizeof(*s));
    struct sockaddr_in addr;
    int needs_jobs = 0;

    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->o.threads = o->threads > 0 ? o->threads : 4;
    s->o.max_body = o->max_body > 0 ? o->max_body : 64 * 1024;
    s->o.conn_timeout_s = o->conn_timeout_s > 0 ? o->conn_timeout_s : 10;
    s->o.conn_limit = o->conn_limit > 0 ? o->conn_limit : 1000;
    s->o.per_ip_limit = o->per_ip_limit > 0 ? o->per_ip_limit : 200;
    s->o.queue_max = o->queue_max > 0 ? o->queue_max : 256;
    s->o.queue_deadline_ms = o->queue_deadline_ms > 0 ? o->queue_deadline_ms : 5000;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->bind ? o->bind : "127.0.0.1", &addr.sin_addr) != 1) {
        snprintf(err, errlen, "not an IPv4 address: %s", o->bind);
        free(s);
        return NULL;
    }
    if (pthread_key_create(&s->tls, o->thread_exit) != 0) {
        snprintf(err, errlen, "pthread_key_create failed");
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->qlock, NULL);
    pthread_cond_init(&s->qcond, NULL);
    pthread_mutex_init(&s->slock, NULL);
    for (size_t i = 0; i < s->o.nroutes; i++)
        needs_jobs |= !s->o.routes[i].quick;
    if (needs_jobs) {
        s->jobs = calloc((size_t)s->o.threads, sizeof(*s->jobs));
        if (!s->jobs) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        for (; s->njobs < s->o.threads; s->njobs++) {
            if (pthread_create(&s->jobs[s->njobs], NULL, job_main, s) != 0) {
                snprintf(err, errlen, "cannot start the HTTP job threads");
                goto fail;
            }
        }
    }
    s->d = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME,
        (uint16_t)o->port, NULL, NULL, on_request, s, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)s->o.threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)s->o.conn_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)s->o.conn_limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)s->o.per_ip_limit, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (in use, or not allowed)",
                 o->bind ? o->bind : "127.0.0.1", o->port);
        goto fail;
    }
    return s;
fail:
    jobs_stop(s);
    free(s->jobs);
    pthread_cond_destroy(&s->qcond);
    pthread_mutex_destroy(&s->qlock);
    pthread_mutex_destroy(&s->slock);
    pthread_key_delete(s->tls);
    free(s);
    return NULL;
}

void http_stop(http_server *s)
{
    if (!s)
        return;
    /* No new connections; the job threads finish what is queued and resume
     * those connections before MHD closes them. */
    MHD_socket lfd = MHD_quiesce_daemon(s->d);
    jobs_stop(s);
    streams_end(s);
    MHD_stop_daemon(s->d);
    if (lfd != MHD_INVALID_SOCKET)
        close(lfd); /* quiesce hands the listening socket to us */
    free(s->jobs);
    pthread_cond_destroy(&s->qcond);
    pthread_mutex_destroy(&s->qlock);
    pthread_mutex_destroy(&s->slock);
    pthread_key_delete(s->tls);
    free(s);
}
