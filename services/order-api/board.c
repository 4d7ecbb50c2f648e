/*
 * board.c — the live order board: GET / (one static page, board.html,
 * with its style and script at GET /board.css and GET /board.js, all three
 * built into the binary) and GET /board/queues (every service's queue depth
 * and dead-letter count, for that page).
 *
 * The three files are sent with a Content-Security-Policy that allows
 * scripts, styles and fetches from the page's own origin only, nothing
 * inline (no 'unsafe-inline': the page has no inline script or style), no
 * plugin, no <base>, and no framing (frame-ancestors 'none'), plus
 * Referrer-Policy: no-referrer; http.c adds X-Content-Type-Options:
 * nosniff to every answer. tests/board_check.py fails on any CSP
 * violation in the browser.
 *
 * The page is served without a token: it holds none. The user pastes one
 * into it; the page sends it as "Authorization: Bearer" on every API call,
 * the event streams included (fetch() with a stream reader, not
 * EventSource, which cannot set that header), so no route accepts a token
 * any other way.
 *
 * GET /board/queues answers only the clients listed in BOARD_CLIENTS (403
 * to any other; none by default: `make up`'s services.sh lists the demo
 * client). The queue depths come from the broker, asked here with order-api's own
 * AMQP credentials (a passive queue.declare per queue, which reports its
 * ready messages): the browser never sees a broker credential. A queue the
 * broker does not know (or would not tell) is null in the answer.
 */
#include "api.h"
#include "log.h"
#include "mq.h"
#include "util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A file built into the binary as the symbol sym, with sym_len its length,
 * which the assembler computes (the Makefile rebuilds board.o when a file
 * changes). */
#define BOARD_INCBIN(sym, file)                                                                    \
    __asm__(".section .rodata\n"                                                                   \
            ".global " #sym "\n" #sym ":\n"                                                        \
            ".incbin \"" file "\"\n" #sym "_end:\n"                                                \
            ".balign 8\n"                                                                          \
            ".global " #sym "_len\n" #sym "_len:\n"                                                \
            ".quad " #sym "_end - " #sym "\n"                                                      \
            ".previous\n");                                                                        \
    extern const char sym[];                                                                       \
    extern const unsigned long long sym##_len

BOARD_INCBIN(api_board_html, "services/order-api/board.html");
BOARD_INCBIN(api_board_css, "services/order-api/board.css");
BOARD_INCBIN(api_board_js, "services/order-api/board.js");

#define BOARD_CSP                                                                                  \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "                    \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "                 \
    "frame-ancestors 'none'"

/* Answers 200 with a copy of the n bytes of file and the board's headers. */
static void serve_file(http_resp *out, const char *file, unsigned long long n, const char *type)
{
    char *body = malloc((size_t)n + 1);
    if (!body) {
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    memcpy(body, file, (size_t)n);
    body[n] = '\0';
    http_respond(out, 200, type, body);
    http_add_header(out, "Content-Security-Policy", BOARD_CSP);
    http_add_header(out, "Referrer-Policy", "no-referrer");
}

void api_get_board(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    (void)cls;
    serve_file(out, api_board_html, api_board_html_len, "text/html; charset=utf-8");
}

/* GET /favicon.ico: none, said without an error (a 404 would be a console
 * error in every browser that opens the board). */
void api_get_board_favicon(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    (void)cls;
    http_respond(out, 204, NULL, NULL);
    http_add_header(out, "Cache-Control", "max-age=86400");
}

void api_get_board_css(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    (void)cls;
    serve_file(out, api_board_css, api_board_css_len, "text/css; charset=utf-8");
}

void api_get_board_js(http_req *r, void *cls, http_resp *out)
{
    (void)r;
    (void)cls;
    serve_file(out, api_board_js, api_board_js_len, "text/javascript; charset=utf-8");
}

static const char *const board_services[] = {"order-api", "pos", "billing", "inventory", "email"};

/* The depth of queue, or -1 (unknown: the broker refused or is away).
 * A failed passive declare closes the connection; *down is set when the
 * broker could not be reached, so the caller stops asking (one connection
 * attempt per fetch, not one per queue). */
static long depth(mq_conn *c, const char *queue, int *down)
{
    char err[256];
    long d;
    if (*down)
        return -1;
    if (!mq_is_connected(c) && mq_connect_publisher(c, err, sizeof(err)) != MQ_OK) {
        log_warn("board: broker: %s", err);
        *down = 1;
        return -1;
    }
    d = mq_queue_depth(c, queue, err, sizeof(err));
    if (d < 0) {
        log_debug("board: queue %s: %s", queue, err);
        return -1;
    }
    return d;
}

/* Appends to buf (cap bytes, *len used); 0 when it would not fit. */
static int put(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int put(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *len)
        return 0;
    *len += (size_t)n;
    return 1;
}

/* The answer, built from the broker (ask 0: every depth null, unasked): a
 * malloc'd JSON document, or NULL (out of memory). pos consumes nothing
 * (it has no queue): null, unasked. */
static char *fetch_queues(int ask)
{
    const char *url = ask ? getenv("AMQP_URL") : NULL;
    mq_opts o = {.url = url, .app_id = "order-api-board"};
    mq_conn *c = url ? mq_new(&o) : NULL;
    size_t ns = sizeof(board_services) / sizeof(board_services[0]);
    size_t cap = 128 + ns * 160, len = 0;
    char *body = malloc(cap);
    int down = c == NULL, ok;

    if (!body) {
        mq_free(c);
        return NULL;
    }
    ok = put(body, cap, &len, "{\"queues\":[");
    for (size_t i = 0; ok && i < ns; i++) {
        char q[64], dq[64], a[24] = "null", b[24] = "null";
        long d, dl;
        if (strcmp(board_services[i], "pos") == 0) {
            ok = put(body, cap, &len,
                     "%s{\"service\":\"pos\",\"queue\":null,\"depth\":null,"
                     "\"dlq\":null,\"dlq_depth\":null}",
                     i ? "," : "");
            continue;
        }
        snprintf(q, sizeof(q), "%s", board_services[i]);
        snprintf(dq, sizeof(dq), "%s.dlq", board_services[i]);
        d = depth(c, q, &down);
        dl = depth(c, dq, &down);
        if (d >= 0)
            snprintf(a, sizeof(a), "%ld", d);
        if (dl >= 0)
            snprintf(b, sizeof(b), "%ld", dl);
        ok = put(body, cap, &len,
                 "%s{\"service\":\"%s\",\"queue\":\"%s\",\"depth\":%s,"
                 "\"dlq\":\"%s\",\"dlq_depth\":%s}",
                 i ? "," : "", board_services[i], q, a, dq, b);
    }
    if (ok)
        ok = put(body, cap, &len, "]}");
    mq_free(c);
    if (!ok) { /* cap is sized for the fixed names above: cannot happen */
        free(body);
        return NULL;
    }
    return body;
}

/* One fetch at a time, its answer reused for CACHE_MS: however many tabs
 * poll, at most one HTTP job thread waits on the broker (which, away or
 * silent, can hold it for the connect and login timeouts), so the others
 * stay free for POST /orders. A request that finds a fetch under way gets
 * the last answer (or every depth null before the first). */
#define CACHE_MS 2000
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static char *cache_body;
static int64_t cache_at;
static int cache_busy;

static char *queues_answer(void)
{
    char *out = NULL, *fresh;
    int64_t now = util_now_ms();

    pthread_mutex_lock(&cache_mu);
    if (cache_body && (cache_busy || now - cache_at < CACHE_MS)) {
        out = strdup(cache_body);
        pthread_mutex_unlock(&cache_mu);
        return out;
    }
    if (cache_busy) {
        pthread_mutex_unlock(&cache_mu);
        return fetch_queues(0);
    }
    cache_busy = 1;
    pthread_mutex_unlock(&cache_mu);

    fresh = fetch_queues(1);

    pthread_mutex_lock(&cache_mu);
    cache_busy = 0;
    if (fresh) {
        free(cache_body);
        cache_body = fresh;
        cache_at = util_now_ms();
        out = strdup(fresh);
    }
    pthread_mutex_unlock(&cache_mu);
    return out;
}

void api_get_board_queues(http_req *r, void *cls, http_resp *out)
{
    const api_ctx *ctx = cls;
    const char *client = api_client_of(r, ctx, out);
    char *body;
    if (!client)
        return;
    /* The depths tell how busy the business is and where it is stuck: the
     * operators' (like /metrics, on the operations port only), not every
     * API client's. */
    if (!api_board_allows(ctx->board_clients, client)) {
        http_problem(out, 403, "Forbidden",
                     "this client may not read the queue depths (BOARD_CLIENTS)", NULL);
        return;
    }
    body = queues_answer();
    if (!body) {
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    http_json(out, 200, body);
}
