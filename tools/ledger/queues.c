/*
 * queues.c — the ledger's checks on the broker: work and retry queues
 * empty, each dead-letter queue as expected, and the messages consumers hold
 * unacked (the management API: a passive queue.declare counts only the ready
 * ones).
 */
#include "ledger.h"

#include "util.h"
#include "worker.h"

#include <amqp.h>
#include <cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
    char base[LEDGER_MGMT_URL_MAX + 1]; /* http://host:port */
    char *url;                          /* AMQP_URL, parsed in place */
    struct amqp_connection_info info;
} mgmt;

int ledger_mgmt_init(const char *amqp_url, char *err, size_t errlen)
{
    const char *base = getenv("MGMT_URL"), *port = getenv("MGMT_PORT");
    int n;

    mgmt.url = strdup(amqp_url);
    if (!mgmt.url || amqp_parse_url(mgmt.url, &mgmt.info) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "AMQP_URL is not an AMQP URL");
        return -1;
    }
    if (base && *base)
        n = snprintf(mgmt.base, sizeof(mgmt.base), "%s", base);
    else
        n = snprintf(mgmt.base, sizeof(mgmt.base), "http://%s:%s", mgmt.info.host,
                     port && *port ? port : "15672");
    if (n < 0 || (size_t)n >= sizeof(mgmt.base)) {
        snprintf(err, errlen,
                 "the management API's address (MGMT_URL, or AMQP_URL's host"
                 " and MGMT_PORT) is longer than %d bytes",
                 LEDGER_MGMT_URL_MAX);
        return -1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "curl_global_init failed");
        return -1;
    }
    return 0;
}

/* Messages of queue delivered to a consumer and not yet acked, from the
 * management API (its figures are at most a few seconds old); -1 with err. */
static long queue_unacked(const char *queue, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    char url[1024], *vh = NULL, *q = NULL;
    util_buf b = {NULL, 0, 1 << 20}; /* no answer is that big: fail the transfer */
    long code = 0, n = -1;
    int k;
    cJSON *j = NULL;
    const cJSON *v;
    CURLcode rc;

    if (!c) {
        snprintf(err, errlen, "curl_easy_init failed");
        return -1;
    }
    vh = curl_easy_escape(c, mgmt.info.vhost, 0);
    q = curl_easy_escape(c, queue, 0);
    if (!vh || !q) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    k = snprintf(url, sizeof(url), "%s/api/queues/%s/%s?columns=messages_unacknowledged", mgmt.base,
                 vh, q);
    if (k < 0 || (size_t)k >= sizeof(url)) {
        snprintf(err, errlen, "the management API's URL for queue %.200s is over %zu bytes", queue,
                 sizeof(url) - 1);
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_USERNAME, mgmt.info.user);
    curl_easy_setopt(c, CURLOPT_PASSWORD, mgmt.info.password);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, util_buf_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    if ((rc = curl_easy_perform(c)) != CURLE_OK) {
        snprintf(err, errlen, "management API %.200s: %.200s", mgmt.base, curl_easy_strerror(rc));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) {
        snprintf(err, errlen, "management API %.200s: HTTP %ld for queue %.200s", mgmt.base, code,
                 queue);
        goto out;
    }
    j = b.p ? cJSON_Parse(b.p) : NULL;
    /* A queue the statistics have not reached yet (just declared, or a node
     * just started) has no columns, and the API answers an empty array for
     * it: nothing is held unacked, as it has never delivered. */
    if (cJSON_IsArray(j) && cJSON_GetArraySize(j) == 0) {
        n = 0;
        goto out;
    }
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "management API %.200s: not a JSON object for queue %.200s",
                 mgmt.base, queue);
        goto out;
    }
    /* A queue with statistics but without this one: none held. */
    v = cJSON_GetObjectItemCaseSensitive(j, "messages_unacknowledged");
    if (v && (!cJSON_IsNumber(v) || v->valuedouble < 0)) {
        snprintf(err, errlen, "management API: messages_unacknowledged of %s is not a count",
                 queue);
        goto out;
    }
    n = v ? (long)v->valuedouble : 0;
out:
    cJSON_Delete(j);
    free(b.p);
    curl_free(vh);
    curl_free(q);
    curl_easy_cleanup(c);
    return n;
}

int ledger_check_queues(mq_conn *mq, figures *fg, int verbose)
{
    char err[MQ_ERR_LEN], name[160];
    fg->queue_ready = fg->retry_ready = fg->in_flight = fg->dlq_mismatch = 0;
    if (verbose)
        printf("queues    ");
    for (int i = 0; i < ledger_opt.nservices; i++) {
        const char *svc = ledger_opt.services[i];
        long work, dlq, unacked;
        if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK) {
            fprintf(stderr, "ledger: AMQP_URL: %s\n", err);
            return -1;
        }
        work = mq_queue_depth(mq, svc, err, sizeof(err));
        if (work < 0) {
            fprintf(stderr, "ledger: queue %s: %s\n", svc, err);
            return -1;
        }
        fg->queue_ready += work;
        unacked = queue_unacked(svc, err, sizeof(err));
        if (unacked < 0) {
            fprintf(stderr, "ledger: %s\n", err);
            return -1;
        }
        fg->in_flight += unacked;
        for (int t = 0; t < MQ_MAX_TIERS && ledger_opt.tiers[t]; t++) {
            long n;
            mq_retry_queue_name(svc, ledger_opt.tiers[t], name, sizeof(name));
            if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK)
                return -1;
            n = mq_queue_depth(mq, name, err, sizeof(err));
            if (n > 0)
                fg->retry_ready += n;
        }
        mq_dlq_name(svc, name, sizeof(name));
        if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK)
            return -1;
        dlq = mq_queue_depth(mq, name, err, sizeof(err));
        if (dlq < 0) {
            fprintf(stderr, "ledger: queue %s: %s\n", name, err);
            return -1;
        }
        if (ledger_opt.dlq_expect[i] >= 0 && dlq != ledger_opt.dlq_expect[i])
            fg->dlq_mismatch += labs(dlq - ledger_opt.dlq_expect[i]);
        if (verbose) {
            printf(" %s %ld", svc, work);
            if (unacked)
                printf(" (+%ld unacked)", unacked);
            if (ledger_opt.dlq_expect[i] >= 0)
                printf(" (dlq %ld, expected %ld)", dlq, ledger_opt.dlq_expect[i]);
            else
                printf(" (dlq %ld)", dlq);
        }
    }
    if (verbose)
        printf("; retry tiers %ld\n", fg->retry_ready);
    return 0;
}

void ledger_mgmt_free(void)
{
    free(mgmt.url);
}
