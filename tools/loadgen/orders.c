/*
 * orders.c — loadgen's order threads: each keeps one HTTP/1.1 connection and
 * posts orders on it, one at a time, each with its own Idempotency-Key
 * (TAG-<n>); with -r they are spread over time; with --retry a request with
 * no answer or a 5xx is sent again with the same key (to the next order-api
 * of -u when there are several).
 */
#include "loadgen.h"

#include "util.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long next_order; /* atomic */

static void push_lat(tstats *s, int64_t us)
{
    if (s->nlat == s->caplat) {
        size_t cap = s->caplat ? s->caplat * 2 : 4096;
        int64_t *p = realloc(s->lat_us, cap * sizeof(*p));
        if (!p)
            return;
        s->lat_us = p;
        s->caplat = cap;
    }
    s->lat_us[s->nlat++] = us;
}

static void push_acc(tstats *s, const char *key, const char *id, int64_t sent)
{
    if (s->nacc == s->capacc) {
        size_t cap = s->capacc ? s->capacc * 2 : 1024;
        accepted *p = realloc(s->acc, cap * sizeof(*p));
        if (!p)
            return;
        s->acc = p;
        s->capacc = cap;
    }
    snprintf(s->acc[s->nacc].key, sizeof(s->acc[0].key), "%s", key);
    snprintf(s->acc[s->nacc].id, UUID_STR_LEN, "%s", id);
    s->acc[s->nacc].sent_us = sent;
    s->nacc++;
    __atomic_add_fetch(&lg_accepted_total, 1, __ATOMIC_RELAXED);
}

/* Takes the next order number; -1 when the run is over. Sleeps until it is
 * due when a rate is set. */
static long take_order(void)
{
    long n;
    if (atomic_load(&lg_stopping))
        return -1;
    n = __atomic_fetch_add(&next_order, 1, __ATOMIC_RELAXED);
    if (lg_opt.orders > 0 && n >= lg_opt.orders)
        return -1;
    if (lg_opt.duration > 0 && util_now_ms() - lg_start_mono >= (int64_t)(lg_opt.duration * 1000))
        return -1;
    if (lg_opt.rate > 0) {
        int64_t due = lg_start_mono + (int64_t)((double)n * 1000.0 / lg_opt.rate);
        int64_t now = util_now_ms();
        if (lg_opt.duration > 0 && due - lg_start_mono >= (int64_t)(lg_opt.duration * 1000))
            return -1; /* due after the end of the run */
        if (due > now)
            util_sleep_ms_atomic(due - now, &lg_stopping);
    }
    return n;
}

/* The body of order n: a tag of at most 40 characters and at most 8 lines
 * whose SKUs come from the --skus list, at most 511 characters (main checks
 * both), take under 900 of body[1024]. */
static size_t order_body(long n, char *buf, size_t cap)
{
    size_t len = (size_t)snprintf(buf, cap,
                                  "{\"customer_id\":\"%s\",\"customer_email\":\"%s@example.com\","
                                  "\"currency\":\"EUR\",\"items\":[",
                                  lg_opt.tag, lg_opt.tag);
    for (int i = 0; i < lg_opt.lines && i < lg_opt.nskus; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s{\"sku\":\"%s\",\"quantity\":1}",
                                i ? "," : "", lg_opt.skus[(n + i) % lg_opt.nskus]);
    len += (size_t)snprintf(buf + len, cap - len, "]}");
    return len;
}

void *lg_order_thread(void *arg)
{
    tstats *s = arg;
    char *resp = malloc(RESP_MAX);
    char req[2560], body[1024], key[64];
    int fd = -1;
    long n;

    if (!resp)
        return NULL;
    while ((n = take_order()) >= 0) {
        size_t blen = order_body(n, body, sizeof(body));
        int64_t first = util_wall_us(), deadline = util_now_ms() + (int64_t)(lg_opt.retry_s * 1000);
        backoff b;

        snprintf(key, sizeof(key), "%s-%ld", lg_opt.tag, n);
        backoff_init(&b, 50, 1000);
        for (int attempt = 0;; attempt++) {
            const lg_target *t = &lg_opt.targets[s->target];
            int64_t t0;
            char *rbody = NULL;
            size_t rlen = 0;
            int status = -1, close_after = 0;
            /* Made for each attempt: a retry may go to another order-api. */
            int reqlen = snprintf(req, sizeof(req),
                                  "POST /orders HTTP/1.1\r\nHost: %s:%d\r\n"
                                  "Authorization: Bearer %s\r\n"
                                  "Content-Type: application/json\r\nIdempotency-Key: %s\r\n"
                                  "Content-Length: %zu\r\n\r\n%s",
                                  t->host, t->port, lg_opt.token, key, blen, body);

            if (fd < 0)
                fd = lg_dial(t);
            t0 = util_wall_us();
            if (fd >= 0 && lg_send_all(fd, req, (size_t)reqlen) == 0)
                status = lg_read_response(fd, resp, RESP_MAX, &rbody, &rlen, &close_after);
            if (status < 0 || close_after) {
                if (fd >= 0)
                    close(fd);
                fd = -1;
            }
            if (status > 0) {
                push_lat(s, util_wall_us() - t0);
                s->by_class[status / 100 < 6 ? status / 100 : 0]++;
            } else {
                s->by_class[0]++;
            }
            if (status == 200 || status == 201) {
                cJSON *doc = cJSON_ParseWithLength(rbody, rlen);
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
                if (cJSON_IsString(id) && strlen(id->valuestring) == UUID_STR_LEN - 1) {
                    push_acc(s, key, id->valuestring, first);
                    s->acc_by_target[s->target]++;
                    if (attempt > 0 && status == 200)
                        s->replayed++; /* the key's order existed: an earlier try made it */
                } else {
                    s->lost++; /* 2xx without an id: the answer itself is wrong */
                }
                cJSON_Delete(doc);
                break;
            }
            if (status > 0 && status < 500)
                break; /* an answer: 4xx is not retried (same request, same answer) */
            if (lg_opt.retry_s <= 0 || util_now_ms() >= deadline || atomic_load(&lg_stopping)) {
                s->lost++;
                break;
            }
            s->retries++;
            /* No answer or a 5xx: with several order-apis the retry goes to
             * the next one, and the thread stays there. The same key makes
             * it the same order wherever it lands: the keys are in the one
             * database every order-api writes (a dead one's committed order
             * is answered by the next, not made again). */
            if (lg_opt.ntargets > 1) {
                if (fd >= 0)
                    close(fd);
                fd = -1;
                s->target = (s->target + 1) % lg_opt.ntargets;
                s->failovers++;
            }
            util_sleep_ms_atomic(backoff_next(&b), &lg_stopping);
        }
    }
    if (fd >= 0)
        close(fd);
    free(resp);
    return NULL;
}
