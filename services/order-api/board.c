/*
 * board.c — the live order board: GET / (one static page, board.html,
 * built into the binary) and GET /board/queues (every service's queue depth
 * and dead-letter count, for that page).
 *
 * The page is served without a token: it holds none. The user pastes one
 * into it; the page sends it as "Authorization: Bearer" on every API call,
 * the event streams included (fetch() with a stream reader, not
 * EventSource, which cannot set that header), so no route accepts a token
 * any other way.
 *
 * The queue depths come from the broker, asked here with order-api's own
 * AMQP credentials (a passive queue.declare per queue, which reports its
 * ready messages): the browser never sees a broker credential. A queue the
 * broker does not know (or would not tell) is null in the answer.
 */
#include "api.h"
#include "log.h"
#include "mq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* board.html, whole, and its length, which the assembler computes (the
 * Makefile rebuilds board.o when the page changes). */
__asm__(".section .rodata\n"
        ".global api_board_html\n"
        "api_board_html:\n"
        ".incbin \"services/order-api/board.html\"\n"
        "api_board_html_end:\n"
        ".balign 8\n"
        ".global api_board_html_len\n"
        "api_board_html_len:\n"
        ".quad api_board_html_end - api_board_html\n"
        ".previous\n");
extern const char api_board_html[];
extern const unsigned long long api_board_html_len;

static const char *const board_services[] = {"order-api", "pos", "billing", "inventory", "email"};

void api_get_board(http_req *r, void *cls, http_resp *out)
{
    size_t n = (size_t)api_board_html_len;
    (void)r;
    (void)cls;
    char *body = malloc(n + 1);
    if (!body) {
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    memcpy(body, api_board_html, n);
    body[n] = '\0';
    http_respond(out, 200, "text/html; charset=utf-8", body);
}

/* The depth of queue, or -1 (unknown: the broker refused or is away).
 * A failed passive declare closes the connection: reconnect for the next. */
static long depth(mq_conn *c, const char *queue)
{
    char err[256];
    long d;
    if (!mq_is_connected(c) && mq_connect_publisher(c, err, sizeof(err)) != MQ_OK) {
        log_warn("board: broker: %s", err);
        return -1;
    }
    d = mq_queue_depth(c, queue, err, sizeof(err));
    if (d < 0) {
        log_debug("board: queue %s: %s", queue, err);
        return -1;
    }
    return d;
}

void api_get_board_queues(http_req *r, void *cls, http_resp *out)
{
    const char *url = getenv("AMQP_URL");
    mq_opts o = {.url = url, .app_id = "order-api-board"};
    mq_conn *c;
    size_t ns = sizeof(board_services) / sizeof(board_services[0]);
    size_t cap = 128 + ns * 128, len = 0;
    char *body;

    if (!api_client_of(r, cls, out))
        return;
    c = url ? mq_new(&o) : NULL;
    body = malloc(cap);
    if (!body) {
        mq_free(c);
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    len += (size_t)snprintf(body + len, cap - len, "{\"queues\":[");
    for (size_t i = 0; i < ns; i++) {
        char q[64], dq[64], a[24] = "null", b[24] = "null";
        long d, dl;
        snprintf(q, sizeof(q), "%s", board_services[i]);
        snprintf(dq, sizeof(dq), "%s.dlq", board_services[i]);
        d = c ? depth(c, q) : -1;
        dl = c ? depth(c, dq) : -1;
        if (d >= 0)
            snprintf(a, sizeof(a), "%ld", d);
        if (dl >= 0)
            snprintf(b, sizeof(b), "%ld", dl);
        len += (size_t)snprintf(body + len, cap - len,
                                "%s{\"service\":\"%s\",\"queue\":\"%s\",\"depth\":%s,"
                                "\"dlq\":\"%s\",\"dlq_depth\":%s}",
                                i ? "," : "", board_services[i], q, a, dq, b);
    }
    snprintf(body + len, cap - len, "]}");
    mq_free(c);
    http_json(out, 200, body);
}
