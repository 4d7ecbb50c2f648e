/*
 * api.c — order-api's HTTP handlers.
 *
 *   POST /orders        place an order (prices from the catalog), 201 + Location
 *   GET  /orders/{id}   the order, its lines, invoice and status timeline
 *   GET  /orders        a page: ?status=&limit=&after=<id>
 *   GET  /products      the catalog
 * (/healthz, /readyz and /metrics come from the worker runtime and need
 * no token.)
 *
 * Every route here but the public catalog (GET /products) needs
 * "Authorization: Bearer <token>"; the token's client
 * (API_TOKENS or API_TOKENS_FILE, hashes only) owns the orders it places, and a client reads,
 * lists and replays (Idempotency-Key) only its own. Anything else is a 401
 * with WWW-Authenticate: Bearer, or a 404 for another client's order.
 *
 * Each pool thread has its own database connection. The order, its lines,
 * its first timeline entry and the order.placed outbox row are written in one
 * transaction. Documents are built by PostgreSQL (json_build_object), so the
 * shape of GET /orders/{id} lives in one query.
 */
#include "api.h"
#include "cfg.h"
#include "db.h"
#include "events.h"
#include "log.h"
#include "outbox.h"
#include "util.h"

#include <cJSON.h>
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IDEM_KEY_MAX 200

static const char order_doc_sql[] =
    "SELECT json_build_object("
    " 'id', o.id, 'status', o.status, 'customer_id', o.customer_id,"
    " 'customer_email', o.customer_email, 'currency', o.currency,"
    " 'total_minor', o.total_minor, 'reason', o.reason, 'invoice_id', o.invoice_id,"
    " 'invoice_number', o.invoice_number, 'created_at', o.created_at,"
    " 'updated_at', o.updated_at,"
    " 'items', (SELECT coalesce(json_agg(json_build_object('sku', l.sku, 'quantity', l.quantity,"
    "   'unit_price_minor', l.unit_price_minor) ORDER BY l.sku), '[]')"
    "   FROM order_lines l WHERE l.order_id = o.id),"
    " 'timeline', (SELECT coalesce(json_agg(json_build_object('status', t.status, 'at', t.at)"
    "   ORDER BY t.at), '[]') FROM order_timeline t WHERE t.order_id = o.id)"
    ")::text AS doc FROM orders o WHERE o.id = $1 AND o.client_id = $2";

void api_thread_exit(void *db)
{
    db_free(db);
}

/* 503 with Retry-After: the database is down; the client should come back. */
static void db_unavailable(http_resp *out)
{
    http_problem(out, 503, "Service Unavailable", "the database is unavailable; retry later", NULL);
    snprintf(out->extra_name, sizeof(out->extra_name), "Retry-After");
    snprintf(out->extra_value, sizeof(out->extra_value), "2");
}

/* The job thread's connection, connected; NULL (and a 503 in out) when the
 * database is unreachable. */
static db_conn *thread_db(http_req *r, const api_ctx *ctx, http_resp *out)
{
    http_server *s = http_server_of(r);
    db_conn *db = http_thread_local(s);
    char err[DB_ERR_LEN];

    if (!db) {
        db = db_new(ctx->database_url, ORDER_SERVICE);
        if (!db) {
            http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
            return NULL;
        }
        db_set_timeouts(db, &ctx->timeouts);
        http_set_thread_local(s, db);
    }
    if (db_ensure(db, err, sizeof(err)) != DB_OK) {
        log_warn("database unavailable: %s", err);
        db_unavailable(out);
        return NULL;
    }
    return db;
}

static void db_failure(http_resp *out, int rc, const char *err)
{
    log_error("database: %s", err);
    if (rc == DB_ERR_TRANSIENT) {
        db_unavailable(out);
    } else {
        http_problem(out, 500, "Internal Server Error", "the request could not be stored", NULL);
    }
}

/* ------------------------------------------------------- authentication */

static int client_char(int c)
{
    return isalnum(c) || c == '.' || c == '_' || c == '-';
}

static int hex_val(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One line "CLIENT HEX" into t; -1 when malformed. line is NUL-terminated. */
static int parse_token_line(const char *line, api_token *t)
{
    size_t n = 0;
    while (client_char((unsigned char)line[n]))
        n++;
    if (n < 1 || n > API_CLIENT_MAX || (line[n] != ' ' && line[n] != '\t'))
        return -1;
    memcpy(t->client, line, n);
    t->client[n] = '\0';
    line += n;
    while (*line == ' ' || *line == '\t')
        line++;
    for (int i = 0; i < 32; i++) {
        int hi = hex_val((unsigned char)line[2 * i]), lo;
        if (hi < 0 || (lo = hex_val((unsigned char)line[2 * i + 1])) < 0)
            return -1;
        t->hash[i] = (unsigned char)(hi << 4 | lo);
    }
    line += 64;
    while (*line == ' ' || *line == '\t' || *line == '\r')
        line++;
    return *line == '\0' ? 0 : -1;
}

int api_tokens_parse(const char *text, api_token **out, size_t *n, char *err, size_t errlen)
{
    api_token *v = NULL;
    size_t cap = 0, len = 0;
    int lineno = 0;

    *out = NULL;
    *n = 0;
    while (*text) {
        size_t ll = strcspn(text, "\n");
        char line[256];
        const char *p = line;

        lineno++;
        if (ll >= sizeof(line)) {
            snprintf(err, errlen, "API_TOKENS line %d: too long", lineno);
            goto fail;
        }
        memcpy(line, text, ll);
        line[ll] = '\0';
        text += ll + (text[ll] == '\n');
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '#' || *p == '\r')
            continue;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            api_token *nv = realloc(v, ncap * sizeof(*nv));
            if (!nv) {
                snprintf(err, errlen, "API_TOKENS: out of memory");
                goto fail;
            }
            v = nv;
            cap = ncap;
        }
        if (parse_token_line(p, &v[len]) < 0) {
            snprintf(err, errlen,
                     "API_TOKENS line %d: want \"CLIENT SHA256-HEX\" (scripts/api-token.sh)",
                     lineno);
            goto fail;
        }
        len++;
    }
    if (len == 0) {
        snprintf(err, errlen, "API_TOKENS has no tokens; make one with scripts/api-token.sh");
        goto fail;
    }
    *out = v;
    *n = len;
    return 0;
fail:
    free(v);
    return -1;
}

const char *api_authenticate(const api_ctx *ctx, const char *authorization)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    const char *tok, *found = NULL;
    size_t n = 0;

    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    /* RFC 6750 b64token: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "="s. */
    while (tok[n] && (isalnum((unsigned char)tok[n]) || strchr("-._~+/", tok[n])))
        n++;
    while (tok[n] == '=')
        n++;
    if (n == 0 || n > API_TOKEN_MAX || tok[n] != '\0')
        return NULL;
    if (EVP_Digest(tok, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return NULL;
    /* Every entry is compared, so the time taken does not tell which matched. */
    for (size_t i = 0; i < ctx->ntokens; i++) {
        if (CRYPTO_memcmp(md, ctx->tokens[i].hash, 32) == 0)
            found = ctx->tokens[i].client;
    }
    return found;
}

/* The request's client, or NULL with a 401 in out. */
static const char *client_of(http_req *r, const api_ctx *ctx, http_resp *out)
{
    const char *auth = http_header(r, "Authorization");
    const char *client = api_authenticate(ctx, auth);
    if (client)
        return client;
    http_problem(out, 401, "Unauthorized",
                 auth ? "the bearer token is not valid" : "send Authorization: Bearer <token>",
                 NULL);
    snprintf(out->extra_name, sizeof(out->extra_name), "WWW-Authenticate");
    snprintf(out->extra_value, sizeof(out->extra_value), "Bearer realm=\"ordersuite\"%s",
             auth ? ", error=\"invalid_token\"" : "");
    return NULL;
}

/* Runs a query returning one text column `doc`; 200 with it, 404 when no row. */
static void respond_doc(http_req *r, const api_ctx *ctx, http_resp *out, const char *name,
                        const char *sql, int n, const char *const *p, int status)
{
    db_conn *db = thread_db(r, ctx, out);
    PGresult *res;
    char err[DB_ERR_LEN];
    int rc;

    if (!db)
        return;
    rc = db_execp(db, name, sql, n, p, &res, err, sizeof(err));
    if (rc != DB_OK) {
        db_failure(out, rc, err);
        return;
    }
    if (PQntuples(res) == 0 || !db_get(res, 0, "doc"))
        http_problem(out, 404, "Not Found", "no such order", NULL);
    else
        http_json(out, status, strdup(db_get(res, 0, "doc")));
    PQclear(res);
}

/* ---------------------------------------------------------- POST /orders */

typedef api_problem problem;

static int fail(problem *p, int status, const char *field, const char *fmt, const char *arg)
{
    p->status = status;
    snprintf(p->field, sizeof(p->field), "%s", field ? field : "");
    snprintf(p->detail, sizeof(p->detail), fmt, arg);
    return -1;
}

static int take_string(const cJSON *root, const char *name, char *dst, size_t size, problem *p)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!it || cJSON_IsNull(it))
        return fail(p, 422, name, "%s is required", name);
    if (!cJSON_IsString(it))
        return fail(p, 422, name, "%s must be a string", name);
    if (strlen(it->valuestring) >= size)
        return fail(p, 422, name, "%s is too long", name);
    memcpy(dst, it->valuestring, strlen(it->valuestring) + 1);
    return 0;
}

static int only_fields(const cJSON *obj, const char *const *allowed, const char *where, problem *p)
{
    const char *dup = ev_json_duplicate_key(obj);
    char path[64];
    if (dup) {
        snprintf(path, sizeof(path), "%s%s", where, dup);
        return fail(p, 400, path, "duplicate key %s", dup);
    }
    for (const cJSON *it = obj->child; it; it = it->next) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(it->string, *a) == 0;
        if (!ok) {
            snprintf(path, sizeof(path), "%s%.40s", where, it->string);
            return fail(p, 422, path, "unknown field %s (prices come from the catalog)",
                        it->string);
        }
    }
    return 0;
}

/* Reads the request into o (lines without prices). */
static int parse_request(const char *body, size_t len, order_placed *o, problem *p)
{
    static const char *const top[] = {"customer_id", "customer_email", "currency", "items", NULL};
    static const char *const item[] = {"sku", "quantity", NULL};
    char err[EV_ERR_LEN];
    const cJSON *items;
    cJSON *root = ev_json_parse(body, len, 4, err, sizeof(err));
    int n, rc = -1;

    if (!root)
        return fail(p, 400, NULL, "%s", err);
    if (!cJSON_IsObject(root)) {
        fail(p, 400, NULL, "%s", "the body must be a JSON object");
        goto out;
    }
    if (only_fields(root, top, "", p) < 0 ||
        take_string(root, "customer_id", o->customer_id, sizeof(o->customer_id), p) < 0 ||
        take_string(root, "customer_email", o->customer_email, sizeof(o->customer_email), p) < 0 ||
        take_string(root, "currency", o->currency, sizeof(o->currency), p) < 0)
        goto out;
    items = cJSON_GetObjectItemCaseSensitive(root, "items");
    if (!cJSON_IsArray(items)) {
        fail(p, 422, "items", "%s", "items must be an array of {sku, quantity}");
        goto out;
    }
    n = cJSON_GetArraySize(items);
    if (n < 1 || n > EV_LINES_MAX) {
        char d[64];
        snprintf(d, sizeof(d), "items must have 1 to %d entries", EV_LINES_MAX);
        fail(p, 422, "items", "%s", d);
        goto out;
    }
    if (ev_lines_alloc(&o->lines, (size_t)n) < 0) {
        fail(p, 503, NULL, "%s", "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *it = cJSON_GetArrayItem(items, i);
        char where[32], path[64];
        snprintf(where, sizeof(where), "items[%d].", i);
        if (!cJSON_IsObject(it)) {
            snprintf(path, sizeof(path), "items[%d]", i);
            fail(p, 422, path, "%s", "each item must be an object {sku, quantity}");
            goto out;
        }
        if (only_fields(it, item, where, p) < 0)
            goto out;
        snprintf(path, sizeof(path), "items[%d].sku", i);
        if (take_string(it, "sku", o->lines.items[i].sku, sizeof(o->lines.items[i].sku), p) < 0) {
            snprintf(p->field, sizeof(p->field), "%s", path);
            goto out;
        }
        snprintf(path, sizeof(path), "items[%d].quantity", i);
        if (ev_json_int(cJSON_GetObjectItemCaseSensitive(it, "quantity"),
                        &o->lines.items[i].quantity) < 0) {
            fail(p, 422, path, "%s", "quantity must be an integer");
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* Runs the contract's validation on the order and reports errors in terms of
 * the request ("lines[2]..." is "items[2]..." here). */
static int validate(const ev_event *ev, problem *p)
{
    char err[EV_ERR_LEN];
    char *colon;
    if (ev_validate(ev, err, sizeof(err)) == 0)
        return 0;
    colon = strchr(err, ':');
    if (colon)
        *colon = '\0';
    p->status = 422;
    if (strncmp(err, "lines", 5) == 0)
        snprintf(p->field, sizeof(p->field), "items%s", err + 5);
    else
        snprintf(p->field, sizeof(p->field), "%s", err);
    snprintf(p->detail, sizeof(p->detail), "%s:%s", p->field, colon ? colon + 1 : "");
    return -1;
}

/* Fills in the catalog prices and the total. */
static int price(db_conn *db, order_placed *o, problem *p, int *dbrc, char *err, size_t errlen)
{
    char skus[EV_LINES_MAX * (EV_SKU_MAX + 3) + 3];
    size_t n = 0;
    PGresult *res;
    const char *params[1];

    skus[n++] = '{';
    for (size_t i = 0; i < o->lines.n; i++)
        n += (size_t)snprintf(skus + n, sizeof(skus) - n, "%s\"%s\"", i ? "," : "",
                              o->lines.items[i].sku);
    skus[n++] = '}';
    skus[n] = '\0';
    params[0] = skus;
    *dbrc = db_execp(db, "api_prices",
                     "SELECT sku, price_minor, currency FROM products WHERE sku = ANY($1::text[])",
                     1, params, &res, err, errlen);
    if (*dbrc != DB_OK)
        return -1;
    o->total = 0;
    for (size_t i = 0; i < o->lines.n; i++) {
        int found = -1;
        for (int row = 0; row < PQntuples(res); row++) {
            if (strcmp(db_get(res, row, "sku"), o->lines.items[i].sku) == 0)
                found = row;
        }
        if (found < 0) {
            char path[32];
            snprintf(path, sizeof(path), "items[%zu].sku", i);
            PQclear(res);
            return fail(p, 422, path, "unknown SKU %s (see GET /products)", o->lines.items[i].sku);
        }
        if (strcmp(db_get(res, found, "currency"), o->currency) != 0) {
            char d[80];
            snprintf(d, sizeof(d), "the catalog sells in %s", db_get(res, found, "currency"));
            PQclear(res);
            return fail(p, 422, "currency", "%s", d);
        }
        ev_line *l = &o->lines.items[i];
        int64_t line_total;
        l->unit_price = strtoll(db_get(res, found, "price_minor"), NULL, 10);
        /* The quantity was checked against the contract (validate); the
         * catalog's price is checked here, before multiplying: a price
         * beyond the contract is the server's data, not the client's input. */
        if (l->unit_price < 0 || l->unit_price > EV_PRICE_MAX ||
            __builtin_mul_overflow(l->unit_price, l->quantity, &line_total) ||
            __builtin_add_overflow(o->total, line_total, &o->total)) {
            log_error("catalog price of %s (%s) is outside the contract's 0..%lld", l->sku,
                      db_get(res, found, "price_minor"), (long long)EV_PRICE_MAX);
            PQclear(res);
            return fail(p, 500, NULL, "the catalog price of %s is out of range", l->sku);
        }
    }
    PQclear(res);
    return 0;
}

static int json_content_type(const char *ct)
{
    size_t n = strlen("application/json");
    return ct && strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static int valid_idem_key(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > IDEM_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < 0x21 || k[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* Looks up the client's earlier order with the same Idempotency-Key: 1 and its id when
 * found (same = the body was the same), 0 when none, -1 on database error. */
static int find_idem(db_conn *db, const char *client, const char *key, const char *body,
                     char id[UUID_STR_LEN], int *same, int *dbrc, char *err, size_t errlen)
{
    const char *p[] = {key, body, client};
    PGresult *res;
    int found;
    *dbrc = db_execp(db, "api_idem",
                     "SELECT id, request_hash = encode(sha256(convert_to($2, 'UTF8')), 'hex')"
                     " AS same FROM orders WHERE client_id = $3 AND idempotency_key = $1",
                     3, p, &res, err, errlen);
    if (*dbrc != DB_OK)
        return -1;
    found = PQntuples(res) == 1;
    if (found) {
        snprintf(id, UUID_STR_LEN, "%s", db_get(res, 0, "id"));
        *same = strcmp(db_get(res, 0, "same"), "t") == 0;
    }
    PQclear(res);
    return found;
}

/* The write, in one statement (so one round trip and one commit): the order,
 * its lines, the first timeline entry and the order.placed outbox row. It
 * answers with the order's document, built like order_doc_sql's from what was
 * written, so a 201 shows exactly what GET /orders/{id} would. */
static const char store_sql[] =
    "WITH o AS (INSERT INTO orders (id, customer_id, customer_email, currency, total_minor,"
    "   idempotency_key, request_hash, client_id) VALUES ($1::uuid, $2, $3, $4, $5, $6,"
    "   encode(sha256(convert_to($7, 'UTF8')), 'hex'), $14) RETURNING *),"
    " l AS (INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor)"
    "   SELECT $1::uuid, s, q, p FROM unnest($8::text[], $9::bigint[], $10::bigint[]) AS x(s, q, "
    "p)),"
    " t AS (INSERT INTO order_timeline (order_id, status) VALUES ($1::uuid, 'PENDING')"
    "   RETURNING status, at),"
    " b AS (INSERT INTO outbox (message_id, routing_key, correlation_id, body)"
    "   VALUES ($11::uuid, $12, $1::uuid, $13))"
    " SELECT json_build_object("
    " 'id', o.id, 'status', o.status, 'customer_id', o.customer_id,"
    " 'customer_email', o.customer_email, 'currency', o.currency,"
    " 'total_minor', o.total_minor, 'reason', o.reason, 'invoice_id', o.invoice_id,"
    " 'invoice_number', o.invoice_number, 'created_at', o.created_at,"
    " 'updated_at', o.updated_at,"
    " 'items', (SELECT json_agg(json_build_object('sku', s, 'quantity', q,"
    "   'unit_price_minor', p) ORDER BY s)"
    "   FROM unnest($8::text[], $9::bigint[], $10::bigint[]) AS x(s, q, p)),"
    " 'timeline', json_build_array(json_build_object('status', t.status, 'at', t.at))"
    ")::text AS doc FROM o, t";

/* Writes the order; *doc (malloc'd) is its document. */
static int store(db_conn *db, const ev_event *ev, const char *client, const char *key,
                 const char *body, char **doc, char *err, size_t errlen)
{
    const order_placed *o = &ev->u.order_placed;
    char total[24], mid[UUID_STR_LEN], *skus, *qty, *prices, *event = NULL;
    size_t cap = o->lines.n * 40 + 8, a = 0, b = 0, c = 0;
    PGresult *res = NULL;
    int rc;

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
    for (size_t i = 0; i < o->lines.n; i++) {
        const ev_line *l = &o->lines.items[i];
        a += (size_t)snprintf(skus + a, cap - a, "%s%s", i ? "," : "", l->sku);
        b += (size_t)snprintf(qty + b, cap - b, "%s%lld", i ? "," : "", (long long)l->quantity);
        c +=
            (size_t)snprintf(prices + c, cap - c, "%s%lld", i ? "," : "", (long long)l->unit_price);
    }
    snprintf(skus + a, cap - a, "}");
    snprintf(qty + b, cap - b, "}");
    snprintf(prices + c, cap - c, "}");
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

int api_decode_order(const char *body, size_t len, ev_event *ev, api_problem *p)
{
    ev_init(ev, EV_ORDER_PLACED);
    memset(p, 0, sizeof(*p));
    /* The contract wants an order id; the real one is made after decoding. */
    snprintf(ev->u.order_placed.order_id, UUID_STR_LEN, "00000000-0000-4000-8000-000000000000");
    return parse_request(body, len, &ev->u.order_placed, p) < 0 || validate(ev, p) < 0 ? -1 : 0;
}

static void replay(http_req *r, const api_ctx *ctx, http_resp *out, const char *client,
                   const char *id)
{
    const char *p[] = {id, client};
    respond_doc(r, ctx, out, "api_doc", order_doc_sql, 2, p, 200);
    snprintf(out->extra_name, sizeof(out->extra_name), "Idempotent-Replayed");
    snprintf(out->extra_value, sizeof(out->extra_value), "true");
    snprintf(out->location, sizeof(out->location), "/orders/%s", id);
}

static void post_order(http_req *r, void *cls, http_resp *out)
{
    const api_ctx *ctx = cls;
    const char *key = http_header(r, "Idempotency-Key");
    const char *body, *client;
    size_t len;
    problem prob = {0};
    ev_event ev;
    order_placed *o = &ev.u.order_placed;
    db_conn *db;
    char err[DB_ERR_LEN], existing[UUID_STR_LEN], *doc = NULL;
    int rc = DB_OK, same = 0;

    ev_init(&ev, EV_ORDER_PLACED);
    if (!(client = client_of(r, ctx, out)))
        return;
    if (!json_content_type(http_header(r, "Content-Type"))) {
        http_problem(out, 415, "Unsupported Media Type", "send Content-Type: application/json",
                     NULL);
        return;
    }
    if (key && !valid_idem_key(key)) {
        http_problem(out, 400, "Bad Request",
                     "Idempotency-Key must be 1-200 printable ASCII characters", NULL);
        return;
    }
    if (uuid_v4(o->order_id) < 0) {
        http_problem(out, 503, "Service Unavailable", "no randomness for an order id", NULL);
        goto out;
    }
    body = http_body(r, &len);
    if (parse_request(body, len, o, &prob) < 0 || validate(&ev, &prob) < 0)
        goto problem;
    if (!(db = thread_db(r, ctx, out)))
        goto out;
    if (key) {
        int found = find_idem(db, client, key, body, existing, &same, &rc, err, sizeof(err));
        if (found < 0)
            goto db_error;
        if (found && !same) {
            http_problem(out, 409, "Conflict",
                         "this Idempotency-Key was used with another request body", NULL);
            goto out;
        }
        if (found) {
            replay(r, ctx, out, client, existing);
            goto out;
        }
    }
    if (price(db, o, &prob, &rc, err, sizeof(err)) < 0) {
        if (rc != DB_OK)
            goto db_error;
        if (prob.status == 500) {
            http_problem(out, 500, "Internal Server Error", prob.detail, NULL);
            goto out;
        }
        goto problem;
    }
    if (validate(&ev, &prob) < 0)
        goto problem; /* e.g. a total beyond the contract's range */
    rc = store(db, &ev, client, key, body, &doc, err, sizeof(err));
    if (rc != DB_OK) {
        /* Two requests with one key at once: the loser answers as a replay. */
        if (key && strcmp(db_last_sqlstate(db), "23505") == 0 &&
            find_idem(db, client, key, body, existing, &same, &rc, err, sizeof(err)) == 1) {
            if (same)
                replay(r, ctx, out, client, existing);
            else
                http_problem(out, 409, "Conflict",
                             "this Idempotency-Key was used with another request body", NULL);
            goto out;
        }
        goto db_error;
    }
    log_write(LOG_INFO, o->order_id, NULL, "order %s placed: %zu lines, total %lld %s", o->order_id,
              o->lines.n, (long long)o->total, o->currency);
    http_json(out, 201, doc);
    snprintf(out->location, sizeof(out->location), "/orders/%s", o->order_id);
    goto out;
problem:
    http_problem(out, prob.status, prob.status == 400 ? "Bad Request" : "Unprocessable Content",
                 prob.detail, prob.field[0] ? prob.field : NULL);
    goto out;
db_error:
    db_failure(out, rc, err);
out:
    ev_free(&ev);
}

/* ------------------------------------------------------------ the GETs */

static void get_order(http_req *r, void *cls, http_resp *out)
{
    const char *id = http_path_rest(r);
    const char *client = client_of(r, cls, out);
    const char *p[] = {id, client};
    if (!client)
        return;
    if (!uuid_valid(id)) {
        http_problem(out, 404, "Not Found", "not an order id", NULL);
        return;
    }
    /* Another client's order is "no such order", like one that does not exist. */
    respond_doc(r, cls, out, "api_doc", order_doc_sql, 2, p, 200);
}

static void list_orders(http_req *r, void *cls, http_resp *out)
{
    static const char *const statuses[] = {"PENDING",        "RESERVED",  "CONFIRMED", "REJECTED",
                                           "PAYMENT_FAILED", "CANCELLED", NULL};
    const char *status = http_query(r, "status");
    const char *limit = http_query(r, "limit");
    const char *after = http_query(r, "after");
    const char *client = client_of(r, cls, out);
    long n = 20;
    char lim[24], err[128];
    const char *p[4];
    int ok = !status;

    if (!client)
        return;
    for (const char *const *s = statuses; status && *s; s++)
        ok |= strcmp(*s, status) == 0;
    if (!ok) {
        http_problem(out, 422, "Unprocessable Content",
                     "status must be one of PENDING, RESERVED, CONFIRMED, REJECTED, "
                     "PAYMENT_FAILED, CANCELLED",
                     "status");
        return;
    }
    if (limit) {
        if (cfg_parse_long("limit", limit, 1, 100, &n, err, sizeof(err)) < 0) {
            http_problem(out, 422, "Unprocessable Content", err, "limit");
            return;
        }
    }
    if (after && !uuid_valid(after)) {
        http_problem(out, 422, "Unprocessable Content", "after must be an order id", "after");
        return;
    }
    p[0] = status;
    p[1] = util_i64(lim, n);
    p[2] = after;
    p[3] = client;
    respond_doc(r, cls, out, "api_list",
                "SELECT json_build_object('orders', coalesce(json_agg(json_build_object("
                " 'id', x.id, 'status', x.status, 'customer_id', x.customer_id,"
                " 'total_minor', x.total_minor, 'currency', x.currency,"
                " 'created_at', x.created_at) ORDER BY x.created_at, x.id), '[]'),"
                " 'next', CASE WHEN count(*) = $2::int THEN"
                " (array_agg(x.id ORDER BY x.created_at DESC, x.id DESC))[1] END)::text AS doc"
                " FROM (SELECT id, status, customer_id, total_minor, currency, created_at"
                " FROM orders WHERE client_id = $4 AND ($1::text IS NULL OR status = $1)"
                " AND ($3::uuid IS NULL OR (created_at, id) >"
                " (SELECT created_at, id FROM orders WHERE id = $3::uuid AND client_id = $4))"
                " ORDER BY created_at, id LIMIT $2::int) x",
                4, p, 200);
}

/* The public catalog: no token needed (the tills read it, see pos). */
static void get_products(http_req *r, void *cls, http_resp *out)
{
    respond_doc(r, cls, out, "api_products",
                "SELECT coalesce(json_agg(json_build_object('sku', sku, 'name', name,"
                " 'price_minor', price_minor, 'currency', currency) ORDER BY sku), '[]')::text"
                " AS doc FROM products",
                0, NULL, 200);
}

/* Not quick: they query the database, so they run on the HTTP job threads. */
static const http_route routes[] = {
    {"POST", "/orders", 0, post_order, NULL, 0},
    {"GET", "/orders", 0, list_orders, NULL, 0},
    {"GET", "/orders/", 1, get_order, NULL, 0},
    {"GET", "/products", 0, get_products, NULL, 0},
};

const http_route *api_routes(size_t *n)
{
    *n = sizeof(routes) / sizeof(routes[0]);
    return routes;
}
