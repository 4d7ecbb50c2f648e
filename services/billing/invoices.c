/*
 * invoices.c — an invoice for a reserved order (after the payment rule) or a
 * till's sale, once per order or sale (a unique key; a second delivery finds
 * it and changes nothing), with its lines, and billing.invoiced; or, above
 * the credit limit, a payment failure and billing.payment_failed. Tax is the
 * part of the gross price at TAX_RATE_BP, rounded half up.
 */
#include "billing.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The tax inside a gross amount, rounded half up:
 *   gross = net * (1 + bp/10000)  →  tax = gross * bp / (10000 + bp).
 * gross * bp alone overflows 64 bits at the contract's maxima (10^15 * 10^4),
 * so the division goes first: with gross = q * d + r (d = 10000 + bp),
 * gross * bp / d = q * bp + r * bp / d, where q * bp <= gross and
 * r * bp < d * bp <= 2 * 10^8. gross is in [0, EV_TOTAL_MAX] (the decoder
 * checked it), bp in [0, 10000] (cfg). */
int64_t bil_tax_part(int64_t gross, long bp)
{
    const int64_t d = 10000 + (int64_t)bp;
    const int64_t q = gross / d, r = gross % d;
    return q * (int64_t)bp + (r * (int64_t)bp + d / 2) / d;
}

/* Writes the invoice and its lines, and emits billing.invoiced. */
static mq_result invoice(worker *w, db_conn *db, const ev_envelope *env, const char *order_id,
                         const char *sale_id, const char *customer_id, const char *email,
                         const char *currency, const ev_lines *lines, int64_t total, char *err,
                         size_t errlen)
{
    const billing_cfg *cfg = worker_app(w);
    ev_event out;
    billing_invoiced *b = &out.u.billing_invoiced;
    char net[24], tax[24], amt[24], q[24], pr[24];
    PGresult *r;
    mq_result res;
    int rc;

    ev_init(&out, EV_BILLING_INVOICED);
    if (uuid_v4(b->invoice_id) < 0)
        return MQ_RETRY;
    b->amount = total;
    b->tax = bil_tax_part(total, cfg->tax_bp);
    {
        const char *p[] = {b->invoice_id,
                           order_id && *order_id ? order_id : NULL,
                           sale_id && *sale_id ? sale_id : NULL,
                           customer_id && *customer_id ? customer_id : NULL,
                           email && *email ? email : NULL,
                           currency,
                           util_i64(net, total - b->tax),
                           util_i64(tax, b->tax),
                           util_i64(amt, total)};
        res = worker_claim(db, "bil_invoice",
                           "INSERT INTO invoices (id, order_id, sale_id, customer_id,"
                           " customer_email, currency, net_minor, tax_minor, amount_minor)"
                           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                           " ON CONFLICT DO NOTHING RETURNING number",
                           9, p, &r, err, errlen, env, "already invoiced; nothing to do");
    }
    if (res != MQ_DONE || !r)
        return res;
    b->invoice_number = strtoll(db_get(r, 0, "number"), NULL, 10);
    PQclear(r);
    for (size_t i = 0; i < lines->n; i++) {
        const char *p[] = {b->invoice_id, lines->items[i].sku,
                           util_i64(q, lines->items[i].quantity),
                           util_i64(pr, lines->items[i].unit_price)};
        rc = db_execp(db, "bil_line",
                      "INSERT INTO invoice_lines (invoice_id, sku, quantity, unit_price_minor)"
                      " VALUES ($1, $2, $3, $4)",
                      4, p, NULL, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
    }
    snprintf(b->order_id, sizeof(b->order_id), "%s", order_id ? order_id : "");
    snprintf(b->sale_id, sizeof(b->sale_id), "%s", sale_id ? sale_id : "");
    snprintf(b->customer_id, sizeof(b->customer_id), "%s", customer_id ? customer_id : "");
    snprintf(b->customer_email, sizeof(b->customer_email), "%s", email ? email : "");
    snprintf(b->currency, sizeof(b->currency), "%s", currency);
    if ((rc = worker_emit(w, db, env, &out, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "invoice %lld for %s %s: %lld",
              (long long)b->invoice_number, *b->order_id ? "order" : "sale",
              *b->order_id ? b->order_id : b->sale_id, (long long)total);
    return MQ_DONE;
}

mq_result bil_on_reserved(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                          char *err, size_t errlen)
{
    const inventory_reserved *o = &ev->u.inventory_reserved;
    const billing_cfg *cfg = worker_app(w);
    int rc, is_void;

    /* An order that expired first gets neither an invoice nor a payment
     * decision (voids.c). */
    if ((rc = bil_order_lock(db, o->order_id, &is_void, err, errlen)) != DB_OK)
        return worker_db_result(rc);
    if (is_void) {
        log_write(LOG_INFO, env->correlation_id, env->message_id,
                  "order %s expired before it was invoiced; nothing to do", o->order_id);
        return MQ_DONE;
    }
    if (o->total > cfg->credit_limit) {
        ev_event out;
        billing_payment_failed *f = &out.u.billing_payment_failed;
        char amt[24];
        const char *p[3];
        PGresult *r;
        mq_result res;

        ev_init(&out, EV_BILLING_PAYMENT_FAILED);
        snprintf(f->order_id, sizeof(f->order_id), "%s", o->order_id);
        snprintf(f->customer_email, sizeof(f->customer_email), "%s", o->customer_email);
        snprintf(f->currency, sizeof(f->currency), "%s", o->currency);
        f->amount = o->total;
        snprintf(f->reason, sizeof(f->reason), "total %lld exceeds the credit limit of %ld",
                 (long long)o->total, cfg->credit_limit);
        p[0] = o->order_id;
        p[1] = util_i64(amt, o->total);
        p[2] = f->reason;
        /* No row: decided before, and said so then. */
        res = worker_claim(db, "bil_fail",
                           "INSERT INTO payment_failures (order_id, amount_minor, reason)"
                           " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING order_id",
                           3, p, &r, err, errlen, env, NULL);
        if (res != MQ_DONE || !r)
            return res;
        PQclear(r);
        if ((rc = worker_emit(w, db, env, &out, err, errlen)) != DB_OK)
            return worker_db_result(rc);
        log_write(LOG_INFO, env->correlation_id, env->message_id, "payment failed for %s: %s",
                  o->order_id, f->reason);
        return MQ_DONE;
    }
    return invoice(w, db, env, o->order_id, NULL, o->customer_id, o->customer_email, o->currency,
                   &o->lines, o->total, err, errlen);
}

mq_result bil_on_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev, char *err,
                      size_t errlen)
{
    const sale_completed *s = &ev->u.sale_completed;
    return invoice(w, db, env, NULL, s->sale_id, NULL, s->customer_email, s->currency, &s->lines,
                   s->total, err, errlen);
}
