/*
 * check_tls.c — TLS to both servers: AMQP over TLS (amqps://, common/mq.c)
 * and PostgreSQL with sslmode=verify-full (libpq).
 *
 *   url        which AMQP URLs mq_check_url takes (unit, nothing running)
 *   handshake  mq's TLS socket against `openssl s_server` with certificates
 *              made by scripts/tls-certs.sh: a server whose certificate a
 *              wrong CA signed, or that names another host, is refused
 *              before anything is sent; the right one is not
 *   servers    a RabbitMQ node and a PostgreSQL cluster of the suite's own,
 *              started by `make up TLS=1`'s own script (tests/tls-instance.sh:
 *              var/tls-check/, other ports): the order flow runs over TLS to
 *              both, and a plain-text client and a client trusting another
 *              CA are refused by each
 *
 * The certificates are made once per run under $ORDERSUITE_VAR/tls-check/:
 *   good/       CA A and a server certificate for 127.0.0.1 and localhost
 *   other/      CA B (a CA that signed none of good/'s certificates)
 *   wronghost/  CA A and a server certificate for elsewhere.invalid
 */
#include "events.h"
#include "mq.h"
#include "testutil.h"
#include "util.h"

#include <cJSON.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_SERVER_PORT 18671

static char certs[512]; /* $ORDERSUITE_VAR/tls-check */

/* The TLS pair's URLs (tests/tls-instance.sh up), read by main(). */
#define MAX_URLS 32
static struct {
    char name[64];
    char value[1024];
} urls[MAX_URLS];
static int nurls;

/* The instance's URL called name; fails the test when there is none. */
static const char *inst(const char *name)
{
    for (int i = 0; i < nurls; i++)
        if (strcmp(urls[i].name, name) == 0)
            return urls[i].value;
    ck_abort_msg("tls-instance.sh gave no %s", name);
    return NULL;
}

/* ------------------------------------------------------------------ url */

static const struct {
    const char *url; /* %s is the good CA file */
    int ok;
} url_cases[] = {
    {"amqp://u:p@127.0.0.1:5672", 1},
    {"amqps://u:p@127.0.0.1:5671?cacertfile=%s", 1},
    {"amqps://u:p@localhost:5671/vh?cacertfile=%s&certfile=%s&keyfile=%s", 1},
    /* TLS without a CA to verify the broker with. */
    {"amqps://u:p@127.0.0.1:5671", 0},
    /* TLS options on a plain connection would be silently ignored. */
    {"amqp://u:p@127.0.0.1:5672?cacertfile=%s", 0},
    {"amqps://u:p@127.0.0.1:5671?cacertfile=%s&verify=verify_none", 0},
    {"amqps://u:p@127.0.0.1:5671?cacertfile=/nonexistent/ca.crt", 0},
    {"amqps://u:p@127.0.0.1:5671?cacertfile=%s&certfile=%s", 0},
    {"amqps://u:p@127.0.0.1:5671?cacertfile=", 0},
    {"amqps://u:p@127.0.0.1:5671?cacertfile=a%20b", 0},
    {"amqps://u:p@127.0.0.1:5671?&", 0},
    {"http://u:p@127.0.0.1:5671", 0},
};

START_TEST(check_url_takes_tls_only_with_a_readable_ca)
{
    char ca[600], url[2048], err[MQ_ERR_LEN] = "";
    int rc;
    snprintf(ca, sizeof(ca), "%s/good/ca.crt", certs);
    /* The same readable file stands in for every path. */
    snprintf(url, sizeof(url), url_cases[_i].url, ca, ca, ca);
    rc = mq_check_url(url, err, sizeof(err));
    ck_assert_msg((rc == 0) == url_cases[_i].ok, "%s: rc %d (%s)", url, rc, err);
    if (!url_cases[_i].ok)
        ck_assert_msg(err[0] != '\0', "%s: refused without a reason", url);
}
END_TEST

/* ------------------------------------------------------------ handshake */

static int port_open(void *arg)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(*(int *)arg)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts `openssl s_server` on S_SERVER_PORT with dir's server certificate.
 * It completes TLS handshakes and then hangs up (its stdin is empty). */
static pid_t start_s_server(const char *dir)
{
    char cert[600], key[600], accept[32], log[600];
    int port = S_SERVER_PORT;
    snprintf(cert, sizeof(cert), "%s/%s/server.crt", certs, dir);
    snprintf(key, sizeof(key), "%s/%s/server.key", certs, dir);
    snprintf(accept, sizeof(accept), "127.0.0.1:%d", port);
    snprintf(log, sizeof(log), "%s/log/tests/tls-s_server.log", tu_env("ORDERSUITE_VAR"));
    char *argv[] = {"openssl", "s_server", "-quiet", "-accept", accept,
                    "-cert",   cert,       "-key",   key,       NULL};
    pid_t pid = tu_spawn("/usr/bin/openssl", argv, NULL, log);
    ck_assert_msg(tu_poll(10000, port_open, &port), "openssl s_server did not listen");
    return pid;
}

/* One publisher connect to the s_server with the CA of ca_dir. */
static int connect_with_ca(const char *host, const char *ca_dir, char *err, size_t errlen)
{
    char url[1024];
    snprintf(url, sizeof(url), "amqps://u:p@%s:%d?cacertfile=%s/%s/ca.crt", host, S_SERVER_PORT,
             certs, ca_dir);
    ck_assert_msg(mq_check_url(url, err, errlen) == 0, "%s: %s", url, err);
    mq_opts o = {.url = url, .app_id = "check_tls"};
    mq_conn *c = mq_new(&o);
    ck_assert_ptr_nonnull(c);
    int rc = mq_connect_publisher(c, err, errlen);
    mq_free(c);
    return rc;
}

START_TEST(server_signed_by_another_ca_is_refused)
{
    char err[MQ_ERR_LEN] = "";
    pid_t pid = start_s_server("good");
    int rc = connect_with_ca("127.0.0.1", "other", err, sizeof(err));
    tu_stop(pid, SIGTERM, 5000);
    ck_assert_msg(rc == MQ_ERR_CONFIG, "rc %d (%s)", rc, err);
}
END_TEST

START_TEST(server_naming_another_host_is_refused)
{
    char err[MQ_ERR_LEN] = "";
    /* Signed by the right CA, but for elsewhere.invalid. */
    pid_t pid = start_s_server("wronghost");
    int rc = connect_with_ca("127.0.0.1", "good", err, sizeof(err));
    tu_stop(pid, SIGTERM, 5000);
    ck_assert_msg(rc == MQ_ERR_CONFIG, "rc %d (%s)", rc, err);
}
END_TEST

/* The control for the two above: with the right CA and name the handshake
 * passes, and what fails is the AMQP login (s_server is no broker), which is
 * a plain MQ_ERR, not a refused certificate. By IP and by name. */
START_TEST(server_with_the_right_ca_and_name_is_accepted)
{
    static const char *const hosts[] = {"127.0.0.1", "localhost"};
    char err[MQ_ERR_LEN] = "";
    pid_t pid = start_s_server("good");
    for (size_t i = 0; i < 2; i++) {
        int rc = connect_with_ca(hosts[i], "good", err, sizeof(err));
        if (rc != MQ_ERR) {
            tu_stop(pid, SIGTERM, 5000);
            ck_abort_msg("%s: rc %d (%s)", hosts[i], rc, err);
        }
    }
    tu_stop(pid, SIGTERM, 5000);
}
END_TEST

/* -------------------------------------------------------------- servers */

#define API "http://127.0.0.1:18180"

static int ready(void *arg)
{
    char url[128];
    snprintf(url, sizeof(url), "%s/readyz", (const char *)arg);
    return tu_http("GET", url, NULL, NULL, 0, NULL) == 200;
}

typedef struct {
    const char *id;
    const char *want;
} status_arg;

static const char *const auth_hdr[] = {TU_API_AUTH, NULL};

static int has_status(void *arg)
{
    status_arg *a = arg;
    char url[256], *resp = NULL;
    const cJSON *st;
    cJSON *j;
    int ok;
    snprintf(url, sizeof(url), API "/orders/%s", a->id);
    if (tu_http("GET", url, auth_hdr, NULL, 0, &resp) != 200) {
        free(resp);
        return 0;
    }
    j = cJSON_Parse(resp);
    free(resp);
    st = cJSON_GetObjectItemCaseSensitive(j, "status");
    ok = cJSON_IsString(st) && strcmp(st->valuestring, a->want) == 0;
    cJSON_Delete(j);
    return ok;
}

/* inventory, billing and order-api, each as its own broker user and role,
 * with nothing but the instance's amqps:// and verify-full URLs: an order
 * placed over HTTP is reserved, invoiced and CONFIRMED. */
START_TEST(order_flow_over_tls_reaches_confirmed)
{
    static const char *const names[] = {"inventory", "billing", "order-api"};
    static const char *const dbs[] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                      "ORDERS_DATABASE_URL"};
    static const char *const amqp[] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL",
                                       "ORDER_API_AMQP_URL"};
    static const char *const bases[] = {"http://127.0.0.1:19201", "http://127.0.0.1:19202", API};
    static char env[3][7][1200];
    const char *envp[3][8];
    const char *hdrs[] = {"Content-Type: application/json", "Idempotency-Key: check-tls",
                          TU_API_AUTH, NULL};
    const char *body = "{\"customer_id\":\"tls\",\"customer_email\":\"tls@example.com\","
                       "\"currency\":\"EUR\",\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}";
    char *argv[] = {"svc", NULL}, *resp = NULL, id[UUID_STR_LEN] = "";
    pid_t pids[3];
    int all_ready = 1, confirmed = 0;
    long code;

    for (int i = 0; i < 3; i++) {
        char path[512], log[512];
        snprintf(env[i][0], sizeof(env[i][0]), "AMQP_URL=%s", inst(amqp[i]));
        snprintf(env[i][1], sizeof(env[i][1]), "DATABASE_URL=%s", inst(dbs[i]));
        snprintf(env[i][2], sizeof(env[i][2]), "HTTP_PORT=18180");
        snprintf(env[i][3], sizeof(env[i][3]), "METRICS_PORT=%d", 19201 + i);
        snprintf(env[i][4], sizeof(env[i][4]), "LOG_LEVEL=info");
        snprintf(env[i][5], sizeof(env[i][5]), "%s", TU_API_TOKENS);
        snprintf(env[i][6], sizeof(env[i][6]), "OPS_PORT=0");
        for (int k = 0; k < 7; k++)
            envp[i][k] = env[i][k];
        envp[i][7] = NULL;
        snprintf(path, sizeof(path), "%s/%s", tu_env("ORDERSUITE_BIN"), names[i]);
        snprintf(log, sizeof(log), "%s/log/tests/tls-%s.log", tu_env("ORDERSUITE_VAR"), names[i]);
        pids[i] = tu_spawn(path, argv, envp[i], log);
    }
    for (int i = 0; i < 3 && all_ready; i++)
        all_ready = tu_poll(30000, ready, (void *)bases[i]);
    if (all_ready) {
        code = tu_http("POST", API "/orders", hdrs, body, strlen(body), &resp);
        cJSON *j = cJSON_Parse(resp);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "id");
        if ((code == 201 || code == 200) && cJSON_IsString(v))
            snprintf(id, sizeof(id), "%s", v->valuestring);
        cJSON_Delete(j);
        free(resp);
        if (id[0]) {
            status_arg a = {id, "CONFIRMED"};
            confirmed = tu_poll(30000, has_status, &a);
        }
    }
    for (int i = 2; i >= 0; i--) {
        int st = tu_stop(pids[i], SIGTERM, 20000);
        ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "%s did not stop cleanly (status %d)", names[i], st);
    }
    ck_assert_msg(all_ready, "a service did not become ready over TLS (var/log/tests/tls-*.log)");
    ck_assert_msg(id[0], "POST /orders over the TLS pair gave no order");
    ck_assert_msg(confirmed, "order %s never reached CONFIRMED", id);
}
END_TEST

/* One publisher connect as the instance's administrator to url. */
static int amqp_try(const char *url, char *err, size_t errlen)
{
    mq_opts o = {.url = url, .app_id = "check_tls"};
    mq_conn *c = mq_new(&o);
    int rc;
    ck_assert_msg(c != NULL, "mq_new refused %s", url);
    rc = mq_connect_publisher(c, err, errlen);
    mq_free(c);
    return rc;
}

START_TEST(amqp_plain_text_client_is_refused)
{
    char err[MQ_ERR_LEN] = "";
    int rc;
    /* The control: the same user over TLS gets in. */
    rc = amqp_try(inst("TEST_AMQP_URL"), err, sizeof(err));
    ck_assert_msg(rc == MQ_OK, "amqps://: rc %d (%s)", rc, err);
    /* No plain-text listener on the plain port ... */
    rc = amqp_try(inst("TLS_PLAIN_AMQP_URL"), err, sizeof(err));
    ck_assert_msg(rc != MQ_OK, "plain AMQP on the plain port was accepted");
    /* ... and the TLS listener does not speak plain AMQP. */
    rc = amqp_try(inst("TLS_PLAIN_TO_TLS_AMQP_URL"), err, sizeof(err));
    ck_assert_msg(rc != MQ_OK, "plain AMQP on the TLS port was accepted");
}
END_TEST

START_TEST(amqp_client_trusting_another_ca_is_refused)
{
    char url[1200], err[MQ_ERR_LEN] = "";
    const char *good = inst("TEST_AMQP_URL");
    const char *q = strstr(good, "?cacertfile=");
    int rc;
    ck_assert_ptr_nonnull(q);
    snprintf(url, sizeof(url), "%.*s?cacertfile=%s/other/ca.crt", (int)(q - good), good, certs);
    rc = amqp_try(url, err, sizeof(err));
    ck_assert_msg(rc == MQ_ERR_CONFIG, "rc %d (%s)", rc, err);
}
END_TEST

/* A client certificate is optional (the broker: verify_peer without
 * fail_if_no_peer_cert), but one that is sent must chain to the CA. */
START_TEST(amqp_client_certificate_is_checked_when_sent)
{
    char url[2048], err[MQ_ERR_LEN] = "";
    const char *base = inst("TEST_AMQP_URL");
    int rc;
    /* The pair's own certificate (clientAuth too), signed by its CA. */
    snprintf(url, sizeof(url),
             "%s&certfile=%s/tls-check/tls/server.crt&keyfile=%s/tls-check/tls/server.key", base,
             tu_env("ORDERSUITE_VAR"), tu_env("ORDERSUITE_VAR"));
    rc = amqp_try(url, err, sizeof(err));
    ck_assert_msg(rc == MQ_OK, "a client certificate from the CA: rc %d (%s)", rc, err);
    /* One signed by another CA. */
    snprintf(url, sizeof(url), "%s&certfile=%s/other/server.crt&keyfile=%s/other/server.key", base,
             certs, certs);
    rc = amqp_try(url, err, sizeof(err));
    ck_assert_msg(rc != MQ_OK, "a client certificate from another CA was accepted");
}
END_TEST

/* Connects with the owner's URL, its sslmode and sslrootcert replaced when
 * given; returns 1 when the connection is made, and whether it is TLS. */
static int pg_try(const char *sslmode, const char *rootcert, int *ssl_in_use)
{
    const char *keys[4] = {"dbname", NULL, NULL, NULL}, *vals[4] = {NULL, NULL, NULL, NULL};
    int n = 1, ok;
    PGconn *pg;
    vals[0] = inst("OWNER_DATABASE_URL");
    if (sslmode) {
        keys[n] = "sslmode";
        vals[n++] = sslmode;
    }
    if (rootcert) {
        keys[n] = "sslrootcert";
        vals[n++] = rootcert;
    }
    pg = PQconnectdbParams(keys, vals, 1);
    ok = pg && PQstatus(pg) == CONNECTION_OK;
    if (ssl_in_use)
        *ssl_in_use = ok && PQsslInUse(pg);
    PQfinish(pg);
    return ok;
}

START_TEST(pg_plain_text_client_is_refused)
{
    int ssl = 0;
    ck_assert_msg(pg_try(NULL, NULL, &ssl), "the owner's verify-full URL was refused");
    ck_assert_msg(ssl, "the owner's verify-full connection is not TLS");
    ck_assert_msg(!pg_try("disable", NULL, NULL), "a plain-text connection was accepted");
}
END_TEST

START_TEST(pg_client_trusting_another_ca_is_refused)
{
    char ca[600];
    snprintf(ca, sizeof(ca), "%s/other/ca.crt", certs);
    ck_assert_msg(!pg_try("verify-full", ca, NULL), "a server signed by another CA was trusted");
}
END_TEST

/* tests/listen_check.py on the pair: every socket its processes (the pid
 * files under var/tls-check/, their children, epmd) listen on is loopback. */
START_TEST(tls_pair_listens_on_loopback_only)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "python3 %s/tests/listen_check.py --under %s/tls-check"
             " >>%s/log/tests/tls-listen.log 2>&1",
             tu_env("ORDERSUITE_ROOT"), tu_env("ORDERSUITE_VAR"), tu_env("ORDERSUITE_VAR"));
    ck_assert_msg(system(cmd) == 0,
                  "a listener of the TLS pair is not on loopback (see %s/log/"
                  "tests/tls-listen.log)",
                  tu_env("ORDERSUITE_VAR"));
}
END_TEST

/* Runs tests/tls-instance.sh VERB [ARG], output to var/log/tests/. */
static int instance(const char *verb, const char *arg)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "bash %s/tests/tls-instance.sh %s %s >>%s/log/tests/tls-instance.log 2>&1",
             getenv("ORDERSUITE_ROOT"), verb, arg ? arg : "", getenv("ORDERSUITE_VAR"));
    return system(cmd) == 0 ? 0 : -1;
}

/* Reads the export lines tls-instance.sh wrote (bash's printf %q: a
 * backslash quotes the next character). */
static int read_urls(const char *path)
{
    char line[2048];
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (nurls < MAX_URLS && fgets(line, sizeof(line), f)) {
        char *eq, *p, *o;
        if (strncmp(line, "export ", 7) != 0 || !(eq = strchr(line, '=')))
            continue;
        *eq = '\0';
        snprintf(urls[nurls].name, sizeof(urls[nurls].name), "%s", line + 7);
        for (p = eq + 1, o = urls[nurls].value;
             *p && *p != '\n' && o < urls[nurls].value + sizeof(urls[nurls].value) - 1; p++) {
            if (*p == '\\' && p[1])
                p++;
            *o++ = *p;
        }
        *o = '\0';
        nurls++;
    }
    fclose(f);
    return nurls > 0 ? 0 : -1;
}

/* Makes the three certificate folders (kept from an earlier run). */
static int make_certs(void)
{
    const char *root = getenv("ORDERSUITE_ROOT"), *var = getenv("ORDERSUITE_VAR");
    char cmd[2048];
    if (!root || !var) {
        fprintf(stderr, "ORDERSUITE_ROOT and ORDERSUITE_VAR must be set (scripts/run-tests.sh)\n");
        return -1;
    }
    snprintf(certs, sizeof(certs), "%s/tls-check", var);
    snprintf(cmd, sizeof(cmd),
             "set -e; s=%s/scripts/tls-certs.sh; d=%s; bash $s $d/good; bash $s $d/other; "
             "mkdir -p $d/wronghost; cp $d/good/ca.crt $d/good/ca.key $d/wronghost/; "
             "bash $s $d/wronghost DNS:elsewhere.invalid",
             root, certs);
    if (system(cmd) != 0) {
        fprintf(stderr, "making the test certificates failed: %s\n", cmd);
        return -1;
    }
    return 0;
}

int main(void)
{
    Suite *s = suite_create("tls");
    TCase *tc;
    char out[600];
    int rc;

    if (make_certs() < 0)
        return 1;
    snprintf(out, sizeof(out), "%s/urls.sh", certs);
    if (instance("up", out) < 0 || read_urls(out) < 0) {
        fprintf(stderr, "the TLS pair did not come up; see %s/log/tests/tls-instance.log\n",
                getenv("ORDERSUITE_VAR"));
        instance("down", NULL);
        return 1;
    }
    tc = tcase_create("url");
    tcase_add_loop_test(tc, check_url_takes_tls_only_with_a_readable_ca, 0,
                        (int)(sizeof(url_cases) / sizeof(url_cases[0])));
    suite_add_tcase(s, tc);

    tc = tcase_create("handshake");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, server_signed_by_another_ca_is_refused);
    tcase_add_test(tc, server_naming_another_host_is_refused);
    tcase_add_test(tc, server_with_the_right_ca_and_name_is_accepted);
    suite_add_tcase(s, tc);

    tc = tcase_create("servers");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, order_flow_over_tls_reaches_confirmed);
    tcase_add_test(tc, amqp_plain_text_client_is_refused);
    tcase_add_test(tc, amqp_client_trusting_another_ca_is_refused);
    tcase_add_test(tc, amqp_client_certificate_is_checked_when_sent);
    tcase_add_test(tc, pg_plain_text_client_is_refused);
    tcase_add_test(tc, pg_client_trusting_another_ca_is_refused);
    tcase_add_test(tc, tls_pair_listens_on_loopback_only);
    suite_add_tcase(s, tc);
    rc = tu_run(s);
    if (instance("down", NULL) < 0) {
        fprintf(stderr, "stopping the TLS pair failed; see %s/log/tests/tls-instance.log\n",
                getenv("ORDERSUITE_VAR"));
        rc = 1;
    }
    return rc;
}
