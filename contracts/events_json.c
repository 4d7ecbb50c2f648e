/*
 * events_json.c — the JSON form of the events (see events.h): the encoder,
 * the strict reader shared with the HTTP API (UTF-8, depth, \u0000,
 * duplicate keys, integers within 2^53), and the decoder.
 *
 * Decoding happens in two steps: the JSON is read into the struct (types,
 * lengths, integer-ness; a string longer than its buffer is an error, never
 * cut), then ev_validate (events_valid.c) checks values (patterns, ranges,
 * totals) exactly as it does before encoding.
 */
#include "events_int.h"
#include "upcast.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

#define MAX_DEPTH 4 /* object > lines array > line object, plus one spare */

/* -------------------------------------------------------------- encoding */

static int add_field(cJSON *obj, const field *f, const char *p)
{
    switch (f->kind) {
    case K_INT:
        return cJSON_AddNumberToObject(obj, f->json, (double)*(const int64_t *)p) ? 0 : -1;
    case K_LINES: {
        const ev_lines *l = (const ev_lines *)p;
        cJSON *arr = cJSON_AddArrayToObject(obj, f->json);
        if (!arr)
            return -1;
        for (size_t i = 0; i < l->n; i++) {
            cJSON *o = cJSON_CreateObject();
            if (!o || !cJSON_AddItemToArray(arr, o) ||
                !cJSON_AddStringToObject(o, "sku", l->items[i].sku) ||
                !cJSON_AddNumberToObject(o, "quantity", (double)l->items[i].quantity) ||
                !cJSON_AddNumberToObject(o, "unit_price_minor", (double)l->items[i].unit_price))
                return -1;
        }
        return 0;
    }
    case K_SKUS: {
        const ev_skus *k = (const ev_skus *)p;
        cJSON *arr = cJSON_AddArrayToObject(obj, f->json);
        if (!arr)
            return -1;
        for (size_t i = 0; i < k->n; i++) {
            cJSON *s = cJSON_CreateString(k->items[i]);
            if (!s || !cJSON_AddItemToArray(arr, s))
                return -1;
        }
        return 0;
    }
    default:
        if (f->optional && p[0] == '\0')
            return 0;
        return cJSON_AddStringToObject(obj, f->json, p) ? 0 : -1;
    }
}

char *ev_to_json(const ev_event *ev, const char *causation_id, char *err, size_t errlen)
{
    return ev_to_json_version(ev, causation_id, EV_SCHEMA_VERSION, err, errlen);
}

char *ev_to_json_version(const ev_event *ev, const char *causation_id, int version, char *err,
                         size_t errlen)
{
    const event_desc *d;
    cJSON *root;
    char *out = NULL;

    if (ev_validate(ev, err, errlen) < 0) {
        ev_name_as(ev->type, version, err, errlen);
        return NULL;
    }
    if (ev_version_check(ev->type, version, err, errlen) < 0)
        return NULL;
    if (causation_id && *causation_id && !uuid_valid(causation_id)) {
        snprintf(err, errlen, "causation_id: must be a UUID");
        return NULL;
    }
    d = &ev__events[ev->type];
    root = cJSON_CreateObject();
    if (!root)
        goto oom;
    if (causation_id && *causation_id &&
        !cJSON_AddStringToObject(root, "causation_id", causation_id))
        goto oom;
    for (size_t i = 0; i < d->nfields; i++) {
        if (add_field(root, &d->fields[i], (const char *)&ev->u + d->fields[i].off) < 0)
            goto oom;
    }
    /* The table is the latest version; an older one is written from it. */
    if (ev__downcast(ev->type, version, root) < 0)
        goto oom;
    out = cJSON_PrintUnformatted(root);
    if (!out)
        goto oom;
    cJSON_Delete(root);
    return out;
oom:
    cJSON_Delete(root);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

/* -------------------------------------------------------------- decoding */

/* Deepest nesting of [ and { outside strings, without parsing. Lets a
 * hostile body ("[[[[[[...") be refused before cJSON recurses into it. */
int ev_json_depth(const char *s, size_t len)
{
    int depth = 0, max = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                max = depth;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return max;
}

/* 1 when a string of the JSON text s holds the escape \u0000: cJSON
 * decodes it to a NUL byte, where every C string stops, so "<uuid>\u0000x"
 * would be read as the UUID. (An escaped backslash before u0000 is text.) */
static int has_escaped_nul(const char *s, size_t len)
{
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        if (!in_str) {
            in_str = s[i] == '"';
        } else if (s[i] == '"') {
            in_str = 0;
        } else if (s[i] == '\\') {
            if (len - i > 5 && memcmp(s + i + 1, "u0000", 5) == 0)
                return 1;
            i++;
        }
    }
    return 0;
}

/* JSON has no leading zeros (RFC 8259 6): cJSON reads 01 as 1, a strict
 * reader refuses it. Outside strings, a number starts after a character that
 * cannot be part of one; "-0", "0", "0.5" and "0e1" are fine, "01" and "-00"
 * are not. */
static int has_leading_zero(const char *s, size_t len)
{
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        if (in_str) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == '"')
                in_str = 0;
            continue;
        }
        if (s[i] == '"') {
            in_str = 1;
            continue;
        }
        if (i > 0 && (isdigit((unsigned char)s[i - 1]) || s[i - 1] == '.' || s[i - 1] == '-' ||
                      s[i - 1] == '+' || s[i - 1] == 'e' || s[i - 1] == 'E'))
            continue; /* inside a number, or its sign: judged at its start */
        size_t j = i + (s[i] == '-');
        if (j + 1 < len && s[j] == '0' && isdigit((unsigned char)s[j + 1]))
            return 1;
    }
    return 0;
}

/* cJSON keeps both members of {"a":1,"a":2}; a strict reader refuses it. */
const char *ev_json_duplicate_key(const cJSON *obj)
{
    for (const cJSON *a = obj->child; a; a = a->next) {
        for (const cJSON *b = a->next; b; b = b->next) {
            if (a->string && b->string && strcmp(a->string, b->string) == 0)
                return a->string;
        }
    }
    return NULL;
}

/* A JSON number that is an integer exactly representable in a double. */
int ev_json_int(const cJSON *it, int64_t *out)
{
    double d;
    if (!cJSON_IsNumber(it))
        return -1;
    d = it->valuedouble;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0)
        return -1;
    *out = (int64_t)d;
    return 0;
}

static int copy_str(const cJSON *it, char *dst, size_t size, const char *name, const char *idx,
                    char *err, size_t errlen)
{
    size_t n;
    if (!cJSON_IsString(it)) {
        snprintf(err, errlen, "%s%s: must be a string", name, idx);
        return -1;
    }
    n = strlen(it->valuestring);
    if (n >= size) {
        snprintf(err, errlen, "%s%s: longer than %zu bytes", name, idx, size - 1);
        return -1;
    }
    memcpy(dst, it->valuestring, n + 1);
    return 0;
}

static int read_lines(const cJSON *arr, const char *name, ev_lines *l, char *err, size_t errlen)
{
    int n;
    char idx[32];
    if (!cJSON_IsArray(arr)) {
        snprintf(err, errlen, "%s: must be an array", name);
        return -1;
    }
    n = cJSON_GetArraySize(arr);
    if (n < 1 || n > EV_LINES_MAX) {
        snprintf(err, errlen, "%s: must have 1 to %d entries", name, EV_LINES_MAX);
        return -1;
    }
    if (ev_lines_alloc(l, (size_t)n) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *o = cJSON_GetArrayItem(arr, i);
        const cJSON *q, *p;
        const char *dup;
        ev_line *x = &l->items[i];
        if (!cJSON_IsObject(o)) {
            snprintf(err, errlen, "%s[%d]: must be an object", name, i);
            return -1;
        }
        if ((dup = ev_json_duplicate_key(o)) != NULL) {
            snprintf(err, errlen, "%s[%d].%s: duplicate key", name, i, dup);
            return -1;
        }
        snprintf(idx, sizeof(idx), "[%d].sku", i);
        if (!cJSON_GetObjectItemCaseSensitive(o, "sku")) {
            snprintf(err, errlen, "%s%s: missing", name, idx);
            return -1;
        }
        if (copy_str(cJSON_GetObjectItemCaseSensitive(o, "sku"), x->sku, sizeof(x->sku), name, idx,
                     err, errlen))
            return -1;
        q = cJSON_GetObjectItemCaseSensitive(o, "quantity");
        p = cJSON_GetObjectItemCaseSensitive(o, "unit_price_minor");
        if (!q || ev_json_int(q, &x->quantity) < 0) {
            snprintf(err, errlen, "%s[%d].quantity: %s", name, i,
                     q ? "must be an integer" : "missing");
            return -1;
        }
        if (!p || ev_json_int(p, &x->unit_price) < 0) {
            snprintf(err, errlen, "%s[%d].unit_price_minor: %s", name, i,
                     p ? "must be an integer" : "missing");
            return -1;
        }
    }
    return 0;
}

static int read_skus(const cJSON *arr, const char *name, ev_skus *k, char *err, size_t errlen)
{
    int n;
    char idx[16];
    if (!cJSON_IsArray(arr)) {
        snprintf(err, errlen, "%s: must be an array", name);
        return -1;
    }
    n = cJSON_GetArraySize(arr);
    if (n > EV_LINES_MAX) {
        snprintf(err, errlen, "%s: at most %d entries", name, EV_LINES_MAX);
        return -1;
    }
    k->n = 0;
    k->items = n ? calloc((size_t)n, sizeof(*k->items)) : NULL;
    if (n && !k->items) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    k->n = (size_t)n;
    for (int i = 0; i < n; i++) {
        snprintf(idx, sizeof(idx), "[%d]", i);
        if (copy_str(cJSON_GetArrayItem(arr, i), k->items[i], sizeof(k->items[i]), name, idx, err,
                     errlen))
            return -1;
    }
    return 0;
}

static int read_field(const cJSON *root, const field *f, char *p, char *err, size_t errlen)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, f->json);
    if (!it || cJSON_IsNull(it)) {
        if (f->optional)
            return 0;
        snprintf(err, errlen, "%s: missing", f->json);
        return -1;
    }
    switch (f->kind) {
    case K_INT:
        if (ev_json_int(it, (int64_t *)p) < 0) {
            snprintf(err, errlen, "%s: must be an integer (at most 2^53)", f->json);
            return -1;
        }
        return 0;
    case K_LINES:
        return read_lines(it, f->json, (ev_lines *)p, err, errlen);
    case K_SKUS:
        return read_skus(it, f->json, (ev_skus *)p, err, errlen);
    default:
        if (copy_str(it, p, f->size, f->json, "", err, errlen) < 0)
            return -1;
        /* "" is "unset" for an optional field; a required one must be there. */
        return 0;
    }
}

cJSON *ev_json_parse(const char *body, size_t len, int max_depth, char *err, size_t errlen)
{
    const char *end = NULL;
    char *buf;
    cJSON *root;

    if (!ev_utf8_valid(body, len) || memchr(body, '\0', len)) {
        snprintf(err, errlen, "body: not valid UTF-8 text");
        return NULL;
    }
    if (has_escaped_nul(body, len)) {
        snprintf(err, errlen, "body: a string holds \\u0000 (NUL), which no field may");
        return NULL;
    }
    if (has_leading_zero(body, len)) {
        snprintf(err, errlen, "body: a number with a leading zero (JSON has none)");
        return NULL;
    }
    if (ev_json_depth(body, len) > max_depth) {
        snprintf(err, errlen, "body: nested deeper than %d levels", max_depth);
        return NULL;
    }
    /* cJSON 1.7.15 may read past a buffer that is not NUL-terminated. */
    buf = malloc(len + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(buf, body, len);
    buf[len] = '\0';
    root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
    if (!root)
        snprintf(err, errlen, "body: malformed JSON near byte %ld", end ? (long)(end - buf) : -1L);
    free(buf);
    return root;
}

int ev_from_json(ev_type t, const char *body, size_t len, ev_event *out,
                 char causation_id[UUID_STR_LEN], char *err, size_t errlen)
{
    return ev_from_json_version(t, EV_SCHEMA_VERSION, body, len, out, causation_id, err, errlen);
}

int ev_from_json_version(ev_type t, int version, const char *body, size_t len, ev_event *out,
                         char causation_id[UUID_STR_LEN], char *err, size_t errlen)
{
    const event_desc *d;
    const char *dup;
    const cJSON *cause;
    cJSON *root = NULL;
    int rc = -1;

    ev_init(out, t);
    if (causation_id)
        causation_id[0] = '\0';
    if ((unsigned)t >= EV__COUNT) {
        snprintf(err, errlen, "type: unknown event type");
        return -1;
    }
    d = &ev__events[t];
    if (ev_version_check(t, version, err, errlen) < 0)
        return -1;
    if (len > EV_BODY_MAX) {
        snprintf(err, errlen, "body: larger than %d bytes", EV_BODY_MAX);
        return -1;
    }
    root = ev_json_parse(body, len, MAX_DEPTH, err, errlen);
    if (!root)
        goto out;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "body: must be a JSON object");
        goto out;
    }
    if ((dup = ev_json_duplicate_key(root)) != NULL) {
        snprintf(err, errlen, "%s: duplicate key", dup);
        goto out;
    }
    cause = cJSON_GetObjectItemCaseSensitive(root, "causation_id");
    if (cause && !cJSON_IsNull(cause)) {
        if (!cJSON_IsString(cause) || !uuid_valid(cause->valuestring)) {
            snprintf(err, errlen, "causation_id: must be a UUID");
            goto out;
        }
        if (causation_id)
            memcpy(causation_id, cause->valuestring, UUID_STR_LEN);
    }
    /* An older version is read as the latest (the table's): upcast.c. */
    if (ev__upcast(t, version, root) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < d->nfields; i++) {
        if (read_field(root, &d->fields[i], (char *)&out->u + d->fields[i].off, err, errlen))
            goto out;
    }
    rc = ev_validate(out, err, errlen);
out:
    /* Errors name a field as the sender's version calls it. */
    if (rc < 0)
        ev_name_as(t, version, err, errlen);
    cJSON_Delete(root);
    if (rc < 0) {
        ev_free(out);
        if (causation_id)
            causation_id[0] = '\0';
    }
    return rc;
}
