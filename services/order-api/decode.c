/*
 * decode.c — a POST /orders body into an order.placed: strict JSON (UTF-8,
 * depth, no duplicate keys), only the known fields (prices come from the
 * catalog, never from the client), the types, then the contract's own
 * validation with its errors named as the request names them. Pure: the
 * unit tests and the fuzzer call it without a server.
 */
#include "api.h"
#include "upcast.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef api_problem problem;

int api_fail(problem *p, int status, const char *field, const char *fmt, const char *arg)
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
        return api_fail(p, 422, name, "%s is required", name);
    if (!cJSON_IsString(it))
        return api_fail(p, 422, name, "%s must be a string", name);
    if (strlen(it->valuestring) >= size)
        return api_fail(p, 422, name, "%s is too long", name);
    memcpy(dst, it->valuestring, strlen(it->valuestring) + 1);
    return 0;
}

static int only_fields(const cJSON *obj, const char *const *allowed, const char *where, problem *p)
{
    const char *dup = ev_json_duplicate_key(obj);
    char path[64];
    if (dup) {
        snprintf(path, sizeof(path), "%s%s", where, dup);
        return api_fail(p, 400, path, "duplicate key %s", dup);
    }
    for (const cJSON *it = obj->child; it; it = it->next) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(it->string, *a) == 0;
        if (!ok) {
            snprintf(path, sizeof(path), "%s%.40s", where, it->string);
            return api_fail(p, 422, path, "unknown field %s (prices come from the catalog)",
                            it->string);
        }
    }
    return 0;
}

int api_decode_request(const char *body, size_t len, order_placed *o, problem *p)
{
    static const char *const top[] = {"customer_id", "customer_email", "currency", "items", NULL};
    static const char *const item[] = {"sku", "quantity", NULL};
    char err[EV_ERR_LEN];
    const cJSON *items;
    cJSON *root = ev_json_parse(body, len, 4, err, sizeof(err));
    int n, rc = -1;

    if (!root)
        return api_fail(p, 400, NULL, "%s", err);
    if (!cJSON_IsObject(root)) {
        api_fail(p, 400, NULL, "%s", "the body must be a JSON object");
        goto out;
    }
    if (only_fields(root, top, "", p) < 0 ||
        take_string(root, "customer_id", o->customer_id, sizeof(o->customer_id), p) < 0 ||
        take_string(root, "customer_email", o->customer_email, sizeof(o->customer_email), p) < 0 ||
        take_string(root, "currency", o->currency, sizeof(o->currency), p) < 0)
        goto out;
    items = cJSON_GetObjectItemCaseSensitive(root, "items");
    if (!cJSON_IsArray(items)) {
        api_fail(p, 422, "items", "%s", "items must be an array of {sku, quantity}");
        goto out;
    }
    n = cJSON_GetArraySize(items);
    if (n < 1 || n > EV_LINES_MAX) {
        char d[64];
        snprintf(d, sizeof(d), "items must have 1 to %d entries", EV_LINES_MAX);
        api_fail(p, 422, "items", "%s", d);
        goto out;
    }
    if (ev_lines_alloc(&o->lines, (size_t)n) < 0) {
        api_fail(p, 503, NULL, "%s", "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *it = cJSON_GetArrayItem(items, i);
        char where[32], path[64];
        snprintf(where, sizeof(where), "items[%d].", i);
        if (!cJSON_IsObject(it)) {
            snprintf(path, sizeof(path), "items[%d]", i);
            api_fail(p, 422, path, "%s", "each item must be an object {sku, quantity}");
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
            api_fail(p, 422, path, "%s", "quantity must be an integer");
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int api_validate(const ev_event *ev, problem *p)
{
    char err[EV_ERR_LEN];
    size_t n;
    if (ev_validate(ev, err, sizeof(err)) == 0)
        return 0;
    /* The API's order calls its total total_minor, as order.placed 1 does. */
    ev_name_as(ev->type, 1, err, sizeof(err));
    p->status = 422;
    /* "lines[2].quantity: why" is "items[2].quantity: why" here, no longer
     * than err; the field is the part before the colon. */
    if (strncmp(err, "lines", 5) == 0)
        snprintf(p->detail, sizeof(p->detail), "items%s", err + 5);
    else
        snprintf(p->detail, sizeof(p->detail), "%s", err);
    n = strcspn(p->detail, ":");
    memcpy(p->field, p->detail, n);
    p->field[n] = '\0';
    return -1;
}

int api_json_content_type(const char *ct)
{
    size_t n = strlen("application/json");
    return ct && strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

int api_decode_order(const char *body, size_t len, ev_event *ev, api_problem *p)
{
    ev_init(ev, EV_ORDER_PLACED);
    memset(p, 0, sizeof(*p));
    /* The contract wants an order id; the real one is made after decoding. */
    snprintf(ev->u.order_placed.order_id, UUID_STR_LEN, "00000000-0000-4000-8000-000000000000");
    return api_decode_request(body, len, &ev->u.order_placed, p) < 0 || api_validate(ev, p) < 0 ? -1
                                                                                                : 0;
}
