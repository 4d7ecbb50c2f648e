/*
 * reservations.c — an order's stock: reserve every line or none, and give it
 * back when the payment fails.
 *
 * Stock never goes below zero under concurrency: each line is one
 * `UPDATE ... WHERE on_hand >= quantity`, lines in SKU order (so two orders
 * cannot deadlock on each other), all inside the worker's transaction, with a
 * savepoint to undo a partial reservation. An order is decided once: a
 * reservation or a rejection row says it was.
 */
#include "inventory.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

mq_result inv_on_order_placed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
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
    qsort(lines, o->lines.n, sizeof(ev_line), inv_cmp_line);
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
            memcpy(skus_short[nshort++], lines[i].sku, sizeof(skus_short[0])); /* same size */
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
        /* No row: decided meanwhile by another transaction (an order.expired
         * handled at this moment, expiry.c): its decision stands, and the
         * units taken above go back. */
        const char *p[] = {o->order_id};
        PGresult *r;
        int mine;
        rc = db_execp(db, "inv_reserve",
                      "INSERT INTO reservations (order_id, status) VALUES ($1, 'RESERVED')"
                      " ON CONFLICT DO NOTHING RETURNING order_id",
                      1, p, &r, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
        mine = PQntuples(r) == 1;
        PQclear(r);
        if (!mine) {
            rc = db_exec(db, "ROLLBACK TO SAVEPOINT reserve", 0, NULL, NULL, err, errlen);
            if (rc != DB_OK)
                return worker_db_result(rc);
            log_write(LOG_INFO, env->correlation_id, env->message_id,
                      "order %s was decided meanwhile; nothing reserved", o->order_id);
            return MQ_DONE;
        }
    }
    for (size_t i = 0; i < o->lines.n; i++) {
        const char *p[] = {o->order_id, lines[i].sku, util_i64(q, lines[i].quantity)};
        rc = db_execp(db, "inv_reserve_line",
                      "INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)",
                      3, p, NULL, err, errlen);
        if (rc == DB_OK)
            rc = inv_maybe_low_stock(w, db, env, lines[i].sku, before[i], after[i], thr[i], err,
                                     errlen);
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

mq_result inv_on_payment_failed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                                char *err, size_t errlen)
{
    const billing_payment_failed *f = &ev->u.billing_payment_failed;
    const char *p[] = {f->order_id};
    PGresult *r;
    ev_event out;
    mq_result res;
    int rc;

    res = worker_claim(db, "inv_release",
                       "UPDATE reservations SET status = 'RELEASED', released_at = now()"
                       " WHERE order_id = $1 AND status = 'RESERVED' RETURNING order_id",
                       1, p, &r, err, errlen, env, "order %s has no reservation to release",
                       f->order_id);
    if (res != MQ_DONE || !r)
        return res;
    PQclear(r);
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
    /* The contract caps a reason at EV_TEXT_MAX: the payment's own is cut to
     * fit after the prefix. */
    snprintf(out.u.inventory_released.reason, sizeof(out.u.inventory_released.reason),
             "payment failed: %.*s", EV_TEXT_MAX - (int)strlen("payment failed: "), f->reason);
    if ((rc = worker_emit(w, db, env, &out, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "order %s released", f->order_id);
    return MQ_DONE;
}
