/*
 * loadgen — drives the suite the way its users do and says what it saw.
 *
 *   loadgen [-u URL] [-c CONNS] (-n ORDERS | -d SECONDS) [-r RATE] [-t TAG]
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
 * --sales N publishes N sale.completed events (store TAG) through the broker
 * with confirms, spread over the run; AMQP_URL must be set (the pos user).
 *
 * --e2e waits up to SECONDS for every accepted order to reach a final status,
 * then reads the timelines (DATABASE_URL: a role that may read the orders and
 * email schemas, e.g. the owner) and reports POST -> CONFIRMED latencies and
 * completed orders per second: CONFIRMED (reserved and invoiced) and the
 * confirmation mail recorded. During the run it samples how many accepted
 * orders are not yet final, every second: the backlog.
 *
 * -o writes "O <key> <order id>" per accepted order and "S <sale id>" per
 * confirmed sale, for the ledger checker. --json writes the figures.
 * API_TOKEN (environment, required) is the bearer token every request
 * carries (make up writes one for the demo: API_DEMO_TOKEN in
 * var/ordersuite.env); the orders belong to its client.
 *
 * Exit: 0, 1 when an order was lost to an error (or e2e timed out), 2 usage.
 */
#include "cfg.h"
#include "events.h"
#include "mq.h"
#include "util.h"

#include <arpa/inet.h>
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS           1024
#define RESP_MAX            (256 * 1024)
#define MAX_BACKLOG_SAMPLES 4096

typedef struct {
    char key[64];
    char id[UUID_STR_LEN];
    int64_t sent_us; /* wall clock, first attempt */
} accepted;

typedef struct {
    int64_t *lat_us; /* one per answered request */
    size_t nlat, caplat;
    accepted *acc;
    size_t nacc, capacc;
    long by_class[6]; /* 1xx..5xx answers, [0] = no answer */
    long retries, lost;
} tstats;

static struct {
    char host[64];
    int port;
    int conns;
    long orders;     /* -n */
    double duration; /* -d */
    double rate;     /* -r */
    const char *tag;
    long sales;
    double retry_s;
    double e2e_s;
    const char *ids_path;
    const char *json_path;
    const char *token; /* API_TOKEN */
    const char *skus[8];
    int nskus;
    int lines;
} opt = {.host = "127.0.0.1", .port = 8080, .conns = 16, .lines = 2};

static long next_order;    /* atomic */
static int64_t start_mono; /* ms */
static int64_t start_wall; /* us */
static volatile sig_atomic_t stopping;
static long accepted_total; /* atomic, for the backlog sampler */

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: loadgen [-u http://127.0.0.1:8080] [-c CONNS] (-n ORDERS | -d SECONDS)\n"
            "               [-r RATE] [-t TAG] [--sales N] [--retry SECONDS] [--e2e SECONDS]\n"
            "               [--skus A,B] [--lines K] [-o IDS_FILE] [--json FILE]\n"
            "env: API_TOKEN (bearer token, required), AMQP_URL (for --sales), DATABASE_URL (for "
            "--e2e)\n");
    return 2;
}

/* --------------------------------------------------------------- HTTP */

static int dial(void)
{
    struct sockaddr_in a;
    struct timeval tv = {.tv_sec = 15};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &a.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one response into buf; returns the status code, -1 on a broken
 * connection. *body points into buf; *close_after is set when the server
 * said Connection: close. */
static int read_response(int fd, char *buf, size_t cap, char **body, size_t *blen, int *close_after)
{
    size_t have = 0, head = 0, need = 0;
    int status;
    long clen = -1;

    for (;;) {
        ssize_t r = recv(fd, buf + have, cap - 1 - have, 0);
        char *end;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = '\0';
        if (!head && (end = strstr(buf, "\r\n\r\n"))) {
            head = (size_t)(end - buf) + 4;
            for (char *l = strstr(buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
                if (strncasecmp(l + 2, "Content-Length:", 15) == 0)
                    clen = strtol(l + 17, NULL, 10);
                else if (strncasecmp(l + 2, "Connection: close", 17) == 0)
                    *close_after = 1;
            }
            if (clen < 0 || (size_t)clen > cap - 1 - head)
                return -1; /* the server sends lengths; anything else is a broken answer */
            need = head + (size_t)clen;
        }
        if (head && have >= need)
            break;
        if (have >= cap - 1)
            return -1;
    }
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    buf[need] = '\0';
    *body = buf + head;
    *blen = need - head;
    return status;
}

/* --------------------------------------------------------------- orders */

static void push_lat(tstats *s, int64_t us)
{
    if (s->nlat == s->caplat) {
        size_t cap = s->caplat ? s->caplat * 2 : 4096;
        int64_t *p = realloc(s->lat_us, cap * sizeof(*p));
        if (!p)
            return;
        s->lat_us = p;
        s->caplat = cap;
    }
    s->lat_us[s->nlat++] = us;
}

static void push_acc(tstats *s, const char *key, const char *id, int64_t sent)
{
    if (s->nacc == s->capacc) {
        size_t cap = s->capacc ? s->capacc * 2 : 1024;
        accepted *p = realloc(s->acc, cap * sizeof(*p));
        if (!p)
            return;
        s->acc = p;
        s->capacc = cap;
    }
    snprintf(s->acc[s->nacc].key, sizeof(s->acc[0].key), "%s", key);
    snprintf(s->acc[s->nacc].id, UUID_STR_LEN, "%s", id);
    s->acc[s->nacc].sent_us = sent;
    s->nacc++;
    __atomic_add_fetch(&accepted_total, 1, __ATOMIC_RELAXED);
}

/* Takes the next order number; -1 when the run is over. Sleeps until it is
 * due when a rate is set. */
static long take_order(void)
{
    long n;
    if (stopping)
        return -1;
    n = __atomic_fetch_add(&next_order, 1, __ATOMIC_RELAXED);
    if (opt.orders > 0 && n >= opt.orders)
        return -1;
    if (opt.duration > 0 && util_now_ms() - start_mono >= (int64_t)(opt.duration * 1000))
        return -1;
    if (opt.rate > 0) {
        int64_t due = start_mono + (int64_t)((double)n * 1000.0 / opt.rate);
        int64_t now = util_now_ms();
        if (opt.duration > 0 && due - start_mono >= (int64_t)(opt.duration * 1000))
            return -1; /* due after the end of the run */
        if (due > now)
            util_sleep_ms(due - now, &stopping);
    }
    return n;
}

static size_t order_body(long n, char *buf, size_t cap)
{
    size_t len = (size_t)snprintf(buf, cap,
                                  "{\"customer_id\":\"%s\",\"customer_email\":\"%s@example.com\","
                                  "\"currency\":\"EUR\",\"items\":[",
                                  opt.tag, opt.tag);
    for (int i = 0; i < opt.lines && i < opt.nskus; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s{\"sku\":\"%s\",\"quantity\":1}",
                                i ? "," : "", opt.skus[(n + i) % opt.nskus]);
    len += (size_t)snprintf(buf + len, cap - len, "]}");
    return len;
}

static void *order_thread(void *arg)
{
    tstats *s = arg;
    char *resp = malloc(RESP_MAX);
    char req[2560], body[1024], key[64];
    int fd = -1;
    long n;

    if (!resp)
        return NULL;
    while ((n = take_order()) >= 0) {
        size_t blen = order_body(n, body, sizeof(body));
        int reqlen;
        int64_t first = util_wall_us(), deadline = util_now_ms() + (int64_t)(opt.retry_s * 1000);
        backoff b;

        snprintf(key, sizeof(key), "%s-%ld", opt.tag, n);
        reqlen = snprintf(req, sizeof(req),
                          "POST /orders HTTP/1.1\r\nHost: %s:%d\r\n"
                          "Authorization: Bearer %s\r\n"
                          "Content-Type: application/json\r\nIdempotency-Key: %s\r\n"
                          "Content-Length: %zu\r\n\r\n%s",
                          opt.host, opt.port, opt.token, key, blen, body);
        backoff_init(&b, 50, 1000);
        for (int attempt = 0;; attempt++) {
            int64_t t0;
            char *rbody = NULL;
            size_t rlen = 0;
            int status = -1, close_after = 0;

            if (fd < 0)
                fd = dial();
            t0 = util_wall_us();
            if (fd >= 0 && send_all(fd, req, (size_t)reqlen) == 0)
                status = read_response(fd, resp, RESP_MAX, &rbody, &rlen, &close_after);
            if (status < 0 || close_after) {
                if (fd >= 0)
                    close(fd);
                fd = -1;
            }
            if (status > 0) {
                push_lat(s, util_wall_us() - t0);
                s->by_class[status / 100 < 6 ? status / 100 : 0]++;
            } else {
                s->by_class[0]++;
            }
            if (status == 200 || status == 201) {
                cJSON *doc = cJSON_ParseWithLength(rbody, rlen);
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
                if (cJSON_IsString(id) && strlen(id->valuestring) == UUID_STR_LEN - 1)
                    push_acc(s, key, id->valuestring, first);
                else
                    s->lost++; /* 2xx without an id: the answer itself is wrong */
                cJSON_Delete(doc);
                break;
            }
            if (status > 0 && status < 500)
                break; /* an answer: 4xx is not retried (same request, same answer) */
            if (opt.retry_s <= 0 || util_now_ms() >= deadline || stopping) {
                s->lost++;
                break;
            }
            s->retries++;
            util_sleep_ms(backoff_next(&b), &stopping);
        }
    }
    if (fd >= 0)
        close(fd);
    free(resp);
    return NULL;
}

/* ---------------------------------------------------------------- sales */

typedef struct {
    char (*ids)[UUID_STR_LEN];
    long n, sent, failed;
    char err[MQ_ERR_LEN];
} sales_state;

/* Publishes m until the broker confirms it; with --retry, through broker
 * restarts (reconnecting) for up to that long, as the till's spool would. */
static int publish_retrying(mq_conn *c, const mq_msg *m, char *err, size_t errlen)
{
    int64_t deadline = util_now_ms() + (int64_t)(opt.retry_s * 1000);
    backoff b;
    backoff_init(&b, 100, 2000);
    for (;;) {
        if ((mq_is_connected(c) || mq_connect_publisher(c, err, errlen) == MQ_OK) &&
            mq_publish(c, m, err, errlen) == MQ_OK)
            return MQ_OK;
        if (util_now_ms() >= deadline || stopping)
            return MQ_ERR;
        mq_disconnect(c);
        util_sleep_ms(backoff_next(&b), &stopping);
    }
}

static void *sales_thread(void *arg)
{
    sales_state *ss = arg;
    const char *url = getenv("AMQP_URL");
    mq_opts mo = {.url = url, .app_id = "pos"};
    mq_conn *c = mq_new(&mo);
    double span =
        opt.duration > 0 ? opt.duration : (opt.rate > 0 ? (double)opt.orders / opt.rate : 0);

    if (!c || mq_connect_retry(c, 0, 30000, &stopping, ss->err, sizeof(ss->err)) != MQ_OK) {
        ss->failed = ss->n;
        mq_free(c);
        return NULL;
    }
    for (long i = 0; i < ss->n && !stopping; i++) {
        ev_event ev;
        sale_completed *s = &ev.u.sale_completed;
        char mid[UUID_STR_LEN], *json;
        mq_msg m = {0};
        int64_t due = start_mono + (int64_t)(span * 1000.0 * (double)i / (double)ss->n);

        if (due > util_now_ms())
            util_sleep_ms(due - util_now_ms(), &stopping);
        ev_init(&ev, EV_SALE_COMPLETED);
        if (uuid_v4(s->sale_id) < 0 || uuid_v4(mid) < 0 || ev_lines_alloc(&s->lines, 1) < 0) {
            ss->failed++;
            ev_free(&ev);
            continue;
        }
        snprintf(s->store_id, sizeof(s->store_id), "%s", opt.tag);
        snprintf(s->currency, sizeof(s->currency), "EUR");
        snprintf(s->customer_email, sizeof(s->customer_email), "%s@example.com", opt.tag);
        snprintf(s->lines.items[0].sku, sizeof(s->lines.items[0].sku), "%s",
                 opt.skus[i % opt.nskus]);
        s->lines.items[0].quantity = 1;
        s->lines.items[0].unit_price = 100; /* the till's own price; billing trusts it */
        s->lines.n = 1;
        s->total = 100;
        ev_now_rfc3339(s->paid_at);
        json = ev_to_json(&ev, NULL, ss->err, sizeof(ss->err));
        m.routing_key = "sale.completed";
        m.message_id = mid;
        m.correlation_id = s->sale_id;
        m.body = json;
        m.len = json ? strlen(json) : 0;
        if (json && publish_retrying(c, &m, ss->err, sizeof(ss->err)) == MQ_OK) {
            memcpy(ss->ids[ss->sent++], s->sale_id, UUID_STR_LEN);
        } else {
            ss->failed++;
        }
        free(json);
        ev_free(&ev);
    }
    mq_free(c);
    return NULL;
}

/* ------------------------------------------------------------ end to end */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_acc(const void *a, const void *b)
{
    return strcmp(((const accepted *)a)->id, ((const accepted *)b)->id);
}

static double pct(const int64_t *v, size_t n, double p)
{
    size_t i;
    if (n == 0)
        return 0;
    i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i < n ? i : n - 1] / 1000.0; /* ms */
}

typedef struct {
    long t_ms, backlog;
} sample;

typedef struct {
    PGconn *db;
    sample s[MAX_BACKLOG_SAMPLES];
    int n;
    volatile int done;
} sampler;

/* The run's orders, found through the created_at index (a scan of every
 * order by customer_id would cost the database more than the load itself). */
#define RUN_ORDERS                                                                                 \
    " FROM orders.orders o WHERE o.customer_id = $1"                                               \
    " AND o.created_at >= to_timestamp($2::double precision / 1e6 - 5)"

static long final_count(PGconn *db)
{
    char since[24];
    const char *p[] = {opt.tag, util_i64(since, start_wall)};
    PGresult *r = PQexecParams(
        db, "SELECT count(*)" RUN_ORDERS " AND o.status IN ('CONFIRMED', 'REJECTED', 'CANCELLED')",
        2, NULL, p, NULL, NULL, 0);
    long n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    else
        fprintf(stderr, "loadgen: %s", PQerrorMessage(db));
    PQclear(r);
    return n;
}

static void *sampler_thread(void *arg)
{
    sampler *sm = arg;
    while (!sm->done && sm->n < MAX_BACKLOG_SAMPLES) {
        long acc = __atomic_load_n(&accepted_total, __ATOMIC_RELAXED), fin = final_count(sm->db);
        if (fin >= 0) {
            sm->s[sm->n].t_ms = (long)(util_now_ms() - start_mono);
            sm->s[sm->n].backlog = acc - fin;
            sm->n++;
        }
        for (int i = 0; i < 10 && !sm->done; i++)
            util_sleep_ms(100, NULL);
    }
    return NULL;
}

typedef struct {
    long completed, confirmed, rejected, cancelled, other;
    int64_t *e2e_us;
    size_t ne2e;
    double completed_per_s, first_to_last_s;
    int timed_out;
} e2e_result;

static int e2e(PGconn *db, accepted *acc, size_t nacc, e2e_result *er)
{
    int64_t deadline = util_now_ms() + (int64_t)(opt.e2e_s * 1000), last = 0, first = INT64_MAX;
    char since[24];
    const char *p[] = {opt.tag, util_i64(since, start_wall)};
    PGresult *r;

    while (final_count(db) < (long)nacc) {
        if (util_now_ms() > deadline || stopping) {
            er->timed_out = 1;
            break;
        }
        util_sleep_ms(200, &stopping);
    }
    r = PQexecParams(db,
                     "WITH o AS (SELECT o.id, o.status" RUN_ORDERS ")"
                     " SELECT o.id::text, o.status,"
                     " (extract(epoch FROM c.at) * 1e6)::bigint,"
                     " (extract(epoch FROM m.created_at) * 1e6)::bigint"
                     " FROM o"
                     " LEFT JOIN orders.order_timeline c ON c.order_id = o.id"
                     "  AND c.status = 'CONFIRMED'"
                     " LEFT JOIN email.messages m ON m.correlation_id = o.id"
                     "  AND m.kind = 'order_confirmed'"
                     "  AND m.created_at >= to_timestamp($2::double precision / 1e6 - 5)",
                     2, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "loadgen: reading the timelines: %s", PQerrorMessage(db));
        PQclear(r);
        return -1;
    }
    qsort(acc, nacc, sizeof(*acc), cmp_acc);
    er->e2e_us = calloc((size_t)PQntuples(r) + 1, sizeof(int64_t));
    for (int i = 0; i < PQntuples(r); i++) {
        const char *st = PQgetvalue(r, i, 1);
        accepted k = {0}, *a;
        int64_t conf, mail, done;
        snprintf(k.id, sizeof(k.id), "%s", PQgetvalue(r, i, 0));
        a = bsearch(&k, acc, nacc, sizeof(*acc), cmp_acc);
        if (strcmp(st, "CONFIRMED") == 0)
            er->confirmed++;
        else if (strcmp(st, "REJECTED") == 0)
            er->rejected++;
        else if (strcmp(st, "CANCELLED") == 0)
            er->cancelled++;
        else
            er->other++;
        if (!a || strcmp(st, "CONFIRMED") != 0 || PQgetisnull(r, i, 2))
            continue;
        conf = strtoll(PQgetvalue(r, i, 2), NULL, 10);
        if (er->e2e_us)
            er->e2e_us[er->ne2e++] = conf - a->sent_us;
        if (PQgetisnull(r, i, 3))
            continue; /* the mail is not recorded yet: not complete */
        mail = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        done = conf > mail ? conf : mail;
        er->completed++;
        if (done > last)
            last = done;
        if (a->sent_us < first)
            first = a->sent_us;
    }
    PQclear(r);
    if (er->e2e_us)
        qsort(er->e2e_us, er->ne2e, sizeof(int64_t), cmp_i64);
    if (er->completed > 0 && last > first) {
        er->first_to_last_s = (double)(last - first) / 1e6;
        er->completed_per_s = (double)er->completed / er->first_to_last_s;
    }
    return 0;
}

/* Least-squares slope of the backlog samples after the first 10 s, per second. */
static double backlog_slope(const sampler *sm, double *max_backlog)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int n = 0;
    *max_backlog = 0;
    for (int i = 0; i < sm->n; i++) {
        double x = (double)sm->s[i].t_ms / 1000.0, y = (double)sm->s[i].backlog;
        if (y > *max_backlog)
            *max_backlog = y;
        if (x < 10)
            continue;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
        n++;
    }
    if (n < 3 || n * sxx - sx * sx == 0)
        return 0;
    return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

/* ------------------------------------------------------------------ main */

static int parse_url(const char *u)
{
    const char *h = u;
    char *end;
    long port = 80;
    size_t hl;
    if (strncmp(h, "http://", 7) == 0)
        h += 7;
    hl = strcspn(h, ":/");
    if (hl == 0 || hl >= sizeof(opt.host))
        return -1;
    memcpy(opt.host, h, hl);
    opt.host[hl] = '\0';
    if (h[hl] == ':') {
        errno = 0;
        port = strtol(h + hl + 1, &end, 10);
        if (errno || port < 1 || port > 65535 || (*end && *end != '/'))
            return -1;
    }
    opt.port = (int)port;
    if (strcmp(opt.host, "localhost") == 0)
        snprintf(opt.host, sizeof(opt.host), "127.0.0.1");
    return 0;
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
    PGconn *db = NULL;
    int c, rc = 0;
    struct sigaction sa;

    while ((c = getopt_long(argc, argv, "u:c:n:d:r:t:o:h", lo, NULL)) != -1) {
        switch (c) {
        case 'u':
            if (parse_url(optarg) < 0) {
                fprintf(stderr, "loadgen: -u wants http://HOST:PORT with an IPv4 host\n");
                return 2;
            }
            break;
        case 'c':
            if (num("-c", optarg, 1, MAX_CONNS, &v) < 0)
                return 2;
            opt.conns = (int)v;
            break;
        case 'n':
            if (num("-n", optarg, 1, 1e8, &v) < 0)
                return 2;
            opt.orders = (long)v;
            break;
        case 'd':
            if (num("-d", optarg, 0.1, 86400, &opt.duration) < 0)
                return 2;
            break;
        case 'r':
            if (num("-r", optarg, 0.1, 1e6, &opt.rate) < 0)
                return 2;
            break;
        case 't':
            opt.tag = optarg;
            break;
        case 'o':
            opt.ids_path = optarg;
            break;
        case 'S':
            if (num("--sales", optarg, 0, 1e7, &v) < 0)
                return 2;
            opt.sales = (long)v;
            break;
        case 'R':
            if (num("--retry", optarg, 0, 3600, &opt.retry_s) < 0)
                return 2;
            break;
        case 'E':
            if (num("--e2e", optarg, 0, 3600, &opt.e2e_s) < 0)
                return 2;
            break;
        case 'J':
            opt.json_path = optarg;
            break;
        case 'K':
            snprintf(skus_buf, sizeof(skus_buf), "%s", optarg);
            break;
        case 'L':
            if (num("--lines", optarg, 1, 8, &v) < 0)
                return 2;
            opt.lines = (int)v;
            break;
        default:
            return usage();
        }
    }
    if (optind != argc || (opt.orders > 0) == (opt.duration > 0))
        return usage();
    for (char *t = strtok(skus_buf, ","); t && opt.nskus < 8; t = strtok(NULL, ","))
        opt.skus[opt.nskus++] = t;
    if (opt.nskus == 0)
        return usage();
    if (!opt.tag) {
        snprintf(tagbuf, sizeof(tagbuf), "lg-%lld-%d", (long long)time(NULL), (int)getpid());
        opt.tag = tagbuf;
    }
    for (const char *t = opt.tag; *t; t++) {
        if (!((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || (*t >= '0' && *t <= '9') ||
              *t == '-' || *t == '_') ||
            t - opt.tag > 40) {
            fprintf(stderr, "loadgen: -t wants up to 40 letters, digits, - or _\n");
            return 2;
        }
    }
    opt.token = getenv("API_TOKEN");
    if (!opt.token || !opt.token[0] || strlen(opt.token) > 512 ||
        strspn(opt.token,
               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=") !=
            strlen(opt.token)) {
        fprintf(stderr, "loadgen: API_TOKEN must be order-api's bearer token (e.g. API_DEMO_TOKEN "
                        "from var/ordersuite.env)\n");
        return 2;
    }
    if (opt.sales > 0 && !getenv("AMQP_URL")) {
        fprintf(stderr, "loadgen: --sales needs AMQP_URL (the pos user's URL)\n");
        return 2;
    }
    if (opt.e2e_s > 0) {
        const char *u = getenv("DATABASE_URL");
        if (!u) {
            fprintf(stderr,
                    "loadgen: --e2e needs DATABASE_URL (a role that reads orders, email)\n");
            return 2;
        }
        db = PQconnectdb(u);
        if (PQstatus(db) != CONNECTION_OK) {
            fprintf(stderr, "loadgen: DATABASE_URL: %s", PQerrorMessage(db));
            PQfinish(db);
            return 1;
        }
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    st = calloc((size_t)opt.conns, sizeof(*st));
    if (!st)
        return 1;
    start_mono = util_now_ms();
    start_wall = util_wall_us();
    if (db) {
        sm = calloc(1, sizeof(*sm));
        if (sm) {
            sm->db = PQconnectdb(getenv("DATABASE_URL"));
            if (PQstatus(sm->db) != CONNECTION_OK ||
                pthread_create(&smth, NULL, sampler_thread, sm) != 0) {
                PQfinish(sm->db);
                free(sm);
                sm = NULL;
            }
        }
    }
    if (opt.sales > 0) {
        ss.n = opt.sales;
        ss.ids = calloc((size_t)opt.sales, UUID_STR_LEN);
        if (!ss.ids || pthread_create(&sth, NULL, sales_thread, &ss) != 0)
            return 1;
    }
    for (int i = 0; i < opt.conns; i++) {
        if (pthread_create(&th[i], NULL, order_thread, &st[i]) != 0) {
            fprintf(stderr, "loadgen: cannot start thread %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < opt.conns; i++)
        pthread_join(th[i], NULL);
    elapsed = (double)(util_now_ms() - start_mono) / 1000.0;
    if (opt.sales > 0)
        pthread_join(sth, NULL);

    for (int i = 0; i < opt.conns; i++) {
        nlat += st[i].nlat;
        nacc += st[i].nacc;
    }
    lat = calloc(nlat + 1, sizeof(*lat));
    all = calloc(nacc + 1, sizeof(*all));
    if (!lat || !all)
        return 1;
    nlat = nacc = 0;
    for (int i = 0; i < opt.conns; i++) {
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
        free(st[i].lat_us);
        free(st[i].acc);
    }
    free(st);
    qsort(lat, nlat, sizeof(*lat), cmp_i64);

    if (opt.ids_path) {
        FILE *f = fopen(opt.ids_path, "w");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", opt.ids_path, strerror(errno));
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

    printf("tag %s: %d connections, %.1f s\n", opt.tag, opt.conns, elapsed);
    printf("orders: %zu accepted (%.0f/s), %ld 4xx, %ld 5xx, %ld no answer, %ld retries, "
           "%ld lost\n",
           nacc, (double)nacc / elapsed, by_class[4], by_class[5], by_class[0], retries, lost);
    printf("POST /orders latency ms: p50 %.2f  p95 %.2f  p99 %.2f  max %.2f\n", pct(lat, nlat, 50),
           pct(lat, nlat, 95), pct(lat, nlat, 99), pct(lat, nlat, 100));
    if (opt.sales > 0)
        printf("sales: %ld published with confirms, %ld failed%s%s\n", ss.sent, ss.failed,
               ss.failed ? ": " : "", ss.failed ? ss.err : "");
    if (db) {
        if (sm) {
            sm->done = 1;
            pthread_join(smth, NULL);
            slope = backlog_slope(sm, &maxb);
        }
        if (e2e(db, all, nacc, &er) < 0)
            rc = 1;
        printf("end to end: %ld confirmed, %ld rejected, %ld cancelled, %ld not final%s\n",
               er.confirmed, er.rejected, er.cancelled, er.other,
               er.timed_out ? " (timed out waiting)" : "");
        printf("POST -> CONFIRMED ms: p50 %.1f  p95 %.1f  p99 %.1f  max %.1f\n",
               pct(er.e2e_us, er.ne2e, 50), pct(er.e2e_us, er.ne2e, 95),
               pct(er.e2e_us, er.ne2e, 99), pct(er.e2e_us, er.ne2e, 100));
        printf("completed (reserved, invoiced, mailed): %ld in %.1f s = %.0f/s; backlog max %.0f, "
               "trend %+.1f orders/s\n",
               er.completed, er.first_to_last_s, er.completed_per_s, maxb, slope);
        if (er.timed_out)
            rc = 1;
    }
    if (opt.json_path) {
        FILE *f = fopen(opt.json_path, "w");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", opt.json_path, strerror(errno));
            rc = 1;
        } else {
            fprintf(f,
                    "{\"tag\":\"%s\",\"connections\":%d,\"rate\":%.1f,\"seconds\":%.3f,"
                    "\"accepted\":%zu,\"accepted_per_s\":%.1f,\"http_4xx\":%ld,\"http_5xx\":%ld,"
                    "\"no_answer\":%ld,\"retries\":%ld,\"lost\":%ld,"
                    "\"post_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
                    "\"sales_sent\":%ld,\"sales_failed\":%ld",
                    opt.tag, opt.conns, opt.rate, elapsed, nacc, (double)nacc / elapsed,
                    by_class[4], by_class[5], by_class[0], retries, lost, pct(lat, nlat, 50),
                    pct(lat, nlat, 95), pct(lat, nlat, 99), pct(lat, nlat, 100), ss.sent,
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
                        pct(er.e2e_us, er.ne2e, 50), pct(er.e2e_us, er.ne2e, 95),
                        pct(er.e2e_us, er.ne2e, 99), pct(er.e2e_us, er.ne2e, 100), maxb, slope);
            fprintf(f, "}\n");
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
    return rc;
}
