/*
 * mqbench — what the broker alone can do, for make bench.
 *
 *   mqbench [-n MESSAGES] [-s BYTES] [-q QUEUE] [-p PREFETCH] [-a ACK_BATCH]
 *
 * Declares a quorum queue (default "bench.quorum", in AMQP_URL's vhost),
 * publishes MESSAGES persistent messages of BYTES each through the suite's
 * own publisher (mq_publish_batch: batches of 200, pipelined publisher
 * confirms, as the outbox relay does), then consumes them all with manual
 * acks and prefetch PREFETCH (default 32), and deletes the queue. With
 * ACK_BATCH 1 (the default) each delivery is acked on its own; with more,
 * as the workers do, the deliveries that have arrived (up to ACK_BATCH) are
 * acked with one multiple-ack. Prints one JSON line:
 * {"publish_per_s":..., "consume_per_s":..., "prefetch":..., "ack_batch":...}.
 * Environment: AMQP_URL (a user who may declare and delete the queue).
 */
#include "mq.h"
#include "util.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH 200

static int fail(const char *what, amqp_rpc_reply_t r)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    fprintf(stderr, "mqbench: %s failed (reply type %d, library error %s)\n", what, r.reply_type,
            amqp_error_string2(r.library_error));
    return -1;
}

static long arg(const char *s, long lo, long hi)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    return errno || *end || v < lo || v > hi ? -1 : v;
}

int main(int argc, char **argv)
{
    const char *url = getenv("AMQP_URL"), *queue = "bench.quorum";
    long n = 20000, size = 600, prefetch = 32, ack_batch = 1;
    char *urlcopy, *body, err[MQ_ERR_LEN];
    struct amqp_connection_info info;
    amqp_connection_state_t c;
    amqp_socket_t *sock;
    amqp_table_entry_t qargs[1];
    amqp_table_t qt = {1, qargs};
    mq_opts mo = {0};
    mq_conn *pub;
    mq_msg *msgs;
    int *status, opt;
    int64_t t0;
    double pub_s, cons_s;
    long got = 0;

    while ((opt = getopt(argc, argv, "n:s:q:p:a:")) != -1) {
        if (opt == 'n' && (n = arg(optarg, 1, 10000000)) > 0)
            continue;
        if (opt == 's' && (size = arg(optarg, 1, 1 << 20)) > 0)
            continue;
        if (opt == 'p' && (prefetch = arg(optarg, 1, 65535)) > 0)
            continue;
        if (opt == 'a' && (ack_batch = arg(optarg, 1, 1000000)) > 0)
            continue;
        if (opt == 'q') {
            queue = optarg;
            continue;
        }
        fprintf(stderr, "usage: mqbench [-n MESSAGES] [-s BYTES] [-q QUEUE] [-p PREFETCH]"
                        " [-a ACK_BATCH]  (env AMQP_URL)\n");
        return 2;
    }
    if (!url || !(urlcopy = strdup(url)) || amqp_parse_url(urlcopy, &info) != AMQP_STATUS_OK) {
        fprintf(stderr, "mqbench: set AMQP_URL to an amqp:// URL\n");
        return 2;
    }
    c = amqp_new_connection();
    sock = amqp_tcp_socket_new(c);
    if (!sock || amqp_socket_open(sock, info.host, info.port) != AMQP_STATUS_OK) {
        fprintf(stderr, "mqbench: cannot reach %s:%d\n", info.host, info.port);
        return 1;
    }
    if (fail("login", amqp_login(c, info.vhost, 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, info.user,
                                 info.password)) ||
        !amqp_channel_open(c, 1) || fail("channel.open", amqp_get_rpc_reply(c)))
        return 1;
    qargs[0].key = amqp_cstring_bytes("x-queue-type");
    qargs[0].value.kind = AMQP_FIELD_KIND_UTF8;
    qargs[0].value.value.bytes = amqp_cstring_bytes("quorum");
    amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, qt);
    if (fail("queue.declare", amqp_get_rpc_reply(c)))
        return 1;
    amqp_queue_purge(c, 1, amqp_cstring_bytes(queue));
    if (fail("queue.purge", amqp_get_rpc_reply(c)))
        return 1;

    /* Publish through the suite's publisher: confirms, batches, persistent. */
    body = malloc((size_t)size);
    msgs = calloc(BATCH, sizeof(*msgs));
    status = calloc(BATCH, sizeof(*status));
    mo.url = url;
    mo.app_id = "mqbench";
    pub = mq_new(&mo);
    if (!body || !msgs || !status || !pub || mq_connect_publisher(pub, err, sizeof(err)) != MQ_OK) {
        fprintf(stderr, "mqbench: publisher: %s\n", pub ? err : "out of memory");
        return 1;
    }
    memset(body, 'x', (size_t)size);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].exchange = ""; /* the default exchange: routing key = queue */
        msgs[i].routing_key = queue;
        msgs[i].message_id = "00000000-0000-4000-8000-000000000000";
        msgs[i].correlation_id = msgs[i].message_id;
        msgs[i].body = body;
        msgs[i].len = (size_t)size;
    }
    t0 = util_wall_us();
    for (long sent = 0; sent < n;) {
        size_t k = (size_t)(n - sent < BATCH ? n - sent : BATCH);
        if (mq_publish_batch(pub, msgs, k, status, err, sizeof(err)) != MQ_OK) {
            fprintf(stderr, "mqbench: publish: %s\n", err);
            return 1;
        }
        sent += (long)k;
    }
    pub_s = (double)(util_wall_us() - t0) / 1e6;
    mq_free(pub);

    /* Consume with manual acks. */
    amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
    if (fail("basic.qos", amqp_get_rpc_reply(c)))
        return 1;
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    if (fail("basic.consume", amqp_get_rpc_reply(c)))
        return 1;
    t0 = util_wall_us();
    while (got < n) {
        /* The first delivery waits; the rest of a batch is what has arrived. */
        struct timeval tv = {10, 0};
        uint64_t last = 0;
        long k = 0;
        while (k < ack_batch && got + k < n) {
            amqp_envelope_t env;
            amqp_rpc_reply_t r;
            amqp_maybe_release_buffers(c);
            r = amqp_consume_message(c, &env, &tv, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                break;
            last = env.delivery_tag;
            amqp_destroy_envelope(&env);
            k++;
            tv.tv_sec = 0;
        }
        if (k == 0) {
            fprintf(stderr, "mqbench: consumed %ld of %ld, then nothing for 10 s\n", got, n);
            return 1;
        }
        if (amqp_basic_ack(c, 1, last, k > 1) != AMQP_STATUS_OK) {
            fprintf(stderr, "mqbench: basic.ack failed\n");
            return 1;
        }
        got += k;
    }
    cons_s = (double)(util_wall_us() - t0) / 1e6;
    amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    printf("{\"messages\":%ld,\"bytes\":%ld,\"publish_per_s\":%.1f,\"consume_per_s\":%.1f,"
           "\"prefetch\":%ld,\"ack_batch\":%ld}\n",
           n, size, (double)n / pub_s, (double)n / cons_s, prefetch, ack_batch);
    free(body);
    free(msgs);
    free(status);
    free(urlcopy);
    return 0;
}
