/*
 * saga.c — the order's deadline (the saga's timeout).
 *
 * An order that reaches no final status within ORDER_TIMEOUT_S of its
 * creation (a service down for longer than the business accepts) is closed:
 * it becomes EXPIRED, with the reason, and order.expired goes out, on which
 * every service undoes what it did for the order (inventory gives the stock
 * back, billing voids the invoice) and email tells the customer once.
 *
 * The schedule is the orders table itself: an order's due time is its
 * created_at plus ORDER_TIMEOUT_S, and the outbox relay's timer calls
 * api_expire_due (outbox_relay_opts.due) to close what is overdue, in its
 * own transaction, and publishes the events in the same sweep. So a
 * deadline needs no message of its own, survives a crash of order-api or of
 * the broker (it is a row, and the sweep finds it on the next start), and
 * fires however long the services are away. (A delay queue with a TTL would
 * hold the timer in the broker instead, bound to one TTL per queue.)
 *
 * PENDING, RESERVED and PAYMENT_FAILED expire. PAYMENT_FAILED is not final:
 * it waits for inventory's release, and with inventory down past the
 * deadline it would wait for ever (review of #17); expired, inventory's
 * release of it happens once (the payment failure and the expiry both ask
 * for it, and inventory releases only a RESERVED reservation) and the customer,
 * told of the payment failure, gets no second mail (migration 0019). The
 * final statuses (CONFIRMED, REJECTED, CANCELLED, EXPIRED) never expire, so
 * a timeout after completion changes nothing. The row lock decides a
 * race with a late event: the sweep takes the order FOR UPDATE SKIP LOCKED
 * and re-checks its status, and order-api's handlers move an order only from
 * the statuses they name, which EXPIRED is not.
 */
#include "api.h"

#include "log.h"
#include "outbox.h"

#include <stdio.h>
#include <string.h>

static const char expire_sql[] =
    "WITH d AS (SELECT id FROM orders WHERE status IN ('PENDING', 'RESERVED', 'PAYMENT_FAILED')"
    "   AND created_at <= now() - make_interval(secs => $1::int)"
    "   ORDER BY created_at LIMIT $2::int FOR UPDATE SKIP LOCKED),"
    " u AS (UPDATE orders o SET status = 'EXPIRED', reason = $3, updated_at = now() FROM d"
    "   WHERE o.id = d.id AND o.status IN ('PENDING', 'RESERVED', 'PAYMENT_FAILED')"
    "   RETURNING o.id, o.customer_email),"
    " t AS (INSERT INTO order_timeline (order_id, status) SELECT id, 'EXPIRED' FROM u"
    "   ON CONFLICT DO NOTHING)"
    " SELECT id::text AS id, customer_email FROM u";

int api_saga_reason(long timeout_s, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "no final status within ORDER_TIMEOUT_S (%ld s)", timeout_s);
    return n > 0 && (size_t)n < outlen && (size_t)n <= EV_TEXT_MAX ? 0 : -1;
}

int api_expire_due(db_conn *db, void *arg, char *err, size_t errlen)
{
    const api_saga *s = arg;
    char secs[24], limit[24], reason[EV_TEXT_MAX + 1];
    const char *p[] = {secs, limit, reason};
    PGresult *r = NULL;
    int rc, n;

    snprintf(secs, sizeof(secs), "%ld", s->timeout_s);
    snprintf(limit, sizeof(limit), "%d", s->batch);
    if (api_saga_reason(s->timeout_s, reason, sizeof(reason)) < 0) {
        snprintf(err, errlen, "saga: the reason does not fit the contract");
        return DB_ERR;
    }
    if ((rc = db_execp(db, "saga_expire", expire_sql, 3, p, &r, err, errlen)) != DB_OK)
        return rc;
    n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        const char *id = db_get(r, i, "id");
        ev_event ev;
        order_expired *x = &ev.u.order_expired;

        ev_init(&ev, EV_ORDER_EXPIRED);
        snprintf(x->order_id, sizeof(x->order_id), "%s", id);
        snprintf(x->customer_email, sizeof(x->customer_email), "%s",
                 db_get(r, i, "customer_email"));
        memcpy(x->reason, reason, sizeof(reason));
        rc = outbox_add(db, ORDER_SERVICE, &ev, id, NULL, NULL, err, errlen);
        if (rc != DB_OK) {
            PQclear(r);
            return rc;
        }
        log_write(LOG_INFO, id, NULL, "order %s expired: %s", id, reason);
    }
    PQclear(r);
    return n;
}
