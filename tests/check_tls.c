/*
 * check_tls.c — AMQP over TLS (amqps://, common/mq.c).
 *
 *   url        which AMQP URLs mq_check_url takes (unit, nothing running)
 *   handshake  mq's TLS socket against `openssl s_server` with certificates
 *              made by scripts/tls-certs.sh: a server whose certificate a
 *              wrong CA signed, or that names another host, is refused
 *              before anything is sent; the right one is not
 *
 * The certificates are made once per run under $ORDERSUITE_VAR/tls-check/:
 *   good/       CA A and a server certificate for 127.0.0.1 and localhost
 *   other/      CA B (a CA that signed none of good/'s certificates)
 *   wronghost/  CA A and a server certificate for elsewhere.invalid
 */
#include "mq.h"
#include "testutil.h"
#include "util.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define S_SERVER_PORT 18671

static char certs[512]; /* $ORDERSUITE_VAR/tls-check */

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

    if (make_certs() < 0)
        return 1;
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
    return tu_run(s);
}
