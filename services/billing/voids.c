/*
 * voids.c — an expired order's invoice (order.expired, the saga's timeout).
 *
 * order-api closed the order before it was final. Its invoice, if billing
 * made one, is void; if billing has not made one yet (inventory.reserved
 * still on its way, e.g. billing was down), it never will: a row in
 * billing.voids says either (invoice_id NULL for the second), and
 * bil_reserved_set looks for it first. The two handlers take the same
 * transaction-scoped advisory lock on the order (bil_order_lock; the set
 * handler for all its orders at once) before they look, so an inventory.reserved and an
 * order.expired of one order handled at the same moment by two consumers are decided one after the
 * other: the second sees what the first committed.
 */
#include "billing.h"

#include "log.h"

#include <stdio.h>
#include <string.h>

int bil_order_lock(db_conn *db, const char *order_id, int *is_void, char *err, size_t errlen)
{
    const char *p[] = {order_id};
    PGresult *r;
    int rc;

    /* The lock first, the look in a statement of its own: a statement's
     * snapshot is taken when it starts, before any wait for the lock. */
    rc = db_execp(
        db, "bil_order_lock",
        "SELECT pg_advisory_xact_lock(hashtext('billing.order'), hashtext($1::uuid::text))", 1, p,
        NULL, err, errlen);
    if (rc != DB_OK)
        return rc;
    rc = db_execp(db, "bil_is_void",
                  "SELECT EXISTS (SELECT 1 FROM voids WHERE order_id = $1::uuid) AS v", 1, p, &r,
                  err, errlen);
    if (rc != DB_OK)
        return rc;
    *is_void = strcmp(db_get(r, 0, "v"), "t") == 0;
    PQclear(r);
    return DB_OK;
}

mq_result bil_on_order_expired(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen)
{
    const order_expired *x = &ev->u.order_expired;
    const char *p[] = {x->order_id, x->reason};
    PGresult *r;
    mq_result res;
    int rc, is_void;
    (void)w;

    if ((rc = bil_order_lock(db, x->order_id, &is_void, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    res = worker_claim(db, "bil_void",
                       "INSERT INTO voids (order_id, invoice_id, reason)"
                       " SELECT $1, (SELECT id FROM invoices WHERE order_id = $1), $2"
                       " ON CONFLICT DO NOTHING RETURNING invoice_id::text AS invoice_id",
                       2, p, &r, err, errlen, env, "order %s: void before; nothing to do",
                       x->order_id);
    if (res != MQ_DONE || !r)
        return res;
    if (PQgetisnull(r, 0, 0))
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "order %s expired before its invoice: none will be made", x->order_id);
    else
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "order %s expired: invoice %s void", x->order_id, db_get(r, 0, "invoice_id"));
    PQclear(r);
    return MQ_DONE;
}
