/*
 * loadgen — drives the suite the way its users do and says what it saw.
 *
 *   loadgen [-u URL[,URL...]] [-c CONNS] (-n ORDERS | -d SECONDS) [-r RATE] [-t TAG]
 *           [--sales N] [--retry SECONDS] [--e2e SECONDS] [-o IDS] [--json FILE]
 *
 * Each of CONNS threads keeps one HTTP/1.1 connection open and posts orders
 * on it, one at a time, each with its own Idempotency-Key (TAG-<n>). With -r
 * the orders are spread over time (order n is due at start + n/RATE);
 * without, every connection posts as fast as it is answered. Latency is from
 * writing the request to reading the whole answer.
 *
 * With --retry, a request that gets no answer (connection refused or cut) or
 * a 5xx is sent again, with the same key, until it gets an answer or SECONDS
 * pass: so a restart of order-api loses no order and makes none twice.
 *
 * Several order-apis (-u URL1,URL2, or -u given again; at most 8): the
 * connections are spread over them round-robin (connection i posts to URL
 * i mod N), and a request that gets no answer or a 5xx is retried on the
 * next one, where that connection stays: when one order-api dies, its
 * connections fail over to the others. The same Idempotency-Key makes it
 * the same order on any of them (the keys live in the database they share).
 * The report says how many orders each accepted and how many failovers.
 *
 * --sales N publishes N sale.completed events (store TAG) through the broker
 * with confirms, spread over the run; AMQP_URL must be set (the pos user).
 *
 * --e2e waits up to SECONDS for every accepted order to reach a final status,
 * then reads the timelines (ORDERS_DATABASE_URL and EMAIL_DATABASE_URL, each
 * service's own, as the schemas may live on different servers; each
 * defaults to DATABASE_URL, e.g. the owner) and reports POST -> CONFIRMED latencies and
 * completed orders per second: CONFIRMED (reserved and invoiced) and the
 * confirmation mail recorded. During the run it samples how many accepted
 * orders are not yet final, every second: the backlog.
 *
 * -o writes "O <key> <order id>" per accepted order and "S <sale id>" per
 * confirmed sale, for the ledger checker. --json writes the figures,
 * the backlog samples and loadgen's own CPU seconds.
 * API_TOKEN (environment, required) is the bearer token every request
 * carries (make up writes one for the demo: API_DEMO_TOKEN in
 * var/ordersuite.env); the orders belong to its client.
 *
 * Exit: 0, 1 when an order was lost to an error (or e2e timed out), 2 usage.
 *
 * The parts, one file each by role, are listed in loadgen.h.
 */
#include "loadgen.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

lg_options lg_opt = {.targets = {{"127.0.0.1", 8080}}, .ntargets = 1, .conns = 16, .lines = 2};
int64_t lg_start_mono;
int64_t lg_start_wall;
atomic_int lg_stopping;
long lg_accepted_total;

static int usage(void)
{
    fprintf(
        stderr,
        "usage: loadgen [-u http://127.0.0.1:8080[,URL...]] [-c CONNS] (-n ORDERS | -d SECONDS)\n"
        "               [-r RATE] [-t TAG] [--sales N] [--retry SECONDS] [--e2e SECONDS]\n"
        "               [--skus A,B] [--lines K] [-o IDS_FILE] [--json FILE]\n"
        "env: API_TOKEN (bearer token, required), AMQP_URL (for --sales), DATABASE_URL (for "
        "--e2e)\n");
    return 2;
}

/* One URL, http://HOST[:PORT][/...], of len bytes at u, into t. */
static int parse_url(const char *u, size_t len, lg_target *t)
{
    const char *h = u, *stop = u + len;
    char *end;
    long port = 80;
    size_t hl;
    if (len >= 7 && strncmp(h, "http://", 7) == 0)
        h += 7;
    hl = strcspn(h, ":/,");
    if (hl == 0 || hl >= sizeof(t->host) || h + hl > stop)
        return -1;
    memcpy(t->host, h, hl);
    t->host[hl] = '\0';
    if (h + hl < stop && h[hl] == ':') {
        errno = 0;
        port = strtol(h + hl + 1, &end, 10);
        if (errno || port < 1 || port > 65535 || end > stop || (end < stop && *end != '/'))
            return -1;
    }
    t->port = (int)port;
    if (strcmp(t->host, "localhost") == 0)
        snprintf(t->host, sizeof(t->host), "127.0.0.1");
    return 0;
}

/* -u URL[,URL...], given once or more: the first -u replaces the default
 * target, the next ones add to it. */
static int parse_urls(const char *arg, int *given)
{
    if (!*given)
        lg_opt.ntargets = 0;
    *given = 1;
    for (const char *p = arg;;) {
        size_t len = strcspn(p, ",");
        if (lg_opt.ntargets == MAX_TARGETS) {
            fprintf(stderr, "loadgen: -u takes at most %d order-apis\n", MAX_TARGETS);
            return -1;
        }
        if (parse_url(p, len, &lg_opt.targets[lg_opt.ntargets]) < 0) {
            fprintf(stderr, "loadgen: -u wants http://HOST:PORT with an IPv4 host, not \"%.*s\"\n",
                    (int)len, p);
            return -1;
        }
        lg_opt.ntargets++;
        if (!p[len])
            return 0;
        p += len + 1;
    }
}

static int num(const char *name, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    if (errno || end == s || *end || *out < lo || *out > hi) {
        fprintf(stderr, "loadgen: %s must be a number from %g to %g, not \"%s\"\n", name, lo, hi,
                s);
        return -1;
    }
    return 0;
}

/* This process's own CPU time (user + system, all threads), for make bench's
 * CPU per order: loadgen's share of the machine is part of the measurement. */
static double self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"sales", required_argument, 0, 'S'}, {"retry", required_argument, 0, 'R'},
        {"e2e", required_argument, 0, 'E'},   {"json", required_argument, 0, 'J'},
        {"skus", required_argument, 0, 'K'},  {"lines", required_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    static char skus_buf[512] = "MUG-WHITE,FLT-PAPER,TEA-EARLGREY,COF-FILTER";
    char tagbuf[48];
    pthread_t th[MAX_CONNS], sth, smth;
    tstats *st;
    sales_state ss = {0};
    sampler *sm = NULL;
    e2e_result er = {0};
    accepted *all = NULL;
    int64_t *lat = NULL;
    size_t nlat = 0, nacc = 0;
    long by_class[6] = {0}, retries = 0, lost = 0;
    double v, elapsed, slope = 0, maxb = 0;
    PGconn *db = NULL, *mail_db = NULL;
    const char *orders_url = NULL;
    int c, rc = 0, urls_given = 0;
    long failovers = 0, replayed = 0, by_target[MAX_TARGETS] = {0};

    while ((c = getopt_long(argc, argv, "u:c:n:d:r:t:o:h", lo, NULL)) != -1) {
        switch (c) {
        case 'u':
            if (parse_urls(optarg, &urls_given) < 0)
                return 2;
            break;
        case 'c':
            if (num("-c", optarg, 1, MAX_CONNS, &v) < 0)
                return 2;
            lg_opt.conns = (int)v;
            break;
        case 'n':
            if (num("-n", optarg, 1, 1e8, &v) < 0)
                return 2;
            lg_opt.orders = (long)v;
            break;
        case 'd':
            if (num("-d", optarg, 0.1, 86400, &lg_opt.duration) < 0)
                return 2;
            break;
        case 'r':
            if (num("-r", optarg, 0.1, 1e6, &lg_opt.rate) < 0)
                return 2;
            break;
        case 't':
            lg_opt.tag = optarg;
            break;
        case 'o':
            lg_opt.ids_path = optarg;
            break;
        case 'S':
            if (num("--sales", optarg, 0, 1e7, &v) < 0)
                return 2;
            lg_opt.sales = (long)v;
            break;
        case 'R':
            if (num("--retry", optarg, 0, 3600, &lg_opt.retry_s) < 0)
                return 2;
            break;
        case 'E':
            if (num("--e2e", optarg, 0, 3600, &lg_opt.e2e_s) < 0)
                return 2;
            break;
        case 'J':
            lg_opt.json_path = optarg;
            break;
        case 'K':
            if ((size_t)snprintf(skus_buf, sizeof(skus_buf), "%s", optarg) >= sizeof(skus_buf)) {
                fprintf(stderr, "loadgen: --skus is longer than %zu characters\n",
                        sizeof(skus_buf) - 1);
                return 2;
            }
            break;
        case 'L':
            if (num("--lines", optarg, 1, 8, &v) < 0)
                return 2;
            lg_opt.lines = (int)v;
            break;
        default:
            return usage();
        }
    }
    if (optind != argc || (lg_opt.orders > 0) == (lg_opt.duration > 0))
        return usage();
    for (char *t = strtok(skus_buf, ","); t && lg_opt.nskus < 8; t = strtok(NULL, ","))
        lg_opt.skus[lg_opt.nskus++] = t;
    if (lg_opt.nskus == 0)
        return usage();
    if (!lg_opt.tag) {
        snprintf(tagbuf, sizeof(tagbuf), "lg-%lld-%d", (long long)time(NULL), (int)getpid());
        lg_opt.tag = tagbuf;
    }
    for (const char *t = lg_opt.tag; *t; t++) {
        if (!((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || (*t >= '0' && *t <= '9') ||
              *t == '-' || *t == '_') ||
            t - lg_opt.tag > 40) {
            fprintf(stderr, "loadgen: -t wants up to 40 letters, digits, - or _\n");
            return 2;
        }
    }
    lg_opt.token = getenv("API_TOKEN");
    if (!lg_opt.token || !lg_opt.token[0] || strlen(lg_opt.token) > 512 ||
        strspn(lg_opt.token,
               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=") !=
            strlen(lg_opt.token)) {
        fprintf(stderr, "loadgen: API_TOKEN must be order-api's bearer token (e.g. API_DEMO_TOKEN "
                        "from var/ordersuite.env)\n");
        return 2;
    }
    if (lg_opt.sales > 0 && !getenv("AMQP_URL")) {
        fprintf(stderr, "loadgen: --sales needs AMQP_URL (the pos user's URL)\n");
        return 2;
    }
    if (lg_opt.e2e_s > 0) {
        const char *one = getenv("DATABASE_URL");
        const char *ou = getenv("ORDERS_DATABASE_URL"), *mu = getenv("EMAIL_DATABASE_URL");
        ou = ou && *ou ? ou : one;
        mu = mu && *mu ? mu : one;
        if (!ou || !mu) {
            fprintf(stderr, "loadgen: --e2e needs ORDERS_DATABASE_URL and EMAIL_DATABASE_URL, "
                            "or DATABASE_URL (a role that reads orders, email)\n");
            return 2;
        }
        db = PQconnectdb(ou);
        mail_db = PQconnectdb(mu);
        if (PQstatus(db) != CONNECTION_OK || PQstatus(mail_db) != CONNECTION_OK) {
            /* The variable's name, never its value: it holds a password. */
            fprintf(stderr, "loadgen: %s: %s",
                    PQstatus(db) != CONNECTION_OK ? "the orders' database URL"
                                                  : "the email database URL",
                    PQerrorMessage(PQstatus(db) != CONNECTION_OK ? db : mail_db));
            PQfinish(db);
            PQfinish(mail_db);
            return 1;
        }
        orders_url = ou;
    }

    util_stop_on_signals_atomic(&lg_stopping);
    st = calloc((size_t)lg_opt.conns, sizeof(*st));
    if (!st)
        return 1;
    lg_start_mono = util_now_ms();
    lg_start_wall = util_wall_us();
    if (db) {
        sm = calloc(1, sizeof(*sm));
        if (sm) {
            sm->db = PQconnectdb(orders_url);
            if (PQstatus(sm->db) != CONNECTION_OK ||
                pthread_create(&smth, NULL, lg_sampler_thread, sm) != 0) {
                PQfinish(sm->db);
                free(sm);
                sm = NULL;
            }
        }
    }
    if (lg_opt.sales > 0) {
        ss.n = lg_opt.sales;
        ss.ids = calloc((size_t)lg_opt.sales, UUID_STR_LEN);
        if (!ss.ids || pthread_create(&sth, NULL, lg_sales_thread, &ss) != 0)
            return 1;
    }
    for (int i = 0; i < lg_opt.conns; i++) {
        st[i].target = i % lg_opt.ntargets; /* connections round-robin over -u */
        if (pthread_create(&th[i], NULL, lg_order_thread, &st[i]) != 0) {
            fprintf(stderr, "loadgen: cannot start thread %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < lg_opt.conns; i++)
        pthread_join(th[i], NULL);
    elapsed = (double)(util_now_ms() - lg_start_mono) / 1000.0;
    if (lg_opt.sales > 0)
        pthread_join(sth, NULL);

    for (int i = 0; i < lg_opt.conns; i++) {
        nlat += st[i].nlat;
        nacc += st[i].nacc;
    }
    lat = calloc(nlat + 1, sizeof(*lat));
    all = calloc(nacc + 1, sizeof(*all));
    if (!lat || !all)
        return 1;
    nlat = nacc = 0;
    for (int i = 0; i < lg_opt.conns; i++) {
        /* A connection that got no order has no arrays (NULL): nothing to copy. */
        if (st[i].nlat)
            memcpy(lat + nlat, st[i].lat_us, st[i].nlat * sizeof(*lat));
        nlat += st[i].nlat;
        if (st[i].nacc)
            memcpy(all + nacc, st[i].acc, st[i].nacc * sizeof(*all));
        nacc += st[i].nacc;
        for (int k = 0; k < 6; k++)
            by_class[k] += st[i].by_class[k];
        retries += st[i].retries;
        lost += st[i].lost;
        failovers += st[i].failovers;
        replayed += st[i].replayed;
        for (int k = 0; k < lg_opt.ntargets; k++)
            by_target[k] += st[i].acc_by_target[k];
        free(st[i].lat_us);
        free(st[i].acc);
    }
    free(st);
    qsort(lat, nlat, sizeof(*lat), lg_cmp_i64);

    if (lg_opt.ids_path) {
        FILE *f = fopen(lg_opt.ids_path, "w");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", lg_opt.ids_path, strerror(errno));
            rc = 1;
        } else {
            for (size_t i = 0; i < nacc; i++)
                fprintf(f, "O %s %s\n", all[i].key, all[i].id);
            for (long i = 0; i < ss.sent; i++)
                fprintf(f, "S %s\n", ss.ids[i]);
            if (fclose(f) != 0)
                rc = 1;
        }
    }

    printf("tag %s: %d connections, %.1f s\n", lg_opt.tag, lg_opt.conns, elapsed);
    printf("orders: %zu accepted (%.0f/s), %ld 4xx, %ld 5xx, %ld no answer, %ld retries, "
           "%ld lost\n",
           nacc, (double)nacc / elapsed, by_class[4], by_class[5], by_class[0], retries, lost);
    if (lg_opt.ntargets > 1) {
        printf("accepted by order-api:");
        for (int k = 0; k < lg_opt.ntargets; k++)
            printf(" %s:%d %ld%s", lg_opt.targets[k].host, lg_opt.targets[k].port, by_target[k],
                   k + 1 < lg_opt.ntargets ? "," : "");
        printf("; %ld failovers to the next, %ld retries answered with the order an earlier try "
               "made\n",
               failovers, replayed);
    }
    printf("POST /orders latency ms: p50 %.2f  p95 %.2f  p99 %.2f  max %.2f\n",
           lg_pct(lat, nlat, 50), lg_pct(lat, nlat, 95), lg_pct(lat, nlat, 99),
           lg_pct(lat, nlat, 100));
    if (lg_opt.sales > 0)
        printf("sales: %ld published with confirms, %ld failed%s%s\n", ss.sent, ss.failed,
               ss.failed ? ": " : "", ss.failed ? ss.err : "");
    if (db) {
        if (sm) {
            atomic_store(&sm->done, 1);
            pthread_join(smth, NULL);
            slope = lg_backlog_slope(sm, &maxb);
        }
        if (lg_e2e(db, mail_db, all, nacc, &er) < 0)
            rc = 1;
        printf("end to end: %ld confirmed, %ld rejected, %ld cancelled, %ld expired, %ld not "
               "final%s\n",
               er.confirmed, er.rejected, er.cancelled, er.expired, er.other,
               er.timed_out ? " (timed out waiting)" : "");
        printf("POST -> CONFIRMED ms: p50 %.1f  p95 %.1f  p99 %.1f  max %.1f\n",
               lg_pct(er.e2e_us, er.ne2e, 50), lg_pct(er.e2e_us, er.ne2e, 95),
               lg_pct(er.e2e_us, er.ne2e, 99), lg_pct(er.e2e_us, er.ne2e, 100));
        printf("completed (reserved, invoiced, mailed): %ld in %.1f s = %.0f/s; backlog max %.0f, "
               "trend %+.1f orders/s\n",
               er.completed, er.first_to_last_s, er.completed_per_s, maxb, slope);
        if (er.timed_out)
            rc = 1;
    }
    if (lg_opt.json_path) {
        FILE *f = fopen(lg_opt.json_path, "w");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", lg_opt.json_path, strerror(errno));
            rc = 1;
        } else {
            fprintf(f,
                    "{\"tag\":\"%s\",\"connections\":%d,\"rate\":%.1f,\"seconds\":%.3f,"
                    "\"accepted\":%zu,\"accepted_per_s\":%.1f,\"http_4xx\":%ld,\"http_5xx\":%ld,"
                    "\"no_answer\":%ld,\"retries\":%ld,\"lost\":%ld,"
                    "\"post_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
                    "\"sales_sent\":%ld,\"sales_failed\":%ld",
                    lg_opt.tag, lg_opt.conns, lg_opt.rate, elapsed, nacc, (double)nacc / elapsed,
                    by_class[4], by_class[5], by_class[0], retries, lost, lg_pct(lat, nlat, 50),
                    lg_pct(lat, nlat, 95), lg_pct(lat, nlat, 99), lg_pct(lat, nlat, 100), ss.sent,
                    ss.failed);
            if (db)
                fprintf(f,
                        ",\"e2e\":{\"confirmed\":%ld,\"rejected\":%ld,\"cancelled\":%ld,"
                        "\"not_final\":%ld,\"timed_out\":%s,\"completed\":%ld,"
                        "\"completed_per_s\":%.1f,\"p50_ms\":%.2f,\"p95_ms\":%.2f,"
                        "\"p99_ms\":%.2f,\"max_ms\":%.2f,\"backlog_max\":%.0f,"
                        "\"backlog_trend_per_s\":%.2f}",
                        er.confirmed, er.rejected, er.cancelled, er.other,
                        er.timed_out ? "true" : "false", er.completed, er.completed_per_s,
                        lg_pct(er.e2e_us, er.ne2e, 50), lg_pct(er.e2e_us, er.ne2e, 95),
                        lg_pct(er.e2e_us, er.ne2e, 99), lg_pct(er.e2e_us, er.ne2e, 100), maxb,
                        slope);
            if (sm) { /* the backlog over time, for make bench's plot */
                fprintf(f, ",\"backlog\":[");
                for (int i = 0; i < sm->n; i++)
                    fprintf(f, "%s[%.3f,%ld]", i ? "," : "", (double)sm->s[i].t_ms / 1000.0,
                            sm->s[i].backlog);
                fprintf(f, "]");
            }
            fprintf(f, ",\"failovers\":%ld,\"replayed\":%ld,\"targets\":[", failovers, replayed);
            for (int k = 0; k < lg_opt.ntargets; k++)
                fprintf(f, "%s{\"url\":\"http://%s:%d\",\"accepted\":%ld}", k ? "," : "",
                        lg_opt.targets[k].host, lg_opt.targets[k].port, by_target[k]);
            fprintf(f, "],\"cpu_s\":%.3f}\n", self_cpu_s());
            if (fclose(f) != 0)
                rc = 1;
        }
    }
    if (lost > 0 || ss.failed > 0)
        rc = 1;
    free(er.e2e_us);
    free(lat);
    free(all);
    free(ss.ids);
    if (sm) {
        PQfinish(sm->db);
        free(sm);
    }
    PQfinish(db);
    PQfinish(mail_db);
    return rc;
}
