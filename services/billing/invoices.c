/*
 * invoices.c — an invoice for a reserved order (after the payment rule) or a
 * till's sale, once per order or sale (a unique key; a second delivery finds
 * it and changes nothing), with its lines, and billing.invoiced; or, above
 * the credit limit, a payment failure and billing.payment_failed. Tax is the
 * part of the gross price at TAX_RATE_BP, rounded half up.
 *
 * Both handlers are set handlers (worker_set_fn): the invoices of a batch
 * go in one multi-row INSERT, their lines in another, the payment failures
 * in a third, and all their events in one outbox statement.
 */
#include "billing.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* An invoice to write, for an order or a sale, and its billing.invoiced. */
typedef struct {
    const worker_msg *msg;                                           /* the message it is for */
    const char *order_id, *sale_id, *customer_id, *email, *currency; /* NULL or "": none */
    const ev_lines *lines;
    int64_t total;
    ev_event out;
    int written; /* new: not invoiced before */
} inv_req;

static const char *or_null(const char *s)
{
    return s && *s ? s : NULL;
}

/* Writes the invoices of q[0..n) and their lines, one multi-row INSERT
 * each, and emits their billing.invoiced in one outbox statement. An order
 * or sale invoiced before (a unique key; also a second one in q) is
 * skipped: ON CONFLICT DO NOTHING, and RETURNING says which were new. */
static int invoice_all(worker *w, db_conn *db, inv_req *q, size_t n, char *err, size_t errlen)
{
    const billing_cfg *cfg = worker_app(w);
    db_array c[9];
    worker_out *outs = NULL;
    PGresult *r = NULL;
    size_t nout = 0;
    int rc;

    if (n == 0)
        return DB_OK;
    for (int k = 0; k < 9; k++)
        db_array_init(&c[k]);
    for (size_t i = 0; i < n; i++) {
        billing_invoiced *b = &q[i].out.u.billing_invoiced;
        ev_init(&q[i].out, EV_BILLING_INVOICED);
        if (uuid_v4(b->invoice_id) < 0) {
            for (int k = 0; k < 9; k++)
                db_array_release(&c[k]);
            snprintf(err, errlen, "no randomness for an invoice id");
            return DB_ERR_TRANSIENT;
        }
        b->amount = q[i].total;
        b->tax = bil_tax_part(q[i].total, cfg->tax_bp);
        snprintf(b->order_id, sizeof(b->order_id), "%s", q[i].order_id ? q[i].order_id : "");
        snprintf(b->sale_id, sizeof(b->sale_id), "%s", q[i].sale_id ? q[i].sale_id : "");
        snprintf(b->customer_id, sizeof(b->customer_id), "%s",
                 q[i].customer_id ? q[i].customer_id : "");
        snprintf(b->customer_email, sizeof(b->customer_email), "%s", q[i].email ? q[i].email : "");
        snprintf(b->currency, sizeof(b->currency), "%s", q[i].currency);
        db_array_add(&c[0], b->invoice_id);
        db_array_add(&c[1], or_null(q[i].order_id));
        db_array_add(&c[2], or_null(q[i].sale_id));
        db_array_add(&c[3], or_null(q[i].customer_id));
        db_array_add(&c[4], or_null(q[i].email));
        db_array_add(&c[5], q[i].currency);
        db_array_add_i64(&c[6], (long long)(q[i].total - b->tax));
        db_array_add_i64(&c[7], (long long)b->tax);
        db_array_add_i64(&c[8], (long long)q[i].total);
    }
    rc = db_exec_arrays(db, "bil_invoice_set",
                        "INSERT INTO invoices (id, order_id, sale_id, customer_id, customer_email,"
                        " currency, net_minor, tax_minor, amount_minor)"
                        " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[],"
                        " $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[])"
                        " ON CONFLICT DO NOTHING RETURNING id::text, number",
                        c, 9, &r, err, errlen);
    if (rc != DB_OK)
        return rc;
    for (int k = 0; k < PQntuples(r); k++) {
        for (size_t i = 0; i < n; i++) {
            billing_invoiced *b = &q[i].out.u.billing_invoiced;
            if (strcasecmp(b->invoice_id, db_get(r, k, "id")) == 0) {
                q[i].written = 1;
                b->invoice_number = strtoll(db_get(r, k, "number"), NULL, 10);
            }
        }
    }
    PQclear(r);
    for (int k = 0; k < 4; k++)
        db_array_init(&c[k]);
    for (size_t i = 0; i < n; i++) {
        for (size_t l = 0; q[i].written && l < q[i].lines->n; l++) {
            db_array_add(&c[0], q[i].out.u.billing_invoiced.invoice_id);
            db_array_add(&c[1], q[i].lines->items[l].sku);
            db_array_add_i64(&c[2], (long long)q[i].lines->items[l].quantity);
            db_array_add_i64(&c[3], (long long)q[i].lines->items[l].unit_price);
        }
    }
    if (c[0].n == 0) { /* nothing new: no statement */
        for (int k = 0; k < 4; k++)
            db_array_release(&c[k]);
    } else {
        rc =
            db_exec_arrays(db, "bil_lines_set",
                           "INSERT INTO invoice_lines (invoice_id, sku, quantity, unit_price_minor)"
                           " SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[],"
                           " $4::bigint[])",
                           c, 4, NULL, err, errlen);
    }
    if (rc == DB_OK && !(outs = calloc(n, sizeof(*outs)))) {
        snprintf(err, errlen, "out of memory");
        rc = DB_ERR_TRANSIENT;
    }
    for (size_t i = 0; rc == DB_OK && i < n; i++) {
        if (!q[i].written)
            continue;
        outs[nout].cause = q[i].msg;
        outs[nout++].ev = &q[i].out;
    }
    if (rc == DB_OK)
        rc = worker_emit_all(w, db, outs, nout, err, errlen);
    free(outs);
    for (size_t i = 0; rc == DB_OK && i < n; i++) {
        const billing_invoiced *b = &q[i].out.u.billing_invoiced;
        if (q[i].written)
            log_write(LOG_INFO, q[i].msg->env->correlation_id, q[i].msg->env->message_id,
                      "invoice %lld for %s %s: %lld", (long long)b->invoice_number,
                      *b->order_id ? "order" : "sale", *b->order_id ? b->order_id : b->sale_id,
                      (long long)q[i].total);
        else
            log_write(LOG_INFO, q[i].msg->env->correlation_id, q[i].msg->env->message_id,
                      "already invoiced; nothing to do");
    }
    return rc;
}

/* The payment failures among the set (above the credit limit): one
 * multi-row INSERT, and billing.payment_failed for each that is new. */
static int fail_all(worker *w, db_conn *db, const worker_msg *m, size_t n, const int *over,
                    char *err, size_t errlen)
{
    const billing_cfg *cfg = worker_app(w);
    ev_event *out = calloc(n, sizeof(*out));
    worker_out *outs = calloc(n, sizeof(*outs));
    int *sent = calloc(n, sizeof(*sent));
    db_array c[3];
    PGresult *r = NULL;
    size_t nout = 0, nover = 0;
    int rc = DB_OK;

    for (int k = 0; k < 3; k++)
        db_array_init(&c[k]);
    if (!out || !outs || !sent) {
        snprintf(err, errlen, "out of memory");
        rc = DB_ERR_TRANSIENT;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const inventory_reserved *o = &m[i].ev->u.inventory_reserved;
        billing_payment_failed *f = &out[i].u.billing_payment_failed;
        if (!over[i])
            continue;
        ev_init(&out[i], EV_BILLING_PAYMENT_FAILED);
        snprintf(f->order_id, sizeof(f->order_id), "%s", o->order_id);
        snprintf(f->customer_email, sizeof(f->customer_email), "%s", o->customer_email);
        snprintf(f->currency, sizeof(f->currency), "%s", o->currency);
        f->amount = o->total;
        snprintf(f->reason, sizeof(f->reason), "total %lld exceeds the credit limit of %ld",
                 (long long)o->total, cfg->credit_limit);
        db_array_add(&c[0], o->order_id);
        db_array_add_i64(&c[1], (long long)o->total);
        db_array_add(&c[2], f->reason);
        nover++;
    }
    if (nover == 0)
        goto out;
    /* No row: decided before, and said so then. */
    rc = db_exec_arrays(db, "bil_fail_set",
                        "INSERT INTO payment_failures (order_id, amount_minor, reason)"
                        " SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[])"
                        " ON CONFLICT DO NOTHING RETURNING order_id::text",
                        c, 3, &r, err, errlen);
    for (int k = 0; rc == DB_OK && k < PQntuples(r); k++) {
        for (size_t i = 0; i < n; i++) { /* the first message of the order */
            if (over[i] && !sent[i] &&
                strcasecmp(m[i].ev->u.inventory_reserved.order_id, PQgetvalue(r, k, 0)) == 0) {
                sent[i] = 1;
                outs[nout].cause = &m[i];
                outs[nout++].ev = &out[i];
                log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                          "payment failed for %s: %s", out[i].u.billing_payment_failed.order_id,
                          out[i].u.billing_payment_failed.reason);
                break;
            }
        }
    }
    PQclear(r);
    if (rc == DB_OK)
        rc = worker_emit_all(w, db, outs, nout, err, errlen);
out:
    for (int k = 0; k < 3; k++)
        db_array_release(&c[k]); /* exec_arrays released them: a no-op then */
    free(out);
    free(outs);
    free(sent);
    return rc;
}

/* Takes the advisory lock of every order of the set (bil_order_lock's, in
 * order id order: two sets never wait for each other in a cycle), then marks
 * in *is_void those an order.expired made void (voids.c). The lock first,
 * the look in a statement of its own: a statement's snapshot is taken when
 * it starts, before any wait for a lock. The key is hashtext of the id as
 * a uuid's text (lower case), as in voids.c and inventory's stock.c: the
 * contract accepts upper-case ids, and hashing the event's own text gave the
 * upper- and lower-case ids of one order two locks (review of #17, item 4;
 * check_saga billing_locks_an_order_whatever_the_case_of_its_id). */
static int lock_orders(db_conn *db, const worker_msg *m, size_t n, int *is_void, char *err,
                       size_t errlen)
{
    db_array ids;
    PGresult *r = NULL;
    int rc;

    db_array_init(&ids);
    for (size_t i = 0; i < n; i++)
        db_array_add(&ids, m[i].ev->u.inventory_reserved.order_id);
    rc = db_exec_arrays(db, "bil_orders_lock",
                        "SELECT pg_advisory_xact_lock(hashtext('billing.order'), hashtext(o::text))"
                        " FROM (SELECT DISTINCT o FROM unnest($1::uuid[]) AS o ORDER BY o) s",
                        &ids, 1, NULL, err, errlen);
    if (rc != DB_OK)
        return rc;
    db_array_init(&ids);
    for (size_t i = 0; i < n; i++)
        db_array_add(&ids, m[i].ev->u.inventory_reserved.order_id);
    rc = db_exec_arrays(db, "bil_are_void",
                        "SELECT order_id::text FROM voids WHERE order_id = ANY($1::uuid[])", &ids,
                        1, &r, err, errlen);
    if (rc != DB_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        is_void[i] = 0;
        for (int k = 0; k < PQntuples(r) && !is_void[i]; k++)
            is_void[i] =
                strcasecmp(PQgetvalue(r, k, 0), m[i].ev->u.inventory_reserved.order_id) == 0;
    }
    PQclear(r);
    return DB_OK;
}

mq_result bil_reserved_set(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                           size_t errlen)
{
    const billing_cfg *cfg = worker_app(w);
    inv_req *q = calloc(n, sizeof(*q));
    int *over = calloc(n, sizeof(*over)), *is_void = calloc(n, sizeof(*is_void));
    size_t nq = 0;
    int rc;

    if (!q || !over || !is_void) {
        rc = DB_ERR_TRANSIENT;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    /* An order that expired first gets neither an invoice nor a payment
     * decision (voids.c). */
    if ((rc = lock_orders(db, m, n, is_void, err, errlen)) != DB_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const inventory_reserved *o = &m[i].ev->u.inventory_reserved;
        if (is_void[i]) {
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                      "order %s expired before it was invoiced; nothing to do", o->order_id);
            continue;
        }
        over[i] = o->total > cfg->credit_limit;
        if (over[i])
            continue;
        q[nq] = (inv_req){.msg = &m[i],
                          .order_id = o->order_id,
                          .customer_id = o->customer_id,
                          .email = o->customer_email,
                          .currency = o->currency,
                          .lines = &o->lines,
                          .total = o->total};
        nq++;
    }
    rc = fail_all(w, db, m, n, over, err, errlen);
    if (rc == DB_OK)
        rc = invoice_all(w, db, q, nq, err, errlen);
out:
    free(q);
    free(over);
    free(is_void);
    return rc == DB_OK ? MQ_DONE : worker_db_result(rc);
}

mq_result bil_sale_set(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                       size_t errlen)
{
    inv_req *q = calloc(n, sizeof(*q));
    int rc;

    if (!q) {
        snprintf(err, errlen, "out of memory");
        return MQ_RETRY;
    }
    for (size_t i = 0; i < n; i++) {
        const sale_completed *s = &m[i].ev->u.sale_completed;
        q[i] = (inv_req){.msg = &m[i],
                         .sale_id = s->sale_id,
                         .email = s->customer_email,
                         .currency = s->currency,
                         .lines = &s->lines,
                         .total = s->total};
    }
    rc = invoice_all(w, db, q, n, err, errlen);
    free(q);
    return rc == DB_OK ? MQ_DONE : worker_db_result(rc);
}
