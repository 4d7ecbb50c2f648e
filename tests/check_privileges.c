/*
 * check_privileges.c — least privilege on the broker: each service's own
 * RabbitMQ user (made by `make up`) may use its own queues and publish only
 * its own routing keys. (The database side is in check_db.c.)
 */
#include "events.h"
#include "mq.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int publish(mq_conn *c, const char *key, char *err, size_t errlen)
{
    char id[UUID_STR_LEN];
    mq_msg m = {0};
    uuid_v4(id);
    m.routing_key = key;
    m.message_id = id;
    m.body = "{}";
    m.len = 2;
    return mq_publish(c, &m, err, errlen);
}

START_TEST(billing_cannot_publish_order_placed)
{
    mq_conn *c = tu_publisher("BILLING_AMQP_URL", "check_privileges");
    char err[MQ_ERR_LEN];
    ck_assert_int_eq(publish(c, RK_ORDER_PLACED, err, sizeof(err)), MQ_ERR_CONFIG);
    ck_assert_msg(strstr(err, "403") && strstr(err, "ACCESS_REFUSED"), "%s", err);
    /* Its own keys are allowed (unbound here, so returned, not refused). */
    ck_assert_int_eq(publish(c, "billing.nobody-listens", err, sizeof(err)), MQ_ERR_RETURNED);
    mq_free(c);
}
END_TEST

START_TEST(billing_cannot_consume_inventorys_queue)
{
    static const char *const keys[] = {RK_ORDER_PLACED, NULL};
    mq_topology topo = {.queue = "inventory", .keys = keys, .retry_ms = {1000, 10000, 60000}};
    mq_opts o = {.url = tu_env("BILLING_AMQP_URL"), .app_id = "billing", .topo = &topo};
    mq_conn *c = mq_new(&o), *p;
    mq_got *g = NULL;
    char err[MQ_ERR_LEN];

    ck_assert_int_eq(mq_connect_consumer(c, err, sizeof(err)), MQ_ERR_CONFIG);
    ck_assert_msg(strstr(err, "ACCESS_REFUSED"), "%s", err);
    mq_free(c);
    p = tu_publisher("BILLING_AMQP_URL", "check_privileges");
    ck_assert_int_lt(mq_get(p, "inventory", &g, err, sizeof(err)), 0);
    ck_assert_msg(strstr(err, "ACCESS_REFUSED"), "%s", err);
    ck_assert_ptr_null(g);
    mq_free(p);
}
END_TEST

START_TEST(each_service_user_is_refused_on_the_other_queues)
{
    static const char *const users[] = {"ORDER_API_AMQP_URL", "INVENTORY_AMQP_URL",
                                        "BILLING_AMQP_URL", "EMAIL_AMQP_URL", "POS_AMQP_URL"};
    static const char *const queues[] = {"order-api", "inventory", "billing", "email", NULL};
    for (size_t i = 0; i < 5; i++) {
        for (size_t j = 0; j < 4; j++) {
            mq_conn *p;
            mq_got *g = NULL;
            char err[MQ_ERR_LEN], dlq[64];
            if (i == j)
                continue; /* its own queue (pos has none) */
            p = tu_publisher(users[i], "check_privileges");
            ck_assert_msg(mq_get(p, queues[j], &g, err, sizeof(err)) < 0, "%s could read %s",
                          users[i], queues[j]);
            ck_assert_msg(strstr(err, "ACCESS_REFUSED"), "%s on %s: %s", users[i], queues[j], err);
            ck_assert_ptr_null(g);
            mq_free(p);
            /* nor its dead letters */
            p = tu_publisher(users[i], "check_privileges");
            mq_dlq_name(queues[j], dlq, sizeof(dlq));
            ck_assert_msg(mq_get(p, dlq, &g, err, sizeof(err)) < 0, "%s could read %s", users[i],
                          dlq);
            ck_assert_msg(strstr(err, "ACCESS_REFUSED"), "%s on %s: %s", users[i], dlq, err);
            mq_free(p);
        }
    }
}
END_TEST

START_TEST(each_service_publishes_only_its_own_keys)
{
    static const struct {
        const char *env, *allowed, *refused;
    } cases[] = {
        {"ORDER_API_AMQP_URL", "order.nobody-listens", RK_INVENTORY_RESERVED},
        {"INVENTORY_AMQP_URL", "inventory.nobody-listens", RK_BILLING_INVOICED},
        {"POS_AMQP_URL", "sale.nobody-listens", RK_ORDER_PLACED},
        {"EMAIL_AMQP_URL", NULL, RK_SALE_COMPLETED},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mq_conn *c = tu_publisher(cases[i].env, "check_privileges");
        char err[MQ_ERR_LEN];
        if (cases[i].allowed)
            ck_assert_msg(publish(c, cases[i].allowed, err, sizeof(err)) == MQ_ERR_RETURNED,
                          "%s: %s", cases[i].env, err);
        ck_assert_msg(publish(c, cases[i].refused, err, sizeof(err)) == MQ_ERR_CONFIG, "%s: %s",
                      cases[i].env, err);
        mq_free(c);
    }
}
END_TEST

START_TEST(guest_cannot_log_in)
{
    char url[256], err[MQ_ERR_LEN];
    mq_opts o = {.url = url, .app_id = "check_privileges"};
    mq_conn *c;
    snprintf(url, sizeof(url), "amqp://guest:guest@127.0.0.1:%s", tu_env("AMQP_PORT"));
    c = mq_new(&o);
    ck_assert_int_ne(mq_connect_publisher(c, err, sizeof(err)), MQ_OK);
    mq_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("privileges");
    TCase *t = tcase_create("broker");
    tcase_add_test(t, billing_cannot_publish_order_placed);
    tcase_add_test(t, billing_cannot_consume_inventorys_queue);
    tcase_add_test(t, each_service_publishes_only_its_own_keys);
    tcase_add_test(t, each_service_user_is_refused_on_the_other_queues);
    tcase_add_test(t, guest_cannot_log_in);
    suite_add_tcase(s, t);
    return tu_run(s);
}
