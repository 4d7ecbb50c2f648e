/*
 * http.h — a small HTTP server on libmicrohttpd, for order-api and for the
 * health and metrics endpoints.
 *
 * Routes are a table of {method, path, prefix?, handler}. The server reads
 * request bodies up to a limit (a larger Content-Length is answered 413
 * before the body is read; a chunked body that grows past the limit is cut
 * off with 413), answers unknown paths 404 and known paths with another
 * method 405 with Allow, and errors as application/problem+json (RFC 9457).
 * It runs epoll with a thread pool, a connection timeout, and total and
 * per-IP connection limits. Routes that may block (a database query) run on
 * a pool of job threads (`threads` of them) while MHD's threads, never
 * blocked, keep serving the quick routes (/healthz, /readyz, /metrics): a
 * slow database cannot stall a health check. The queue in front of the job
 * threads is bounded (queue_max: past it a request is answered 503 with
 * Retry-After at once) and has a deadline (queue_deadline_ms: a request that
 * waited longer is answered 503 without running, never late). Responses are queued on the last
 * callback of a request, never the first, so keep-alive works with MHD 0.9.75.
 */
#ifndef ORDERSUITE_HTTP_H
#define ORDERSUITE_HTTP_H

#include <stddef.h>

typedef struct http_req http_req;
typedef struct http_server http_server;
typedef struct http_stream http_stream;

#define HTTP_HEADERS_MAX 6 /* extra headers on one response */

typedef struct {
    char name[64];
    char value[384];
} http_header_line;

typedef struct {
    int status;
    char *body; /* malloc'd; freed by the server */
    const char *content_type;
    /* Headers, sent when not empty. Only the program's own text goes here
     * (/orders/<uuid>, Allow from the route table, Retry-After, a
     * Content-Security-Policy, ...), all shorter than the caps: 255 bytes
     * of Location, 63 of a header's name, 383 of its value. */
    char location[256];
    http_header_line headers[HTTP_HEADERS_MAX]; /* added by http_add_header */
    int nheaders;
    http_stream *stream; /* a streamed body instead of body (http_stream_respond) */
} http_resp;

typedef void (*http_fn)(http_req *r, void *cls, http_resp *out);

typedef struct {
    const char *method;
    const char *path; /* exact path, or a prefix when prefix = 1 */
    int prefix;
    http_fn fn;
    void *cls; /* handed to fn; NULL = the server's http_opts.cls */
    int quick; /* 1: never blocks (no database): run on MHD's own threads */
} http_route;

typedef struct {
    int port;
    const char *bind;      /* IPv4 address; NULL = 127.0.0.1 (loopback) */
    int threads;           /* MHD threads, and as many job threads; 0 = 4 */
    size_t max_body;       /* bytes; 0 = 64 KiB */
    int conn_timeout_s;    /* 0 = 10 */
    int conn_limit;        /* 0 = 1000 */
    int per_ip_limit;      /* 0 = 200 */
    int queue_max;         /* requests waiting for a job thread; 0 = 256 */
    int queue_deadline_ms; /* longest wait for a job thread; 0 = 5000 */
    const http_route *routes;
    size_t nroutes;
    void *cls;
    void (*thread_exit)(void *tls); /* destructor for http_thread_local values, or NULL */
} http_opts;

/* Starts listening. Returns NULL with err when the port cannot be bound or
 * an option is invalid. */
http_server *http_start(const http_opts *o, char *err, size_t errlen);

/* Stops accepting, finishes the requests in flight, frees s. NULL: no-op. */
void http_stop(http_server *s);

const char *http_method(const http_req *r);
const char *http_path(const http_req *r);
/* The part of the path after the route's prefix ("" for exact routes). */
const char *http_path_rest(const http_req *r);
/* Names the route a prefix route's handler took, for the request's server
 * span ("/orders/{id}/events"; a string that outlives the request). Without
 * it the span is named by the route's prefix and "{id}". */
void http_set_route(http_req *r, const char *route);
/* A query argument or a header, NULL when absent. */
const char *http_query(const http_req *r, const char *key);
const char *http_header(const http_req *r, const char *key);
/* The body (NUL-terminated copy; len excludes the NUL). */
const char *http_body(const http_req *r, size_t *len);

/* A per-thread value for the server's job threads (e.g. a database
 * connection): NULL the first time on a thread; set it with
 * http_set_thread_local. opts.thread_exit frees it when the thread ends. */
void *http_thread_local(http_server *s);
void http_set_thread_local(http_server *s, void *v);
http_server *http_server_of(const http_req *r);

/* Adds the header name: value to out (beside Content-Type and Location;
 * every response also carries X-Content-Type-Options: nosniff). Returns 0,
 * or -1 when out holds HTTP_HEADERS_MAX already or name or value does not
 * fit (nothing is added: a program error, logged). */
int http_add_header(http_resp *out, const char *name, const char *value);

/* Responses. body is taken over (freed by the server). */
void http_respond(http_resp *out, int status, const char *content_type, char *body);
void http_json(http_resp *out, int status, char *json);
/* A problem+json response; field (may be NULL) is the JSON path of the
 * offending input. */
void http_problem(http_resp *out, int status, const char *title, const char *detail,
                  const char *field);

/* ------------------------------------------------------------ streams
 * A body sent as it is made (Server-Sent Events), without a thread per
 * response: when the source has nothing to send, the connection is
 * suspended (MHD_suspend_connection from the content reader, as
 * libmicrohttpd 0.9.75 asks: a reader returning 0 without it makes MHD
 * call it again at once) and costs no thread until http_stream_wake
 * resumes it. MHD's connection timeout does not run while it waits.
 */

/* Called on an MHD thread for more of the body: copies at most max bytes
 * into buf and returns how many; 0 when there is nothing to send yet (the
 * connection then waits for http_stream_wake); -1 for the end of the body. */
typedef long (*http_stream_read_fn)(void *cls, char *buf, size_t max);

/* A stream for r's answer, reading with read(cls). closed(cls) is called
 * once, on some thread of the server, when the server is done with it (the
 * body ended, the client went away, the server stopped, or it was never
 * sent): read is never called after that. The caller owns one reference
 * and gives it back with http_stream_free (at any time: after it the caller
 * may no longer wake it). NULL when out of memory. */
http_stream *http_stream_new(http_req *r, http_stream_read_fn read, void (*closed)(void *),
                             void *cls);

/* The source has more (or its end): resumes the connection if it waits.
 * Any thread, until the caller's http_stream_free; a no-op once closed. */
void http_stream_wake(http_stream *st);

/* Gives back the caller's reference. NULL: no-op. */
void http_stream_free(http_stream *st);

/* Answers 200 with content_type and st's body (out takes st over). */
void http_stream_respond(http_resp *out, const char *content_type, http_stream *st);

#endif
