/*
 * ledger — after a run, checks from the tables and the queues that nothing
 * was lost, nothing was applied twice, and everything finished.
 *
 *   ledger [--ids FILE] [--tag TAG] [--wait SECONDS] [--dlq SERVICE=N ...]
 *
 * --ids is loadgen's file ("O <key> <order id>" per order answered 2xx,
 * "S <sale id>" per sale the broker confirmed). --tag limits the order and
 * sale checks to one run (loadgen's customer_id / store_id); without it every
 * order in the database is checked. --wait first waits, up to SECONDS, for the
 * suite to go quiet: every order of the run final, every sale applied,
 * outboxes empty (parked rows aside: nothing moves them but an operator),
 * work and retry queues empty.
 *
 * Checked:
 *   orders   every accepted id exists (else lost); none is left in a
 *            non-final status; each final order has exactly its effects:
 *            CONFIRMED  reservation held, one invoice, one order_confirmed mail
 *            REJECTED   one rejection, no reservation, one order_rejected mail
 *            CANCELLED  reservation released, one payment failure, one mail
 *            (anything more is counted as duplicated, anything less as lost)
 *   sales    every confirmed sale has its stock lines, one invoice, one receipt
 *   stock    per SKU: on_hand >= 0 and on_hand = adjustments - held - sold
 *   queues   work queues are empty; each DLQ holds what --dlq says (DLQs not
 *            named are reported, not checked)
 *   in flight messages a consumer holds unacked in a work queue (from the
 *            management API: a passive queue.declare counts only the ready
 *            ones) are waited for and, left after the wait, count as stuck
 *   stuck    work neither lost nor done after the wait: a row left in any
 *            schema's outbox (unpublished), every parked outbox row (one the
 *            broker returned OUTBOX_PARK_AFTER times; any age: the relay never
 *            retries it, only `dlq outbox replay` does), a mail
 *            left pending in email's mail outbox (email.messages, not yet
 *            delivered; with --tag or --ids only the mail of the run's
 *            orders and sales), a message left in a retry tier, a message left
 *            unacked in a work queue
 *
 * Prints the counts, then
 * "RESULT lost=L duplicated=D stuck=S inconsistent=I ok=0|1".
 * Environment: DATABASE_URL (the owner role: it reads every schema),
 * AMQP_URL (the administrator: it looks at every queue; its user and password
 * also log in to the management API at MGMT_URL, default
 * http://<AMQP host>:MGMT_PORT, MGMT_PORT default 15672), LEDGER_SERVICES
 * (default order-api,inventory,billing,email), RETRY_DELAYS_MS (default
 * 1000,10000,60000). Exit: 0 when ok, 1 when not, 2 on bad usage.
 */
#include "cfg.h"
#include "mq.h"
#include "util.h"
#include "uuid.h"
#include "worker.h"

#include <amqp.h>
#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERVICES 16

static struct {
    const char *ids_path, *tag;
    double wait_s;
    char *services[MAX_SERVICES];
    int nservices;
    long dlq_expect[MAX_SERVICES]; /* -1 = not checked */
    int tiers[MQ_MAX_TIERS];
} opt;

/* What was sent, from loadgen's file, as PostgreSQL array literals. */
typedef struct {
    char *order_ids, *sale_ids; /* "{id,id}" */
    long orders, sales;
} sent;

typedef struct {
    long accepted, found, stored, not_final, consistent, incomplete, duplicated;
    long by_status[3]; /* CONFIRMED, REJECTED, CANCELLED */
    long sales, sales_done, sales_missing, sales_dup;
    long skus, negative, off_ledger;
    long outbox_pending, outbox_parked, mail_pending;
    long queue_ready, retry_ready, in_flight;
    long dlq_mismatch;
    int quiet;
} figures;

static int usage(void)
{
    fprintf(stderr, "usage: ledger [--ids FILE] [--tag TAG] [--wait SECONDS] [--dlq SERVICE=N]...\n"
                    "env: DATABASE_URL (owner), AMQP_URL (administrator), LEDGER_SERVICES\n");
    return 2;
}

static PGresult *q(PGconn *db, const char *sql, int n, const char *const *p)
{
    PGresult *r = PQexecParams(db, sql, n, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "ledger: %s", PQerrorMessage(db));
        PQclear(r);
        return NULL;
    }
    return r;
}

static long q_long(PGconn *db, const char *sql, int n, const char *const *p)
{
    PGresult *r = q(db, sql, n, p);
    long v = -1;
    if (r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* Appends id to the array literal in *buf. */
static int append_id(char **buf, size_t *len, size_t *cap, const char *id)
{
    if (*len + UUID_STR_LEN + 3 > *cap) {
        size_t nc = *cap * 2 + UUID_STR_LEN + 4096;
        char *p = realloc(*buf, nc);
        if (!p)
            return -1;
        *buf = p;
        *cap = nc;
    }
    *len += (size_t)snprintf(*buf + *len, *cap - *len, "%s%s", *len > 1 ? "," : "", id);
    return 0;
}

/* Ends the array literal of len characters with "}". */
static int close_array(char **buf, size_t len)
{
    char *p = realloc(*buf, len + 2);
    if (!p)
        return -1;
    p[len] = '}';
    p[len + 1] = '\0';
    *buf = p;
    return 0;
}

static int read_ids(const char *path, sent *s)
{
    FILE *f = fopen(path, "r");
    char line[256], key[128], id[64];
    size_t ol = 1, oc = 0, sl = 1, sc = 0;
    int lineno = 0;

    if (!f) {
        fprintf(stderr, "ledger: %s: %s\n", path, strerror(errno));
        return -1;
    }
    s->order_ids = strdup("{");
    s->sale_ids = strdup("{");
    oc = sc = 2; /* what strdup allocated */
    while (s->order_ids && s->sale_ids && fgets(line, sizeof(line), f)) {
        lineno++;
        if (sscanf(line, "O %127s %63s", key, id) == 2 && uuid_valid(id)) {
            if (append_id(&s->order_ids, &ol, &oc, id) < 0)
                break;
            s->orders++;
        } else if (sscanf(line, "S %63s", id) == 1 && uuid_valid(id)) {
            if (append_id(&s->sale_ids, &sl, &sc, id) < 0)
                break;
            s->sales++;
        } else {
            fprintf(stderr, "ledger: %s:%d: not \"O KEY ID\" or \"S ID\"\n", path, lineno);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    if (!s->order_ids || !s->sale_ids || close_array(&s->order_ids, ol) < 0 ||
        close_array(&s->sale_ids, sl) < 0) {
        fprintf(stderr, "ledger: out of memory\n");
        return -1;
    }
    return 0;
}

/* The orders of the run with the count of each effect. */
static const char orders_sql[] =
    "WITH o AS (SELECT id, status FROM orders.orders"
    "   WHERE ($1::text IS NULL OR customer_id = $1)"
    "      OR ($2::uuid[] IS NOT NULL AND id = ANY($2::uuid[]))),"
    " r AS (SELECT order_id, count(*) FILTER (WHERE status = 'RESERVED') AS held,"
    "   count(*) FILTER (WHERE status = 'RELEASED') AS released"
    "   FROM inventory.reservations WHERE order_id IN (SELECT id FROM o) GROUP BY 1),"
    " j AS (SELECT order_id, count(*) AS n FROM inventory.rejections"
    "   WHERE order_id IN (SELECT id FROM o) GROUP BY 1),"
    " i AS (SELECT order_id, count(*) AS n FROM billing.invoices"
    "   WHERE order_id IN (SELECT id FROM o) GROUP BY 1),"
    " f AS (SELECT order_id, count(*) AS n FROM billing.payment_failures"
    "   WHERE order_id IN (SELECT id FROM o) GROUP BY 1),"
    " m AS (SELECT correlation_id AS order_id,"
    "   count(*) FILTER (WHERE kind = 'order_confirmed') AS mc,"
    "   count(*) FILTER (WHERE kind = 'order_rejected') AS mr,"
    "   count(*) FILTER (WHERE kind = 'payment_failed') AS mp"
    "   FROM email.messages WHERE correlation_id IN (SELECT id FROM o) GROUP BY 1),"
    " x AS (SELECT o.status, coalesce(r.held, 0) AS held, coalesce(r.released, 0) AS released,"
    "   coalesce(j.n, 0) AS rej, coalesce(i.n, 0) AS inv, coalesce(f.n, 0) AS pf,"
    "   coalesce(m.mc, 0) AS mc, coalesce(m.mr, 0) AS mr, coalesce(m.mp, 0) AS mp"
    "   FROM o LEFT JOIN r ON r.order_id = o.id LEFT JOIN j ON j.order_id = o.id"
    "   LEFT JOIN i ON i.order_id = o.id LEFT JOIN f ON f.order_id = o.id"
    "   LEFT JOIN m ON m.order_id = o.id)"
    " SELECT status, count(*),"
    "  count(*) FILTER (WHERE"
    "   (status = 'CONFIRMED' AND (held, released, rej, inv, pf, mc, mr, mp)"
    "        = (1, 0, 0, 1, 0, 1, 0, 0))"
    "   OR (status = 'REJECTED' AND (held, released, rej, inv, pf, mc, mr, mp)"
    "        = (0, 0, 1, 0, 0, 0, 1, 0))"
    "   OR (status = 'CANCELLED' AND (held, released, rej, inv, pf, mc, mr, mp)"
    "        = (0, 1, 0, 0, 1, 0, 0, 1))),"
    "  coalesce(sum(greatest(held + released - 1, 0) + greatest(rej - 1, 0)"
    "   + greatest(inv - 1, 0) + greatest(pf - 1, 0) + greatest(mc - 1, 0)"
    "   + greatest(mr - 1, 0) + greatest(mp - 1, 0)), 0)"
    " FROM x GROUP BY status";

static const char sales_sql[] =
    "WITH s AS (SELECT DISTINCT sale_id AS id FROM inventory.sale_lines"
    "   WHERE $1::uuid[] IS NULL OR sale_id = ANY($1::uuid[])"
    "   UNION SELECT unnest(coalesce($1::uuid[], '{}'))),"
    " l AS (SELECT sale_id, count(*) AS n FROM inventory.sale_lines"
    "   WHERE sale_id IN (SELECT id FROM s) GROUP BY 1),"
    " i AS (SELECT sale_id, count(*) AS n FROM billing.invoices"
    "   WHERE sale_id IN (SELECT id FROM s) GROUP BY 1),"
    " m AS (SELECT correlation_id, count(*) AS n FROM email.messages"
    "   WHERE kind = 'receipt' AND correlation_id IN (SELECT id FROM s) GROUP BY 1)"
    " SELECT count(*),"
    "  count(*) FILTER (WHERE l.n > 0 AND i.n = 1 AND m.n = 1),"
    "  count(*) FILTER (WHERE l.n IS NULL OR i.n IS NULL OR m.n IS NULL),"
    "  coalesce(sum(greatest(coalesce(i.n, 0) - 1, 0) + greatest(coalesce(m.n, 0) - 1, 0)), 0)"
    " FROM s LEFT JOIN l ON l.sale_id = s.id LEFT JOIN i ON i.sale_id = s.id"
    " LEFT JOIN m ON m.correlation_id = s.id";

static const char stock_sql[] =
    "SELECT count(*), count(*) FILTER (WHERE s.on_hand < 0),"
    "  count(*) FILTER (WHERE s.on_hand <> coalesce(a.total, 0) - coalesce(h.held, 0)"
    "   - coalesce(x.sold, 0))"
    " FROM inventory.stock s"
    " LEFT JOIN (SELECT sku, sum(delta) AS total FROM inventory.adjustments GROUP BY 1) a"
    "  USING (sku)"
    " LEFT JOIN (SELECT l.sku, sum(l.quantity) AS held FROM inventory.reservation_lines l"
    "   JOIN inventory.reservations r USING (order_id) WHERE r.status = 'RESERVED'"
    "   GROUP BY 1) h USING (sku)"
    " LEFT JOIN (SELECT sku, sum(applied) AS sold FROM inventory.sale_lines GROUP BY 1) x"
    "  USING (sku)";

static int check_db(PGconn *db, const sent *s, figures *fg, int verbose)
{
    const char *p[2] = {opt.tag, s->orders ? s->order_ids : NULL};
    PGresult *r;
    char sql[256];

    if (s->orders) {
        const char *pp[] = {s->order_ids};
        fg->accepted = s->orders;
        fg->found =
            q_long(db, "SELECT count(*) FROM orders.orders WHERE id = ANY($1::uuid[])", 1, pp);
        if (fg->found < 0)
            return -1;
    }
    if (!(r = q(db, orders_sql, 2, p)))
        return -1;
    fg->stored = fg->not_final = fg->consistent = fg->duplicated = 0;
    memset(fg->by_status, 0, sizeof(fg->by_status));
    for (int i = 0; i < PQntuples(r); i++) {
        const char *st = PQgetvalue(r, i, 0);
        long n = strtol(PQgetvalue(r, i, 1), NULL, 10);
        fg->stored += n;
        fg->consistent += strtol(PQgetvalue(r, i, 2), NULL, 10);
        fg->duplicated += strtol(PQgetvalue(r, i, 3), NULL, 10);
        if (strcmp(st, "CONFIRMED") == 0)
            fg->by_status[0] = n;
        else if (strcmp(st, "REJECTED") == 0)
            fg->by_status[1] = n;
        else if (strcmp(st, "CANCELLED") == 0)
            fg->by_status[2] = n;
        else
            fg->not_final += n;
    }
    PQclear(r);
    fg->incomplete = fg->stored - fg->not_final - fg->consistent;

    if (s->sales || opt.tag) {
        const char *sp[] = {s->sales ? s->sale_ids : NULL};
        if (!s->sales && opt.tag) {
            /* Without a file, nothing says which sales were the run's. */
            fg->sales = fg->sales_done = fg->sales_missing = fg->sales_dup = 0;
        } else {
            if (!(r = q(db, sales_sql, 1, sp)))
                return -1;
            fg->sales = strtol(PQgetvalue(r, 0, 0), NULL, 10);
            fg->sales_done = strtol(PQgetvalue(r, 0, 1), NULL, 10);
            fg->sales_missing = strtol(PQgetvalue(r, 0, 2), NULL, 10);
            fg->sales_dup = strtol(PQgetvalue(r, 0, 3), NULL, 10);
            PQclear(r);
        }
    }

    if (!(r = q(db, stock_sql, 0, NULL)))
        return -1;
    fg->skus = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    fg->negative = strtol(PQgetvalue(r, 0, 1), NULL, 10);
    fg->off_ledger = strtol(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);

    /* Parked rows (migration 0008's parked_at) apart from the rest: the wait
     * is for rows the relay still tries; a parked row will not move. */
    if (!(r = q(db,
                "SELECT t.table_schema, EXISTS (SELECT 1 FROM information_schema.columns c"
                "  WHERE c.table_schema = t.table_schema AND c.table_name = 'outbox'"
                "  AND c.column_name = 'parked_at')"
                " FROM information_schema.tables t"
                " WHERE t.table_name = 'outbox' AND t.table_type = 'BASE TABLE' ORDER BY 1",
                0, NULL)))
        return -1;
    fg->outbox_pending = fg->outbox_parked = 0;
    if (verbose)
        printf("outboxes  ");
    for (int i = 0; i < PQntuples(r); i++) {
        char *ident = PQescapeIdentifier(db, PQgetvalue(r, i, 0), strlen(PQgetvalue(r, i, 0)));
        int has_parking = strcmp(PQgetvalue(r, i, 1), "t") == 0;
        long n, parked = 0;
        if (!ident) {
            PQclear(r);
            return -1;
        }
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.outbox%s", ident,
                 has_parking ? " WHERE parked_at IS NULL" : "");
        n = q_long(db, sql, 0, NULL);
        if (n >= 0 && has_parking) {
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.outbox WHERE parked_at IS NOT NULL",
                     ident);
            parked = q_long(db, sql, 0, NULL);
        }
        PQfreemem(ident);
        if (n < 0 || parked < 0) {
            PQclear(r);
            return -1;
        }
        fg->outbox_pending += n;
        fg->outbox_parked += parked;
        if (verbose) {
            printf(" %s %ld", PQgetvalue(r, i, 0), n);
            if (parked)
                printf(" (parked %ld)", parked);
        }
    }
    if (verbose)
        printf("\n");
    PQclear(r);
    /* The mail outbox: mail recorded but not yet delivered. 'refused' mail
     * is not counted here: its cause is in email.dlq. A mail belongs to the
     * order or sale it is about (correlation_id): with --tag or --ids only
     * the run's orders' and sales' mail counts (a low-stock alert has the
     * correlation of the order that caused it); without, all of it. */
    if (opt.tag || s->orders || s->sales) {
        const char *mp[] = {opt.tag, s->orders ? s->order_ids : NULL,
                            s->sales ? s->sale_ids : NULL};
        fg->mail_pending = q_long(db,
                                  "SELECT count(*) FROM email.messages WHERE status = 'pending'"
                                  " AND (correlation_id IN (SELECT id FROM orders.orders"
                                  "  WHERE customer_id = $1 OR id = ANY($2::uuid[]))"
                                  "  OR correlation_id = ANY($3::uuid[]))",
                                  3, mp);
    } else {
        fg->mail_pending =
            q_long(db, "SELECT count(*) FROM email.messages WHERE status = 'pending'", 0, NULL);
    }
    return fg->mail_pending < 0 ? -1 : 0;
}

/* ------------------------------------------------------ management API */

static struct {
    char base[512]; /* http://host:port */
    char *url;      /* AMQP_URL, parsed in place */
    struct amqp_connection_info info;
} mgmt;

/* The management API's address and login, from MGMT_URL / MGMT_PORT and
 * AMQP_URL; -1 when AMQP_URL cannot be parsed. */
static int mgmt_init(const char *amqp_url)
{
    const char *base = getenv("MGMT_URL"), *port = getenv("MGMT_PORT");
    mgmt.url = strdup(amqp_url);
    if (!mgmt.url || amqp_parse_url(mgmt.url, &mgmt.info) != AMQP_STATUS_OK)
        return -1;
    if (base && *base)
        snprintf(mgmt.base, sizeof(mgmt.base), "%s", base);
    else
        snprintf(mgmt.base, sizeof(mgmt.base), "http://%s:%s", mgmt.info.host,
                 port && *port ? port : "15672");
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

typedef struct {
    char *p;
    size_t n;
} buf;

static size_t collect(char *data, size_t size, size_t nmemb, void *ud)
{
    buf *b = ud;
    size_t k = size * nmemb;
    char *more = b->n + k > 1 << 20 ? NULL : realloc(b->p, b->n + k + 1);
    if (!more)
        return 0; /* no answer is that big: fail the transfer */
    b->p = more;
    memcpy(b->p + b->n, data, k);
    b->n += k;
    b->p[b->n] = '\0';
    return k;
}

/* Messages of queue delivered to a consumer and not yet acked, from the
 * management API (its figures are at most a few seconds old); -1 with err. */
static long queue_unacked(const char *queue, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    char url[1024], *vh = NULL, *q = NULL;
    buf b = {NULL, 0};
    long code = 0, n = -1;
    cJSON *j = NULL;
    const cJSON *v;
    CURLcode rc;

    if (!c) {
        snprintf(err, errlen, "curl_easy_init failed");
        return -1;
    }
    vh = curl_easy_escape(c, mgmt.info.vhost, 0);
    q = curl_easy_escape(c, queue, 0);
    if (!vh || !q) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    snprintf(url, sizeof(url), "%s/api/queues/%s/%s?columns=messages_unacknowledged", mgmt.base, vh,
             q);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_USERNAME, mgmt.info.user);
    curl_easy_setopt(c, CURLOPT_PASSWORD, mgmt.info.password);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    if ((rc = curl_easy_perform(c)) != CURLE_OK) {
        snprintf(err, errlen, "management API %.200s: %.200s", mgmt.base, curl_easy_strerror(rc));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) {
        snprintf(err, errlen, "management API %.200s: HTTP %ld for queue %.200s", mgmt.base, code,
                 queue);
        goto out;
    }
    j = b.p ? cJSON_Parse(b.p) : NULL;
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "management API %.200s: not a JSON object for queue %.200s",
                 mgmt.base, queue);
        goto out;
    }
    /* A queue the statistics have not reached yet has no figure: none held. */
    v = cJSON_GetObjectItemCaseSensitive(j, "messages_unacknowledged");
    if (v && (!cJSON_IsNumber(v) || v->valuedouble < 0)) {
        snprintf(err, errlen, "management API: messages_unacknowledged of %s is not a count",
                 queue);
        goto out;
    }
    n = v ? (long)v->valuedouble : 0;
out:
    cJSON_Delete(j);
    free(b.p);
    curl_free(vh);
    curl_free(q);
    curl_easy_cleanup(c);
    return n;
}

static int check_queues(mq_conn *mq, figures *fg, int verbose)
{
    char err[MQ_ERR_LEN], name[160];
    fg->queue_ready = fg->retry_ready = fg->in_flight = fg->dlq_mismatch = 0;
    if (verbose)
        printf("queues    ");
    for (int i = 0; i < opt.nservices; i++) {
        const char *svc = opt.services[i];
        long work, dlq, unacked;
        if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK) {
            fprintf(stderr, "ledger: AMQP_URL: %s\n", err);
            return -1;
        }
        work = mq_queue_depth(mq, svc, err, sizeof(err));
        if (work < 0) {
            fprintf(stderr, "ledger: queue %s: %s\n", svc, err);
            return -1;
        }
        fg->queue_ready += work;
        unacked = queue_unacked(svc, err, sizeof(err));
        if (unacked < 0) {
            fprintf(stderr, "ledger: %s\n", err);
            return -1;
        }
        fg->in_flight += unacked;
        for (int t = 0; t < MQ_MAX_TIERS && opt.tiers[t]; t++) {
            long n;
            mq_retry_queue_name(svc, opt.tiers[t], name, sizeof(name));
            if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK)
                return -1;
            n = mq_queue_depth(mq, name, err, sizeof(err));
            if (n > 0)
                fg->retry_ready += n;
        }
        mq_dlq_name(svc, name, sizeof(name));
        if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK)
            return -1;
        dlq = mq_queue_depth(mq, name, err, sizeof(err));
        if (dlq < 0) {
            fprintf(stderr, "ledger: queue %s: %s\n", name, err);
            return -1;
        }
        if (opt.dlq_expect[i] >= 0 && dlq != opt.dlq_expect[i])
            fg->dlq_mismatch += labs(dlq - opt.dlq_expect[i]);
        if (verbose) {
            printf(" %s %ld", svc, work);
            if (unacked)
                printf(" (+%ld unacked)", unacked);
            if (opt.dlq_expect[i] >= 0)
                printf(" (dlq %ld, expected %ld)", dlq, opt.dlq_expect[i]);
            else
                printf(" (dlq %ld)", dlq);
        }
    }
    if (verbose)
        printf("; retry tiers %ld\n", fg->retry_ready);
    return 0;
}

static int quiet(const figures *fg)
{
    return fg->not_final == 0 && fg->found == fg->accepted && fg->sales_missing == 0 &&
           fg->outbox_pending == 0 && fg->mail_pending == 0 && fg->queue_ready == 0 &&
           fg->retry_ready == 0 && fg->in_flight == 0;
}

static int set_services(const char *list)
{
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        return -1;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (opt.nservices == MAX_SERVICES)
            return -1;
        opt.dlq_expect[opt.nservices] = -1;
        opt.services[opt.nservices++] = t;
    }
    return opt.nservices > 0 ? 0 : -1;
}

static int expect_dlq(const char *arg)
{
    const char *eq = strchr(arg, '=');
    char *end;
    long n;
    if (!eq)
        return -1;
    errno = 0;
    n = strtol(eq + 1, &end, 10);
    if (errno || end == eq + 1 || *end || n < 0)
        return -1;
    for (int i = 0; i < opt.nservices; i++) {
        if (strlen(opt.services[i]) == (size_t)(eq - arg) &&
            strncmp(opt.services[i], arg, (size_t)(eq - arg)) == 0) {
            opt.dlq_expect[i] = n;
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"ids", required_argument, 0, 'i'},  {"tag", required_argument, 0, 't'},
        {"wait", required_argument, 0, 'w'}, {"dlq", required_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},       {0, 0, 0, 0}};
    const char *dburl = getenv("DATABASE_URL"), *amqp = getenv("AMQP_URL");
    const char *services = getenv("LEDGER_SERVICES"), *tiers = getenv("RETRY_DELAYS_MS");
    char *dlq_args[MAX_SERVICES];
    int ndlq = 0, c, ok;
    sent s = {0};
    figures fg = {0};
    PGconn *db;
    mq_conn *mq;
    mq_opts mo = {0};
    char err[256];
    int64_t deadline;
    long lost, dup, bad, stuck;

    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'i':
            opt.ids_path = optarg;
            break;
        case 't':
            opt.tag = optarg;
            break;
        case 'w':
            errno = 0;
            opt.wait_s = strtod(optarg, &end);
            if (errno || *end || opt.wait_s < 0 || opt.wait_s > 3600)
                return usage();
            break;
        case 'q':
            if (ndlq == MAX_SERVICES)
                return usage();
            dlq_args[ndlq++] = optarg;
            break;
        default:
            return usage();
        }
    }
    if (optind != argc)
        return usage();
    if (!dburl || !amqp) {
        fprintf(stderr, "ledger: set DATABASE_URL (owner role) and AMQP_URL (administrator)\n");
        return 2;
    }
    if (set_services(services ? services : "order-api,inventory,billing,email") < 0) {
        fprintf(stderr, "ledger: LEDGER_SERVICES must be 1-%d comma-separated names\n",
                MAX_SERVICES);
        return 2;
    }
    for (int i = 0; i < ndlq; i++) {
        if (expect_dlq(dlq_args[i]) < 0) {
            fprintf(stderr, "ledger: --dlq wants SERVICE=N with a service of LEDGER_SERVICES\n");
            return 2;
        }
    }
    if (worker_parse_tiers(tiers ? tiers : "1000,10000,60000", opt.tiers, err, sizeof(err)) < 0) {
        fprintf(stderr, "ledger: %s\n", err);
        return 2;
    }
    if (opt.ids_path && read_ids(opt.ids_path, &s) < 0)
        return 1;

    db = PQconnectdb(dburl);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "ledger: DATABASE_URL: %s", PQerrorMessage(db));
        PQfinish(db);
        return 1;
    }
    if (mgmt_init(amqp) < 0) {
        fprintf(stderr, "ledger: AMQP_URL is not an AMQP URL (or curl cannot start)\n");
        PQfinish(db);
        return 1;
    }
    mo.url = amqp;
    mo.app_id = "ledger";
    mq = mq_new(&mo);
    if (!mq || mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK) {
        fprintf(stderr, "ledger: AMQP_URL: %s\n", mq ? err : "not an AMQP URL");
        PQfinish(db);
        mq_free(mq);
        return 1;
    }

    deadline = util_now_ms() + (int64_t)(opt.wait_s * 1000);
    for (;;) {
        if (check_db(db, &s, &fg, 0) < 0 || check_queues(mq, &fg, 0) < 0) {
            ok = 0;
            goto out;
        }
        if (quiet(&fg) || util_now_ms() >= deadline)
            break;
        util_sleep_ms(1000, NULL); /* each look costs the database a scan */
    }
    fg.quiet = quiet(&fg);
    /* Once more, printing. */
    if (check_db(db, &s, &fg, 1) < 0 || check_queues(mq, &fg, 1) < 0) {
        ok = 0;
        goto out;
    }
    lost = (fg.accepted - fg.found) + fg.sales_missing;
    dup = fg.duplicated + fg.sales_dup;
    /* An order that is final but lacks an effect: lost effects, counted as inconsistent. */
    bad = fg.incomplete + fg.not_final + fg.negative + fg.off_ledger + fg.queue_ready +
          fg.dlq_mismatch;
    /* Neither lost nor done: still waiting in an outbox or a retry tier, or
     * parked (any parked row: it waits for an operator, not for time). */
    stuck = fg.outbox_pending + fg.outbox_parked + fg.mail_pending + fg.retry_ready + fg.in_flight;
    printf("orders     %s%s: %ld stored", opt.tag ? "tag " : "all", opt.tag ? opt.tag : "",
           fg.stored);
    if (s.orders)
        printf(", %ld accepted by the API, %ld of them found", fg.accepted, fg.found);
    printf("\n           CONFIRMED %ld, REJECTED %ld, CANCELLED %ld, not final %ld; "
           "%ld with exactly their effects, %ld without\n",
           fg.by_status[0], fg.by_status[1], fg.by_status[2], fg.not_final, fg.consistent,
           fg.incomplete);
    if (s.sales)
        printf("sales      %ld confirmed by the broker: %ld complete, %ld missing an effect, "
               "%ld extra effects\n",
               s.sales, fg.sales_done, fg.sales_missing, fg.sales_dup);
    printf("stock      %ld SKUs: %ld negative, %ld off the ledger\n", fg.skus, fg.negative,
           fg.off_ledger);
    printf("stuck      %ld outbox row(s) unpublished, %ld parked, %ld mail(s) undelivered, "
           "%ld message(s) in retry tiers, %ld delivered and not acked\n",
           fg.outbox_pending, fg.outbox_parked, fg.mail_pending, fg.retry_ready, fg.in_flight);
    printf("quiet      %s\n", fg.quiet ? "yes" : "no (timed out waiting)");
    ok = lost == 0 && dup == 0 && stuck == 0 && bad == 0;
    printf("RESULT lost=%ld duplicated=%ld stuck=%ld inconsistent=%ld ok=%d\n", lost, dup, stuck,
           bad, ok);
out:
    free(s.order_ids);
    free(s.sale_ids);
    free(opt.services[0]);
    free(mgmt.url);
    curl_global_cleanup();
    mq_free(mq);
    PQfinish(db);
    return ok ? 0 : 1;
}
