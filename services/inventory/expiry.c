/*
 * expiry.c — an expired order's stock (order.expired, the saga's timeout).
 *
 * order-api closed the order before it was final. What inventory did for it
 * is undone, and what it has not done yet never will be:
 *   - reserved: the reservation is released, its units go back on the shelf
 *     (in SKU order, as reservations.c locks them), inventory.released says so;
 *   - not decided yet (order.placed still on its way, e.g. inventory was
 *     down): a reservation row already RELEASED, with no lines, which is what
 *     makes the late order.placed find the order decided and change nothing;
 *   - rejected or released before: nothing to do.
 * The order's advisory lock (inv_lock_orders, taken first here and by
 * reservations.c before it looks) orders this against an order.placed of
 * the same order handled at the same moment by another consumer: the second
 * sees what the first committed, so a rejection and this expiry never both
 * decide the order (a rejection is no reservation row: the reservation's key
 * alone did not order the two). The key still backs it: whichever inserts
 * the reservation row second finds it (reservations.c's INSERT gives its
 * units back when ours came first).
 */
#include "inventory.h"

#include "log.h"

#include <stdio.h>
#include <string.h>

/* Releases the order's reservation if it is held, its units back on the
 * shelf in the same statement. *released: 1 when it was. */
static int release(db_conn *db, const char *order_id, int *released, char *err, size_t errlen)
{
    const char *p[] = {order_id};
    PGresult *r;
    int rc = db_execp(db, "inv_expire_release",
                      "WITH r AS (UPDATE reservations SET status = 'RELEASED', released_at = now()"
                      "   WHERE order_id = $1 AND status = 'RESERVED' RETURNING order_id),"
                      " s AS (UPDATE stock s SET on_hand = s.on_hand + l.quantity,"
                      "   updated_at = now() FROM (SELECT sku, quantity FROM reservation_lines"
                      "     WHERE order_id = (SELECT order_id FROM r) ORDER BY sku) l"
                      "   WHERE s.sku = l.sku)"
                      " SELECT count(*) AS n FROM r",
                      1, p, &r, err, errlen);
    if (rc == DB_OK) {
        *released = strcmp(db_get(r, 0, "n"), "0") != 0;
        PQclear(r);
    }
    return rc;
}

mq_result inv_on_order_expired(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen)
{
    const order_expired *x = &ev->u.order_expired;
    const char *p[] = {x->order_id};
    PGresult *r;
    ev_event out;
    db_array ids;
    int rc, released, decided;

    /* The order's lock first: an order.placed of it in another transaction
     * (which takes it before it decides) has committed its rejection or its
     * reservation by the time this looks, or waits until this commits. */
    db_array_init(&ids);
    db_array_add(&ids, x->order_id);
    if ((rc = inv_lock_orders(db, &ids, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    if ((rc = release(db, x->order_id, &released, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    if (!released) {
        /* Never reserved (or rejected, or released before): decided now as
         * released with no lines, unless a rejection decided it. An
         * order.placed reserving the same order at this moment in another
         * transaction holds the key: this INSERT waits for it, and when it
         * committed, finds its reservation and releases it below. */
        rc = db_execp(db, "inv_expire_decide",
                      "INSERT INTO reservations (order_id, status, released_at)"
                      " SELECT $1, 'RELEASED', now()"
                      " WHERE NOT EXISTS (SELECT 1 FROM rejections WHERE order_id = $1)"
                      " ON CONFLICT DO NOTHING RETURNING order_id",
                      1, p, &r, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
        decided = PQntuples(r) == 1;
        PQclear(r);
        if (!decided && (rc = release(db, x->order_id, &released, err, errlen)) != DB_OK)
            return worker_db_result(rc);
    }
    if (!released) {
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "order %s expired with no stock held; nothing to release", x->order_id);
        return MQ_DONE;
    }
    ev_init(&out, EV_INVENTORY_RELEASED);
    snprintf(out.u.inventory_released.order_id, sizeof(out.u.inventory_released.order_id), "%s",
             x->order_id);
    snprintf(out.u.inventory_released.reason, sizeof(out.u.inventory_released.reason),
             "order expired");
    if ((rc = worker_emit(w, db, env, &out, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "order %s expired: stock released",
              x->order_id);
    return MQ_DONE;
}
