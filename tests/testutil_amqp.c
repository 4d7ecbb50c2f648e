/*
 * testutil_amqp.c — see testutil.h: the broker: publishers, raw
 * rabbitmq-c connections, queue counts, purges and rabbitmqctl (tu_broker).
 */
#include "testutil.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mq_conn *tu_publisher(const char *url_env, const char *app_id)
{
    mq_opts o = {.url = tu_env(url_env), .app_id = app_id};
    mq_conn *c = mq_new(&o);
    char err[MQ_ERR_LEN];
    ck_assert_msg(c != NULL, "%s is not an AMQP URL", url_env);
    ck_assert_msg(mq_connect_publisher(c, err, sizeof(err)) == MQ_OK, "%s: %s", url_env, err);
    return c;
}

amqp_connection_state_t tu_amqp_open(const char *url_env)
{
    struct amqp_connection_info info;
    char *url = strdup(tu_env(url_env));
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    ck_assert_ptr_nonnull(url);
    ck_assert_int_eq(amqp_parse_url(url, &info), AMQP_STATUS_OK);
    ck_assert_msg(amqp_socket_open(s, info.host, info.port) == AMQP_STATUS_OK,
                  "%s: no broker at %s:%d", url_env, info.host, info.port);
    ck_assert_msg(
        amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password)
                .reply_type == AMQP_RESPONSE_NORMAL,
        "%s: login refused", url_env);
    amqp_channel_open(c, 1);
    ck_assert_msg(amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL,
                  "%s: channel.open refused", url_env);
    free(url);
    return c;
}

long tu_queue_counts(const char *url_env, const char *queue, int *consumers)
{
    struct amqp_connection_info info;
    char *url = strdup(tu_env(url_env));
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    amqp_queue_declare_ok_t *ok = NULL;
    long n = -1;

    if (amqp_parse_url(url, &info) == AMQP_STATUS_OK &&
        amqp_socket_open(s, info.host, info.port) == AMQP_STATUS_OK &&
        amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password)
                .reply_type == AMQP_RESPONSE_NORMAL &&
        amqp_channel_open(c, 1)) {
        /* Passive: only asks; a missing queue closes the channel (-1). */
        ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
        if (ok) {
            n = (long)ok->message_count;
            if (consumers)
                *consumers = (int)ok->consumer_count;
            amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        }
    }
    amqp_destroy_connection(c);
    free(url);
    return n;
}

void tu_purge(const char *url_env, const char *const *queues)
{
    mq_conn *c = tu_publisher(url_env, "testutil");
    char err[MQ_ERR_LEN];
    for (const char *const *q = queues; *q; q++)
        ck_assert_msg(mq_purge(c, *q, err, sizeof(err)) >= 0, "purge %s: %s", *q, err);
    mq_free(c);
}

void tu_broker(const char *verb)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "bash %s/scripts/rmqctl.sh -q %s >/dev/null 2>&1",
             tu_env("ORDERSUITE_ROOT"), verb);
    ck_assert_msg(system(cmd) == 0, "rabbitmqctl %s failed", verb);
}
