/*
 * reservations.c — an order's stock: reserve every line or none, and give it
 * back when the payment fails.
 *
 * The orders of a batch are reserved together (inv_reserve_set, a set
 * handler), with a few statements for the whole set:
 *   1. the orders' advisory locks (inv_lock_orders: an order.expired of one
 *      of them handled at this moment waits, or is waited for), then which
 *      of them were decided before (a reservation or a rejection row says
 *      so): nothing more to do for those;
 *   2. the stock rows of every SKU the others name, locked in ONE
 *      SELECT ... ORDER BY sku FOR UPDATE: rows are locked in SKU order, the
 *      same order in every transaction, so two instances reserving at once
 *      wait for each other and never deadlock, and what this one read stays
 *      true until it commits;
 *   3. in C, over those locked rows, each order in order of arrival: every
 *      line fits in what is left, and the order takes it, or one does not
 *      and the order takes nothing (all or nothing per order; an order that
 *      does not fit does not stop a later smaller one);
 *   4. the reservations (one multi-row INSERT, first: an order.expired may
 *      have decided an order meanwhile, claim_reservations), the stock taken
 *      (one UPDATE, guarded by on_hand >= the amount, which the lock makes
 *      always true: stock never goes below zero), the reservations' lines
 *      and the rejections in one multi-row INSERT each, and every event in
 *      one outbox statement.
 * A set of one is the same for a message applied alone (after a failed
 * batch).
 */
#include "inventory.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A SKU the set's orders name: its stock row as locked, and what is left. */
typedef struct {
    const char *sku;
    int found;         /* a stock row exists */
    int64_t on_hand;   /* as locked */
    int64_t left;      /* after the orders reserved so far */
    int64_t threshold; /* low_stock_threshold */
} sku_row;

/* What became of each order of the set. */
enum { ORDER_NEW, ORDER_DECIDED, ORDER_RESERVED, ORDER_REJECTED };

/* The set's working memory, freed by set_free. */
typedef struct {
    size_t n;
    int *fate;                      /* ORDER_* per order */
    size_t *off;                    /* order i's lines: lines[off[i] .. off[i + 1]) */
    ev_line *lines;                 /* each order's lines, sorted by SKU */
    char (*shorts)[EV_SKU_MAX + 1]; /* the SKUs short, at the same offsets */
    unsigned char *took;            /* per line: taken while its order was tried */
    size_t *nshort;                 /* per order */
    sku_row *rows;                  /* distinct SKUs, sorted */
    size_t nrows;
    ev_event *out; /* the events to emit */
    worker_out *emit;
    size_t nout;
} reserve_set;

static void set_free(reserve_set *s)
{
    free(s->fate);
    free(s->off);
    free(s->lines);
    free(s->shorts);
    free(s->took);
    free(s->nshort);
    free(s->rows);
    free(s->out);
    free(s->emit);
}

static int cmp_row(const void *a, const void *b)
{
    return strcmp(((const sku_row *)a)->sku, ((const sku_row *)b)->sku);
}

static sku_row *find_row(reserve_set *s, const char *sku)
{
    sku_row key = {.sku = sku};
    return bsearch(&key, s->rows, s->nrows, sizeof(*s->rows), cmp_row);
}

/* Allocates s for msgs and copies each order's lines, sorted. 0 or -1. */
static int set_init(reserve_set *s, const worker_msg *m, size_t n)
{
    size_t total = 0;
    memset(s, 0, sizeof(*s));
    s->n = n;
    for (size_t i = 0; i < n; i++)
        total += m[i].ev->u.order_placed.lines.n;
    s->fate = calloc(n, sizeof(*s->fate));
    s->off = calloc(n + 1, sizeof(*s->off));
    s->nshort = calloc(n, sizeof(*s->nshort));
    s->lines = calloc(total + 1, sizeof(*s->lines));
    s->shorts = calloc(total + 1, sizeof(*s->shorts));
    s->took = calloc(total + 1, sizeof(*s->took));
    s->rows = calloc(total + 1, sizeof(*s->rows));
    s->out = calloc(n + total, sizeof(*s->out)); /* an order's event, a low stock per SKU */
    s->emit = calloc(n + total, sizeof(*s->emit));
    if (!s->fate || !s->off || !s->nshort || !s->lines || !s->shorts || !s->took || !s->rows ||
        !s->out || !s->emit)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const ev_lines *l = &m[i].ev->u.order_placed.lines;
        s->off[i + 1] = s->off[i] + l->n;
        memcpy(s->lines + s->off[i], l->items, l->n * sizeof(ev_line));
        qsort(s->lines + s->off[i], l->n, sizeof(ev_line), inv_cmp_line);
    }
    return 0;
}

/* Step 1: takes the set's orders' locks (inv_lock_orders), then marks the
 * orders decided before, and an order a second message of the set names
 * again (the first decides it). */
static int mark_decided(db_conn *db, const worker_msg *m, reserve_set *s, char *err, size_t errlen)
{
    db_array ids;
    PGresult *r = NULL;
    int rc;

    db_array_init(&ids);
    for (size_t i = 0; i < s->n; i++)
        db_array_add(&ids, m[i].ev->u.order_placed.order_id);
    /* The orders' locks first (an expiry of one of them waits, or is
     * waited for), the look in a statement of its own. */
    if ((rc = inv_lock_orders(db, &ids, err, errlen)) != DB_OK)
        return rc;
    db_array_init(&ids);
    for (size_t i = 0; i < s->n; i++)
        db_array_add(&ids, m[i].ev->u.order_placed.order_id);
    rc = db_exec_arrays(
        db, "inv_decided_set",
        "SELECT order_id::text FROM reservations WHERE order_id = ANY($1::uuid[])"
        " UNION SELECT order_id::text FROM rejections WHERE order_id = ANY($1::uuid[])",
        &ids, 1, &r, err, errlen);
    if (rc != DB_OK)
        return rc;
    for (size_t i = 0; i < s->n; i++) {
        const char *id = m[i].ev->u.order_placed.order_id;
        for (int k = 0; k < PQntuples(r) && s->fate[i] == ORDER_NEW; k++) {
            if (strcasecmp(PQgetvalue(r, k, 0), id) == 0)
                s->fate[i] = ORDER_DECIDED;
        }
        for (size_t j = 0; j < i && s->fate[i] == ORDER_NEW; j++) {
            if (strcasecmp(m[j].ev->u.order_placed.order_id, id) == 0)
                s->fate[i] = ORDER_DECIDED;
        }
        if (s->fate[i] == ORDER_DECIDED)
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                      "order %s was decided before; nothing to do", id);
    }
    PQclear(r);
    return DB_OK;
}

/* Step 2: the distinct SKUs of the new orders, their stock rows locked in
 * SKU order. */
static int lock_stock(db_conn *db, reserve_set *s, char *err, size_t errlen)
{
    db_array skus;
    PGresult *r = NULL;
    int rc;

    for (size_t i = 0; i < s->n; i++) {
        for (size_t k = s->off[i]; s->fate[i] == ORDER_NEW && k < s->off[i + 1]; k++)
            s->rows[s->nrows++].sku = s->lines[k].sku;
    }
    qsort(s->rows, s->nrows, sizeof(*s->rows), cmp_row);
    {
        size_t u = 0;
        for (size_t k = 0; k < s->nrows; k++) {
            if (u == 0 || strcmp(s->rows[u - 1].sku, s->rows[k].sku) != 0)
                s->rows[u++] = s->rows[k];
        }
        s->nrows = u;
    }
    if (s->nrows == 0)
        return DB_OK;
    db_array_init(&skus);
    for (size_t k = 0; k < s->nrows; k++)
        db_array_add(&skus, s->rows[k].sku);
    rc = db_exec_arrays(
        db, "inv_lock_set",
        "SELECT sku, on_hand, low_stock_threshold FROM stock WHERE sku = ANY($1::text[])"
        " ORDER BY sku FOR UPDATE",
        &skus, 1, &r, err, errlen);
    if (rc != DB_OK)
        return rc;
    for (int k = 0; k < PQntuples(r); k++) {
        sku_row *row = find_row(s, db_get(r, k, "sku"));
        if (!row)
            continue;
        row->found = 1;
        row->on_hand = row->left = strtoll(db_get(r, k, "on_hand"), NULL, 10);
        row->threshold = strtoll(db_get(r, k, "low_stock_threshold"), NULL, 10);
    }
    PQclear(r);
    return DB_OK;
}

/* A new event (in s->out) to emit as caused by the message cause. */
static ev_event *queue_event(reserve_set *s, const worker_msg *cause)
{
    ev_event *e = &s->out[s->nout];
    s->emit[s->nout].cause = cause;
    s->emit[s->nout].ev = e;
    s->nout++;
    return e;
}

/* Step 3: each new order in order of arrival, all of its lines or none,
 * from what is left; the events each causes. Pure. */
static void decide(const worker_msg *m, reserve_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        const order_placed *o = &m[i].ev->u.order_placed;
        size_t a = s->off[i], b = s->off[i + 1];
        ev_event *e;
        if (s->fate[i] != ORDER_NEW)
            continue;
        for (size_t k = a; k < b; k++) { /* taken one by one, as a line may repeat a SKU */
            sku_row *row = find_row(s, s->lines[k].sku);
            s->took[k] = row && row->found && row->left >= s->lines[k].quantity;
            if (s->took[k])
                row->left -= s->lines[k].quantity;
            else
                memcpy(s->shorts[a + s->nshort[i]++], s->lines[k].sku, sizeof(s->shorts[0]));
        }
        if (s->nshort[i] > 0) { /* none of it: what this order took goes back */
            for (size_t k = a; k < b; k++) {
                if (s->took[k])
                    find_row(s, s->lines[k].sku)->left += s->lines[k].quantity;
            }
            s->fate[i] = ORDER_REJECTED;
            e = queue_event(s, &m[i]);
            ev_init(e, EV_INVENTORY_REJECTED);
            snprintf(e->u.inventory_rejected.order_id, sizeof(e->u.inventory_rejected.order_id),
                     "%s", o->order_id);
            snprintf(e->u.inventory_rejected.customer_email,
                     sizeof(e->u.inventory_rejected.customer_email), "%s", o->customer_email);
            snprintf(e->u.inventory_rejected.reason, sizeof(e->u.inventory_rejected.reason),
                     "not enough stock for %zu of %zu line(s)", s->nshort[i], o->lines.n);
            e->u.inventory_rejected.skus_short.items = s->shorts + a; /* the set's: not freed */
            e->u.inventory_rejected.skus_short.n = s->nshort[i];
            continue;
        }
        s->fate[i] = ORDER_RESERVED;
        /* A SKU crossing its threshold: once, when this order's lines take
         * it from above to at or below (stock only falls in a set). */
        for (size_t k = a; k < b; k++) {
            sku_row *row = find_row(s, s->lines[k].sku);
            int64_t taken = 0, after = row->left;
            if (k > a && strcmp(s->lines[k - 1].sku, row->sku) == 0)
                continue; /* counted with the SKU's first line */
            for (size_t x = k; x < b && strcmp(s->lines[x].sku, row->sku) == 0; x++)
                taken += s->lines[x].quantity;
            if (!(after + taken > row->threshold && after <= row->threshold))
                continue;
            e = queue_event(s, &m[i]);
            ev_init(e, EV_INVENTORY_LOW_STOCK);
            snprintf(e->u.inventory_low_stock.sku, sizeof(e->u.inventory_low_stock.sku), "%s",
                     row->sku);
            e->u.inventory_low_stock.on_hand = after;
            e->u.inventory_low_stock.threshold = row->threshold;
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                      "low stock: %s at %lld", row->sku, (long long)after);
        }
        /* inventory.reserved carries the order as placed, for billing. */
        e = queue_event(s, &m[i]);
        *e = *m[i].ev; /* the lines stay the message's: not freed here */
        e->type = EV_INVENTORY_RESERVED;
    }
}

/* Step 4a: the reservation rows, first: ON CONFLICT DO NOTHING, as an
 * order.expired handled at this moment by another transaction (expiry.c)
 * may have decided an order of the set since step 1, and its decision
 * stands. Alone (a set of one), that order then takes nothing; in a larger
 * set it fails the set (DB_ERR_TRANSIENT), whose orders are applied again
 * one by one, so no other order's decision rests on its units. */
static int claim_reservations(db_conn *db, const worker_msg *m, reserve_set *s, char *err,
                              size_t errlen)
{
    db_array c;
    size_t nres = 0;
    PGresult *r = NULL;
    int rc, got;

    db_array_init(&c);
    for (size_t i = 0; i < s->n; i++) {
        if (s->fate[i] == ORDER_RESERVED) {
            db_array_add(&c, m[i].ev->u.order_placed.order_id);
            nres++;
        }
    }
    if (nres == 0) {
        db_array_release(&c);
        return DB_OK;
    }
    rc = db_exec_arrays(db, "inv_reserve_set",
                        "INSERT INTO reservations (order_id, status)"
                        " SELECT o, 'RESERVED' FROM unnest($1::uuid[]) AS o"
                        " ON CONFLICT DO NOTHING RETURNING order_id",
                        &c, 1, &r, err, errlen);
    if (rc != DB_OK)
        return rc;
    got = PQntuples(r);
    PQclear(r);
    if ((size_t)got == nres)
        return DB_OK;
    if (s->n > 1) {
        snprintf(err, errlen, "an order of the set was decided meanwhile");
        return DB_ERR_TRANSIENT;
    }
    s->fate[0] = ORDER_DECIDED; /* its units stay on the shelf, its events unsent */
    s->nout = 0;
    for (size_t k = 0; k < s->nrows; k++)
        s->rows[k].left = s->rows[k].on_hand;
    log_write(LOG_INFO, m[0].env->correlation_id, m[0].env->message_id,
              "order %s was decided meanwhile; nothing reserved", m[0].ev->u.order_placed.order_id);
    return DB_OK;
}

/* Step 4b: the stock taken, the reservations' lines, the rejections: one
 * statement each (none when there is nothing to write). */
static int write_set(db_conn *db, const worker_msg *m, reserve_set *s, char *err, size_t errlen)
{
    db_array c[3];
    size_t want = 0, nres = 0, nrej = 0;
    PGresult *r = NULL;
    int rc;

    db_array_init(&c[0]);
    db_array_init(&c[1]);
    for (size_t k = 0; k < s->nrows; k++) {
        if (s->rows[k].found && s->rows[k].on_hand > s->rows[k].left) {
            db_array_add(&c[0], s->rows[k].sku);
            db_array_add_i64(&c[1], (long long)(s->rows[k].on_hand - s->rows[k].left));
            want++;
        }
    }
    if (want == 0) {
        db_array_release(&c[0]);
        db_array_release(&c[1]);
    } else {
        rc = db_exec_arrays(db, "inv_take_set",
                            "UPDATE stock s SET on_hand = s.on_hand - t.q, updated_at = now()"
                            " FROM unnest($1::text[], $2::bigint[]) AS t(sku, q)"
                            " WHERE s.sku = t.sku AND s.on_hand >= t.q RETURNING s.sku",
                            c, 2, &r, err, errlen);
        if (rc != DB_OK)
            return rc;
        rc = (size_t)PQntuples(r) == want ? DB_OK : DB_ERR_TRANSIENT;
        PQclear(r);
        if (rc != DB_OK) { /* the rows are locked: cannot happen, but never oversell */
            snprintf(err, errlen, "stock changed under its lock; trying again");
            return rc;
        }
    }
    for (int k = 0; k < 3; k++)
        db_array_init(&c[k]);
    for (size_t i = 0; i < s->n; i++) {
        nres += s->fate[i] == ORDER_RESERVED;
        for (size_t k = s->off[i]; s->fate[i] == ORDER_RESERVED && k < s->off[i + 1]; k++) {
            db_array_add(&c[0], m[i].ev->u.order_placed.order_id);
            db_array_add(&c[1], s->lines[k].sku);
            db_array_add_i64(&c[2], (long long)s->lines[k].quantity);
        }
    }
    if (nres > 0 &&
        (rc = db_exec_arrays(db, "inv_reserve_lines_set",
                             "INSERT INTO reservation_lines (order_id, sku, quantity)"
                             " SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])",
                             c, 3, NULL, err, errlen)) != DB_OK)
        return rc;
    for (int k = 0; k < 3; k++)
        db_array_release(&c[k]);
    for (int k = 0; k < 2; k++)
        db_array_init(&c[k]);
    for (size_t k = 0; k < s->nout; k++) {
        const ev_event *e = s->out[k].type == EV_INVENTORY_REJECTED ? &s->out[k] : NULL;
        if (e) {
            db_array_add(&c[0], e->u.inventory_rejected.order_id);
            db_array_add(&c[1], e->u.inventory_rejected.reason);
            nrej++;
        }
    }
    if (nrej == 0) {
        db_array_release(&c[0]);
        db_array_release(&c[1]);
        return DB_OK;
    }
    return db_exec_arrays(db, "inv_reject_set",
                          "INSERT INTO rejections (order_id, reason)"
                          " SELECT * FROM unnest($1::uuid[], $2::text[])",
                          c, 2, NULL, err, errlen);
}

mq_result inv_reserve_set(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                          size_t errlen)
{
    reserve_set s;
    int rc;

    if (set_init(&s, m, n) < 0) {
        set_free(&s);
        snprintf(err, errlen, "out of memory");
        return MQ_RETRY;
    }
    rc = mark_decided(db, m, &s, err, errlen);
    if (rc == DB_OK)
        rc = lock_stock(db, &s, err, errlen);
    if (rc == DB_OK) {
        decide(m, &s);
        rc = claim_reservations(db, m, &s, err, errlen);
    }
    if (rc == DB_OK)
        rc = write_set(db, m, &s, err, errlen);
    if (rc == DB_OK)
        rc = worker_emit_all(w, db, s.emit, s.nout, err, errlen);
    for (size_t i = 0; rc == DB_OK && i < n; i++) {
        const order_placed *o = &m[i].ev->u.order_placed;
        if (s.fate[i] == ORDER_RESERVED)
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                      "order %s reserved (%zu lines)", o->order_id, o->lines.n);
        else if (s.fate[i] == ORDER_REJECTED)
            log_write(LOG_INFO, m[i].env->correlation_id, m[i].env->message_id,
                      "order %s rejected: not enough stock for %zu of %zu line(s)", o->order_id,
                      s.nshort[i], o->lines.n);
    }
    set_free(&s);
    return rc == DB_OK ? MQ_DONE : worker_db_result(rc);
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
