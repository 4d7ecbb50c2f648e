/*
 * check_privileges.c — least privilege on the broker, tried as an attacker
 * holding one service's credentials would: every service user (and pos)
 * against every other consuming service. (The database side is in
 * check_db.c.)
 *
 * The four workers run as their own broker users and database roles for the
 * whole suite (an unchecked fixture), so a door that lets a message through
 * shows as an effect in their tables. Each door must be refused by the
 * broker (403 ACCESS_REFUSED) or, for a service's own routing key with a
 * forged x-original-routing-key / type, ignored by the consumer. Then a
 * barrier message per service (sent by the administrator through the
 * service's own retry path, after everything else) is awaited, and no inbox
 * in any schema may hold any of the attackers' message ids; inbox rows are
 * written in the handler's transaction, so no inbox row means no effect.
 */
#include "events.h"
#include "mq.h"
#include "testutil.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define NSVC 4

/* The consuming services, their broker user's URL variable, their schema. */
static const char *const svc[NSVC] = {"inventory", "billing", "email", "order-api"};
static const char *const svc_url[NSVC] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL",
                                          "EMAIL_AMQP_URL", "ORDER_API_AMQP_URL"};
static const char *const svc_db[NSVC] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                         "EMAIL_DATABASE_URL", "ORDERS_DATABASE_URL"};
static const char *const schemas[NSVC] = {"inventory", "billing", "email", "orders"};
/* A key each one handles (the barrier's). */
static const ev_type svc_handles[NSVC] = {EV_ORDER_PLACED, EV_INVENTORY_RESERVED,
                                          EV_INVENTORY_LOW_STOCK, EV_INVENTORY_RESERVED};

/* The attackers: every service user, and pos; the prefix of the keys each
 * may publish on sales.events (NULL: none). */
static const struct {
    const char *name, *url, *topic;
} users[] = {
    {"inventory", "INVENTORY_AMQP_URL", "inventory"},
    {"billing", "BILLING_AMQP_URL", "billing"},
    {"email", "EMAIL_AMQP_URL", NULL},
    {"order-api", "ORDER_API_AMQP_URL", "order"},
    {"pos", "POS_AMQP_URL", "sale"},
};
#define NUSERS (sizeof(users) / sizeof(users[0]))

static const char *const all_keys[] = {
    RK_ORDER_PLACED,        RK_INVENTORY_RESERVED, RK_INVENTORY_REJECTED,     RK_INVENTORY_RELEASED,
    RK_INVENTORY_LOW_STOCK, RK_BILLING_INVOICED,   RK_BILLING_PAYMENT_FAILED, RK_SALE_COMPLETED,
};

static pid_t pids[NSVC];

/* --------------------------------------------------------------- fixture */

static int consuming(void *arg)
{
    int consumers = 0;
    return tu_queue_counts("TEST_AMQP_URL", arg, &consumers) >= 0 && consumers > 0;
}

static void start_all(void)
{
    static char env[NSVC][6][1200];
    static const char *envp[NSVC][7];
    char *argv[] = {"svc", NULL};
    for (int i = 0; i < NSVC; i++) {
        char path[512], log[512];
        snprintf(env[i][0], sizeof(env[i][0]), "AMQP_URL=%s", tu_env(svc_url[i]));
        snprintf(env[i][1], sizeof(env[i][1]), "DATABASE_URL=%s", tu_env(svc_db[i]));
        snprintf(env[i][2], sizeof(env[i][2]), "METRICS_PORT=0");
        snprintf(env[i][3], sizeof(env[i][3]), "HTTP_PORT=0");
        snprintf(env[i][4], sizeof(env[i][4]), "%s", TU_API_TOKENS); /* order-api needs one */
        snprintf(env[i][5], sizeof(env[i][5]), "OPS_PORT=0");
        for (int k = 0; k < 6; k++)
            envp[i][k] = env[i][k];
        envp[i][6] = NULL;
        snprintf(path, sizeof(path), "%s/%s", tu_env("ORDERSUITE_BIN"), svc[i]);
        snprintf(log, sizeof(log), "%s/log/tests/privileges-%s.log", tu_env("ORDERSUITE_VAR"),
                 svc[i]);
        pids[i] = tu_spawn(path, argv, envp[i], log);
    }
    for (int i = 0; i < NSVC; i++) {
        if (!tu_poll(30000, consuming, (void *)svc[i])) {
            /* Not left behind to take other suites' messages. */
            for (int k = 0; k < NSVC; k++)
                tu_stop(pids[k], SIGTERM, 20000);
            ck_abort_msg("%s is not consuming", svc[i]);
        }
    }
}

static void stop_all(void)
{
    for (int i = NSVC - 1; i >= 0; i--) {
        int st = tu_stop(pids[i], SIGTERM, 20000);
        ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "%s did not stop cleanly (status %d)", svc[i], st);
    }
}

/* --------------------------------------------------------------- helpers */

/* The attackers' message ids, checked against every inbox at the end. */
static char forged[512][UUID_STR_LEN];
static size_t nforged;

static char *event_body(ev_type t, const char *order_id)
{
    ev_event ev;
    char err[EV_ERR_LEN], *body;
    tu_sample_event(t, &ev);
    if (order_id) {
        switch (t) {
        case EV_INVENTORY_RELEASED:
            snprintf(ev.u.inventory_released.order_id, UUID_STR_LEN, "%s", order_id);
            break;
        case EV_BILLING_INVOICED:
            snprintf(ev.u.billing_invoiced.order_id, UUID_STR_LEN, "%s", order_id);
            break;
        case EV_INVENTORY_RESERVED:
            snprintf(ev.u.inventory_reserved.order_id, UUID_STR_LEN, "%s", order_id);
            break;
        default:
            break;
        }
    }
    body = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_msg(body != NULL, "%s", err);
    ev_free(&ev);
    return body;
}

/* Publishes (confirmed) as the user of url_env: an event of type `as` (its
 * body; order_id when not NULL) to exchange/key, with type and
 * x-original-routing-key `as` when forge is set. Returns the mq status. */
static int attempt(const char *url_env, const char *exchange, const char *key, ev_type as,
                   const char *order_id, int forge, char *err, size_t errlen)
{
    mq_opts o = {.url = tu_env(url_env), .app_id = "check_privileges"};
    mq_conn *c = mq_new(&o);
    mq_header h[] = {{MQ_H_ORIGINAL_KEY, ev_routing_key(as), 0}};
    char *body = event_body(as, order_id), corr[UUID_STR_LEN];
    mq_msg m = {0};
    int rc;

    ck_assert_ptr_nonnull(c);
    ck_assert_uint_lt(nforged, sizeof(forged) / sizeof(forged[0]));
    uuid_v4(forged[nforged]);
    uuid_v4(corr);
    m.exchange = exchange;
    m.routing_key = key;
    m.message_id = forged[nforged++];
    m.correlation_id = corr;
    m.type = forge ? ev_routing_key(as) : NULL;
    m.body = body;
    m.len = strlen(body);
    if (forge) {
        m.headers = h;
        m.nheaders = 1;
    }
    rc = mq_connect_publisher(c, err, errlen);
    if (rc == MQ_OK)
        rc = mq_publish(c, &m, err, errlen);
    mq_free(c);
    free(body);
    return rc;
}

/* arg: {schema, message id}; the id is in schema's inbox. */
static int in_inbox(void *arg)
{
    const char *const *a = arg;
    const char *p[] = {a[1]};
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.inbox WHERE message_id = $1", a[0]);
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"), sql, 1, p) == 1;
}

/* The administrator sends each service one event it handles through the
 * service's own retry path; when each has recorded its barrier, everything
 * published before has been through its queue. */
static void barrier(void)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_privileges");
    char ids[NSVC][UUID_STR_LEN], err[MQ_ERR_LEN], id2[UUID_STR_LEN];
    for (int i = 0; i < NSVC; i++) {
        mq_header h[] = {{MQ_H_ORIGINAL_KEY, ev_routing_key(svc_handles[i]), 0}};
        char *body, corr[UUID_STR_LEN];
        mq_msg m = {0};
        uuid_v4(id2);
        body = event_body(svc_handles[i], id2);
        uuid_v4(ids[i]);
        uuid_v4(corr);
        m.exchange = MQ_RETRY_EXCHANGE;
        m.routing_key = svc[i];
        m.message_id = ids[i];
        m.correlation_id = corr;
        m.type = ev_routing_key(svc_handles[i]);
        m.body = body;
        m.len = strlen(body);
        m.headers = h;
        m.nheaders = 1;
        ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "barrier to %s: %s", svc[i],
                      err);
        free(body);
    }
    mq_free(c);
    for (int i = 0; i < NSVC; i++) {
        const char *arg[] = {schemas[i], ids[i]};
        ck_assert_msg(tu_poll(30000, in_inbox, (void *)arg), "%s never handled the barrier",
                      svc[i]);
    }
}

/* No inbox anywhere holds an attacker's message id. */
static void assert_no_effect(void)
{
    char list[sizeof(forged) + 2 * 512 + 4];
    size_t n = 0;
    n += (size_t)snprintf(list + n, sizeof(list) - n, "{");
    for (size_t i = 0; i < nforged; i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", i ? "," : "", forged[i]);
    snprintf(list + n, sizeof(list) - n, "}");
    barrier();
    for (int i = 0; i < NSVC; i++) {
        char sql[200];
        const char *p[] = {list};
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM %s.inbox WHERE message_id = ANY($1::uuid[])", schemas[i]);
        ck_assert_msg(tu_sql_int(tu_env("OWNER_DATABASE_URL"), sql, 1, p) == 0,
                      "%s applied a message an attacker sent", svc[i]);
    }
}

/* An order in RESERVED, written straight into orders.orders. */
static void reserved_order(char id[UUID_STR_LEN])
{
    const char *p[] = {id};
    uuid_v4(id);
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "INSERT INTO orders.orders (id, client_id, customer_id, customer_email, currency,"
                " total_minor, status) VALUES ($1, 'tests', 'privileges', 'p@example.com', 'EUR',"
                " 100, 'RESERVED')",
                1, p));
}

static char *order_status(const char *id)
{
    const char *p[] = {id};
    return tu_sql(tu_env("OWNER_DATABASE_URL"), "SELECT status FROM orders.orders WHERE id = $1", 1,
                  p);
}

/* A raw connection as the user of url_env, channel 1 open. */
static amqp_connection_state_t raw_open(const char *url_env)
{
    struct amqp_connection_info info;
    char *url = strdup(tu_env(url_env));
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    ck_assert_int_eq(amqp_parse_url(url, &info), AMQP_STATUS_OK);
    ck_assert_int_eq(amqp_socket_open(s, info.host, info.port), AMQP_STATUS_OK);
    ck_assert_int_eq(
        amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password)
            .reply_type,
        AMQP_RESPONSE_NORMAL);
    amqp_channel_open(c, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    free(url);
    return c;
}

/* The reply code the broker closed the channel or connection with; 0 when
 * the last method succeeded. Ends the connection. */
static int raw_done(amqp_connection_state_t c)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    int code = -1;
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        code = 0;
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
               r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        code = ((amqp_channel_close_t *)r.reply.decoded)->reply_code;
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
               r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        code = ((amqp_connection_close_t *)r.reply.decoded)->reply_code;
    }
    amqp_destroy_connection(c);
    return code;
}

/* ----------------------------------------------------------------- tests */

/* The issue's example: as email, "inventory.released" straight into
 * order-api's queue through the default exchange. */
START_TEST(forged_release_from_email_leaves_a_reserved_order_alone)
{
    char order[UUID_STR_LEN], err[MQ_ERR_LEN], *st;
    int rc;
    reserved_order(order);
    rc = attempt("EMAIL_AMQP_URL", "", "order-api", EV_INVENTORY_RELEASED, order, 1, err,
                 sizeof(err));
    ck_assert_msg(rc == MQ_ERR_CONFIG, "email published to order-api's queue (%d: %s)", rc, err);
    /* and through the retry exchange, as order-api's own retry would */
    rc = attempt("EMAIL_AMQP_URL", MQ_RETRY_EXCHANGE, "order-api", EV_INVENTORY_RELEASED, order, 1,
                 err, sizeof(err));
    ck_assert_msg(rc == MQ_ERR_CONFIG, "email published to order-api's retry path (%d: %s)", rc,
                  err);
    assert_no_effect();
    st = order_status(order);
    ck_assert_str_eq(st, "RESERVED");
    free(st);
}
END_TEST

/* The default exchange into each of the other's queues, the retry and
 * dead-letter exchanges with the other's keys, sales.events with keys the
 * attacker does not own: all refused by the broker. */
START_TEST(no_user_can_publish_into_another_services_queues)
{
    char err[MQ_ERR_LEN], q[64];
    for (size_t a = 0; a < NUSERS; a++) {
        for (int v = 0; v < NSVC; v++) {
            const char *queues[5];
            char names[5][64];
            if (strcmp(users[a].name, svc[v]) == 0)
                continue;
            snprintf(names[0], sizeof(names[0]), "%s", svc[v]);
            mq_retry_queue_name(svc[v], 1000, names[1], sizeof(names[1]));
            mq_retry_queue_name(svc[v], 10000, names[2], sizeof(names[2]));
            mq_retry_queue_name(svc[v], 60000, names[3], sizeof(names[3]));
            mq_dlq_name(svc[v], names[4], sizeof(names[4]));
            for (int k = 0; k < 5; k++)
                queues[k] = names[k];
            for (int k = 0; k < 5; k++) {
                int rc =
                    attempt(users[a].url, "", queues[k], svc_handles[v], NULL, 1, err, sizeof(err));
                ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published to %s through \"\" (%d: %s)",
                              users[a].name, queues[k], rc, err);
                /* the retry and dead-letter exchanges, with the queue's
                 * name and the service's as keys */
                rc = attempt(users[a].url, MQ_RETRY_EXCHANGE, queues[k], svc_handles[v], NULL, 1,
                             err, sizeof(err));
                ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published to %s with key %s (%d: %s)",
                              users[a].name, MQ_RETRY_EXCHANGE, queues[k], rc, err);
                rc = attempt(users[a].url, MQ_DLX, queues[k], svc_handles[v], NULL, 1, err,
                             sizeof(err));
                ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published to %s with key %s (%d: %s)",
                              users[a].name, MQ_DLX, queues[k], rc, err);
            }
        }
        /* sales.events: every key it does not own */
        for (size_t k = 0; k < sizeof(all_keys) / sizeof(all_keys[0]); k++) {
            ev_type t;
            int rc;
            size_t tl = users[a].topic ? strlen(users[a].topic) : 0;
            if (tl && strncmp(all_keys[k], users[a].topic, tl) == 0 && all_keys[k][tl] == '.')
                continue;
            ck_assert_int_eq(ev_type_from_key(all_keys[k], &t), 0);
            rc = attempt(users[a].url, MQ_EXCHANGE, all_keys[k], t, NULL, 0, err, sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published %s on %s (%d: %s)", users[a].name,
                          all_keys[k], MQ_EXCHANGE, rc, err);
        }
        /* its own prefix is allowed (unbound here, so returned, not refused) */
        if (users[a].topic) {
            snprintf(q, sizeof(q), "%s.nobody-listens", users[a].topic);
            ck_assert_msg(attempt(users[a].url, MQ_EXCHANGE, q, EV_ORDER_PLACED, NULL, 0, err,
                                  sizeof(err)) == MQ_ERR_RETURNED,
                          "%s: %s", users[a].name, err);
        }
    }
    assert_no_effect();
}
END_TEST

/* A service's own key, with the type and x-original-routing-key of an event
 * it does not own: the consumers must go by the routing key the broker
 * checked, and not apply it. */
START_TEST(own_key_with_a_forged_type_is_not_applied)
{
    static const struct {
        const char *url, *key;
        ev_type as;
    } cases[] = {
        /* to inventory: a sale that takes stock */
        {"ORDER_API_AMQP_URL", RK_ORDER_PLACED, EV_SALE_COMPLETED},
        /* to order-api (and billing): the victim confirmed */
        {"INVENTORY_AMQP_URL", RK_INVENTORY_RESERVED, EV_BILLING_INVOICED},
        /* to email and order-api: the victim cancelled */
        {"BILLING_AMQP_URL", RK_BILLING_INVOICED, EV_INVENTORY_RELEASED},
        /* to inventory, billing, email: an order placed */
        {"POS_AMQP_URL", RK_SALE_COMPLETED, EV_ORDER_PLACED},
    };
    char order[UUID_STR_LEN], err[MQ_ERR_LEN], *st;
    reserved_order(order);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = attempt(cases[i].url, MQ_EXCHANGE, cases[i].key, cases[i].as, order, 1, err,
                         sizeof(err));
        /* its own key, so the broker takes it: the consumer must be the one
         * that refuses the forged type (a refusal here would leave the
         * consumer's check untested) */
        ck_assert_msg(rc == MQ_OK, "%s: its own key %s was refused: %d %s", cases[i].url,
                      cases[i].key, rc, err);
    }
    assert_no_effect();
    st = order_status(order);
    ck_assert_str_eq(st, "RESERVED");
    free(st);
}
END_TEST

/* A raw publish as the user of url_env: a body of type `as` for order_id, with
 * type and x-original-routing-key `as` (and the current schema_version, so
 * that only the type can stop it), and the routing keys in cc under the
 * header hdr ("CC" or "BCC"; NULL: none). The channel is closed before it
 * returns, so the broker has routed the message. Returns raw_done's code. */
static int raw_forge(amqp_connection_state_t c, const char *exchange, const char *key, ev_type as,
                     const char *order_id, const char *hdr, const char *cc)
{
    char *body = event_body(as, order_id), corr[UUID_STR_LEN];
    amqp_field_value_t ccv = {.kind = AMQP_FIELD_KIND_UTF8,
                              .value.bytes = amqp_cstring_bytes(cc ? cc : "")};
    amqp_table_entry_t h[3];
    amqp_basic_properties_t p = {0};
    int nh = 0, st;

    ck_assert_uint_lt(nforged, sizeof(forged) / sizeof(forged[0]));
    uuid_v4(forged[nforged]);
    uuid_v4(corr);
    h[nh].key = amqp_cstring_bytes(MQ_H_ORIGINAL_KEY);
    h[nh].value.kind = AMQP_FIELD_KIND_UTF8;
    h[nh++].value.value.bytes = amqp_cstring_bytes(ev_routing_key(as));
    h[nh].key = amqp_cstring_bytes(MQ_H_SCHEMA_VERSION);
    h[nh].value.kind = AMQP_FIELD_KIND_I32;
    h[nh++].value.value.i32 = EV_SCHEMA_VERSION;
    if (hdr) {
        h[nh].key = amqp_cstring_bytes(hdr);
        h[nh].value.kind = AMQP_FIELD_KIND_ARRAY;
        h[nh].value.value.array.num_entries = 1;
        h[nh++].value.value.array.entries = &ccv;
    }
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_HEADERS_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 2;
    p.message_id = amqp_cstring_bytes(forged[nforged++]);
    p.correlation_id = amqp_cstring_bytes(corr);
    p.type = amqp_cstring_bytes(ev_routing_key(as));
    p.headers.num_entries = nh;
    p.headers.entries = h;
    st = amqp_basic_publish(c, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key), 0, 0, &p,
                            amqp_cstring_bytes(body));
    free(body);
    ck_assert_int_eq(st, AMQP_STATUS_OK);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    return raw_done(c);
}

static int queue_empty(void *arg)
{
    int consumers = 0;
    return tu_queue_counts("TEST_AMQP_URL", arg, &consumers) == 0;
}

/* Door (A): a service's own key on the retry or dead-letter exchange with
 * another's queue in CC or BCC (the broker checks the topic permission on
 * the publish key only, then routes to the CC/BCC keys too): the copy that
 * reaches order-api's queue through sales.retry must not be taken for
 * order-api's own retry; nor the copy that waits out order-api's first retry
 * tier and reaches its queue under order-api's own key. */
START_TEST(cc_and_bcc_to_another_services_queue_are_not_applied)
{
    static const char *const hdrs[] = {"CC", "BCC"};
    static const char *const exs[] = {MQ_RETRY_EXCHANGE, MQ_DLX};
    static const char *const to[] = {"order-api", "order-api.retry.1000ms"};
    char order[UUID_STR_LEN], *st;
    reserved_order(order);
    for (size_t x = 0; x < 2; x++) {
        for (size_t k = 0; k < 2; k++) {
            for (size_t q = 0; q < 2; q++) {
                /* accepted (its own key) or refused: either way, not applied */
                int code = raw_forge(raw_open("EMAIL_AMQP_URL"), exs[x], "email",
                                     EV_INVENTORY_RELEASED, order, hdrs[k], to[q]);
                ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "%s %s %s: %d", exs[x],
                              hdrs[k], to[q], code);
            }
        }
    }
    /* what reached the tier is back in order-api's queue before the barrier */
    ck_assert_msg(tu_poll(30000, queue_empty, (void *)to[1]), "%s never emptied", to[1]);
    assert_no_effect();
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "CC/BCC: the order is %s", st);
    free(st);
}
END_TEST

/* Door (B): billing binds sales.retry to sales.events under its own keys
 * and publishes its event, with a forged original key, on sales.retry:
 * what arrives through sales.retry under a key that is not the consumer's
 * own is not a retry of its own. */
START_TEST(exchange_to_exchange_binding_is_not_applied)
{
    char order[UUID_STR_LEN], *st;
    amqp_connection_state_t c;
    int code;
    reserved_order(order);
    c = raw_open("BILLING_AMQP_URL");
    amqp_exchange_bind(c, 1, amqp_cstring_bytes(MQ_EXCHANGE), amqp_cstring_bytes(MQ_RETRY_EXCHANGE),
                       amqp_cstring_bytes("billing.#"), amqp_empty_table);
    code = raw_done(c);
    ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "exchange.bind: %d", code);
    code = raw_forge(raw_open("BILLING_AMQP_URL"), MQ_RETRY_EXCHANGE, RK_BILLING_INVOICED,
                     EV_INVENTORY_RELEASED, order, NULL, NULL);
    ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "publish: %d", code);
    assert_no_effect();
    /* the administrator removes what billing may have bound */
    c = raw_open("TEST_AMQP_URL");
    amqp_exchange_unbind(c, 1, amqp_cstring_bytes(MQ_EXCHANGE),
                         amqp_cstring_bytes(MQ_RETRY_EXCHANGE), amqp_cstring_bytes("billing.#"),
                         amqp_empty_table);
    ck_assert_int_eq(raw_done(c), 0);
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "exchange binding: the order is %s", st);
    free(st);
}
END_TEST

/* Door (C): email declares a queue of its own name that dead-letters to
 * sales.events under inventory.released (the broker checks write on the
 * dead-letter exchange, not the key), puts a message in and rejects it: the
 * broker republishes it on sales.events, with an x-death header. The same
 * into sales.retry under order-api's own key, as its retry tiers do. */
static void dead_letter_as(const char *order, const char *dlx, const char *dlkey)
{
    const char *q = "email.retry.7ms";
    amqp_connection_state_t c;
    amqp_table_entry_t a[2];
    amqp_table_t args = {2, a};
    amqp_rpc_reply_t r;
    int code;
    a[0].key = amqp_cstring_bytes("x-dead-letter-exchange");
    a[0].value.kind = AMQP_FIELD_KIND_UTF8;
    a[0].value.value.bytes = amqp_cstring_bytes(dlx);
    a[1].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    a[1].value.kind = AMQP_FIELD_KIND_UTF8;
    a[1].value.value.bytes = amqp_cstring_bytes(dlkey);
    c = raw_open("EMAIL_AMQP_URL");
    amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 0, 0, 0, 0, args);
    if (amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_queue_bind(c, 1, amqp_cstring_bytes(q), amqp_cstring_bytes(MQ_RETRY_EXCHANGE),
                        amqp_cstring_bytes(q), amqp_empty_table);
        ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
        ck_assert_int_eq(raw_done(c), 0);
        code = raw_forge(raw_open("EMAIL_AMQP_URL"), MQ_RETRY_EXCHANGE, q, EV_INVENTORY_RELEASED,
                         order, NULL, NULL);
        ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "publish: %d", code);
        c = raw_open("EMAIL_AMQP_URL");
        r = amqp_basic_get(c, 1, amqp_cstring_bytes(q), 0);
        ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id == AMQP_BASIC_GET_OK_METHOD) {
            uint64_t tag = ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag;
            amqp_message_t msg;
            ck_assert_int_eq(amqp_read_message(c, 1, &msg, 0).reply_type, AMQP_RESPONSE_NORMAL);
            amqp_destroy_message(&msg);
            ck_assert_int_eq(amqp_basic_reject(c, 1, tag, 0), AMQP_STATUS_OK);
        }
        amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
    }
    code = raw_done(c);
    ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "dead-letter queue to %s/%s: %d", dlx,
                  dlkey, code);
}

START_TEST(dead_letter_arguments_do_not_forge_an_event)
{
    char order[UUID_STR_LEN], *st;
    reserved_order(order);
    dead_letter_as(order, MQ_EXCHANGE, RK_INVENTORY_RELEASED);
    dead_letter_as(order, MQ_RETRY_EXCHANGE, "order-api");
    assert_no_effect();
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "dead-letter arguments: the order is %s", st);
    free(st);
}
END_TEST

/* Configuring what is shared or another's: declare, delete, bind, purge,
 * consume. Each must be refused with 403 (the if-unused / if-empty and
 * differing-type variants make a missed refusal harmless: 406, not a
 * deletion). */
START_TEST(no_user_can_configure_or_read_what_is_not_its_own)
{
    static const char *const shared[] = {MQ_EXCHANGE, MQ_RETRY_EXCHANGE, MQ_DLX};
    for (size_t a = 0; a < NUSERS; a++) {
        for (size_t x = 0; x < 3; x++) {
            amqp_connection_state_t c = raw_open(users[a].url);
            int code;
            amqp_exchange_declare(c, 1, amqp_cstring_bytes(shared[x]), amqp_cstring_bytes("fanout"),
                                  0, 1, 0, 0, amqp_empty_table);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: exchange.declare %s: %d", users[a].name, shared[x],
                          code);
            c = raw_open(users[a].url);
            amqp_exchange_delete(c, 1, amqp_cstring_bytes(shared[x]), 1);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: exchange.delete %s: %d", users[a].name, shared[x],
                          code);
            /* its own queue bound to another's keys on the retry / DLX */
            for (int v = 0; v < NSVC && strcmp(users[a].name, "pos") != 0; v++) {
                if (x == 0 || strcmp(users[a].name, svc[v]) == 0)
                    continue;
                c = raw_open(users[a].url);
                amqp_queue_bind(c, 1, amqp_cstring_bytes(users[a].name),
                                amqp_cstring_bytes(shared[x]), amqp_cstring_bytes(svc[v]),
                                amqp_empty_table);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: bound its queue to %s/%s: %d", users[a].name,
                              shared[x], svc[v], code);
            }
        }
        for (int v = 0; v < NSVC; v++) {
            char dlq[64];
            amqp_connection_state_t c;
            int code;
            if (strcmp(users[a].name, svc[v]) == 0)
                continue;
            mq_dlq_name(svc[v], dlq, sizeof(dlq));
            c = raw_open(users[a].url);
            amqp_queue_declare(c, 1, amqp_cstring_bytes(svc[v]), 0, 0, 0, 0, amqp_empty_table);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: queue.declare %s: %d", users[a].name, svc[v], code);
            c = raw_open(users[a].url);
            amqp_queue_delete(c, 1, amqp_cstring_bytes(svc[v]), 1, 1);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: queue.delete %s: %d", users[a].name, svc[v], code);
            c = raw_open(users[a].url);
            amqp_queue_bind(c, 1, amqp_cstring_bytes(svc[v]), amqp_cstring_bytes(MQ_EXCHANGE),
                            amqp_cstring_bytes("#"), amqp_empty_table);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: queue.bind %s: %d", users[a].name, svc[v], code);
            c = raw_open(users[a].url);
            amqp_queue_purge(c, 1, amqp_cstring_bytes(dlq));
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: queue.purge %s: %d", users[a].name, dlq, code);
            c = raw_open(users[a].url);
            amqp_basic_consume(c, 1, amqp_cstring_bytes(svc[v]), amqp_empty_bytes, 0, 0, 0,
                               amqp_empty_table);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: basic.consume %s: %d", users[a].name, svc[v], code);
            c = raw_open(users[a].url);
            amqp_basic_get(c, 1, amqp_cstring_bytes(dlq), 0);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: basic.get %s: %d", users[a].name, dlq, code);
        }
    }
    assert_no_effect();
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

/* A refused login is told apart by the broker's reply code (403 in
 * connection.close, which RabbitMQ sends to a client that advertises
 * authentication_failure_close), not by the text of an error: permanent,
 * so a service with a wrong password stops instead of retrying forever. */
START_TEST(a_wrong_password_is_a_permanent_error)
{
    char url[512], err[MQ_ERR_LEN];
    const char *good = tu_env("BILLING_AMQP_URL"), *at = strrchr(good, '@');
    mq_opts o = {.url = url, .app_id = "check_privileges"};
    mq_conn *c;
    ck_assert_ptr_nonnull(at);
    snprintf(url, sizeof(url), "amqp://billing:not-the-password%s", at);
    c = mq_new(&o);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(mq_connect_publisher(c, err, sizeof(err)), MQ_ERR_CONFIG);
    mq_free(c);
    /* and a queue that does not exist is 404, also permanent */
    c = tu_publisher("TEST_AMQP_URL", "check_privileges");
    ck_assert_int_eq(mq_queue_depth(c, "no-such-queue", err, sizeof(err)), MQ_ERR_CONFIG);
    mq_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("privileges");
    TCase *t = tcase_create("broker");
    tcase_add_unchecked_fixture(t, start_all, stop_all);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, forged_release_from_email_leaves_a_reserved_order_alone);
    tcase_add_test(t, no_user_can_publish_into_another_services_queues);
    tcase_add_test(t, own_key_with_a_forged_type_is_not_applied);
    tcase_add_test(t, no_user_can_configure_or_read_what_is_not_its_own);
    tcase_add_test(t, cc_and_bcc_to_another_services_queue_are_not_applied);
    tcase_add_test(t, exchange_to_exchange_binding_is_not_applied);
    tcase_add_test(t, dead_letter_arguments_do_not_forge_an_event);
    tcase_add_test(t, guest_cannot_log_in);
    tcase_add_test(t, a_wrong_password_is_a_permanent_error);
    suite_add_tcase(s, t);
    return tu_run(s);
}
