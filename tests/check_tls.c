/*
 * check_tls.c — TLS to both servers: AMQP over TLS (amqps://, common/mq_conn.c)
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
 *
 * One file (over 600 lines) on purpose: its tests need the certificates and
 * the TLS pair (tests/tls-instance.sh), made and started once for the run,
 * minutes under load; a second suite would start a second pair.
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
#define STR_(x)       #x
#define STR(x)        STR_(x)

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

#define MAIL_SMTP 18125
#define MAIL_WEB  18126

/* How many mails the pair's mail catcher holds for rcpt. */
static int mails_for(const char *rcpt)
{
    char *body = NULL;
    const cJSON *m, *r;
    cJSON *a;
    int n = 0;
    if (tu_http("GET", "http://127.0.0.1:" STR(MAIL_WEB) "/api/messages", NULL, NULL, 0, &body) !=
        200) {
        free(body);
        return 0;
    }
    a = cJSON_Parse(body);
    free(body);
    cJSON_ArrayForEach(m, a)
    {
        cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(m, "rcpt_tos"))
        {
            if (cJSON_IsString(r) && strcmp(r->valuestring, rcpt) == 0)
                n++;
        }
    }
    cJSON_Delete(a);
    return n;
}

static int mail_arrived(void *arg)
{
    return mails_for(arg) > 0;
}

/* A POS invoice (a confirmed sale) for the customer email in the pair's
 * database. */
static int sale_invoiced(void *arg)
{
    const char *p[] = {arg};
    return tu_sql_int(inst("OWNER_DATABASE_URL"),
                      "SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL"
                      " AND customer_email = $1",
                      1, p) > 0;
}

static int exited(void *arg)
{
    int *st = arg;
    return waitpid((pid_t)st[0], &st[1], WNOHANG) == (pid_t)st[0];
}

/* Runs tests/tls-instance.sh connections: who is connected to each server
 * of the pair, and over TLS or not, as the servers see it (pg_stat_ssl,
 * rabbitmqctl list_connections user ssl). Fails unless every one of want
 * ("pg ROLE" / "amqp USER") has a connection and all of them are TLS. */
static void assert_tls_in(const char *out, const char *const *want);

static void assert_connections_are_tls(const char *const *want)
{
    char cmd[2048], out[600];
    snprintf(out, sizeof(out), "%s/connections.txt", certs);
    snprintf(cmd, sizeof(cmd),
             "bash %s/tests/tls-instance.sh connections %s >>%s/log/tests/tls-instance.log 2>&1",
             tu_env("ORDERSUITE_ROOT"), out, tu_env("ORDERSUITE_VAR"));
    ck_assert_msg(system(cmd) == 0, "tls-instance.sh connections failed");
    assert_tls_in(out, want);
}

/* The same, on a file tls-instance.sh connections wrote. */
static void assert_tls_in(const char *out, const char *const *want)
{
    char line[256], text[8192] = "";
    size_t len = 0;
    FILE *f = fopen(out, "r");
    ck_assert_msg(f != NULL, "no %s", out);
    while (fgets(line, sizeof(line), f)) {
        char kind[16], who[64], ssl[16];
        if (sscanf(line, "%15s %63s %15s", kind, who, ssl) != 3)
            continue;
        ck_assert_msg(strcmp(ssl, "t") == 0 || strcmp(ssl, "true") == 0,
                      "a plain-text connection: %s", line);
        if (len < sizeof(text))
            len += (size_t)snprintf(text + len, sizeof(text) - len, "%s %s\n", kind, who);
    }
    fclose(f);
    for (size_t i = 0; want[i]; i++) {
        char w[96];
        snprintf(w, sizeof(w), "%s\n", want[i]);
        ck_assert_msg(strstr(text, w), "no TLS connection of %s (seen: %s)", want[i], text);
    }
}

/* The whole suite on the pair, each service as its own broker user and
 * role, with nothing but the instance's amqps:// and verify-full URLs (and
 * the mail catcher, as make demo starts it, for email): an order placed
 * over HTTP is reserved, invoiced and CONFIRMED and its mail reaches the
 * catcher; a till (pos) sells, the sale is invoiced and its receipt mailed;
 * each server sees only TLS connections, from every service. */
START_TEST(order_flow_over_tls_reaches_confirmed_mail_and_pos)
{
    static const char *const names[] = {"inventory", "billing", "email", "order-api"};
    static const char *const dbs[] = {"INVENTORY_DATABASE_URL", "BILLING_DATABASE_URL",
                                      "EMAIL_DATABASE_URL", "ORDERS_DATABASE_URL"};
    static const char *const amqp[] = {"INVENTORY_AMQP_URL", "BILLING_AMQP_URL", "EMAIL_AMQP_URL",
                                       "ORDER_API_AMQP_URL"};
    static const char *const bases[] = {"http://127.0.0.1:19201", "http://127.0.0.1:19202",
                                        "http://127.0.0.1:19203", API};
    static const char *const conns[] = {"pg inventory", "pg billing",     "pg email",
                                        "pg orders",    "amqp inventory", "amqp billing",
                                        "amqp email",   "amqp order-api", NULL};
    static char env[4][7][1200], penv[3][1200];
    const char *envp[4][8], *pos_envp[4];
    /* The pair's database stays from run to run: this run's own key and
     * addresses. */
    char key[80], customer[80], walk_in[80], body[400];
    const char *hdrs[] = {"Content-Type: application/json", key, TU_API_AUTH, NULL};
    char *resp = NULL, id[UUID_STR_LEN] = "", log[64];
    char *pargv[] = {"pos", "--count", "1", "--store", "TLS-01", "--email", walk_in, NULL};
    tu_svc svcs[4], pos;
    tu_catcher catcher;
    int all_ready = 1, confirmed = 0, mailed = 0, pos_st[2] = {0, -1}, sold = 0, receipt = 0;
    long code;

    uuid_v4(id);
    snprintf(key, sizeof(key), "Idempotency-Key: check-tls-%s", id);
    snprintf(customer, sizeof(customer), "tls-%.8s@example.com", id);
    snprintf(walk_in, sizeof(walk_in), "walk-in-%.8s@example.com", id);
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"tls\",\"customer_email\":\"%s\",\"currency\":\"EUR\","
             "\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}",
             customer);
    id[0] = '\0';
    catcher = tu_catcher_start(MAIL_SMTP, MAIL_WEB, NULL, "tls-mailcatcher");
    /* The URLs are the pair's, not the suite's: given as entries of env. */
    for (int i = 0; i < 4; i++) {
        snprintf(env[i][0], sizeof(env[i][0]), "AMQP_URL=%s", inst(amqp[i]));
        snprintf(env[i][1], sizeof(env[i][1]), "DATABASE_URL=%s", inst(dbs[i]));
        snprintf(env[i][2], sizeof(env[i][2]), "HTTP_PORT=18180");
        snprintf(env[i][3], sizeof(env[i][3]), "METRICS_PORT=%d", 19201 + i);
        snprintf(env[i][4], sizeof(env[i][4]), "%s", TU_API_TOKENS);
        snprintf(env[i][5], sizeof(env[i][5]), "OPS_PORT=0");
        snprintf(env[i][6], sizeof(env[i][6]), "SMTP_URL=smtp://127.0.0.1:%d", MAIL_SMTP);
        for (int k = 0; k < 7; k++)
            envp[i][k] = env[i][k];
        envp[i][7] = NULL;
        snprintf(log, sizeof(log), "tls-%s", names[i]);
        tu_svc_spawn(&svcs[i], &(tu_svc_opts){.exe = names[i],
                                              .env = envp[i],
                                              .argv = (char *[]){"svc", NULL},
                                              .log = log});
    }
    /* Not tu_svc_await: a service that is not ready is reported after all
     * of them are stopped, not left running by a failed test. */
    for (int i = 0; i < 4 && all_ready; i++)
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
            mailed = confirmed && tu_poll(30000, mail_arrived, customer);
        }
        /* A till, over amqps:// as pos, its catalog from order-api. */
        snprintf(penv[0], sizeof(penv[0]), "AMQP_URL=%s", inst("POS_AMQP_URL"));
        snprintf(penv[1], sizeof(penv[1]), "CATALOG_URL=" API "/products");
        snprintf(penv[2], sizeof(penv[2]), "POS_SPOOL_DIR=%s", certs);
        for (int k = 0; k < 3; k++)
            pos_envp[k] = penv[k];
        pos_envp[3] = NULL;
        tu_svc_spawn(
            &pos, &(tu_svc_opts){.exe = "pos", .env = pos_envp, .argv = pargv, .log = "tls-pos"});
        pos_st[0] = (int)pos.pid;
        if (!tu_poll(30000, exited, pos_st))
            tu_stop(pos.pid, SIGKILL, 5000);
        sold = WIFEXITED(pos_st[1]) && WEXITSTATUS(pos_st[1]) == 0 &&
               tu_poll(30000, sale_invoiced, walk_in);
        receipt = sold && tu_poll(30000, mail_arrived, walk_in);
        if (sold)
            assert_connections_are_tls(conns);
    }
    for (int i = 3; i >= 0; i--)
        tu_svc_stop_ok(&svcs[i]);
    tu_catcher_stop(&catcher);
    ck_assert_msg(all_ready, "a service did not become ready over TLS (var/log/tests/tls-*.log)");
    ck_assert_msg(id[0], "POST /orders over the TLS pair gave no order");
    ck_assert_msg(confirmed, "order %s never reached CONFIRMED", id);
    ck_assert_msg(mailed, "the confirmation of %s never reached the mail catcher", id);
    ck_assert_msg(pos_st[1] == 0, "pos over amqps:// exited with status %d (tls-pos.log)",
                  pos_st[1]);
    ck_assert_msg(sold, "the till's sale was never invoiced");
    ck_assert_msg(receipt, "the till's receipt never reached the mail catcher");
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

/* verify-full checks the server's name against the host the client asked
 * for: the same server at the same address (hostaddr) is refused when the
 * client names another host, and accepted under a name it holds. */
START_TEST(pg_server_under_another_host_name_is_refused)
{
    static const char *const hosts[] = {"localhost", "elsewhere.invalid"};
    for (size_t i = 0; i < 2; i++) {
        const char *keys[] = {"dbname", "host", "hostaddr", "sslmode", NULL};
        const char *vals[] = {inst("OWNER_DATABASE_URL"), hosts[i], "127.0.0.1", "verify-full",
                              NULL};
        PGconn *pg = PQconnectdbParams(keys, vals, 1);
        int ok = pg && PQstatus(pg) == CONNECTION_OK;
        char msg[300];
        snprintf(msg, sizeof(msg), "%s", pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        if (i == 0)
            ck_assert_msg(ok, "verify-full as localhost was refused: %s", msg);
        else
            ck_assert_msg(!ok, "verify-full accepted a server for %s", hosts[i]);
    }
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

static int instance(const char *verb, const char *arg);

/* The whole of a (small) text file, malloc'd; NULL when it cannot be read. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    if (!f)
        return NULL;
    do {
        if (cap - len < 4096) {
            char *nb = realloc(buf, cap + 65536);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap += 65536;
        }
        n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0);
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* A line of text (the demo's output) holding both a and b. */
static int line_with(const char *text, const char *a, const char *b)
{
    for (const char *p = text; p && *p;) {
        const char *e = strchr(p, '\n'), *end = e ? e : p + strlen(p);
        const char *x = strstr(p, a), *y = strstr(p, b);
        if (x && y && x < end && y < end)
            return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

/* `make up TLS=1 && make demo`, as a test: scripts/demo.sh itself (with
 * the pair's own env file, amqps:// and verify-full URLs only) against the
 * TLS pair. It exits 0, its three orders end as the README shows
 * (CONFIRMED, REJECTED, CANCELLED), the confirmation reaches its mail
 * catcher, and while its services run every connection to either server
 * is TLS, from every service. What it prints at its end holds (issues #16,
 * #17): the board's URL, an availability answer, the confirmed order's
 * trace through all four services, and a `curl -N` line for that order's
 * status stream that, pasted (tls-instance.sh runs it from the clone's
 * root), streams the order to CONFIRMED and ends. */
START_TEST(make_demo_runs_over_tls)
{
    static const char *const conns[] = {"pg inventory", "pg billing",     "pg email",
                                        "pg orders",    "amqp inventory", "amqp billing",
                                        "amqp email",   "amqp order-api", NULL};
    char out[600], mails[640], conn[640], stream[640];
    char *text, *json;
    int rc;
    snprintf(out, sizeof(out), "%s/demo.txt", certs);
    snprintf(mails, sizeof(mails), "%s.mails", out);
    snprintf(conn, sizeof(conn), "%s.conn", out);
    snprintf(stream, sizeof(stream), "%s.stream", out);
    rc = instance("demo", out);
    text = read_text(out);
    ck_assert_msg(text != NULL, "no %s", out);
    ck_assert_msg(rc == 0, "the demo over TLS failed (%s; tls-instance.log): %.2000s", out, text);
    ck_assert_msg(line_with(text, "confirmed", "CONFIRMED"), "no CONFIRMED order: %.2000s", text);
    ck_assert_msg(line_with(text, "rejected (no stock)", "REJECTED"), "no REJECTED order: %.2000s",
                  text);
    ck_assert_msg(line_with(text, "payment failure", "CANCELLED"), "no CANCELLED order: %.2000s",
                  text);
    ck_assert_msg(line_with(text, "order board", "http://127.0.0.1:29080/"),
                  "no line with the board's URL: %.4000s", text);
    ck_assert_msg(line_with(text, "availability", "\"available\""),
                  "no availability answer: %.4000s", text);
    ck_assert_msg(line_with(text, "inventory ", "process order.placed") &&
                      line_with(text, "billing ", "process inventory.reserved") &&
                      line_with(text, "email ", "process order.confirmed"),
                  "no trace of the confirmed order through the services: %.4000s", text);
    free(text);
    text = read_text(stream);
    ck_assert_msg(text && line_with(text, "\"status\"", "CONFIRMED") &&
                      strstr(text, "exit status 0\n"),
                  "the demo's curl -N line, pasted, did not stream the order to CONFIRMED and "
                  "end (%s): %.2000s",
                  stream, text ? text : "(none)");
    free(text);
    json = read_text(mails);
    ck_assert_msg(json && strstr(json, "ada@example.com"),
                  "the confirmed order's mail (ada@example.com) is not in the catcher: %.1000s",
                  json ? json : "(none)");
    free(json);
    assert_tls_in(conn, conns);
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
        if (snprintf(urls[nurls].name, sizeof(urls[nurls].name), "%s", line + 7) >=
            (int)sizeof(urls[nurls].name))
            continue; /* not one of the URL variables, which are all shorter */
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
    tcase_add_test(tc, order_flow_over_tls_reaches_confirmed_mail_and_pos);
    tcase_add_test(tc, amqp_plain_text_client_is_refused);
    tcase_add_test(tc, amqp_client_trusting_another_ca_is_refused);
    tcase_add_test(tc, amqp_client_certificate_is_checked_when_sent);
    tcase_add_test(tc, pg_plain_text_client_is_refused);
    tcase_add_test(tc, pg_client_trusting_another_ca_is_refused);
    tcase_add_test(tc, pg_server_under_another_host_name_is_refused);
    tcase_add_test(tc, tls_pair_listens_on_loopback_only);
    tcase_add_test(tc, make_demo_runs_over_tls);
    suite_add_tcase(s, tc);
    rc = tu_run(s);
    if (instance("down", NULL) < 0) {
        fprintf(stderr, "stopping the TLS pair failed; see %s/log/tests/tls-instance.log\n",
                getenv("ORDERSUITE_VAR"));
        rc = 1;
    }
    return rc;
}
