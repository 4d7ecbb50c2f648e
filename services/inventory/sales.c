/*
 * sales.c — a till's sale takes its units off the shelf (never below zero),
 * once per sale id, whatever message id carries it.
 */
#include "inventory.h"

#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* Sorts lines by SKU and merges lines of the same SKU (a till may ring an
 * item up twice), so each SKU of a sale is one sale_lines row. Returns the
 * new count. */
static size_t merge_lines(ev_line *lines, size_t n)
{
    size_t k = 0;
    qsort(lines, n, sizeof(ev_line), inv_cmp_line);
    for (size_t i = 0; i < n; i++) {
        if (k > 0 && strcmp(lines[k - 1].sku, lines[i].sku) == 0)
            lines[k - 1].quantity += lines[i].quantity;
        else
            lines[k++] = lines[i];
    }
    return k;
}

/* A sale is applied once per sale id, whatever message carries it: a till
 * that re-sends a sale under a new message id gets past the inbox. So the
 * sale's lines are claimed first, every one of them, in SKU order (INSERT
 * ... ON CONFLICT DO NOTHING, as billing does with its invoice); a
 * concurrent copy waits on the first's unique keys in the same order (no
 * deadlock) and then finds them. Only then is stock taken:
 *   - every line claimed: the sale is new; stock is taken;
 *   - none claimed: the sale was applied before; nothing to do;
 *   - some claimed, some not: the sale id was applied before with other
 *     lines, and any of them may be the one that was (not only the first).
 *     A sale never changes, so this copy is a conflict for an operator: it
 *     is rejected (to inventory.dlq, with the SKUs), and its rollback drops
 *     the claims made here, so neither stock nor a claim with no stock
 *     behind it is kept (check_workers: a_sale_id_seen_before_with_...). */
mq_result inv_on_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev, char *err,
                      size_t errlen)
{
    const sale_completed *s = &ev->u.sale_completed;
    ev_line lines[EV_LINES_MAX];
    size_t n;
    char q[24], a[24];
    size_t claimed = 0, seen = 0;
    const char *seen_sku = "", *new_sku = "";
    int rc;

    memcpy(lines, s->lines.items, s->lines.n * sizeof(ev_line));
    n = merge_lines(lines, s->lines.n);
    for (size_t i = 0; i < n; i++) {
        PGresult *r;
        const char *p[] = {s->sale_id, lines[i].sku, util_i64(q, lines[i].quantity)};
        rc = db_execp(db, "inv_sale_claim",
                      "INSERT INTO sale_lines (sale_id, sku, quantity, applied)"
                      " VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING RETURNING sku",
                      3, p, &r, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
        if (PQntuples(r) == 1) {
            claimed++;
            new_sku = lines[i].sku;
        } else {
            seen++;
            seen_sku = lines[i].sku;
        }
        PQclear(r);
    }
    if (claimed == 0) {
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "sale %s was applied before; nothing to do", s->sale_id);
        return MQ_DONE;
    }
    if (seen > 0) {
        snprintf(err, errlen,
                 "sale %s was applied before with other lines (%s was in it, %s was not): a "
                 "sale never changes",
                 s->sale_id, seen_sku, new_sku);
        return MQ_REJECT;
    }
    for (size_t i = 0; i < n; i++) {
        PGresult *r;
        const char *p[] = {lines[i].sku, util_i64(q, lines[i].quantity)};
        int64_t before = 0, after = 0, thr = 0;
        rc = db_execp(db, "inv_sell",
                      "UPDATE stock s SET on_hand = s.on_hand - least(s.on_hand, $2),"
                      " updated_at = now()"
                      " FROM (SELECT on_hand FROM stock WHERE sku = $1 FOR UPDATE) b"
                      " WHERE s.sku = $1 RETURNING b.on_hand AS before, s.on_hand AS after,"
                      " s.low_stock_threshold AS thr",
                      2, p, &r, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
        if (PQntuples(r) == 1) {
            before = strtoll(db_get(r, 0, "before"), NULL, 10);
            after = strtoll(db_get(r, 0, "after"), NULL, 10);
            thr = strtoll(db_get(r, 0, "thr"), NULL, 10);
        }
        PQclear(r);
        if (before - after < lines[i].quantity)
            log_write(LOG_WARN, env->correlation_id, env->message_id,
                      "sale %s sold %lld of %s but only %lld were on the books", s->sale_id,
                      (long long)lines[i].quantity, lines[i].sku, (long long)(before - after));
        {
            const char *p2[] = {s->sale_id, lines[i].sku, util_i64(a, before - after)};
            rc = db_execp(db, "inv_sale_applied",
                          "UPDATE sale_lines SET applied = $3 WHERE sale_id = $1 AND sku = $2", 3,
                          p2, NULL, err, errlen);
        }
        if (rc == DB_OK)
            rc = inv_maybe_low_stock(w, db, env, lines[i].sku, before, after, thr, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
    }
    return MQ_DONE;
}
