/*
 * inventory — stock per SKU.
 *
 *   order.placed            reserve every line or none → inventory.reserved
 *                           or inventory.rejected (with the SKUs short)
 *   billing.payment_failed  release the order's reservation → inventory.released
 *   sale.completed          take the sold units off the shelf (never below zero),
 *                           once per sale id, whatever message id carries it
 * and inventory.low_stock when a SKU's stock crosses its threshold.
 *
 * Stock never goes below zero under concurrency: each line is one
 * `UPDATE ... WHERE on_hand >= quantity`, lines in SKU order (so two orders
 * cannot deadlock on each other), all inside the worker's transaction, with a
 * savepoint to undo a partial reservation.
 */
#include "log.h"
#include "util.h"
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_line(const void *a, const void *b)
{
    return strcmp(((const ev_line *)a)->sku, ((const ev_line *)b)->sku);
}

/* Emits inventory.low_stock when stock went from above threshold to at or
 * below it. */
static int maybe_low_stock(worker *w, db_conn *db, const ev_envelope *env, const char *sku,
                           int64_t before, int64_t after, int64_t threshold, char *err,
                           size_t errlen)
{
    ev_event low;
    if (!(before > threshold && after <= threshold))
        return DB_OK;
    ev_init(&low, EV_INVENTORY_LOW_STOCK);
    snprintf(low.u.inventory_low_stock.sku, sizeof(low.u.inventory_low_stock.sku), "%s", sku);
    low.u.inventory_low_stock.on_hand = after;
    low.u.inventory_low_stock.threshold = threshold;
    log_write(LOG_INFO, env->correlation_id, env->message_id, "low stock: %s at %lld", sku,
              (long long)after);
    return worker_emit(w, db, env, &low, err, errlen);
}

static int decided(db_conn *db, const char *order_id, int *yes, char *err, size_t errlen)
{
    PGresult *r;
    const char *p[] = {order_id};
    int rc = db_execp(db, "inv_decided",
                      "SELECT (EXISTS (SELECT 1 FROM reservations WHERE order_id = $1)"
                      " OR EXISTS (SELECT 1 FROM rejections WHERE order_id = $1)) AS d",
                      1, p, &r, err, errlen);
    if (rc == DB_OK) {
        *yes = strcmp(db_get(r, 0, "d"), "t") == 0;
        PQclear(r);
    }
    return rc;
}

static mq_result on_order_placed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                                 char *err, size_t errlen)
{
    const order_placed *o = &ev->u.order_placed;
    ev_line lines[EV_LINES_MAX];
    int64_t before[EV_LINES_MAX], after[EV_LINES_MAX], thr[EV_LINES_MAX];
    char skus_short[EV_LINES_MAX][EV_SKU_MAX + 1];
    size_t nshort = 0;
    ev_event out;
    int rc, done;
    char q[24];

    if ((rc = decided(db, o->order_id, &done, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    if (done) {
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "order %s was decided before; nothing to do", o->order_id);
        return MQ_DONE;
    }
    memcpy(lines, o->lines.items, o->lines.n * sizeof(ev_line));
    qsort(lines, o->lines.n, sizeof(ev_line), cmp_line);
    if ((rc = db_exec(db, "SAVEPOINT reserve", 0, NULL, NULL, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    for (size_t i = 0; i < o->lines.n; i++) {
        PGresult *r;
        const char *p[] = {lines[i].sku, util_i64(q, lines[i].quantity)};
        rc = db_execp(db, "inv_take",
                      "UPDATE stock SET on_hand = on_hand - $2, updated_at = now()"
                      " WHERE sku = $1 AND on_hand >= $2"
                      " RETURNING on_hand, low_stock_threshold",
                      2, p, &r, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
        if (PQntuples(r) == 0) {
            snprintf(skus_short[nshort++], EV_SKU_MAX + 1, "%s", lines[i].sku);
        } else {
            after[i] = strtoll(db_get(r, 0, "on_hand"), NULL, 10);
            thr[i] = strtoll(db_get(r, 0, "low_stock_threshold"), NULL, 10);
            before[i] = after[i] + lines[i].quantity;
        }
        PQclear(r);
    }

    if (nshort > 0) {
        const char *p[2];
        inventory_rejected *rj = &out.u.inventory_rejected;
        if ((rc = db_exec(db, "ROLLBACK TO SAVEPOINT reserve", 0, NULL, NULL, err, errlen)) !=
            DB_OK)
            return worker_db_result(rc);
        ev_init(&out, EV_INVENTORY_REJECTED);
        snprintf(rj->order_id, sizeof(rj->order_id), "%s", o->order_id);
        snprintf(rj->customer_email, sizeof(rj->customer_email), "%s", o->customer_email);
        snprintf(rj->reason, sizeof(rj->reason), "not enough stock for %zu of %zu line(s)", nshort,
                 o->lines.n);
        rj->skus_short.items = skus_short;
        rj->skus_short.n = nshort;
        p[0] = o->order_id;
        p[1] = rj->reason;
        rc = db_execp(db, "inv_reject", "INSERT INTO rejections (order_id, reason) VALUES ($1, $2)",
                      2, p, NULL, err, errlen);
        if (rc == DB_OK)
            rc = worker_emit(w, db, env, &out, err, errlen);
        /* skus_short lives on the stack: nothing to free. */
        if (rc != DB_OK)
            return worker_db_result(rc);
        log_write(LOG_INFO, env->correlation_id, env->message_id, "order %s rejected: %s",
                  o->order_id, rj->reason);
        return MQ_DONE;
    }

    {
        const char *p[] = {o->order_id};
        rc = db_execp(db, "inv_reserve",
                      "INSERT INTO reservations (order_id, status) VALUES ($1, 'RESERVED')", 1, p,
                      NULL, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
    }
    for (size_t i = 0; i < o->lines.n; i++) {
        const char *p[] = {o->order_id, lines[i].sku, util_i64(q, lines[i].quantity)};
        rc = db_execp(db, "inv_reserve_line",
                      "INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)",
                      3, p, NULL, err, errlen);
        if (rc == DB_OK)
            rc =
                maybe_low_stock(w, db, env, lines[i].sku, before[i], after[i], thr[i], err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
    }
    /* inventory.reserved carries the order as placed, for billing. */
    out = *ev;
    out.type = EV_INVENTORY_RESERVED;
    if ((rc = worker_emit(w, db, env, &out, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "order %s reserved (%zu lines)",
              o->order_id, o->lines.n);
    return MQ_DONE;
}

static mq_result on_payment_failed(worker *w, db_conn *db, const ev_envelope *env,
                                   const ev_event *ev, char *err, size_t errlen)
{
    const billing_payment_failed *f = &ev->u.billing_payment_failed;
    const char *p[] = {f->order_id};
    PGresult *r;
    ev_event out;
    int rc, n;

    rc = db_execp(db, "inv_release",
                  "UPDATE reservations SET status = 'RELEASED', released_at = now()"
                  " WHERE order_id = $1 AND status = 'RESERVED' RETURNING order_id",
                  1, p, &r, err, errlen);
    if (rc != DB_OK)
        return worker_db_result(rc);
    n = PQntuples(r);
    PQclear(r);
    if (n == 0) {
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "order %s has no reservation to release", f->order_id);
        return MQ_DONE;
    }
    /* Lines in SKU order, like reservations, to keep lock order. */
    rc = db_execp(db, "inv_restock",
                  "UPDATE stock s SET on_hand = s.on_hand + l.quantity, updated_at = now()"
                  " FROM (SELECT sku, quantity FROM reservation_lines WHERE order_id = $1"
                  " ORDER BY sku) l WHERE s.sku = l.sku",
                  1, p, NULL, err, errlen);
    if (rc != DB_OK)
        return worker_db_result(rc);
    ev_init(&out, EV_INVENTORY_RELEASED);
    snprintf(out.u.inventory_released.order_id, sizeof(out.u.inventory_released.order_id), "%s",
             f->order_id);
    snprintf(out.u.inventory_released.reason, sizeof(out.u.inventory_released.reason),
             "payment failed: %s", f->reason);
    if ((rc = worker_emit(w, db, env, &out, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "order %s released", f->order_id);
    return MQ_DONE;
}

/* Sorts lines by SKU and merges lines of the same SKU (a till may ring an
 * item up twice), so each SKU of a sale is one sale_lines row. Returns the
 * new count. */
static size_t merge_lines(ev_line *lines, size_t n)
{
    size_t k = 0;
    qsort(lines, n, sizeof(ev_line), cmp_line);
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
 * sale's lines are claimed first (INSERT ... ON CONFLICT DO NOTHING, as
 * billing does with its invoice): a second delivery finds them and changes
 * nothing, and a concurrent one waits on the first's unique key and then
 * finds them. Only then is stock taken. */
static mq_result on_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         char *err, size_t errlen)
{
    const sale_completed *s = &ev->u.sale_completed;
    ev_line lines[EV_LINES_MAX];
    size_t n;
    char q[24], a[24];
    int rc;

    memcpy(lines, s->lines.items, s->lines.n * sizeof(ev_line));
    n = merge_lines(lines, s->lines.n);
    for (size_t i = 0; i < n; i++) {
        PGresult *r;
        const char *p[] = {s->sale_id, lines[i].sku, util_i64(q, lines[i].quantity)};
        int claimed;
        rc = db_execp(db, "inv_sale_claim",
                      "INSERT INTO sale_lines (sale_id, sku, quantity, applied)"
                      " VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING RETURNING sku",
                      3, p, &r, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
        claimed = PQntuples(r) == 1;
        PQclear(r);
        if (!claimed) {
            /* Lines are unique per SKU, so only the first can conflict: the
             * sale was applied before. */
            log_write(LOG_INFO, env->correlation_id, env->message_id,
                      "sale %s was applied before; nothing to do", s->sale_id);
            return MQ_DONE;
        }
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
            rc = maybe_low_stock(w, db, env, lines[i].sku, before, after, thr, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
    }
    return MQ_DONE;
}

int main(int argc, char **argv)
{
    static const worker_route routes[] = {
        {EV_ORDER_PLACED, on_order_placed},
        {EV_BILLING_PAYMENT_FAILED, on_payment_failed},
        {EV_SALE_COMPLETED, on_sale},
    };
    worker_def def = {.service = "inventory",
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .default_port = 9101};
    return worker_main(&def, argc, argv);
}
