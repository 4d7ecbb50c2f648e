/*
 * store.c — orders in the database: their write (the orders of a batch, their
 * lines, their first timeline entries and their order.placed outbox rows, in
 * one statement, so one round trip and one commit for the whole batch; the
 * writer, writer.c, decides what a batch is) and an order's document. The
 * document is built by PostgreSQL (json_build_object) in ONE place,
 * ORDER_DOC: GET /orders/{id} reads the order from its tables and the 201 of
 * POST /orders from what the write's statement wrote, and both end in
 * ORDER_DOC, so the two cannot drift apart.
 *
 * An order whose Idempotency-Key its client already used is not written:
 * the write finds the key itself and answers with the earlier order.
 *
 * The write's one parameter is a JSON array of orders (api_store_row builds
 * each with cJSON, so every value is escaped by one JSON writer and read back
 * by PostgreSQL's json_to_recordset: the statement stays parameterised
 * whatever the batch holds). Integers travel as JSON strings and are cast to
 * bigint, so no value passes through a double.
 */
#include "api.h"

#include "outbox.h"
#include "trace.h"
#include "util.h"
#include "uuid.h"

#include <cJSON.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The document of each order of o (its rows), from two more relations the
 * statement names: l (lines: order_id, sku, quantity, unit_price_minor) and
 * t (timeline: order_id, status, at); one row (id, doc) per order. */
#define ORDER_DOC                                                                                  \
    " SELECT o.id::text AS id, json_build_object("                                                 \
    " 'id', o.id, 'status', o.status, 'customer_id', o.customer_id,"                               \
    " 'customer_email', o.customer_email, 'currency', o.currency,"                                 \
    " 'total_minor', o.total_minor, 'reason', o.reason, 'invoice_id', o.invoice_id,"               \
    " 'invoice_number', o.invoice_number, 'created_at', o.created_at,"                             \
    " 'updated_at', o.updated_at,"                                                                 \
    " 'items', (SELECT coalesce(json_agg(json_build_object('sku', l.sku, 'quantity', l.quantity,"  \
    "   'unit_price_minor', l.unit_price_minor) ORDER BY l.sku), '[]') FROM l"                     \
    "   WHERE l.order_id = o.id),"                                                                 \
    " 'timeline', (SELECT coalesce(json_agg(json_build_object('status', t.status, 'at', t.at)"     \
    "   ORDER BY t.at), '[]') FROM t WHERE t.order_id = o.id)"                                     \
    ")::text AS doc FROM o"

const char api_order_doc_sql[] =
    "WITH o AS (SELECT * FROM orders WHERE id = $1::uuid AND client_id = $2),"
    " l AS (SELECT order_id, sku, quantity, unit_price_minor FROM order_lines"
    "   WHERE order_id = $1::uuid),"
    " t AS (SELECT order_id, status, at FROM order_timeline WHERE order_id = $1::uuid)" ORDER_DOC;

/* The write of a batch ($1: api_store_row's objects in an array). An order
 * whose client already used its Idempotency-Key is not written (ON CONFLICT
 * on the (client, key) constraint; nor are its lines, timeline or outbox
 * row): the write finds the key itself, so a POST with a key costs no
 * lookup before it. Its answer is ORDER_DOC over what it wrote (doc), so a
 * 201 shows exactly what GET /orders/{id} would, and for each order not
 * written its client's earlier order with that key and whether its body was
 * the same (earlier, same), when the statement's snapshot shows it: a key
 * taken by a transaction that committed after the statement began (or by
 * another order of the same batch) is not, and api_store leaves that to a
 * lookup after the commit. */
static const char store_sql[] =
    "WITH x AS (SELECT * FROM json_to_recordset($1::json) AS x(id uuid, customer_id text,"
    "   customer_email text, currency text, total_minor text, idempotency_key text,"
    "   request_hash text, client_id text, message_id uuid, routing_key text, event text,"
    "   schema_version int, lines json, traceparent text, tracestate text)),"
    " o AS (INSERT INTO orders (id, customer_id, customer_email, currency, total_minor,"
    "   idempotency_key, request_hash, client_id, traceparent, tracestate) SELECT id,"
    "   customer_id, customer_email, currency, total_minor::bigint, idempotency_key,"
    "   request_hash, client_id, traceparent, tracestate FROM x"
    "   ON CONFLICT ON CONSTRAINT orders_client_idempotency_key DO NOTHING RETURNING *),"
    " l AS (INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor)"
    "   SELECT x.id, y.sku, y.quantity::bigint, y.unit_price_minor::bigint FROM x"
    "   JOIN o ON o.id = x.id,"
    "   json_to_recordset(x.lines) AS y(sku text, quantity text, unit_price_minor text)"
    "   RETURNING order_id, sku, quantity, unit_price_minor),"
    " t AS (INSERT INTO order_timeline (order_id, status) SELECT id, 'PENDING' FROM o"
    "   RETURNING order_id, status, at),"
    " b AS (INSERT INTO outbox (message_id, routing_key, correlation_id, body, schema_version,"
    "   traceparent, tracestate) SELECT x.message_id, x.routing_key, x.id, x.event,"
    "   x.schema_version, x.traceparent, x.tracestate FROM x JOIN o ON o.id = x.id),"
    " e AS (SELECT x.id AS id, prev.id AS earlier,"
    "   coalesce(prev.request_hash = x.request_hash, false) AS same FROM x"
    "   JOIN orders prev ON prev.client_id = x.client_id"
    "   AND prev.idempotency_key = x.idempotency_key)"
    " SELECT d.id, d.doc, NULL AS earlier, NULL AS same FROM (" ORDER_DOC ") d"
    " UNION ALL SELECT id::text, NULL, earlier::text, same::text FROM e";

/* Adds k: v (a string, or null for NULL) to o; -1 when out of memory. */
static int put(cJSON *o, const char *k, const char *v)
{
    return (v ? cJSON_AddStringToObject(o, k, v) : cJSON_AddNullToObject(o, k)) ? 0 : -1;
}

/* The SHA-256 of body in lowercase hex, as encode(sha256(...), 'hex') writes
 * it (api_idem_find compares the two). -1 on failure. */
static int body_hash(const char *body, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(body, strlen(body), md, &n, EVP_sha256(), NULL) != 1 || n != 32)
        return -1;
    for (unsigned int i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

struct cJSON *api_store_row(const ev_event *ev, int version, const char *client, const char *key,
                            const char *body, char *err, size_t errlen)
{
    const order_placed *o = &ev->u.order_placed;
    char total[24], mid[UUID_STR_LEN], hash[65], tp[TRACE_PARENT_LEN], *event = NULL;
    const trace_ctx *tc = trace_current(); /* the request's server span */
    cJSON *row = NULL, *lines = NULL;
    int ok;

    if (outbox_row_version(ev, NULL, version, mid, &event, err, errlen) != DB_OK)
        return NULL;
    if (trace_valid(tc))
        trace_format(tc, tp);
    if (key && body_hash(body ? body : "", hash) < 0) {
        snprintf(err, errlen, "the request body could not be hashed");
        goto out;
    }
    ok = (row = cJSON_CreateObject()) != NULL && put(row, "id", o->order_id) == 0 &&
         put(row, "customer_id", o->customer_id) == 0 &&
         put(row, "customer_email", o->customer_email) == 0 &&
         put(row, "currency", o->currency) == 0 &&
         put(row, "total_minor", util_i64(total, o->total)) == 0 &&
         put(row, "idempotency_key", key) == 0 &&
         put(row, "request_hash", key ? hash : NULL) == 0 && put(row, "client_id", client) == 0 &&
         put(row, "message_id", mid) == 0 &&
         put(row, "routing_key", ev_routing_key(ev->type)) == 0 && put(row, "event", event) == 0 &&
         cJSON_AddNumberToObject(row, "schema_version", version) != NULL &&
         put(row, "traceparent", trace_valid(tc) ? tp : NULL) == 0 &&
         put(row, "tracestate", trace_valid(tc) && tc->state[0] ? tc->state : NULL) == 0 &&
         (lines = cJSON_AddArrayToObject(row, "lines")) != NULL;
    for (size_t i = 0; ok && i < o->lines.n; i++) {
        const ev_line *l = &o->lines.items[i];
        char q[24], p[24];
        cJSON *line = cJSON_CreateObject();
        ok = line && cJSON_AddItemToArray(lines, line); /* the row owns it from here */
        ok = ok && put(line, "sku", l->sku) == 0 &&
             put(line, "quantity", util_i64(q, l->quantity)) == 0 &&
             put(line, "unit_price_minor", util_i64(p, l->unit_price)) == 0;
        if (line && !ok && cJSON_GetArraySize(lines) == (int)i)
            cJSON_Delete(line); /* never added */
    }
    if (!ok) {
        snprintf(err, errlen, "out of memory");
        cJSON_Delete(row);
        row = NULL;
    }
out:
    free(event);
    return row;
}

int api_store(db_conn *db, struct cJSON *const *rows, size_t n, api_stored *out, char *err,
              size_t errlen)
{
    cJSON *all = cJSON_CreateArray();
    PGresult *res = NULL;
    char *param = NULL;
    int rc = DB_OK;

    for (size_t i = 0; i < n; i++)
        out[i] = (api_stored){0};
    for (size_t i = 0; all && i < n; i++) {
        if (!cJSON_AddItemReferenceToArray(all, rows[i])) {
            cJSON_Delete(all);
            all = NULL;
        }
    }
    if (!all || !(param = cJSON_PrintUnformatted(all))) {
        snprintf(err, errlen, "out of memory");
        rc = DB_ERR_TRANSIENT;
        goto out;
    }
    {
        const char *p[] = {param};
        rc = db_execp(db, "api_store", store_sql, 1, p, &res, err, errlen);
    }
    if (rc != DB_OK)
        goto out;
    outbox_wake(); /* committed: one statement outside a transaction block */
    /* Each row's outcome, matched to it by its id: the document of an order
     * written, or the earlier order of a key already used. */
    for (int r = 0; r < PQntuples(res); r++) {
        const char *id = db_get(res, r, "id"), *doc = db_get(res, r, "doc");
        const char *earlier = db_get(res, r, "earlier"), *same = db_get(res, r, "same");
        for (size_t i = 0; id && i < n; i++) {
            const cJSON *want = cJSON_GetObjectItemCaseSensitive(rows[i], "id");
            if (!cJSON_IsString(want) || strcmp(want->valuestring, id) != 0)
                continue;
            if (doc && !out[i].doc)
                out[i].doc = strdup(doc);
            else if (earlier && uuid_valid(earlier)) {
                snprintf(out[i].earlier, sizeof(out[i].earlier), "%s", earlier);
                out[i].same = same && strcmp(same, "true") == 0;
            }
        }
    }
out:
    PQclear(res);
    cJSON_Delete(all); /* references only: the rows stay the caller's */
    cJSON_free(param);
    return rc;
}
