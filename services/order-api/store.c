/*
 * store.c — an order in the database: its write (the order, its lines, its
 * first timeline entry and the order.placed outbox row, in one statement, so
 * one round trip and one commit) and its document. The document is built by
 * PostgreSQL (json_build_object) in ONE place, ORDER_DOC: GET /orders/{id}
 * reads the order from its tables and the 201 of POST /orders from what its
 * statement writes, and both end in ORDER_DOC, so the two cannot drift apart.
 */
#include "api.h"

#include "outbox.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The order's document from three relations the statement names: o (the
 * order's row), l (its lines: sku, quantity, unit_price_minor) and t (its
 * timeline: status, at). */
#define ORDER_DOC                                                                                  \
    " SELECT json_build_object("                                                                   \
    " 'id', o.id, 'status', o.status, 'customer_id', o.customer_id,"                               \
    " 'customer_email', o.customer_email, 'currency', o.currency,"                                 \
    " 'total_minor', o.total_minor, 'reason', o.reason, 'invoice_id', o.invoice_id,"               \
    " 'invoice_number', o.invoice_number, 'created_at', o.created_at,"                             \
    " 'updated_at', o.updated_at,"                                                                 \
    " 'items', (SELECT coalesce(json_agg(json_build_object('sku', l.sku, 'quantity', l.quantity,"  \
    "   'unit_price_minor', l.unit_price_minor) ORDER BY l.sku), '[]') FROM l),"                   \
    " 'timeline', (SELECT coalesce(json_agg(json_build_object('status', t.status, 'at', t.at)"     \
    "   ORDER BY t.at), '[]') FROM t)"                                                             \
    ")::text AS doc FROM o"

const char api_order_doc_sql[] =
    "WITH o AS (SELECT * FROM orders WHERE id = $1::uuid AND client_id = $2),"
    " l AS (SELECT sku, quantity, unit_price_minor FROM order_lines WHERE order_id = $1::uuid),"
    " t AS (SELECT status, at FROM order_timeline WHERE order_id = $1::uuid)" ORDER_DOC;

/* The write. Its answer is ORDER_DOC over what it wrote, so a 201 shows
 * exactly what GET /orders/{id} would. */
static const char store_sql[] =
    "WITH o AS (INSERT INTO orders (id, customer_id, customer_email, currency, total_minor,"
    "   idempotency_key, request_hash, client_id) VALUES ($1::uuid, $2, $3, $4, $5, $6,"
    "   encode(sha256(convert_to($7, 'UTF8')), 'hex'), $14) RETURNING *),"
    " l AS (INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor)"
    "   SELECT $1::uuid, s, q, p FROM unnest($8::text[], $9::bigint[], $10::bigint[])"
    "   AS x(s, q, p) RETURNING sku, quantity, unit_price_minor),"
    " t AS (INSERT INTO order_timeline (order_id, status) VALUES ($1::uuid, 'PENDING')"
    "   RETURNING status, at),"
    " b AS (INSERT INTO outbox (message_id, routing_key, correlation_id, body)"
    "   VALUES ($11::uuid, $12, $1::uuid, $13))" ORDER_DOC;

/* One line's share of each array literal: a SKU (EV_SKU_MAX), a quantity or
 * a price (at most 20 characters), and a comma. */
#define LINE_MAX (EV_SKU_MAX + 24)

/* Appends to buf[*n..cap); -1 (nothing written past cap) when it does not fit. */
__attribute__((format(printf, 4, 5))) static int add(char *buf, size_t cap, size_t *n,
                                                     const char *fmt, ...)
{
    va_list ap;
    int k;
    va_start(ap, fmt);
    k = vsnprintf(buf + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= cap - *n)
        return -1;
    *n += (size_t)k;
    return 0;
}

int api_store(db_conn *db, const ev_event *ev, const char *client, const char *key,
              const char *body, char **doc, char *err, size_t errlen)
{
    const order_placed *o = &ev->u.order_placed;
    char total[24], mid[UUID_STR_LEN], *skus, *qty, *prices, *event = NULL;
    size_t cap = o->lines.n * LINE_MAX + 8, a = 0, b = 0, c = 0;
    PGresult *res = NULL;
    int rc, fits = 1;

    *doc = NULL;
    if ((rc = outbox_row(ev, NULL, mid, &event, err, errlen)) != DB_OK)
        return rc;
    skus = malloc(cap);
    qty = malloc(cap);
    prices = malloc(cap);
    if (!skus || !qty || !prices) {
        snprintf(err, errlen, "out of memory");
        rc = DB_ERR_TRANSIENT;
        goto out;
    }
    skus[a++] = qty[b++] = prices[c++] = '{';
    for (size_t i = 0; fits && i < o->lines.n; i++) {
        const ev_line *l = &o->lines.items[i];
        const char *sep = i ? "," : "";
        fits = add(skus, cap, &a, "%s%s", sep, l->sku) == 0 &&
               add(qty, cap, &b, "%s%lld", sep, (long long)l->quantity) == 0 &&
               add(prices, cap, &c, "%s%lld", sep, (long long)l->unit_price) == 0;
    }
    if (!fits || add(skus, cap, &a, "}") < 0 || add(qty, cap, &b, "}") < 0 ||
        add(prices, cap, &c, "}") < 0) {
        /* Not reached with a valid order: LINE_MAX bounds each line. */
        snprintf(err, errlen, "the order's lines do not fit their arrays");
        rc = DB_ERR;
        goto out;
    }
    {
        const char *p[] = {o->order_id,
                           o->customer_id,
                           o->customer_email,
                           o->currency,
                           util_i64(total, o->total),
                           key,
                           key ? body : NULL,
                           skus,
                           qty,
                           prices,
                           mid,
                           ev_routing_key(ev->type),
                           event,
                           client};
        rc = db_execp(db, "api_store", store_sql, 14, p, &res, err, errlen);
    }
    if (rc == DB_OK) {
        outbox_wake(); /* committed: one statement outside a transaction block */
        if (PQntuples(res) != 1 || !(*doc = strdup(db_get(res, 0, "doc")))) {
            snprintf(err, errlen, "the order was stored but its document could not be read");
            rc = DB_ERR;
        }
    }
out:
    PQclear(res);
    free(skus);
    free(qty);
    free(prices);
    free(event);
    return rc;
}
