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

/* Appends id to the array literal in *buf. */
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
    " v AS (SELECT order_id, count(*) AS n, count(invoice_id) AS voided FROM billing.voids"
    "   WHERE order_id IN (SELECT id FROM o) GROUP BY 1),"
    " m AS (SELECT correlation_id AS order_id,"
    "   count(*) FILTER (WHERE kind = 'order_confirmed') AS mc,"
    "   count(*) FILTER (WHERE kind = 'order_rejected') AS mr,"
    "   count(*) FILTER (WHERE kind = 'payment_failed') AS mp,"
    "   count(*) FILTER (WHERE kind = 'order_expired') AS me"
    "   FROM email.messages WHERE correlation_id IN (SELECT id FROM o) GROUP BY 1),"
    " x AS (SELECT o.status, coalesce(r.held, 0) AS held, coalesce(r.released, 0) AS released,"
    "   coalesce(j.n, 0) AS rej, coalesce(i.n, 0) AS inv, coalesce(f.n, 0) AS pf,"
    "   coalesce(v.n, 0) AS vo, coalesce(v.voided, 0) AS voided,"
    "   coalesce(m.mc, 0) AS mc, coalesce(m.mr, 0) AS mr, coalesce(m.mp, 0) AS mp,"
    "   coalesce(m.me, 0) AS me"
    "   FROM o LEFT JOIN r ON r.order_id = o.id LEFT JOIN j ON j.order_id = o.id"
    "   LEFT JOIN i ON i.order_id = o.id LEFT JOIN f ON f.order_id = o.id"
    "   LEFT JOIN v ON v.order_id = o.id LEFT JOIN m ON m.order_id = o.id)"
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

int ledger_check_db(PGconn *db, const sent *s, figures *fg, int verbose)
{
    const char *p[2] = {ledger_opt.tag, s->orders ? s->order_ids : NULL};
    /* The run, for the stuck work: scoped ("t") with --tag or --ids. */
    const char *run[4] = {ledger_opt.tag || s->orders || s->sales ? "t" : "f", ledger_opt.tag,
                          s->orders ? s->order_ids : NULL, s->sales ? s->sale_ids : NULL};
    PGresult *r;
    char sql[512];

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
        else if (strcmp(st, "EXPIRED") == 0)
            fg->by_status[3] = n;
        else
            fg->not_final += n;
    }
    PQclear(r);
    fg->incomplete = fg->stored - fg->not_final - fg->consistent;

    if (s->sales || ledger_opt.tag) {
        const char *sp[] = {s->sales ? s->sale_ids : NULL};
        if (!s->sales && ledger_opt.tag) {
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
     * is for rows the relay still tries; a parked row will not move. A row
     * belongs to the order or sale it is about (correlation_id): with --tag
     * or --ids only the run's rows count, as for mail below (another run's
     * parked row is not this run's stuck work); without, all of them. */
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
        long n = -1, parked = -1;
        PGresult *c;
        if (!ident) {
            PQclear(r);
            return -1;
        }
        /* The schema is an identifier, escaped by libpq; the run's ids are
         * parameters. */
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FILTER (WHERE %s),"
                 " count(*) FILTER (WHERE %s) FROM %s.outbox"
                 " WHERE NOT $1::bool OR correlation_id IN (SELECT id FROM orders.orders"
                 "  WHERE customer_id = $2 OR id = ANY($3::uuid[]))"
                 "  OR correlation_id = ANY($4::uuid[])",
                 has_parking ? "parked_at IS NULL" : "true",
                 has_parking ? "parked_at IS NOT NULL" : "false", ident);
        PQfreemem(ident);
        if ((c = q(db, sql, 4, run)) && PQntuples(c) == 1) {
            n = strtol(PQgetvalue(c, 0, 0), NULL, 10);
            parked = strtol(PQgetvalue(c, 0, 1), NULL, 10);
        }
        PQclear(c);
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
    fg->mail_pending =
        q_long(db,
               "SELECT count(*) FROM email.messages WHERE status = 'pending'"
               " AND (NOT $1::bool OR correlation_id IN (SELECT id FROM orders.orders"
               "  WHERE customer_id = $2 OR id = ANY($3::uuid[]))"
               "  OR correlation_id = ANY($4::uuid[]))",
               4, run);
    return fg->mail_pending < 0 ? -1 : 0;
}
