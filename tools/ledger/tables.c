/*
 * tables.c — the ledger's checks in the tables: every accepted order exists
 * and has exactly the effects of its final status, every confirmed sale its
 * own, stock matches its ledger, and no work is left (outbox rows, parked
 * rows, pending mail).
 */
#include "ledger.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/*
 * Each service's tables are read through that service's own connection
 * (ledger_dbs): the schemas may live on different PostgreSQL servers, so no
 * statement joins two of them. Each service's per-order (or per-sale) counts
 * come back as JSON; the join runs where the orders (or the sales) are,
 * with json_to_recordset over those counts as parameters.
 */

/* The orders checked: those of the tag (or all without one), or the ids. */
static const char order_set_sql[] = "SELECT coalesce(array_agg(id), '{}')::text FROM orders.orders"
                                    " WHERE ($1::text IS NULL OR customer_id = $1)"
                                    "    OR ($2::uuid[] IS NOT NULL AND id = ANY($2::uuid[]))";

/* The run's orders, for the stuck work: the tag's and the ids' only. */
static const char run_orders_sql[] = "SELECT coalesce(array_agg(id), '{}')::text FROM orders.orders"
                                     " WHERE customer_id = $1 OR id = ANY($2::uuid[])";

static const char inventory_orders_sql[] =
    "SELECT coalesce(json_agg(t), '[]')::text FROM ("
    " SELECT order_id, coalesce(r.held, 0) AS held, coalesce(r.released, 0) AS released,"
    "  coalesce(j.n, 0) AS rej"
    " FROM (SELECT order_id, count(*) FILTER (WHERE status = 'RESERVED') AS held,"
    "   count(*) FILTER (WHERE status = 'RELEASED') AS released"
    "   FROM inventory.reservations WHERE order_id = ANY($1::uuid[]) GROUP BY 1) r"
    " FULL JOIN (SELECT order_id, count(*) AS n FROM inventory.rejections"
    "   WHERE order_id = ANY($1::uuid[]) GROUP BY 1) j USING (order_id)) t";

static const char billing_orders_sql[] =
    "SELECT coalesce(json_agg(t), '[]')::text FROM ("
    " SELECT order_id, coalesce(i.n, 0) AS inv, coalesce(f.n, 0) AS pf,"
    "  coalesce(v.n, 0) AS vo, coalesce(v.voided, 0) AS voided"
    " FROM (SELECT order_id, count(*) AS n FROM billing.invoices"
    "   WHERE order_id = ANY($1::uuid[]) GROUP BY 1) i"
    " FULL JOIN (SELECT order_id, count(*) AS n FROM billing.payment_failures"
    "   WHERE order_id = ANY($1::uuid[]) GROUP BY 1) f USING (order_id)"
    " FULL JOIN (SELECT order_id, count(*) AS n, count(invoice_id) AS voided FROM billing.voids"
    "   WHERE order_id = ANY($1::uuid[]) GROUP BY 1) v USING (order_id)) t";

static const char email_orders_sql[] =
    "SELECT coalesce(json_agg(t), '[]')::text FROM ("
    " SELECT correlation_id AS order_id,"
    "  count(*) FILTER (WHERE kind = 'order_confirmed') AS mc,"
    "  count(*) FILTER (WHERE kind = 'order_rejected') AS mr,"
    "  count(*) FILTER (WHERE kind = 'payment_failed') AS mp,"
    "  count(*) FILTER (WHERE kind = 'order_expired') AS me"
    "  FROM email.messages WHERE correlation_id = ANY($1::uuid[]) GROUP BY 1) t";

/* On the orders' connection: $1 the orders, $2-$4 the JSON above. */
static const char orders_sql[] =
    "WITH o AS (SELECT id, status FROM orders.orders WHERE id = ANY($1::uuid[])),"
    " r AS (SELECT * FROM json_to_recordset($2::json)"
    "   AS t(order_id uuid, held bigint, released bigint, rej bigint)),"
    " b AS (SELECT * FROM json_to_recordset($3::json)"
    "   AS t(order_id uuid, inv bigint, pf bigint, vo bigint, voided bigint)),"
    " m AS (SELECT * FROM json_to_recordset($4::json)"
    "   AS t(order_id uuid, mc bigint, mr bigint, mp bigint, me bigint)),"
    " x AS (SELECT o.status, coalesce(r.held, 0) AS held, coalesce(r.released, 0) AS released,"
    "   coalesce(r.rej, 0) AS rej, coalesce(b.inv, 0) AS inv, coalesce(b.pf, 0) AS pf,"
    "   coalesce(b.vo, 0) AS vo, coalesce(b.voided, 0) AS voided,"
    "   coalesce(m.mc, 0) AS mc, coalesce(m.mr, 0) AS mr, coalesce(m.mp, 0) AS mp,"
    "   coalesce(m.me, 0) AS me"
    "   FROM o LEFT JOIN r ON r.order_id = o.id LEFT JOIN b ON b.order_id = o.id"
    "   LEFT JOIN m ON m.order_id = o.id)"
    " SELECT status, count(*),"
    "  count(*) FILTER (WHERE"
    "   (status = 'CONFIRMED' AND (held, released, rej, inv, pf, vo, mc, mr, mp, me)"
    "        = (1, 0, 0, 1, 0, 0, 1, 0, 0, 0))"
    "   OR (status = 'REJECTED' AND (held, released, rej, inv, pf, vo, mc, mr, mp, me)"
    "        = (0, 0, 1, 0, 0, 0, 0, 1, 0, 0))"
    "   OR (status = 'CANCELLED' AND (held, released, rej, inv, pf, vo, mc, mr, mp, me)"
    "        = (0, 1, 0, 0, 1, 0, 0, 0, 1, 0))"
    /* EXPIRED (the saga's timeout): no stock held, and inventory decided it
     * (released, or rejected); billing's void recorded, and the invoice, if
     * one was made, void; one mail about how it ended: the expiry, or the
     * rejection or payment failure the customer heard of first, never a
     * confirmation (email's rule, services/email/mails.c). */
    "   OR (status = 'EXPIRED' AND held = 0 AND released + rej >= 1 AND vo = 1"
    "       AND inv = voided AND mc = 0 AND me + mr + mp = 1)),"
    "  coalesce(sum(greatest(held + released - 1, 0) + greatest(rej - 1, 0)"
    "   + greatest(inv - 1, 0) + greatest(pf - 1, 0) + greatest(mc - 1, 0)"
    "   + greatest(mr - 1, 0) + greatest(mp - 1, 0) + greatest(me - 1, 0)), 0)"
    " FROM x GROUP BY status";

/* On inventory's connection: the sales (those with stock lines, or the
 * ids given) and their stock lines. */
static const char sale_set_sql[] =
    "WITH s AS (SELECT DISTINCT sale_id AS id FROM inventory.sale_lines"
    "   WHERE $1::uuid[] IS NULL OR sale_id = ANY($1::uuid[])"
    "   UNION SELECT unnest(coalesce($1::uuid[], '{}')))"
    " SELECT coalesce(array_agg(id), '{}')::text FROM s";

static const char inventory_sales_sql[] = "SELECT coalesce(json_agg(t), '[]')::text FROM ("
                                          " SELECT sale_id, count(*) AS n FROM inventory.sale_lines"
                                          "  WHERE sale_id = ANY($1::uuid[]) GROUP BY 1) t";

static const char billing_sales_sql[] = "SELECT coalesce(json_agg(t), '[]')::text FROM ("
                                        " SELECT sale_id, count(*) AS n FROM billing.invoices"
                                        "  WHERE sale_id = ANY($1::uuid[]) GROUP BY 1) t";

static const char email_sales_sql[] =
    "SELECT coalesce(json_agg(t), '[]')::text FROM ("
    " SELECT correlation_id AS sale_id, count(*) AS n FROM email.messages"
    "  WHERE kind = 'receipt' AND correlation_id = ANY($1::uuid[]) GROUP BY 1) t";

/* $1 the sales, $2-$4 the JSON above; on any connection (inventory's). */
static const char sales_sql[] =
    "WITH s AS (SELECT unnest($1::uuid[]) AS id),"
    " l AS (SELECT * FROM json_to_recordset($2::json) AS t(sale_id uuid, n bigint)),"
    " i AS (SELECT * FROM json_to_recordset($3::json) AS t(sale_id uuid, n bigint)),"
    " m AS (SELECT * FROM json_to_recordset($4::json) AS t(sale_id uuid, n bigint))"
    " SELECT count(*),"
    "  count(*) FILTER (WHERE l.n > 0 AND i.n = 1 AND m.n = 1),"
    "  count(*) FILTER (WHERE l.n IS NULL OR i.n IS NULL OR m.n IS NULL),"
    "  coalesce(sum(greatest(coalesce(i.n, 0) - 1, 0) + greatest(coalesce(m.n, 0) - 1, 0)), 0)"
    " FROM s LEFT JOIN l ON l.sale_id = s.id LEFT JOIN i ON i.sale_id = s.id"
    " LEFT JOIN m ON m.sale_id = s.id";

/* On inventory's connection. */
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

/* The one text value of a one-row, one-column query, malloc'd; NULL after
 * printing the error. */
static char *q_text(PGconn *db, const char *sql, int n, const char *const *p)
{
    PGresult *r = q(db, sql, n, p);
    char *v = NULL;
    if (r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        v = strdup(PQgetvalue(r, 0, 0));
    else if (r)
        fprintf(stderr, "ledger: a query returned no value\n");
    PQclear(r);
    return v;
}

/* A check across the services' databases, none joined to another: set_sql
 * (on home, with the caller's parameters) names the ids as an array; each
 * of inventory, billing and email gives its rows of them as JSON through
 * its own connection; join_sql ($1 the ids, $2..$4 the three JSONs) puts
 * them together on home. */
typedef struct {
    const char *set_sql, *inventory_sql, *billing_sql, *email_sql, *join_sql;
} per_service;

/* join_sql's result, or NULL (said on stderr). */
static PGresult *gather(const ledger_dbs *dbs, PGconn *home, const per_service *ps, int n,
                        const char *const *p)
{
    char *t[4] = {NULL, NULL, NULL, NULL}; /* the ids, then the three JSONs */
    PGresult *r = NULL;

    if ((t[0] = q_text(home, ps->set_sql, n, p))) {
        const char *pi[1] = {t[0]};
        if ((t[1] = q_text(dbs->inventory, ps->inventory_sql, 1, pi)) &&
            (t[2] = q_text(dbs->billing, ps->billing_sql, 1, pi)) &&
            (t[3] = q_text(dbs->email, ps->email_sql, 1, pi))) {
            const char *pj[4] = {t[0], t[1], t[2], t[3]};
            r = q(home, ps->join_sql, 4, pj);
        }
    }
    for (int k = 0; k < 4; k++)
        free(t[k]);
    return r;
}

/* The orders: into fg's stored, by_status, not_final, consistent,
 * duplicated. 0 or -1. */
static int check_orders(const ledger_dbs *dbs, const sent *s, figures *fg)
{
    static const per_service orders = {order_set_sql, inventory_orders_sql, billing_orders_sql,
                                       email_orders_sql, orders_sql};
    const char *p[2] = {ledger_opt.tag, s->orders ? s->order_ids : NULL};
    PGresult *r;

    if (!(r = gather(dbs, dbs->orders, &orders, 2, p)))
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
        else if (strcmp(st, "EXPIRED") == 0)
            fg->by_status[3] = n;
        else
            fg->not_final += n;
    }
    fg->incomplete = fg->stored - fg->not_final - fg->consistent;
    PQclear(r);
    return 0;
}

/* The sales (ids given, or every sale with stock lines): into fg. 0 or -1. */
static int check_sales(const ledger_dbs *dbs, const char *sale_ids, figures *fg)
{
    static const per_service sales = {sale_set_sql, inventory_sales_sql, billing_sales_sql,
                                      email_sales_sql, sales_sql};
    const char *sp[1] = {sale_ids};
    PGresult *r;
    int rc = -1;

    if (!(r = gather(dbs, dbs->inventory, &sales, 1, sp)) || PQntuples(r) != 1)
        goto out;
    fg->sales = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    fg->sales_done = strtol(PQgetvalue(r, 0, 1), NULL, 10);
    fg->sales_missing = strtol(PQgetvalue(r, 0, 2), NULL, 10);
    fg->sales_dup = strtol(PQgetvalue(r, 0, 3), NULL, 10);
    rc = 0;
out:
    PQclear(r);
    return rc;
}

/* The outboxes on connection c whose schema lives there (another
 * connection's server may hold an unused copy of the schema: make migrate
 * applies every migration to every cluster): into fg. run is {scoped, the
 * run's order ids, its sale ids}. 0 or -1. */
static int check_outboxes(const ledger_dbs *dbs, PGconn *c, const char *const *run, figures *fg,
                          int verbose)
{
    PGresult *r;
    char sql[512];

    /* Parked rows (migration 0008's parked_at) apart from the rest: the wait
     * is for rows the relay still tries; a parked row will not move. */
    if (!(r = q(c,
                "SELECT t.table_schema, EXISTS (SELECT 1 FROM information_schema.columns k"
                "  WHERE k.table_schema = t.table_schema AND k.table_name = 'outbox'"
                "  AND k.column_name = 'parked_at')"
                " FROM information_schema.tables t"
                " WHERE t.table_name = 'outbox' AND t.table_type = 'BASE TABLE' ORDER BY 1",
                0, NULL)))
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *schema = PQgetvalue(r, i, 0);
        char *ident;
        int has_parking = strcmp(PQgetvalue(r, i, 1), "t") == 0;
        long n = -1, parked = -1;
        PGresult *o;
        if (ledger_db_for(dbs, schema) != c)
            continue;
        if (!(ident = PQescapeIdentifier(c, schema, strlen(schema)))) {
            PQclear(r);
            return -1;
        }
        /* The schema is an identifier, escaped by libpq; the run's ids are
         * parameters. */
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FILTER (WHERE %s),"
                 " count(*) FILTER (WHERE %s) FROM %s.outbox"
                 " WHERE NOT $1::bool OR correlation_id = ANY($2::uuid[])"
                 "  OR correlation_id = ANY($3::uuid[])",
                 has_parking ? "parked_at IS NULL" : "true",
                 has_parking ? "parked_at IS NOT NULL" : "false", ident);
        PQfreemem(ident);
        if ((o = q(c, sql, 3, run)) && PQntuples(o) == 1) {
            n = strtol(PQgetvalue(o, 0, 0), NULL, 10);
            parked = strtol(PQgetvalue(o, 0, 1), NULL, 10);
        }
        PQclear(o);
        if (n < 0 || parked < 0) {
            PQclear(r);
            return -1;
        }
        fg->outbox_pending += n;
        fg->outbox_parked += parked;
        if (verbose) {
            printf(" %s %ld", schema, n);
            if (parked)
                printf(" (parked %ld)", parked);
        }
    }
    PQclear(r);
    return 0;
}

int ledger_check_db(const ledger_dbs *dbs, const sent *s, figures *fg, int verbose)
{
    const char *p[2] = {ledger_opt.tag, s->orders ? s->order_ids : NULL};
    /* The run, for the stuck work: scoped ("t") with --tag or --ids; its
     * orders (the tag's and the ids') and its sales. */
    int scoped = ledger_opt.tag || s->orders || s->sales;
    char *run_orders = NULL;
    const char *run[3] = {scoped ? "t" : "f", NULL, s->sales ? s->sale_ids : NULL};
    PGresult *r;

    if (s->orders) {
        const char *pp[] = {s->order_ids};
        fg->accepted = s->orders;
        fg->found = q_long(dbs->orders,
                           "SELECT count(*) FROM orders.orders WHERE id = ANY($1::uuid[])", 1, pp);
        if (fg->found < 0)
            return -1;
    }
    if (check_orders(dbs, s, fg) < 0)
        return -1;

    if (s->sales || ledger_opt.tag) {
        if (!s->sales && ledger_opt.tag) {
            /* Without a file, nothing says which sales were the run's. */
            fg->sales = fg->sales_done = fg->sales_missing = fg->sales_dup = 0;
        } else if (check_sales(dbs, s->sale_ids, fg) < 0) {
            return -1;
        }
    }

    if (!(r = q(dbs->inventory, stock_sql, 0, NULL)))
        return -1;
    fg->skus = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    fg->negative = strtol(PQgetvalue(r, 0, 1), NULL, 10);
    fg->off_ledger = strtol(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);

    /* A row of an outbox or the mail outbox belongs to the order or sale it
     * is about (correlation_id): with --tag or --ids only the run's rows
     * count (another run's parked row is not this run's stuck work);
     * without, all of them. */
    if (scoped) {
        if (!(run_orders = q_text(dbs->orders, run_orders_sql, 2, p)))
            return -1;
        run[1] = run_orders;
    }
    fg->outbox_pending = fg->outbox_parked = 0;
    if (verbose)
        printf("outboxes  ");
    for (int i = 0; i < dbs->n; i++) {
        if (check_outboxes(dbs, dbs->conn[i], run, fg, verbose) < 0) {
            free(run_orders);
            return -1;
        }
    }
    if (verbose)
        printf("\n");
    /* The mail outbox: mail recorded but not yet delivered. 'refused' mail
     * is not counted here: its cause is in email.dlq. (A low-stock alert has
     * the correlation of the order that caused it.) */
    fg->mail_pending = q_long(dbs->email,
                              "SELECT count(*) FROM email.messages WHERE status = 'pending'"
                              " AND (NOT $1::bool OR correlation_id = ANY($2::uuid[])"
                              "  OR correlation_id = ANY($3::uuid[]))",
                              3, run);
    free(run_orders);
    return fg->mail_pending < 0 ? -1 : 0;
}
