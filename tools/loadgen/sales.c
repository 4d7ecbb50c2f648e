/*
 * sales.c — loadgen's sales thread: --sales N sale.completed events (store
 * TAG) through the broker with confirms, spread over the run, as the pos
 * user (AMQP_URL).
 */
#include "loadgen.h"

#include "events.h"
#include "mq.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Publishes m until the broker confirms it; with --retry, through broker
 * restarts (reconnecting) for up to that long, as the till's spool would. */
static int publish_retrying(mq_conn *c, const mq_msg *m, char *err, size_t errlen)
{
    int64_t deadline = util_now_ms() + (int64_t)(lg_opt.retry_s * 1000);
    backoff b;
    backoff_init(&b, 100, 2000);
    for (;;) {
        if ((mq_is_connected(c) || mq_connect_publisher(c, err, errlen) == MQ_OK) &&
            mq_publish(c, m, err, errlen) == MQ_OK)
            return MQ_OK;
        if (util_now_ms() >= deadline || atomic_load(&lg_stopping))
            return MQ_ERR;
        mq_disconnect(c);
        util_sleep_ms_atomic(backoff_next(&b), &lg_stopping);
    }
}

void *lg_sales_thread(void *arg)
{
    sales_state *ss = arg;
    const char *url = getenv("AMQP_URL");
    mq_opts mo = {.url = url, .app_id = "pos"};
    mq_conn *c = mq_new(&mo);
    double span = lg_opt.duration > 0 ? lg_opt.duration
                                      : (lg_opt.rate > 0 ? (double)lg_opt.orders / lg_opt.rate : 0);
    int64_t until = util_now_ms() + 30000;
    int rc = MQ_ERR;

    /* Up to 30 s for the broker, in 1 s slices (mq_connect_retry watches a
     * signal flag, not this thread-shared atomic): a stop ends it. */
    while (c && !atomic_load(&lg_stopping) &&
           (rc = mq_connect_retry(c, 0, 1000, NULL, ss->err, sizeof(ss->err))) != MQ_OK &&
           rc != MQ_ERR_CONFIG && util_now_ms() < until)
        ;
    if (!c || rc != MQ_OK) {
        ss->failed = ss->n;
        mq_free(c);
        return NULL;
    }
    for (long i = 0; i < ss->n && !atomic_load(&lg_stopping); i++) {
        ev_event ev;
        sale_completed *s = &ev.u.sale_completed;
        char mid[UUID_STR_LEN], *json;
        mq_msg m = {0};
        int64_t due = lg_start_mono + (int64_t)(span * 1000.0 * (double)i / (double)ss->n);

        if (due > util_now_ms())
            util_sleep_ms_atomic(due - util_now_ms(), &lg_stopping);
        ev_init(&ev, EV_SALE_COMPLETED);
        if (uuid_v4(s->sale_id) < 0 || uuid_v4(mid) < 0 || ev_lines_alloc(&s->lines, 1) < 0) {
            ss->failed++;
            ev_free(&ev);
            continue;
        }
        snprintf(s->store_id, sizeof(s->store_id), "%s", lg_opt.tag);
        snprintf(s->currency, sizeof(s->currency), "EUR");
        snprintf(s->customer_email, sizeof(s->customer_email), "%s@example.com", lg_opt.tag);
        snprintf(s->lines.items[0].sku, sizeof(s->lines.items[0].sku), "%s",
                 lg_opt.skus[i % lg_opt.nskus]);
        s->lines.items[0].quantity = 1;
        s->lines.items[0].unit_price = 100; /* the till's own price; billing trusts it */
        s->lines.n = 1;
        s->total = 100;
        ev_now_rfc3339(s->paid_at);
        json = ev_to_json(&ev, NULL, ss->err, sizeof(ss->err));
        m.routing_key = "sale.completed";
        m.message_id = mid;
        m.correlation_id = s->sale_id;
        m.body = json;
        m.len = json ? strlen(json) : 0;
        if (json && publish_retrying(c, &m, ss->err, sizeof(ss->err)) == MQ_OK) {
            memcpy(ss->ids[ss->sent++], s->sale_id, UUID_STR_LEN);
        } else {
            ss->failed++;
        }
        free(json);
        ev_free(&ev);
    }
    mq_free(c);
    return NULL;
}
