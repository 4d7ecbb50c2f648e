/*
 * check_privileges.c — least privilege on the broker, tried as an attacker
 * holding one service's credentials would: every broker user (every service
 * and pos) against every other consuming service. (The database side is in
 * check_db.c.)
 *
 * Who they are comes from the registry, not from this file: BROKER_USERS of
 * scripts/broker-perms.sh (every service of scripts/suite.sh, and pos), read
 * from $ORDERSUITE_ROOT at start. A service made by `make new-service` is in
 * it, so it is tried as an attacker and as a victim with no edit here
 * (tests/new_service_check.py runs this suite in a tree with one).
 *
 * The consuming services run as their own broker users and database roles
 * for the whole suite (an unchecked fixture), so a door that lets a message
 * through shows as an effect in their tables. Each door must be refused by
 * the broker (403 ACCESS_REFUSED) or, for a service's own routing key with a
 * forged x-original-routing-key / type, ignored by the consumer. Then a
 * barrier message per service (sent by the administrator through the
 * service's own retry path, after everything else, of a type the service's
 * queue is bound for) is awaited, and no inbox in any schema may hold any of
 * the attackers' message ids; inbox rows are written in the handler's
 * transaction, so no inbox row means no effect.
 *
 * One file (over 600 lines) on purpose: it is one attack matrix over one start
 * of every consuming service and ends in one barrier and inbox check; split,
 * each part starts the services and needs its own barrier.
 */
#include "events.h"
#include "mq.h"
#include "testutil.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <cJSON.h>
#include <ctype.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MAX_USERS 32

/* Every broker user of the registry. A consuming service (one of
 * scripts/suite.sh) has a queue of its name, a database role and schema
 * (suite.sh's second field), and a key its queue is bound for on
 * sales.events (the barrier's, read from the broker once it runs). */
static struct {
    char name[64];     /* broker user, and queue name */
    char topic[64];    /* prefix of the keys it may publish on sales.events; "" none */
    char url_env[100]; /* e.g. ORDER_API_AMQP_URL */
    int consumer;
    char schema[64];  /* e.g. orders */
    char db_env[100]; /* e.g. ORDERS_DATABASE_URL */
    ev_type handles;  /* a key its queue is bound for */
    char keys[256];   /* a consumer's keys, "k1,k2,": service_keys of broker-perms.sh */
    tu_svc svc;       /* a consumer's, started by start_all */
} users[MAX_USERS];
static size_t nusers;

static const char *const all_keys[] = {
    RK_ORDER_PLACED,        RK_INVENTORY_RESERVED, RK_INVENTORY_REJECTED,     RK_INVENTORY_RELEASED,
    RK_INVENTORY_LOW_STOCK, RK_BILLING_INVOICED,   RK_BILLING_PAYMENT_FAILED, RK_SALE_COMPLETED,
};
#define NKEYS (sizeof(all_keys) / sizeof(all_keys[0]))

/* NAME as an environment variable part (order-api -> ORDER_API), as
 * scripts/suite.sh's up_name. */
static void up_name(const char *name, const char *suffix, char *out, size_t len)
{
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        out[i] = name[i] == '-' ? '_' : (char)toupper((unsigned char)name[i]);
    snprintf(out + i, len - i, "%s", suffix);
}

/* Reads BROKER_USERS, suite.sh's roles and each consumer's keys (what
 * broker-perms.sh lets it read on sales.events): lines "user topic role
 * keys" ("-" for none; keys "k1,k2,"). Returns 0, or -1 with the reason on
 * stderr. */
static int load_registry(void)
{
    const char *cmd =
        "bash -c 'source \"$ORDERSUITE_ROOT/scripts/broker-perms.sh\" || exit 1;"
        " for e in $BROKER_USERS; do u=${e%%:*}; t=${e#*:}; r=$(suite_field \"$u\" 2); k=-;"
        " if [ -n \"$r\" ]; then k=$(service_keys \"$u\" | tr \"\\n\" ,) || exit 1; fi;"
        " echo \"$u ${t:--} ${r:--} $k\"; done'";
    char line[512];
    FILE *p;
    if (!getenv("ORDERSUITE_ROOT")) {
        fprintf(stderr, "ORDERSUITE_ROOT is not set (scripts/run-tests.sh sets it)\n");
        return -1;
    }
    p = popen(cmd, "r");
    if (!p)
        return -1;
    while (fgets(line, sizeof(line), p)) {
        char u[64], t[64], r[64], k[256];
        if (sscanf(line, "%63s %63s %63s %255s", u, t, r, k) != 4)
            continue;
        if (nusers == MAX_USERS) {
            fprintf(stderr, "more than %d broker users\n", MAX_USERS);
            pclose(p);
            return -1;
        }
        snprintf(users[nusers].name, sizeof(users[nusers].name), "%s", u);
        snprintf(users[nusers].topic, sizeof(users[nusers].topic), "%s", strcmp(t, "-") ? t : "");
        up_name(u, "_AMQP_URL", users[nusers].url_env, sizeof(users[nusers].url_env));
        users[nusers].consumer = strcmp(r, "-") != 0;
        if (users[nusers].consumer) {
            snprintf(users[nusers].schema, sizeof(users[nusers].schema), "%s", r);
            up_name(r, "_DATABASE_URL", users[nusers].db_env, sizeof(users[nusers].db_env));
            snprintf(users[nusers].keys, sizeof(users[nusers].keys), "%s", k);
        }
        nusers++;
    }
    if (pclose(p) != 0 || nusers < 2) {
        fprintf(stderr, "reading BROKER_USERS from %s/scripts/broker-perms.sh failed\n",
                getenv("ORDERSUITE_ROOT"));
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------------- fixture */

static int consuming(void *arg)
{
    int consumers = 0;
    return tu_queue_counts("TEST_AMQP_URL", arg, &consumers) >= 0 && consumers > 0;
}

/* The keys queue q is bound for on sales.events (the management API, as the
 * administrator of TEST_AMQP_URL), each followed by a comma, into out;
 * -1 when the API does not answer. */
static int event_bindings(const char *q, char *out, size_t len)
{
    struct amqp_connection_info info;
    char *url = strdup(tu_env("TEST_AMQP_URL")), cred[300], b64[420], auth[460], api[512];
    char *page = NULL;
    const char *hdrs[] = {auth, NULL};
    const cJSON *b;
    cJSON *j;
    size_t n = 0;
    ck_assert_int_eq(amqp_parse_url(url, &info), AMQP_STATUS_OK);
    snprintf(cred, sizeof(cred), "%s:%s", info.user, info.password);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)cred, (int)strlen(cred));
    snprintf(auth, sizeof(auth), "Authorization: Basic %s", b64);
    /* The vhost's names are plain ("/" is the only one with a character to
     * escape). */
    ck_assert_int_lt(snprintf(api, sizeof(api), "http://127.0.0.1:%s/api/queues/%s/%s/bindings",
                              tu_env("MGMT_PORT"),
                              strcmp(info.vhost, "/") == 0 ? "%2F" : info.vhost, q),
                     (int)sizeof(api));
    free(url);
    if (tu_http("GET", api, hdrs, NULL, 0, &page) != 200) {
        free(page);
        return -1;
    }
    j = cJSON_Parse(page);
    free(page);
    out[0] = '\0';
    cJSON_ArrayForEach(b, j)
    {
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(b, "source");
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(b, "routing_key");
        if (cJSON_IsString(src) && strcmp(src->valuestring, MQ_EXCHANGE) == 0 &&
            cJSON_IsString(key)) {
            int w = snprintf(out + n, len - n, "%s,", key->valuestring);
            ck_assert_msg(w > 0 && (size_t)w < len - n, "%s: too many bindings", q);
            n += (size_t)w;
        }
    }
    cJSON_Delete(j);
    return 0;
}

/* Whether key is one of list's ("k1,k2,"). */
static int in_list(const char *list, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == kl && strncmp(p, key, kl) == 0)
            return 1;
        p += l + (e != NULL);
    }
    return 0;
}

/* The first event key queue q is bound for on sales.events, in the
 * management API's order; -1 when there is none. */
static int bound_key(const char *q, ev_type *out)
{
    char list[1024];
    if (event_bindings(q, list, sizeof(list)) < 0)
        return -1;
    for (char *k = list, *e; (e = strchr(k, ',')) != NULL; k = e + 1) {
        *e = '\0';
        if (ev_type_from_key(k, out) == 0)
            return 0;
    }
    return -1;
}

static void stop_started(void)
{
    for (size_t i = nusers; i-- > 0;)
        tu_svc_stop(&users[i].svc);
}

static void start_all(void)
{
    /* TU_API_TOKENS: order-api needs one. */
    const char *env[] = {"HTTP_PORT=0", TU_API_TOKENS, "OPS_PORT=0", NULL};
    for (size_t i = 0; i < nusers; i++) {
        char log[64];
        const tu_svc_opts o = {.exe = users[i].name,
                               .amqp_env = users[i].url_env,
                               .db_env = users[i].db_env,
                               .env = env,
                               .log = log};
        if (!users[i].consumer)
            continue;
        ck_assert_int_lt(snprintf(log, sizeof(log), "privileges-%s", users[i].name),
                         (int)sizeof(log));
        tu_svc_spawn(&users[i].svc, &o);
    }
    for (size_t i = 0; i < nusers; i++) {
        if (!users[i].consumer)
            continue;
        if (!tu_poll(30000, consuming, users[i].name)) {
            /* Not left behind to take other suites' messages. */
            stop_started();
            ck_abort_msg("%s is not consuming", users[i].name);
        }
        if (bound_key(users[i].name, &users[i].handles) < 0) {
            stop_started();
            ck_abort_msg("%s's queue is bound for no event on %s", users[i].name, MQ_EXCHANGE);
        }
    }
}

/* Stops the consumers and empties their dead-letter queues: the forged
 * messages the doors leave there are no one's to replay (chaos_check's
 * scenario 6, later in make test, counts and replays inventory.dlq). */
static void stop_all(void)
{
    mq_conn *c;
    char err[MQ_ERR_LEN], dlq[MQ_NAME_LEN];
    for (size_t i = nusers; i-- > 0;) {
        if (users[i].consumer)
            tu_svc_stop_ok(&users[i].svc);
    }
    c = tu_publisher("TEST_AMQP_URL", "check_privileges");
    for (size_t i = 0; i < nusers; i++) {
        if (!users[i].consumer)
            continue;
        mq_dlq_name(users[i].name, dlq, sizeof(dlq));
        ck_assert_msg(mq_purge(c, dlq, err, sizeof(err)) >= 0, "purging %s: %s", dlq, err);
    }
    mq_free(c);
}

/* The user called name (fails the test when there is none). */
static size_t user(const char *name)
{
    for (size_t i = 0; i < nusers; i++)
        if (strcmp(users[i].name, name) == 0)
            return i;
    ck_abort_msg("no broker user %s in BROKER_USERS", name);
    return 0;
}

/* Whether key is one of user a's own keys on sales.events. */
static int owns(size_t a, const char *key)
{
    size_t tl = strlen(users[a].topic);
    return tl && strncmp(key, users[a].topic, tl) == 0 && key[tl] == '.';
}

/* --------------------------------------------------------------- helpers */

/* The attackers' message ids, checked against every inbox at the end but
 * the attacker's own (a service may send itself anything: its own retry
 * path, its own keys). */
#define MAX_FORGED 8192
static char forged[MAX_FORGED][UUID_STR_LEN];
static size_t forged_by[MAX_FORGED]; /* index in users[], or nusers: nobody's own */
static size_t nforged;

/* A new forged message id, sent as the user of url_env. */
static const char *new_forged(const char *url_env)
{
    size_t by = nusers;
    ck_assert_uint_lt(nforged, MAX_FORGED);
    for (size_t i = 0; i < nusers; i++)
        if (strcmp(users[i].url_env, url_env) == 0)
            by = i;
    uuid_v4(forged[nforged]);
    forged_by[nforged] = by;
    return forged[nforged++];
}

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
    if (errlen)
        err[0] = '\0';
    uuid_v4(corr);
    m.exchange = exchange;
    m.routing_key = key;
    m.message_id = new_forged(url_env);
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

/* The administrator sends each service one event its queue is bound for
 * through the service's own retry path; when each has recorded its barrier,
 * everything published before has been through its queue. */
static void barrier(void)
{
    mq_conn *c = tu_publisher("TEST_AMQP_URL", "check_privileges");
    char ids[MAX_USERS][UUID_STR_LEN], err[MQ_ERR_LEN], id2[UUID_STR_LEN];
    for (size_t i = 0; i < nusers; i++) {
        mq_header h[] = {{MQ_H_ORIGINAL_KEY, ev_routing_key(users[i].handles), 0}};
        char *body, corr[UUID_STR_LEN];
        mq_msg m = {0};
        if (!users[i].consumer)
            continue;
        uuid_v4(id2);
        body = event_body(users[i].handles, id2);
        uuid_v4(ids[i]);
        uuid_v4(corr);
        m.exchange = MQ_RETRY_EXCHANGE;
        m.routing_key = users[i].name;
        m.message_id = ids[i];
        m.correlation_id = corr;
        m.type = ev_routing_key(users[i].handles);
        m.body = body;
        m.len = strlen(body);
        m.headers = h;
        m.nheaders = 1;
        ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_OK, "barrier to %s: %s",
                      users[i].name, err);
        free(body);
    }
    mq_free(c);
    for (size_t i = 0; i < nusers; i++) {
        const char *arg[] = {users[i].schema, ids[i]};
        if (!users[i].consumer)
            continue;
        ck_assert_msg(tu_poll(30000, in_inbox, (void *)arg), "%s never handled the barrier (%s)",
                      users[i].name, ev_routing_key(users[i].handles));
    }
}

/* No inbox holds a message id another service's attacker sent. */
static void assert_no_effect(void)
{
    size_t cap = nforged * (UUID_STR_LEN + 1) + 4;
    char *list = malloc(cap);
    ck_assert_ptr_nonnull(list);
    barrier();
    for (size_t i = 0; i < nusers; i++) {
        char sql[240];
        const char *p[] = {list};
        char *ids;
        size_t n = 0;
        if (!users[i].consumer)
            continue;
        n += (size_t)snprintf(list + n, cap - n, "{");
        for (size_t k = 0; k < nforged; k++)
            if (forged_by[k] != i)
                n += (size_t)snprintf(list + n, cap - n, "%s%s", n > 1 ? "," : "", forged[k]);
        snprintf(list + n, cap - n, "}");
        snprintf(sql, sizeof(sql),
                 "SELECT coalesce(string_agg(message_id::text, ' '), '') FROM %s.inbox"
                 " WHERE message_id = ANY($1::uuid[])",
                 users[i].schema);
        ids = tu_sql(tu_env("OWNER_DATABASE_URL"), sql, 1, p);
        if (ids[0])
            free(list);
        ck_assert_msg(ids[0] == '\0', "%s applied a message an attacker sent: %s", users[i].name,
                      ids);
        free(ids);
    }
    free(list);
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

/* Request/reply (scripts/broker-perms.sh): whether user a is listed in
 * RPC_ANSWERS (var "RPC_ANSWERS") or RPC_ASKS. */
static int rpc_listed(const char *var, size_t a)
{
    char cmd[256], line[512];
    FILE *p;
    int found = 0;
    snprintf(cmd, sizeof(cmd),
             "bash -c 'source \"$ORDERSUITE_ROOT/scripts/broker-perms.sh\" && echo $%s'", var);
    p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    while (fgets(line, sizeof(line), p)) {
        for (char *save = NULL, *t = strtok_r(line, " \n", &save); t;
             t = strtok_r(NULL, " \n", &save)) {
            char *colon = strchr(t, ':');
            if (colon && (size_t)(colon - t) == strlen(users[a].name) &&
                strncmp(t, users[a].name, strlen(users[a].name)) == 0)
                found = 1;
        }
    }
    ck_assert_int_eq(pclose(p), 0);
    return found;
}

/* The five queues of consuming service v: work, the retry tiers, DLQ. */
static void queues_of(size_t v, char names[5][64])
{
    snprintf(names[0], 64, "%s", users[v].name);
    mq_retry_queue_name(users[v].name, 1000, names[1], 64);
    mq_retry_queue_name(users[v].name, 10000, names[2], 64);
    mq_retry_queue_name(users[v].name, 60000, names[3], 64);
    mq_dlq_name(users[v].name, names[4], 64);
}

/* The default exchange into each of the other's queues, the retry and
 * dead-letter exchanges with the other's keys (its queues' names, and the
 * events it is bound for), sales.events with keys the attacker does not
 * own: all refused by the broker. But for a service that answers requests
 * (RPC_ANSWERS): it writes on the default exchange, the only way to a
 * reply-to name, and the broker cannot narrow that by key, so what it puts
 * into another's work queue or DLQ that way is accepted and must have no
 * effect (assert_no_effect): the consumer takes the queue's name for the
 * key, which is no event. (Its retry tiers are left out for it: a copy
 * there comes back up to a minute later, after the barrier; the consumer
 * refuses it by its x-death and user-id, as in
 * a_preset_x_death_does_not_forge_an_event_through_the_dlq.) */
START_TEST(no_user_can_publish_into_another_services_queues)
{
    char err[MQ_ERR_LEN], q[128];
    for (size_t a = 0; a < nusers; a++) {
        int answerer = rpc_listed("RPC_ANSWERS", a);
        for (size_t v = 0; v < nusers; v++) {
            char names[5][64];
            int rc;
            if (a == v || !users[v].consumer)
                continue;
            queues_of(v, names);
            for (int k = 0; k < 5; k++) {
                if (!answerer || k == 0 || k == 4) {
                    rc = attempt(users[a].url_env, "", names[k], users[v].handles, NULL, 1, err,
                                 sizeof(err));
                    ck_assert_msg(rc == (answerer ? MQ_OK : MQ_ERR_CONFIG),
                                  "%s published to %s through \"\" (%d: %s)", users[a].name,
                                  names[k], rc, err);
                }
                rc = attempt(users[a].url_env, MQ_RETRY_EXCHANGE, names[k], users[v].handles, NULL,
                             1, err, sizeof(err));
                ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published to %s with key %s (%d: %s)",
                              users[a].name, MQ_RETRY_EXCHANGE, names[k], rc, err);
                rc = attempt(users[a].url_env, MQ_DLX, names[k], users[v].handles, NULL, 1, err,
                             sizeof(err));
                ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published to %s with key %s (%d: %s)",
                              users[a].name, MQ_DLX, names[k], rc, err);
            }
            /* the victim's event key on the retry and dead-letter exchanges */
            rc = attempt(users[a].url_env, MQ_RETRY_EXCHANGE, ev_routing_key(users[v].handles),
                         users[v].handles, NULL, 1, err, sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published %s on %s (%d: %s)", users[a].name,
                          ev_routing_key(users[v].handles), MQ_RETRY_EXCHANGE, rc, err);
            rc = attempt(users[a].url_env, MQ_DLX, ev_routing_key(users[v].handles),
                         users[v].handles, NULL, 1, err, sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published %s on %s (%d: %s)", users[a].name,
                          ev_routing_key(users[v].handles), MQ_DLX, rc, err);
        }
        /* sales.events: every event key it does not own, and another
         * service's prefix */
        for (size_t k = 0; k < NKEYS; k++) {
            ev_type t;
            int rc;
            if (owns(a, all_keys[k]))
                continue;
            ck_assert_int_eq(ev_type_from_key(all_keys[k], &t), 0);
            rc = attempt(users[a].url_env, MQ_EXCHANGE, all_keys[k], t, NULL, 0, err, sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published %s on %s (%d: %s)", users[a].name,
                          all_keys[k], MQ_EXCHANGE, rc, err);
        }
        for (size_t v = 0; v < nusers; v++) {
            int rc;
            if (a == v || !users[v].topic[0] || strcmp(users[a].topic, users[v].topic) == 0)
                continue;
            snprintf(q, sizeof(q), "%s.nobody-listens", users[v].topic);
            rc = attempt(users[a].url_env, MQ_EXCHANGE, q, EV_ORDER_PLACED, NULL, 0, err,
                         sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published %s on %s (%d: %s)", users[a].name, q,
                          MQ_EXCHANGE, rc, err);
        }
        /* the empty key, which is no one's (a service that publishes no
         * event has no key at all, not the empty one) */
        {
            int rc = attempt(users[a].url_env, MQ_EXCHANGE, "", EV_ORDER_PLACED, NULL, 0, err,
                             sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published the empty key on %s (%d: %s)",
                          users[a].name, MQ_EXCHANGE, rc, err);
        }
        /* its own prefix is allowed (unbound here, so returned, not refused):
         * what worker_emit() publishes gets out */
        if (users[a].topic[0]) {
            snprintf(q, sizeof(q), "%s.nobody-listens", users[a].topic);
            ck_assert_msg(attempt(users[a].url_env, MQ_EXCHANGE, q, EV_ORDER_PLACED, NULL, 0, err,
                                  sizeof(err)) == MQ_ERR_RETURNED,
                          "%s: its own %s: %s", users[a].name, q, err);
        }
    }
    assert_no_effect();
}
END_TEST

/* Every user with keys of its own: each own key (or, for a service whose
 * keys no event names, one under its prefix), with the type and
 * x-original-routing-key of every other event: the consumers must go by the
 * routing key the broker checked, and not apply it. The order in the bodies
 * is RESERVED, so a confirmation or cancellation would show. */
START_TEST(own_key_with_a_forged_type_is_not_applied)
{
    char order[UUID_STR_LEN], err[MQ_ERR_LEN], *st, own[128];
    size_t tried = 0;
    reserved_order(order);
    for (size_t a = 0; a < nusers; a++) {
        const char *keys[NKEYS + 1];
        size_t nk = 0;
        if (!users[a].topic[0])
            continue;
        for (size_t k = 0; k < NKEYS; k++)
            if (owns(a, all_keys[k]))
                keys[nk++] = all_keys[k];
        if (nk == 0) {
            snprintf(own, sizeof(own), "%s.forged", users[a].topic);
            keys[nk++] = own;
        }
        for (size_t k = 0; k < nk; k++) {
            for (size_t f = 0; f < NKEYS; f++) {
                ev_type as;
                int rc;
                if (strcmp(all_keys[f], keys[k]) == 0)
                    continue;
                ck_assert_int_eq(ev_type_from_key(all_keys[f], &as), 0);
                rc =
                    attempt(users[a].url_env, MQ_EXCHANGE, keys[k], as, order, 1, err, sizeof(err));
                /* its own key, so the broker takes it: the consumer must be
                 * the one that refuses the forged type (a refusal here would
                 * leave the consumer's check untested). A key nobody is
                 * bound for comes back. */
                ck_assert_msg(rc == MQ_OK || (keys[k] == own && rc == MQ_ERR_RETURNED),
                              "%s: its own key %s was refused: %d %s", users[a].name, keys[k], rc,
                              err);
                tried += rc == MQ_OK;
            }
        }
    }
    ck_assert_msg(tried > 0, "no forged type reached a consumer");
    assert_no_effect();
    st = order_status(order);
    ck_assert_str_eq(st, "RESERVED");
    free(st);
}
END_TEST

/* A raw publish as the user of url_env (on a connection of its own): a body of type `as` for
 * order_id, with type and x-original-routing-key `as` (and the current schema_version, so that only
 * the type can stop it), and the routing keys in cc under the header hdr ("CC" or "BCC"; NULL:
 * none). The channel is closed before it returns, so the broker has routed the message. Returns
 * raw_done's code. */
static int raw_forge(const char *url_env, const char *exchange, const char *key, ev_type as,
                     const char *order_id, const char *hdr, const char *cc)
{
    char *body = event_body(as, order_id), corr[UUID_STR_LEN];
    amqp_field_value_t ccv = {.kind = AMQP_FIELD_KIND_UTF8,
                              .value.bytes = amqp_cstring_bytes(cc ? cc : "")};
    amqp_table_entry_t h[3];
    amqp_basic_properties_t p = {0};
    int nh = 0, st;

    amqp_connection_state_t c = tu_amqp_open(url_env);
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
    p.message_id = amqp_cstring_bytes(new_forged(url_env));
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
 * reaches the victim's queue through sales.retry must not be taken for the
 * victim's own retry; nor the copy that waits out the victim's first retry
 * tier and reaches its queue under the victim's own key. Every consuming
 * service against every other, with an event the victim's queue is bound
 * for. */
START_TEST(cc_and_bcc_to_another_services_queue_are_not_applied)
{
    static const char *const hdrs[] = {"CC", "BCC"};
    static const char *const exs[] = {MQ_RETRY_EXCHANGE, MQ_DLX};
    char order[UUID_STR_LEN], *st;
    reserved_order(order);
    for (size_t a = 0; a < nusers; a++) {
        for (size_t v = 0; v < nusers; v++) {
            char to[2][64];
            /* order-api's own copy (its own retry key) may move its own
             * order: that one names no order */
            int self = strcmp(users[a].name, "order-api") == 0;
            if (a == v || !users[a].consumer || !users[v].consumer)
                continue;
            ck_assert_int_lt(snprintf(to[0], sizeof(to[0]), "%s", users[v].name),
                             (int)sizeof(to[0]));
            ck_assert_int_eq(mq_retry_queue_name(users[v].name, 1000, to[1], sizeof(to[1])), 0);
            for (size_t x = 0; x < 2; x++) {
                for (size_t k = 0; k < 2; k++) {
                    for (size_t q = 0; q < 2; q++) {
                        /* accepted (its own key) or refused: either way, not
                         * applied */
                        int code = raw_forge(users[a].url_env, exs[x], users[a].name,
                                             users[v].handles, self ? NULL : order, hdrs[k], to[q]);
                        ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "%s: %s %s %s: %d",
                                      users[a].name, exs[x], hdrs[k], to[q], code);
                    }
                }
            }
        }
    }
    /* what reached a tier is back in its service's queue before the barrier */
    for (size_t v = 0; v < nusers; v++) {
        char tier[64];
        if (!users[v].consumer)
            continue;
        mq_retry_queue_name(users[v].name, 1000, tier, sizeof(tier));
        ck_assert_msg(tu_poll(30000, queue_empty, tier), "%s never emptied", tier);
    }
    assert_no_effect();
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "CC/BCC: the order is %s", st);
    free(st);
}
END_TEST

/* exchange.bind (unbind) destination <- source under key, as the user of
 * url_env; the reply code (0: done). */
static int bind_exchange(const char *url_env, int unbind, const char *dest, const char *src,
                         const char *key)
{
    amqp_connection_state_t c = tu_amqp_open(url_env);
    if (unbind)
        amqp_exchange_unbind(c, 1, amqp_cstring_bytes(dest), amqp_cstring_bytes(src),
                             amqp_cstring_bytes(key), amqp_empty_table);
    else
        amqp_exchange_bind(c, 1, amqp_cstring_bytes(dest), amqp_cstring_bytes(src),
                           amqp_cstring_bytes(key), amqp_empty_table);
    return raw_done(c);
}

#define MAX_XB 2048
static struct {
    const char *dest, *src;
    char key[80];
    size_t by; /* the user that tried it */
    int code;
} xb[MAX_XB];
static size_t nxb;

/* Tries exchange.bind dest <- src under key as user a, and records it. */
static void try_xbind(size_t a, const char *dest, const char *src, const char *key)
{
    ck_assert_uint_lt(nxb, MAX_XB);
    xb[nxb].dest = dest;
    xb[nxb].src = src;
    ck_assert_int_lt(snprintf(xb[nxb].key, sizeof(xb[nxb].key), "%s", key),
                     (int)sizeof(xb[nxb].key));
    xb[nxb].by = a;
    xb[nxb].code = bind_exchange(users[a].url_env, 0, dest, src, key);
    ck_assert_msg(xb[nxb].code == 0 || xb[nxb].code == AMQP_ACCESS_REFUSED,
                  "%s: exchange.bind %s <- %s under %s: %d", users[a].name, dest, src, key,
                  xb[nxb].code);
    nxb++;
}

/* Door (B), exchange-to-exchange bindings: the broker checks write on the
 * destination, read on the source and the topic read permission of the key
 * on the source only. Each consuming service tries
 *   - sales.retry <- sales.events under its prefix's `.#`, `#`, and every
 *     event key (the ones it handles are its to read, so the broker takes
 *     them);
 *   - sales.dlx <- sales.events and sales.events <- itself under the same
 *     keys;
 *   - sales.events, sales.retry and sales.dlx <- sales.retry and <-
 *     sales.dlx (so each of the two to the other and to itself) under its
 *     own name, its first tier's key (its own keys there, so the broker
 *     takes them), `#` and each other service's name.
 * Whatever the broker took is then used: each bound event key is published
 * on sales.events by its owner, and each attacker publishes under its own
 * name on sales.retry and sales.dlx, without and with the victim's name in
 * CC, all with the forged type and x-original-routing-key of other events. A message that crosses
 * such a binding still carries the key its publisher was allowed: on sales.retry no queue is bound
 * for an event key, and on sales.events no queue can be bound for a service's name (each reads only
 * its event keys), so nothing reaches another service's queue: no inbox in any schema holds it, and
 * the RESERVED order stays RESERVED. */
START_TEST(exchange_to_exchange_binding_is_not_applied)
{
    char order[UUID_STR_LEN], *st, key[128];
    size_t taken = 0;
    int code;
    reserved_order(order);
    nxb = 0;
    for (size_t a = 0; a < nusers; a++) {
        char tier[64];
        if (!users[a].consumer)
            continue;
        snprintf(key, sizeof(key), "%s.#", users[a].topic[0] ? users[a].topic : users[a].name);
        try_xbind(a, MQ_RETRY_EXCHANGE, MQ_EXCHANGE, key);
        try_xbind(a, MQ_RETRY_EXCHANGE, MQ_EXCHANGE, "#");
        for (size_t k = 0; k < NKEYS; k++)
            try_xbind(a, MQ_RETRY_EXCHANGE, MQ_EXCHANGE, all_keys[k]);
        /* sales.dlx <- sales.events, and sales.events <- itself */
        try_xbind(a, MQ_DLX, MQ_EXCHANGE, key);
        try_xbind(a, MQ_DLX, MQ_EXCHANGE, "#");
        try_xbind(a, MQ_EXCHANGE, MQ_EXCHANGE, "#");
        for (size_t k = 0; k < NKEYS; k++) {
            try_xbind(a, MQ_DLX, MQ_EXCHANGE, all_keys[k]);
            try_xbind(a, MQ_EXCHANGE, MQ_EXCHANGE, all_keys[k]);
        }
        ck_assert_int_eq(mq_retry_queue_name(users[a].name, 1000, tier, sizeof(tier)), 0);
        for (int x = 0; x < 2; x++) {
            const char *src = x ? MQ_DLX : MQ_RETRY_EXCHANGE;
            /* sales.events, sales.retry <-> sales.dlx and each to itself */
            for (int y = 0; y < 3; y++) {
                const char *dest = y == 0 ? MQ_EXCHANGE : y == 1 ? MQ_RETRY_EXCHANGE : MQ_DLX;
                try_xbind(a, dest, src, users[a].name);
                try_xbind(a, dest, src, tier);
                try_xbind(a, dest, src, "#");
                for (size_t v = 0; v < nusers; v++)
                    if (v != a && users[v].consumer)
                        try_xbind(a, dest, src, users[v].name);
            }
        }
    }
    /* what crosses a binding the broker took */
    for (size_t b = 0; b < nxb; b++) {
        size_t a = xb[b].by;
        if (xb[b].code != 0)
            continue;
        taken++;
        if (strcmp(xb[b].src, MQ_EXCHANGE) == 0) {
            /* an event key, published by its owner (if any user owns it) */
            for (size_t o = 0; o < nusers; o++) {
                ev_type key_type;
                if (!owns(o, xb[b].key) || ev_type_from_key(xb[b].key, &key_type) < 0)
                    continue;
                for (size_t f = 0; f < NKEYS; f++) {
                    ev_type as;
                    if (strcmp(all_keys[f], xb[b].key) == 0)
                        continue;
                    ck_assert_int_eq(ev_type_from_key(all_keys[f], &as), 0);
                    code =
                        raw_forge(users[o].url_env, MQ_EXCHANGE, xb[b].key, as, order, NULL, NULL);
                    ck_assert_msg(code == 0, "%s: its own %s: %d", users[o].name, xb[b].key, code);
                }
            }
        } else if (strcmp(xb[b].key, users[a].name) == 0) {
            /* its own key on sales.retry / sales.dlx: its own queue or DLQ
             * takes it too (a service may send itself anything), so these
             * name no order */
            for (size_t v = 0; v < nusers; v++) {
                if (v == a || !users[v].consumer)
                    continue;
                code = raw_forge(users[a].url_env, xb[b].src, users[a].name, users[v].handles, NULL,
                                 NULL, NULL);
                ck_assert_msg(code == 0, "%s: its own key on %s: %d", users[a].name, xb[b].src,
                              code);
                /* and with the victim's name in CC, which the binding
                 * carries across too */
                code = raw_forge(users[a].url_env, xb[b].src, users[a].name, users[v].handles, NULL,
                                 "CC", users[v].name);
                ck_assert_msg(code == 0, "%s: its own key on %s, CC %s: %d", users[a].name,
                              xb[b].src, users[v].name, code);
            }
        }
    }
    assert_no_effect();
    /* the administrator removes what was bound */
    for (size_t b = 0; b < nxb; b++) {
        if (xb[b].code == 0)
            ck_assert_int_eq(bind_exchange("TEST_AMQP_URL", 1, xb[b].dest, xb[b].src, xb[b].key),
                             0);
    }
    /* the doors the broker leaves open were tried: a consumer's own event
     * keys from sales.events, its own keys from sales.retry and sales.dlx */
    ck_assert_uint_gt(taken, 0);
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "exchange binding: the order is %s", st);
    free(st);
}
END_TEST

/* Door (C): attacker a declares a queue of its own name that dead-letters
 * to dlx under dlkey (the broker checks write on the dead-letter exchange,
 * not the key), puts a message of type `as` in and rejects it: the broker
 * republishes it there, with an x-death header. */
static void dead_letter_as(size_t a, const char *order, ev_type as, const char *dlx,
                           const char *dlkey)
{
    char q[80];
    amqp_connection_state_t c;
    amqp_table_entry_t e[2];
    amqp_table_t args = {2, e};
    amqp_rpc_reply_t r;
    int code;
    snprintf(q, sizeof(q), "%s.retry.7ms", users[a].name);
    e[0].key = amqp_cstring_bytes("x-dead-letter-exchange");
    e[0].value.kind = AMQP_FIELD_KIND_UTF8;
    e[0].value.value.bytes = amqp_cstring_bytes(dlx);
    e[1].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    e[1].value.kind = AMQP_FIELD_KIND_UTF8;
    e[1].value.value.bytes = amqp_cstring_bytes(dlkey);
    c = tu_amqp_open(users[a].url_env);
    amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 0, 0, 0, 0, args);
    if (amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_queue_bind(c, 1, amqp_cstring_bytes(q), amqp_cstring_bytes(MQ_RETRY_EXCHANGE),
                        amqp_cstring_bytes(q), amqp_empty_table);
        ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
        ck_assert_int_eq(raw_done(c), 0);
        code = raw_forge(users[a].url_env, MQ_RETRY_EXCHANGE, q, as, order, NULL, NULL);
        ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "publish: %d", code);
        c = tu_amqp_open(users[a].url_env);
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
    ck_assert_msg(code == 0 || code == AMQP_ACCESS_REFUSED, "%s: dead-letter queue to %s/%s: %d",
                  users[a].name, dlx, dlkey, code);
}

/* `dlq replay S --all` for every consuming service, as the administrator
 * (the URL through the environment, never on a command line). */
static void replay_all_dlqs(void)
{
    for (size_t v = 0; v < nusers; v++) {
        char *argv[] = {"dlq", "replay", users[v].name, "--all", NULL};
        const tu_svc_opts o = {.exe = "dlq", .amqp_env = "TEST_AMQP_URL", .argv = argv};
        if (users[v].consumer)
            ck_assert_msg(tu_tool(&o, NULL) == 0, "dlq replay %s --all failed", users[v].name);
    }
}

/* Every consuming service against every other: onto sales.events under an
 * event key the victim is bound for, and into sales.retry under the
 * victim's own key, as its retry tiers do. */
START_TEST(dead_letter_arguments_do_not_forge_an_event)
{
    char order[UUID_STR_LEN], *st;
    reserved_order(order);
    for (size_t a = 0; a < nusers; a++) {
        for (size_t v = 0; v < nusers; v++) {
            ev_type as = users[v].handles;
            if (a == v || !users[a].consumer || !users[v].consumer)
                continue;
            dead_letter_as(a, order, as, MQ_EXCHANGE, ev_routing_key(as));
            dead_letter_as(a, order, as, MQ_RETRY_EXCHANGE, users[v].name);
        }
    }
    assert_no_effect();
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "dead-letter arguments: the order is %s", st);
    free(st);
    /* An operator replays every DLQ, as after an outage: what a worker
     * refused as forged must come back refused, never trusted because its
     * own dead-letter copy carries its own user-id. */
    replay_all_dlqs();
    assert_no_effect();
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "replayed from the DLQs: the order is %s", st);
    free(st);
}
END_TEST

/* A raw publish as user a on sales.events under its own key, of a body of
 * type `as` for order_id, with a pre-set x-death as the broker writes it when
 * queue dlq's delivery limit is reached: {queue, reason delivery_limit,
 * exchange sales.events, routing-keys [as's key], count 1}, and user-id a's
 * own (the broker checks it). Returns raw_done's code. */
static int raw_forge_death(size_t a, const char *key, ev_type as, const char *order_id,
                           const char *dlq)
{
    char *body = event_body(as, order_id), corr[UUID_STR_LEN];
    amqp_field_value_t rk = {.kind = AMQP_FIELD_KIND_UTF8,
                             .value.bytes = amqp_cstring_bytes(ev_routing_key(as))};
    amqp_table_entry_t d[5], h[2];
    amqp_field_value_t death;
    amqp_basic_properties_t p = {0};
    int st;
    amqp_connection_state_t c = tu_amqp_open(users[a].url_env);

    uuid_v4(corr);
    d[0].key = amqp_cstring_bytes("queue");
    d[0].value.kind = AMQP_FIELD_KIND_UTF8;
    d[0].value.value.bytes = amqp_cstring_bytes(dlq);
    d[1].key = amqp_cstring_bytes("reason");
    d[1].value.kind = AMQP_FIELD_KIND_UTF8;
    d[1].value.value.bytes = amqp_cstring_bytes("delivery_limit");
    d[2].key = amqp_cstring_bytes("exchange");
    d[2].value.kind = AMQP_FIELD_KIND_UTF8;
    d[2].value.value.bytes = amqp_cstring_bytes(MQ_EXCHANGE);
    d[3].key = amqp_cstring_bytes("routing-keys");
    d[3].value.kind = AMQP_FIELD_KIND_ARRAY;
    d[3].value.value.array.num_entries = 1;
    d[3].value.value.array.entries = &rk;
    d[4].key = amqp_cstring_bytes("count");
    d[4].value.kind = AMQP_FIELD_KIND_I64;
    d[4].value.value.i64 = 1;
    death.kind = AMQP_FIELD_KIND_TABLE;
    death.value.table.num_entries = 5;
    death.value.table.entries = d;
    h[0].key = amqp_cstring_bytes("x-death");
    h[0].value.kind = AMQP_FIELD_KIND_ARRAY;
    h[0].value.value.array.num_entries = 1;
    h[0].value.value.array.entries = &death;
    h[1].key = amqp_cstring_bytes(MQ_H_SCHEMA_VERSION);
    h[1].value.kind = AMQP_FIELD_KIND_I32;
    h[1].value.value.i32 = EV_SCHEMA_VERSION;
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 2;
    p.message_id = amqp_cstring_bytes(new_forged(users[a].url_env));
    p.correlation_id = amqp_cstring_bytes(corr);
    p.type = amqp_cstring_bytes(ev_routing_key(as));
    p.user_id = amqp_cstring_bytes(users[a].name);
    p.headers.num_entries = 2;
    p.headers.entries = h;
    /* confirmed: once acked, every queue bound for key holds it */
    amqp_confirm_select(c, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    st = amqp_basic_publish(c, 1, amqp_cstring_bytes(MQ_EXCHANGE), amqp_cstring_bytes(key), 0, 0,
                            &p, amqp_cstring_bytes(body));
    free(body);
    ck_assert_int_eq(st, AMQP_STATUS_OK);
    for (;;) {
        struct timeval tv = {30, 0};
        amqp_frame_t f;
        st = amqp_simple_wait_frame_noblock(c, &f, &tv);
        if (st != AMQP_STATUS_OK)
            break;
        if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD)
            break;
        ck_assert_msg(f.frame_type != AMQP_FRAME_METHOD ||
                          (f.payload.method.id != AMQP_CHANNEL_CLOSE_METHOD &&
                           f.payload.method.id != AMQP_CONNECTION_CLOSE_METHOD &&
                           f.payload.method.id != AMQP_BASIC_NACK_METHOD),
                      "%s: its own %s with an x-death was refused", users[a].name, key);
    }
    ck_assert_msg(st == AMQP_STATUS_OK, "%s: no confirm for %s: %s", users[a].name, key,
                  amqp_error_string2(st));
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    return raw_done(c);
}

/* An administrator's connection and the queue it works on. */
typedef struct {
    amqp_connection_state_t c;
    const char *q, *dlq;
} churn_arg;

/* Takes every message of arg->q as the administrator; with arg->dlq, hands
 * each back (basic.nack, requeue) as a consumer whose forward to its DLQ
 * keeps failing does (mq_consume.c), and is done once the delivery limit
 * has made the broker dead-letter it into arg->dlq (a quorum queue's
 * requeue is not visible at once, so this is polled); without, drops them
 * (ack) and is done when q is empty. */
static int churn_step(void *arg)
{
    churn_arg *a = arg;
    for (int n = 0; n < 100; n++) {
        amqp_rpc_reply_t r = amqp_basic_get(a->c, 1, amqp_cstring_bytes(a->q), 0);
        uint64_t tag;
        amqp_message_t msg;
        ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) {
            int consumers = 0;
            return !a->dlq || tu_queue_counts("TEST_AMQP_URL", a->dlq, &consumers) > 0;
        }
        tag = ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag;
        ck_assert_int_eq(amqp_read_message(a->c, 1, &msg, 0).reply_type, AMQP_RESPONSE_NORMAL);
        amqp_destroy_message(&msg);
        if (a->dlq)
            ck_assert_int_eq(amqp_basic_nack(a->c, 1, tag, 0, 1), AMQP_STATUS_OK);
        else
            ck_assert_int_eq(amqp_basic_ack(a->c, 1, tag, 0), AMQP_STATUS_OK);
    }
    return 0;
}

static void churn(const char *q, const char *dlq)
{
    churn_arg a = {tu_amqp_open("TEST_AMQP_URL"), q, dlq};
    ck_assert_msg(
        tu_poll(60000, churn_step, &a),
        dlq ? "the broker never dead-lettered %s's message into its DLQ" : "%s never emptied", q);
    ck_assert_int_eq(raw_done(a.c), 0);
}

/* Door (D), x-death pre-set by the publisher: the broker, dead-lettering a
 * message from a queue, only counts up an x-death entry that names that
 * queue and reason, keeping the entry's exchange and routing keys. So an
 * attacker publishes its own key with an entry "dead-lettered from the
 * victim's queue at the delivery limit, published as <an event of another
 * owner>"; the victim refuses it (x-death through sales.events) and, while
 * its forward to the DLQ fails, requeues it, until the delivery limit sends
 * the broker's own copy to the DLQ; the documented `dlq replay --all` must
 * not turn it into that event. Every attacker with keys against every
 * consumer bound for one of them, with an event the victim handles; the
 * victims are stopped and the administrator does their requeueing. */
START_TEST(a_preset_x_death_does_not_forge_an_event_through_the_dlq)
{
    char order[UUID_STR_LEN], dlq[MQ_NAME_LEN], *st;
    size_t tried = 0;
    mq_conn *adm;
    char err[MQ_ERR_LEN];
    reserved_order(order);
    for (size_t i = nusers; i-- > 0;)
        if (users[i].consumer)
            tu_svc_stop(&users[i].svc); /* busy with the doors before: maybe killed */
    /* what the doors before left there, so that a message in a DLQ below
     * is the broker's copy of this door's */
    adm = tu_publisher("TEST_AMQP_URL", "check_privileges");
    for (size_t i = 0; i < nusers; i++) {
        if (!users[i].consumer)
            continue;
        mq_dlq_name(users[i].name, dlq, sizeof(dlq));
        ck_assert_msg(mq_purge(adm, dlq, err, sizeof(err)) >= 0, "purging %s: %s", dlq, err);
    }
    mq_free(adm);
    for (size_t a = 0; a < nusers; a++) {
        for (size_t v = 0; v < nusers; v++) {
            const char *own = NULL;
            ev_type as;
            int found = 0, code;
            if (a == v || !users[a].topic[0] || !users[v].consumer)
                continue;
            for (size_t k = 0; k < NKEYS && !own; k++)
                if (owns(a, all_keys[k]) && in_list(users[v].keys, all_keys[k]))
                    own = all_keys[k];
            for (size_t f = 0; f < NKEYS && !found; f++)
                if (!owns(a, all_keys[f]) && in_list(users[v].keys, all_keys[f]))
                    found = ev_type_from_key(all_keys[f], &as) == 0;
            if (!own || !found)
                continue;
            code = raw_forge_death(a, own, as, order, users[v].name);
            ck_assert_msg(code == 0, "%s: its own %s with an x-death: %d", users[a].name, own,
                          code);
            /* the victim's copy to the delivery limit, the others' dropped */
            for (size_t o = 0; o < nusers; o++)
                if (users[o].consumer && o != v)
                    churn(users[o].name, NULL);
            mq_dlq_name(users[v].name, dlq, sizeof(dlq));
            churn(users[v].name, dlq);
            tried++;
        }
    }
    ck_assert_msg(tried > 0, "no attacker owns a key another service is bound for");
    start_all();
    replay_all_dlqs();
    assert_no_effect();
    st = order_status(order);
    ck_assert_msg(strcmp(st, "RESERVED") == 0, "replayed after the delivery limit: the order is %s",
                  st);
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
    for (size_t a = 0; a < nusers; a++) {
        const char *url = users[a].url_env;
        for (size_t x = 0; x < 3; x++) {
            amqp_connection_state_t c = tu_amqp_open(url);
            int code;
            amqp_exchange_declare(c, 1, amqp_cstring_bytes(shared[x]), amqp_cstring_bytes("fanout"),
                                  0, 1, 0, 0, amqp_empty_table);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: exchange.declare %s: %d", users[a].name, shared[x],
                          code);
            c = tu_amqp_open(url);
            amqp_exchange_delete(c, 1, amqp_cstring_bytes(shared[x]), 1);
            code = raw_done(c);
            ck_assert_msg(code == 403, "%s: exchange.delete %s: %d", users[a].name, shared[x],
                          code);
            /* its own queue bound to another's keys on the retry / DLX */
            for (size_t v = 0; v < nusers && users[a].consumer; v++) {
                if (x == 0 || a == v || !users[v].consumer)
                    continue;
                c = tu_amqp_open(url);
                amqp_queue_bind(c, 1, amqp_cstring_bytes(users[a].name),
                                amqp_cstring_bytes(shared[x]), amqp_cstring_bytes(users[v].name),
                                amqp_empty_table);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: bound its queue to %s/%s: %d", users[a].name,
                              shared[x], users[v].name, code);
            }
        }
        for (size_t v = 0; v < nusers; v++) {
            char names[5][64];
            amqp_connection_state_t c;
            int code;
            if (a == v || !users[v].consumer)
                continue;
            queues_of(v, names);
            for (int k = 0; k < 5; k++) {
                c = tu_amqp_open(url);
                amqp_queue_declare(c, 1, amqp_cstring_bytes(names[k]), 0, 0, 0, 0,
                                   amqp_empty_table);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: queue.declare %s: %d", users[a].name, names[k],
                              code);
                c = tu_amqp_open(url);
                amqp_queue_delete(c, 1, amqp_cstring_bytes(names[k]), 1, 1);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: queue.delete %s: %d", users[a].name, names[k],
                              code);
                c = tu_amqp_open(url);
                amqp_queue_bind(c, 1, amqp_cstring_bytes(names[k]), amqp_cstring_bytes(MQ_EXCHANGE),
                                amqp_cstring_bytes("#"), amqp_empty_table);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: queue.bind %s: %d", users[a].name, names[k], code);
                c = tu_amqp_open(url);
                amqp_queue_purge(c, 1, amqp_cstring_bytes(names[k]));
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: queue.purge %s: %d", users[a].name, names[k], code);
                c = tu_amqp_open(url);
                amqp_basic_consume(c, 1, amqp_cstring_bytes(names[k]), amqp_empty_bytes, 0, 0, 0,
                                   amqp_empty_table);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: basic.consume %s: %d", users[a].name, names[k],
                              code);
                c = tu_amqp_open(url);
                amqp_basic_get(c, 1, amqp_cstring_bytes(names[k]), 0);
                code = raw_done(c);
                ck_assert_msg(code == 403, "%s: basic.get %s: %d", users[a].name, names[k], code);
            }
        }
    }
    assert_no_effect();
}
END_TEST

/* The reply code of one method on a fresh connection as the user of url_env
 * (0: done): what = 0 consume, 1 get, 2 purge, 3 declare, 4 delete queue q;
 * 5 bind q to sales.rpc with key; 6 declare, 7 delete sales.rpc. */
static int rpc_door(const char *url_env, int what, const char *q, const char *key)
{
    amqp_connection_state_t c = tu_amqp_open(url_env);
    amqp_bytes_t qb = amqp_cstring_bytes(q ? q : ""), x = amqp_cstring_bytes("sales.rpc");
    switch (what) {
    case 0:
        amqp_basic_consume(c, 1, qb, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        break;
    case 1:
        amqp_basic_get(c, 1, qb, 0);
        break;
    case 2:
        amqp_queue_purge(c, 1, qb);
        break;
    case 3:
        amqp_queue_declare(c, 1, qb, 0, 1, 0, 0, amqp_empty_table);
        break;
    case 4:
        amqp_queue_delete(c, 1, qb, 1, 1);
        break;
    case 5:
        amqp_queue_bind(c, 1, qb, x, amqp_cstring_bytes(key), amqp_empty_table);
        break;
    case 6:
        amqp_exchange_declare(c, 1, x, amqp_cstring_bytes("fanout"), 0, 1, 0, 0, amqp_empty_table);
        break;
    default:
        amqp_exchange_delete(c, 1, x, 1);
        break;
    }
    return raw_done(c);
}

/* Request/reply opens exactly what it needs (scripts/broker-perms.sh): an
 * asker (RPC_ASKS) publishes on sales.rpc its own keys only, nobody else
 * publishes there; only the answerer reads its request queue
 * inventory.requests; nobody declares, deletes or binds on sales.rpc or that
 * queue (make migrate did), so no one can take a copy of the requests; only
 * an answerer writes on the default exchange. Tried for every user. */
START_TEST(request_reply_rights_are_exactly_these)
{
    static const char *const other_keys[] = {"inventory.other", "billing.availability",
                                             "inventory.availability.x", "#", ""};
    const char *rq = "inventory.requests", *ask = "inventory.availability";
    char err[MQ_ERR_LEN];
    for (size_t a = 0; a < nusers; a++) {
        const char *url = users[a].url_env, *n = users[a].name;
        int asker = rpc_listed("RPC_ASKS", a), answerer = rpc_listed("RPC_ANSWERS", a);
        int own = strcmp(n, "inventory") == 0;
        int rc = attempt(url, "sales.rpc", ask, EV_ORDER_PLACED, NULL, 0, err, sizeof(err));
        ck_assert_msg(rc == (asker ? MQ_OK : MQ_ERR_CONFIG), "%s asked %s (%d: %s)", n, ask, rc,
                      err);
        for (size_t k = 0; k < sizeof(other_keys) / sizeof(other_keys[0]); k++) {
            rc = attempt(url, "sales.rpc", other_keys[k], EV_ORDER_PLACED, NULL, 0, err,
                         sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s published \"%s\" on sales.rpc (%d: %s)", n,
                          other_keys[k], rc, err);
        }
        if (!answerer) {
            rc = attempt(url, "", rq, EV_ORDER_PLACED, NULL, 0, err, sizeof(err));
            ck_assert_msg(rc == MQ_ERR_CONFIG, "%s wrote on the default exchange (%d: %s)", n, rc,
                          err);
        }
        if (!own) {
            ck_assert_msg(rpc_door(url, 0, rq, NULL) == 403, "%s consumed %s", n, rq);
            ck_assert_msg(rpc_door(url, 1, rq, NULL) == 403, "%s got from %s", n, rq);
            ck_assert_msg(rpc_door(url, 2, rq, NULL) == 403, "%s purged %s", n, rq);
        }
        ck_assert_msg(rpc_door(url, 3, rq, NULL) == 403, "%s declared %s", n, rq);
        ck_assert_msg(rpc_door(url, 4, rq, NULL) == 403, "%s deleted %s", n, rq);
        ck_assert_msg(rpc_door(url, 5, rq, "#") == 403, "%s bound %s to sales.rpc", n, rq);
        if (users[a].consumer)
            ck_assert_msg(rpc_door(url, 5, n, ask) == 403, "%s bound its queue to sales.rpc %s", n,
                          ask);
        ck_assert_msg(rpc_door(url, 6, NULL, NULL) == 403, "%s declared sales.rpc", n);
        ck_assert_msg(rpc_door(url, 7, NULL, NULL) == 403, "%s deleted sales.rpc", n);
    }
    assert_no_effect();
}
END_TEST

/* Binds queue q to sales.events under key as the user of url_env; the reply
 * code (0: bound). */
static int bind_events(const char *url_env, const char *q, const char *key)
{
    amqp_connection_state_t c = tu_amqp_open(url_env);
    amqp_queue_bind(c, 1, amqp_cstring_bytes(q), amqp_cstring_bytes(MQ_EXCHANGE),
                    amqp_cstring_bytes(key), amqp_empty_table);
    return raw_done(c);
}

/* Each consumer reads only the events it handles. Its work queue is bound
 * for exactly the keys broker-perms.sh lets it read (service_keys: the
 * routes of its main.c). As its own user it cannot bind its work queue, nor
 * a queue of its own made for the purpose, to `#`, `*.*` or an event it
 * does not handle (403); binding one it handles still works. Then a message
 * under a key no service handles finds no queue at all. */
START_TEST(each_consumer_reads_only_the_events_it_handles)
{
    static const char *const wild[] = {"#", "*.*", "#.#"};
    char fail[2048] = "", got[1024], probe[80], err[MQ_ERR_LEN];
    size_t nf = 0, tried = 0;
    mq_conn *adm;
    mq_msg m = {0};
    char id[UUID_STR_LEN], corr[UUID_STR_LEN];
    int rc;
    for (size_t a = 0; a < nusers; a++) {
        const char *qs[2] = {users[a].name, probe};
        amqp_connection_state_t c;
        int code;
        if (!users[a].consumer)
            continue;
        ck_assert_int_eq(event_bindings(users[a].name, got, sizeof(got)), 0);
        for (size_t k = 0; k < NKEYS; k++)
            ck_assert_msg(in_list(got, all_keys[k]) == in_list(users[a].keys, all_keys[k]),
                          "%s: bound for %s, its keys (service_keys) %s", users[a].name, got,
                          users[a].keys);
        ck_assert_int_lt(snprintf(probe, sizeof(probe), "%s.retry.probe", users[a].name),
                         (int)sizeof(probe));
        c = tu_amqp_open(users[a].url_env);
        amqp_queue_declare(c, 1, amqp_cstring_bytes(probe), 0, 0, 0, 0, amqp_empty_table);
        ck_assert_msg(raw_done(c) == 0, "%s: declaring its own %s", users[a].name, probe);
        for (size_t q = 0; q < 2; q++) {
            for (size_t k = 0; k < NKEYS + 3; k++) {
                const char *key = k < NKEYS ? all_keys[k] : wild[k - NKEYS];
                if (in_list(users[a].keys, key))
                    continue;
                code = bind_events(users[a].url_env, qs[q], key);
                tried++;
                if (code != AMQP_ACCESS_REFUSED)
                    nf += (size_t)snprintf(fail + nf, nf < sizeof(fail) ? sizeof(fail) - nf : 0,
                                           " %s bound %s to %s (%d);", users[a].name, qs[q], key,
                                           code);
            }
        }
        /* what it handles, it may still bind */
        for (size_t k = 0; k < NKEYS; k++) {
            if (!in_list(users[a].keys, all_keys[k]))
                continue;
            code = bind_events(users[a].url_env, probe, all_keys[k]);
            ck_assert_msg(code == 0, "%s: binding %s to %s, a key it handles: %d", users[a].name,
                          probe, all_keys[k], code);
        }
        c = tu_amqp_open(users[a].url_env);
        amqp_queue_delete(c, 1, amqp_cstring_bytes(probe), 0, 0);
        ck_assert_msg(raw_done(c) == 0, "%s: deleting its own %s", users[a].name, probe);
        /* what a broken rule let it bind is removed before the other tests */
        for (size_t k = 0; k < NKEYS + 3; k++) {
            const char *key = k < NKEYS ? all_keys[k] : wild[k - NKEYS];
            if (in_list(users[a].keys, key))
                continue;
            c = tu_amqp_open("TEST_AMQP_URL");
            amqp_queue_unbind(c, 1, amqp_cstring_bytes(users[a].name),
                              amqp_cstring_bytes(MQ_EXCHANGE), amqp_cstring_bytes(key),
                              amqp_empty_table);
            ck_assert_int_eq(raw_done(c), 0);
        }
    }
    ck_assert_uint_gt(tried, 0);
    ck_assert_msg(nf == 0, "read beyond its own events:%s", fail);
    /* a key no one handles comes back: no queue is bound for it */
    adm = tu_publisher("TEST_AMQP_URL", "check_privileges");
    uuid_v4(id);
    uuid_v4(corr);
    m.exchange = MQ_EXCHANGE;
    m.routing_key = "order.nobody-handles";
    m.message_id = id;
    m.correlation_id = corr;
    m.body = "{}";
    m.len = 2;
    rc = mq_publish(adm, &m, err, sizeof(err));
    mq_free(adm);
    ck_assert_msg(rc == MQ_ERR_RETURNED, "order.nobody-handles reached a queue (%d: %s)", rc, err);
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

/* The registry is what this suite tries: every service of scripts/suite.sh
 * is a consuming user here, and pos a publisher. (A suite that read
 * nothing would pass every door.) */
START_TEST(every_service_of_the_registry_is_tried)
{
    const char *cmd = "bash -c 'source \"$ORDERSUITE_ROOT/scripts/suite.sh\" && suite_names'";
    char line[128];
    size_t n = 0, consumers = 0;
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    while (fgets(line, sizeof(line), p)) {
        line[strcspn(line, "\n")] = '\0';
        if (!line[0])
            continue;
        ck_assert_msg(users[user(line)].consumer, "%s is not tried as a consumer", line);
        n++;
    }
    ck_assert_int_eq(pclose(p), 0);
    for (size_t i = 0; i < nusers; i++)
        consumers += users[i].consumer;
    ck_assert_uint_ge(n, 4);
    ck_assert_uint_eq(consumers, n);
    ck_assert_msg(!users[user("pos")].consumer, "pos has no queue");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("privileges");
    TCase *t = tcase_create("broker");
    if (load_registry() < 0)
        return 1;
    tcase_add_unchecked_fixture(t, start_all, stop_all);
    tcase_set_timeout(t, 240);
    tcase_add_test(t, every_service_of_the_registry_is_tried);
    tcase_add_test(t, forged_release_from_email_leaves_a_reserved_order_alone);
    tcase_add_test(t, no_user_can_publish_into_another_services_queues);
    tcase_add_test(t, own_key_with_a_forged_type_is_not_applied);
    tcase_add_test(t, no_user_can_configure_or_read_what_is_not_its_own);
    tcase_add_test(t, request_reply_rights_are_exactly_these);
    tcase_add_test(t, each_consumer_reads_only_the_events_it_handles);
    tcase_add_test(t, cc_and_bcc_to_another_services_queue_are_not_applied);
    tcase_add_test(t, exchange_to_exchange_binding_is_not_applied);
    tcase_add_test(t, dead_letter_arguments_do_not_forge_an_event);
    tcase_add_test(t, a_preset_x_death_does_not_forge_an_event_through_the_dlq);
    tcase_add_test(t, guest_cannot_log_in);
    tcase_add_test(t, a_wrong_password_is_a_permanent_error);
    suite_add_tcase(s, t);
    return tu_run(s);
}
