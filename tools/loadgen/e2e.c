/*
 * e2e.c — loadgen's end-to-end figures: the backlog (accepted orders not yet
 * final) sampled every second, and after the run POST -> CONFIRMED latencies
 * and completed orders per second from the timelines (orders' database) and
 * the confirmation mails (email's, which may be another server: no
 * statement joins the two; the mails' times come back as JSON and are
 * joined where the orders are).
 */
#include "loadgen.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lg_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_acc(const void *a, const void *b)
{
    return strcmp(((const accepted *)a)->id, ((const accepted *)b)->id);
}

double lg_pct(const int64_t *v, size_t n, double p)
{
    size_t i;
    if (n == 0)
        return 0;
    i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i < n ? i : n - 1] / 1000.0; /* ms */
}

/* The run's orders, found through the created_at index (a scan of every
 * order by customer_id would cost the database more than the load itself). */
#define RUN_ORDERS                                                                                 \
    " FROM orders.orders o WHERE o.customer_id = $1"                                               \
    " AND o.created_at >= to_timestamp($2::double precision / 1e6 - 5)"

static long final_count(PGconn *db)
{
    char since[24];
    const char *p[] = {lg_opt.tag, util_i64(since, lg_start_wall)};
    PGresult *r = PQexecParams(db,
                               "SELECT count(*)" RUN_ORDERS
                               " AND o.status IN ('CONFIRMED', 'REJECTED', 'CANCELLED', 'EXPIRED')",
                               2, NULL, p, NULL, NULL, 0);
    long n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    else
        fprintf(stderr, "loadgen: %s", PQerrorMessage(db));
    PQclear(r);
    return n;
}

void *lg_sampler_thread(void *arg)
{
    sampler *sm = arg;
    while (!atomic_load(&sm->done) && sm->n < MAX_BACKLOG_SAMPLES) {
        long acc = __atomic_load_n(&lg_accepted_total, __ATOMIC_RELAXED), fin = final_count(sm->db);
        if (fin >= 0) {
            sm->s[sm->n].t_ms = (long)(util_now_ms() - lg_start_mono);
            sm->s[sm->n].backlog = acc - fin;
            sm->n++;
        }
        for (int i = 0; i < 10 && !atomic_load(&sm->done); i++)
            util_sleep_ms(100, NULL);
    }
    return NULL;
}

/* The one text value of a one-row query, malloc'd; NULL after printing. */
static char *text_of(PGconn *db, const char *sql, int n, const char *const *p)
{
    PGresult *r = PQexecParams(db, sql, n, NULL, p, NULL, NULL, 0);
    char *v = NULL;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        v = strdup(PQgetvalue(r, 0, 0));
    else
        fprintf(stderr, "loadgen: reading the timelines: %s", PQerrorMessage(db));
    PQclear(r);
    return v;
}

int lg_e2e(PGconn *db, PGconn *mail_db, accepted *acc, size_t nacc, e2e_result *er)
{
    int64_t deadline = util_now_ms() + (int64_t)(lg_opt.e2e_s * 1000), last = 0, first = INT64_MAX;
    char since[24];
    const char *p[] = {lg_opt.tag, util_i64(since, lg_start_wall), NULL};
    char *ids = NULL, *mails = NULL;
    PGresult *r;

    while (final_count(db) < (long)nacc) {
        if (util_now_ms() > deadline || atomic_load(&lg_stopping)) {
            er->timed_out = 1;
            break;
        }
        util_sleep_ms_atomic(200, &lg_stopping);
    }
    /* The run's orders, then their confirmation mails' times (email's
     * database), then the timelines with those times (the orders'). */
    if (!(ids = text_of(db, "SELECT coalesce(array_agg(o.id), '{}')::text" RUN_ORDERS, 2, p)))
        return -1;
    {
        const char *pm[] = {ids, p[1]};
        mails = text_of(mail_db,
                        "SELECT coalesce(json_agg(t), '[]')::text FROM ("
                        " SELECT correlation_id AS order_id,"
                        "  (extract(epoch FROM created_at) * 1e6)::bigint AS at_us"
                        "  FROM email.messages WHERE correlation_id = ANY($1::uuid[])"
                        "  AND kind = 'order_confirmed'"
                        "  AND created_at >= to_timestamp($2::double precision / 1e6 - 5)) t",
                        2, pm);
    }
    free(ids);
    if (!mails)
        return -1;
    p[2] = mails;
    r = PQexecParams(db,
                     "WITH o AS (SELECT o.id, o.status" RUN_ORDERS "),"
                     " m AS (SELECT * FROM json_to_recordset($3::json) AS t(order_id uuid, at_us "
                     "bigint))"
                     " SELECT o.id::text, o.status,"
                     " (extract(epoch FROM c.at) * 1e6)::bigint, m.at_us"
                     " FROM o"
                     " LEFT JOIN orders.order_timeline c ON c.order_id = o.id"
                     "  AND c.status = 'CONFIRMED'"
                     " LEFT JOIN m ON m.order_id = o.id",
                     3, NULL, p, NULL, NULL, 0);
    free(mails);
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
        else if (strcmp(st, "EXPIRED") == 0)
            er->expired++;
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
        qsort(er->e2e_us, er->ne2e, sizeof(int64_t), lg_cmp_i64);
    if (er->completed > 0 && last > first) {
        er->first_to_last_s = (double)(last - first) / 1e6;
        er->completed_per_s = (double)er->completed / er->first_to_last_s;
    }
    return 0;
}

double lg_backlog_slope(const sampler *sm, double *max_backlog)
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
