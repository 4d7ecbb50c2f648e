/*
 * mails.c — email's mails (see mails.h): the text of each kind and the
 * record of it in email.messages.
 */
#include "mails.h"

#include "log.h"
#include "mailer.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void money(char *out, size_t n, int64_t minor, const char *currency)
{
    snprintf(out, n, "%lld.%02lld %s", (long long)(minor / 100), (long long)(minor % 100),
             currency);
}

/* One mail per order about how it ended. order-api decides that once
 * (CONFIRMED and order.confirmed, or EXPIRED and order.expired, under the
 * order's row lock), so a confirmation and an expiry never both come; and
 * one failure mail per order (order_rejected, payment_failed,
 * order_expired: a rejection or payment failure can still race the
 * deadline) is migration 0019's unique index, which deliver's INSERT meets.
 * What is left here: an order.confirmed for an order whose expiry or
 * confirmation was mailed (which order-api does not send; one replayed, or
 * during the upgrade from confirmations mailed on billing.invoiced: README,
 * "The saga's timeout") is not mailed. *yes: 1 when kind is not to be sent
 * for env's order. DB_OK, or DB_ERR / DB_ERR_TRANSIENT with err. */
static int told_before(db_conn *db, const ev_envelope *env, const char *kind, int *yes, char *err,
                       size_t errlen)
{
    const char *p[1] = {env->correlation_id};
    PGresult *r;
    int rc;

    *yes = 0;
    if (strcmp(kind, "order_confirmed") != 0)
        return DB_OK;
    rc = db_execp(db, "mail_told",
                  "SELECT EXISTS (SELECT 1 FROM messages WHERE correlation_id = $1::uuid"
                  " AND kind IN ('order_expired', 'order_confirmed')) AS t",
                  1, p, &r, err, errlen);
    if (rc != DB_OK)
        return rc;
    *yes = strcmp(db_get(r, 0, "t"), "t") == 0;
    PQclear(r);
    if (*yes)
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "no %s mail: the customer was told how order %s ended", kind,
                  env->correlation_id);
    return DB_OK;
}

/* Records one mail caused by env (and ev) in the handler's transaction:
 * 'pending' for the mailer with SMTP_URL, 'recorded' without. The cause is
 * kept with it, re-encoded, for email.dlq if the server refuses the mail. A
 * mail refused before is recorded again (a DLQ replay): as a new mail, its
 * created_at too, which is the basis of MAIL_READY_MAX_AGE_S (a mail
 * refused long ago and replayed must not make email unready at once); any
 * other existing mail of this cause and kind is left alone, and so is a
 * failure mail when the order has one (migration 0019), also one the server
 * refused: the later failure event sends nothing, and the refused mail's
 * replay from email.dlq is what reaches the customer. */
static mq_result deliver(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         const char *kind, const char *to, const char *subject, const char *body,
                         char *err, size_t errlen)
{
    const email_cfg *cfg = worker_app(w);
    const char *p[11];
    char ts[24];
    char *cause;
    PGresult *r;
    int rc, fresh, told;

    if ((rc = told_before(db, env, kind, &told, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    if (told)
        return MQ_DONE;
    cause = ev_to_json(ev, env->causation_id, err, errlen);
    if (!cause)
        return MQ_REJECT;
    p[0] = env->message_id;
    p[1] = kind;
    p[2] = env->correlation_id;
    p[3] = to;
    p[4] = subject;
    p[5] = body;
    p[6] = cfg->smtp_url ? "pending" : "recorded";
    p[7] = ev_routing_key(ev->type);
    p[8] = cause;
    p[9] = env->app_id;
    p[10] = util_i64(ts, env->timestamp);
    /* A new mail, or none when this cause's mail of this kind is recorded
     * already, or (migration 0019) when it is a failure mail and the order
     * has one: ON CONFLICT DO NOTHING, with no arbiter, so a conflict on
     * either key adds nothing and another failure event of the order handled
     * at this moment waits for this one and then adds nothing. */
    rc = db_execp(db, "mail_add",
                  "INSERT INTO messages (cause_id, kind, correlation_id, recipient, subject,"
                  " body, status, cause_key, cause_body, cause_app, cause_ts)"
                  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                  " ON CONFLICT DO NOTHING RETURNING id",
                  11, p, &r, err, errlen);
    if (rc == DB_OK && PQntuples(r) == 0) {
        /* This cause's mail, refused before: a DLQ replay records it anew.
         * ($3 keeps the parameters typed alike in both statements.) */
        PQclear(r);
        rc = db_execp(db, "mail_again",
                      "UPDATE messages SET recipient = $4, subject = $5, body = $6, status = $7,"
                      " attempts = 0, next_attempt_at = now(), last_error = NULL,"
                      " created_at = now(), cause_key = $8, cause_body = $9, cause_app = $10,"
                      " cause_ts = $11"
                      " WHERE cause_id = $1 AND kind = $2 AND status = 'refused'"
                      " AND correlation_id IS NOT DISTINCT FROM $3::uuid RETURNING id",
                      11, p, &r, err, errlen);
    }
    free(cause);
    if (rc != DB_OK)
        return worker_db_result(rc);
    fresh = PQntuples(r) == 1;
    PQclear(r);
    if (!fresh)
        return MQ_DONE;
    if (cfg->smtp_url && (rc = db_after_commit(db, mailer_wake, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "%s mail %s for %s", kind,
              cfg->smtp_url ? "queued" : "recorded", to);
    return MQ_DONE;
}

/* From order.confirmed, not billing.invoiced: order-api decides how an
 * order ends, and an invoice it did not confirm (the order expired while
 * billing made it) is void and mailed about by the expiry alone. */
mq_result mails_confirmed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                          char *err, size_t errlen)
{
    const order_confirmed *b = &ev->u.order_confirmed;
    char subject[160], body[1024], amt[48], tax[48];
    if (!b->customer_email[0])
        return MQ_DONE;
    money(amt, sizeof(amt), b->amount, b->currency);
    money(tax, sizeof(tax), b->tax, b->currency);
    snprintf(subject, sizeof(subject), "Order %.8s confirmed - invoice %lld", b->order_id,
             (long long)b->invoice_number);
    snprintf(body, sizeof(body),
             "Thank you for your order %s.\n\nInvoice %lld\nTotal: %s (of which tax %s)\n\n"
             "Your items are reserved and on their way.\n",
             b->order_id, (long long)b->invoice_number, amt, tax);
    return deliver(w, db, env, ev, "order_confirmed", b->customer_email, subject, body, err,
                   errlen);
}

mq_result mails_rejected(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         char *err, size_t errlen)
{
    const inventory_rejected *r = &ev->u.inventory_rejected;
    char subject[160], body[2048];
    size_t n;
    snprintf(subject, sizeof(subject), "Order %.8s could not be accepted", r->order_id);
    n = (size_t)snprintf(body, sizeof(body),
                         "We are sorry: your order %s could not be accepted (%s).\n"
                         "Out of stock:",
                         r->order_id, r->reason);
    for (size_t i = 0; i < r->skus_short.n && n < sizeof(body) - 64; i++)
        n += (size_t)snprintf(body + n, sizeof(body) - n, " %s", r->skus_short.items[i]);
    snprintf(body + n, sizeof(body) - n, "\nYou have not been charged.\n");
    return deliver(w, db, env, ev, "order_rejected", r->customer_email, subject, body, err, errlen);
}

mq_result mails_payment_failed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen)
{
    const billing_payment_failed *f = &ev->u.billing_payment_failed;
    char subject[160], body[1024], amt[48];
    money(amt, sizeof(amt), f->amount, f->currency);
    snprintf(subject, sizeof(subject), "Payment for order %.8s failed", f->order_id);
    snprintf(body, sizeof(body),
             "The payment of %s for your order %s failed: %s.\n"
             "The order is cancelled and nothing was charged.\n",
             amt, f->order_id, f->reason);
    return deliver(w, db, env, ev, "payment_failed", f->customer_email, subject, body, err, errlen);
}

mq_result mails_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev, char *err,
                     size_t errlen)
{
    const sale_completed *s = &ev->u.sale_completed;
    char subject[160], body[8192], amt[48];
    size_t n;
    if (!s->customer_email[0])
        return MQ_DONE;
    money(amt, sizeof(amt), s->total, s->currency);
    snprintf(subject, sizeof(subject), "Your receipt from %s", s->store_id);
    n = (size_t)snprintf(body, sizeof(body), "Receipt %s, %s, paid %s\n\n", s->sale_id, s->store_id,
                         s->paid_at);
    for (size_t i = 0; i < s->lines.n && n < sizeof(body) - 128; i++) {
        char price[48];
        money(price, sizeof(price), s->lines.items[i].unit_price, s->currency);
        n += (size_t)snprintf(body + n, sizeof(body) - n, "%4lld x %-32s %s\n",
                              (long long)s->lines.items[i].quantity, s->lines.items[i].sku, price);
    }
    snprintf(body + n, sizeof(body) - n, "\nTotal: %s\n", amt);
    return deliver(w, db, env, ev, "receipt", s->customer_email, subject, body, err, errlen);
}

mq_result mails_low_stock(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                          char *err, size_t errlen)
{
    const inventory_low_stock *l = &ev->u.inventory_low_stock;
    const email_cfg *cfg = worker_app(w);
    char subject[160], body[512];
    snprintf(subject, sizeof(subject), "Low stock: %s (%lld left)", l->sku, (long long)l->on_hand);
    snprintf(body, sizeof(body), "%s is down to %lld units (threshold %lld). Time to reorder.\n",
             l->sku, (long long)l->on_hand, (long long)l->threshold);
    return deliver(w, db, env, ev, "low_stock", cfg->ops, subject, body, err, errlen);
}

mq_result mails_expired(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                        char *err, size_t errlen)
{
    const order_expired *x = &ev->u.order_expired;
    char subject[160], body[1024];
    snprintf(subject, sizeof(subject), "Order %.8s has been cancelled", x->order_id);
    snprintf(body, sizeof(body),
             "We are sorry: your order %s could not be completed in time (%s) and has been "
             "cancelled.\nAny stock held for it is released and any invoice for it is void: "
             "nothing is charged.\n",
             x->order_id, x->reason);
    return deliver(w, db, env, ev, "order_expired", x->customer_email, subject, body, err, errlen);
}
