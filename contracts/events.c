/*
 * events.c — the event codec (see events.h).
 *
 * Every event is described once, by a table of fields: JSON name, kind,
 * where it lives in the struct, its range. Encoding, decoding and validation
 * are three walks over that table, so a new event is a struct and a table,
 * not new parsing code.
 *
 * Decoding happens in two steps: the JSON is read into the struct (types,
 * lengths, integer-ness), then ev_validate checks values (patterns, ranges,
 * totals) exactly as it does before encoding.
 */
#include "events.h"

#include <assert.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define MAX_DEPTH 4 /* object > lines array > line object, plus one spare */

typedef enum {
    K_UUID,     /* char[37], canonical UUID */
    K_ID,       /* char[], 1-64 of [A-Za-z0-9._:-] */
    K_EMAIL,    /* char[], a plausible address */
    K_CURRENCY, /* char[4], three capital letters */
    K_SKU,      /* char[], [A-Z0-9][A-Z0-9-]* */
    K_TEXT,     /* char[], printable text */
    K_TIME,     /* char[], RFC 3339 UTC */
    K_INT,      /* int64_t in [min, max] */
    K_LINES,    /* ev_lines */
    K_SKUS,     /* ev_skus */
} fkind;

typedef struct {
    const char *json; /* JSON name */
    fkind kind;
    int optional; /* strings only: absent/null/"" mean unset */
    size_t off;   /* offset in the event struct */
    size_t size;  /* sizeof the member (strings: buffer size) */
    int64_t min, max;
} field;

typedef int (*check_fn)(const void *ev, char *err, size_t errlen);

typedef struct {
    const char *key;
    const field *fields;
    size_t nfields;
    check_fn check; /* cross-field rules, or NULL */
} event_desc;

#define S(st, m, name, k, opt)                                                                     \
    {                                                                                              \
        name, k, opt, offsetof(st, m), sizeof(((st *)0)->m), 0, 0                                  \
    }
#define I(st, m, name, lo, hi)                                                                     \
    {                                                                                              \
        name, K_INT, 0, offsetof(st, m), sizeof(int64_t), lo, hi                                   \
    }
#define L(st, m, name)                                                                             \
    {                                                                                              \
        name, K_LINES, 0, offsetof(st, m), sizeof(ev_lines), 1, EV_LINES_MAX                       \
    }
#define K(st, m, name)                                                                             \
    {                                                                                              \
        name, K_SKUS, 0, offsetof(st, m), sizeof(ev_skus), 0, EV_LINES_MAX                         \
    }
#define N(a) (sizeof(a) / sizeof((a)[0]))

static const field f_order_placed[] = {
    S(order_placed, order_id, "order_id", K_UUID, 0),
    S(order_placed, customer_id, "customer_id", K_ID, 0),
    S(order_placed, customer_email, "customer_email", K_EMAIL, 0),
    S(order_placed, currency, "currency", K_CURRENCY, 0),
    L(order_placed, lines, "lines"),
    I(order_placed, total, "total_minor", 0, EV_TOTAL_MAX),
};

static const field f_inventory_rejected[] = {
    S(inventory_rejected, order_id, "order_id", K_UUID, 0),
    S(inventory_rejected, customer_email, "customer_email", K_EMAIL, 0),
    S(inventory_rejected, reason, "reason", K_TEXT, 0),
    K(inventory_rejected, skus_short, "skus_short"),
};

static const field f_inventory_released[] = {
    S(inventory_released, order_id, "order_id", K_UUID, 0),
    S(inventory_released, reason, "reason", K_TEXT, 0),
};

static const field f_inventory_low_stock[] = {
    S(inventory_low_stock, sku, "sku", K_SKU, 0),
    I(inventory_low_stock, on_hand, "on_hand", 0, INT32_MAX),
    I(inventory_low_stock, threshold, "threshold", 0, INT32_MAX),
};

static const field f_billing_invoiced[] = {
    S(billing_invoiced, invoice_id, "invoice_id", K_UUID, 0),
    I(billing_invoiced, invoice_number, "invoice_number", 1, INT64_C(1) << 52),
    S(billing_invoiced, order_id, "order_id", K_UUID, 1),
    S(billing_invoiced, sale_id, "sale_id", K_UUID, 1),
    S(billing_invoiced, customer_id, "customer_id", K_ID, 1),
    S(billing_invoiced, customer_email, "customer_email", K_EMAIL, 1),
    S(billing_invoiced, currency, "currency", K_CURRENCY, 0),
    I(billing_invoiced, amount, "amount_minor", 0, EV_TOTAL_MAX),
    I(billing_invoiced, tax, "tax_minor", 0, EV_TOTAL_MAX),
};

static const field f_billing_payment_failed[] = {
    S(billing_payment_failed, order_id, "order_id", K_UUID, 0),
    S(billing_payment_failed, customer_email, "customer_email", K_EMAIL, 0),
    S(billing_payment_failed, currency, "currency", K_CURRENCY, 0),
    I(billing_payment_failed, amount, "amount_minor", 0, EV_TOTAL_MAX),
    S(billing_payment_failed, reason, "reason", K_TEXT, 0),
};

static const field f_sale_completed[] = {
    S(sale_completed, sale_id, "sale_id", K_UUID, 0),
    S(sale_completed, store_id, "store_id", K_ID, 0),
    S(sale_completed, currency, "currency", K_CURRENCY, 0),
    L(sale_completed, lines, "lines"),
    I(sale_completed, total, "total_minor", 0, EV_TOTAL_MAX),
    S(sale_completed, paid_at, "paid_at", K_TIME, 0),
    S(sale_completed, customer_email, "customer_email", K_EMAIL, 1),
};

static int lines_total(const ev_lines *l, int64_t *sum)
{
    *sum = 0;
    for (size_t i = 0; i < l->n; i++)
        *sum += l->items[i].quantity * l->items[i].unit_price;
    return 0;
}

static int check_total(const ev_lines *l, int64_t total, char *err, size_t errlen)
{
    int64_t sum;
    lines_total(l, &sum);
    if (sum != total) {
        snprintf(err, errlen, "total_minor: %lld is not the sum of the lines (%lld)",
                 (long long)total, (long long)sum);
        return -1;
    }
    return 0;
}

static int check_order(const void *ev, char *err, size_t errlen)
{
    const order_placed *o = ev;
    return check_total(&o->lines, o->total, err, errlen);
}

static int check_sale(const void *ev, char *err, size_t errlen)
{
    const sale_completed *s = ev;
    return check_total(&s->lines, s->total, err, errlen);
}

static int check_invoice(const void *ev, char *err, size_t errlen)
{
    const billing_invoiced *b = ev;
    if ((b->order_id[0] != '\0') == (b->sale_id[0] != '\0')) {
        snprintf(err, errlen, "order_id: exactly one of order_id and sale_id must be set");
        return -1;
    }
    if (b->tax > b->amount) {
        snprintf(err, errlen, "tax_minor: larger than amount_minor");
        return -1;
    }
    return 0;
}

static const event_desc events[EV__COUNT] = {
    [EV_ORDER_PLACED] = {RK_ORDER_PLACED, f_order_placed, N(f_order_placed), check_order},
    [EV_INVENTORY_RESERVED] = {RK_INVENTORY_RESERVED, f_order_placed, N(f_order_placed),
                               check_order},
    [EV_INVENTORY_REJECTED] = {RK_INVENTORY_REJECTED, f_inventory_rejected, N(f_inventory_rejected),
                               NULL},
    [EV_INVENTORY_RELEASED] = {RK_INVENTORY_RELEASED, f_inventory_released, N(f_inventory_released),
                               NULL},
    [EV_INVENTORY_LOW_STOCK] = {RK_INVENTORY_LOW_STOCK, f_inventory_low_stock,
                                N(f_inventory_low_stock), NULL},
    [EV_BILLING_INVOICED] = {RK_BILLING_INVOICED, f_billing_invoiced, N(f_billing_invoiced),
                             check_invoice},
    [EV_BILLING_PAYMENT_FAILED] = {RK_BILLING_PAYMENT_FAILED, f_billing_payment_failed,
                                   N(f_billing_payment_failed), NULL},
    [EV_SALE_COMPLETED] = {RK_SALE_COMPLETED, f_sale_completed, N(f_sale_completed), check_sale},
};

const char *ev_routing_key(ev_type t)
{
    return (unsigned)t < EV__COUNT ? events[t].key : NULL;
}

int ev_type_from_key(const char *key, ev_type *out)
{
    for (int t = 0; t < EV__COUNT; t++) {
        if (strcmp(events[t].key, key) == 0) {
            *out = (ev_type)t;
            return 0;
        }
    }
    return -1;
}

void ev_init(ev_event *ev, ev_type t)
{
    memset(ev, 0, sizeof(*ev));
    ev->type = t;
}

void ev_free(ev_event *ev)
{
    if (!ev || (unsigned)ev->type >= EV__COUNT)
        return;
    for (size_t i = 0; i < events[ev->type].nfields; i++) {
        const field *f = &events[ev->type].fields[i];
        char *p = (char *)&ev->u + f->off;
        if (f->kind == K_LINES) {
            free(((ev_lines *)p)->items);
            memset(p, 0, sizeof(ev_lines));
        } else if (f->kind == K_SKUS) {
            free(((ev_skus *)p)->items);
            memset(p, 0, sizeof(ev_skus));
        }
    }
}

int ev_lines_alloc(ev_lines *l, size_t n)
{
    l->items = NULL;
    l->n = 0;
    if (n > EV_LINES_MAX)
        return -1;
    if (n == 0)
        return 0;
    l->items = calloc(n, sizeof(ev_line));
    if (!l->items)
        return -1;
    l->n = n;
    return 0;
}

/* ------------------------------------------------------------ validation */

int ev_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* No overlong forms, no surrogates, nothing past U+10FFFF. */
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return 0;
        i += n + 1;
    }
    return 1;
}

static int match_set(const char *s, size_t min, size_t max, const char *first, const char *rest)
{
    size_t n = strlen(s);
    if (n < min || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!strchr(i == 0 ? first : rest, s[i]))
            return 0;
    }
    return 1;
}

#define UPPER  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define LOWER  "abcdefghijklmnopqrstuvwxyz"
#define DIGITS "0123456789"

static int valid_email(const char *s)
{
    const char *at = strchr(s, '@');
    const char *dot;
    if (!at || at == s || strchr(at + 1, '@') || strlen(s) > EV_EMAIL_MAX)
        return 0;
    dot = strrchr(at + 1, '.');
    if (!dot || dot == at + 1 || dot[1] == '\0')
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>' || *p == '"' || *p == ',' ||
            *p == ';' || *p == '\\')
            return 0;
    }
    return 1;
}

static int valid_text(const char *s)
{
    if (!*s)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    }
    return 1;
}

static int digits(const char *s, int n, int lo, int hi)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi ? v : -1;
}

/* YYYY-MM-DDTHH:MM:SS[.fraction]Z */
static int valid_time(const char *s)
{
    size_t n = strlen(s), i = 19;
    if (n < 20 || digits(s, 4, 1970, 9999) < 0 || s[4] != '-' || digits(s + 5, 2, 1, 12) < 0 ||
        s[7] != '-' || digits(s + 8, 2, 1, 31) < 0 || s[10] != 'T' ||
        digits(s + 11, 2, 0, 23) < 0 || s[13] != ':' || digits(s + 14, 2, 0, 59) < 0 ||
        s[16] != ':' || digits(s + 17, 2, 0, 60) < 0)
        return 0;
    if (s[i] == '.') {
        size_t start = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start || i - start > 9)
            return 0;
    }
    return i == n - 1 && s[i] == 'Z';
}

static int valid_string(fkind k, const char *s)
{
    switch (k) {
    case K_UUID:
        return uuid_valid(s);
    case K_ID:
        return match_set(s, 1, EV_ID_MAX, UPPER LOWER DIGITS, UPPER LOWER DIGITS "._:-");
    case K_EMAIL:
        return valid_email(s);
    case K_CURRENCY:
        return match_set(s, 3, 3, UPPER, UPPER);
    case K_SKU:
        return match_set(s, 1, EV_SKU_MAX, UPPER DIGITS, UPPER DIGITS "-");
    case K_TEXT:
        return valid_text(s);
    case K_TIME:
        return valid_time(s);
    default:
        return 0;
    }
}

static const char *kind_rule(fkind k)
{
    switch (k) {
    case K_UUID:
        return "must be a UUID";
    case K_ID:
        return "must be 1-64 characters of A-Z a-z 0-9 . _ : - (starting with a letter or digit)";
    case K_EMAIL:
        return "must be an email address";
    case K_CURRENCY:
        return "must be an ISO 4217 code of three capital letters";
    case K_SKU:
        return "must be 1-32 characters of A-Z 0-9 - (starting with a letter or digit)";
    case K_TEXT:
        return "must be non-empty printable text";
    case K_TIME:
        return "must be an RFC 3339 UTC time like 2026-11-23T19:42:26.123Z";
    default:
        return "is invalid";
    }
}

static int validate_lines(const char *name, const ev_lines *l, char *err, size_t errlen)
{
    if (l->n < 1 || l->n > EV_LINES_MAX) {
        snprintf(err, errlen, "%s: must have 1 to %d entries", name, EV_LINES_MAX);
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        const ev_line *x = &l->items[i];
        if (!valid_string(K_SKU, x->sku)) {
            snprintf(err, errlen, "%s[%zu].sku: %s", name, i, kind_rule(K_SKU));
            return -1;
        }
        if (x->quantity < 1 || x->quantity > EV_QTY_MAX) {
            snprintf(err, errlen, "%s[%zu].quantity: must be between 1 and %d", name, i,
                     EV_QTY_MAX);
            return -1;
        }
        if (x->unit_price < 0 || x->unit_price > EV_PRICE_MAX) {
            snprintf(err, errlen, "%s[%zu].unit_price_minor: must be between 0 and %lld", name, i,
                     (long long)EV_PRICE_MAX);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(l->items[j].sku, x->sku) == 0) {
                snprintf(err, errlen, "%s[%zu].sku: %s appears in an earlier line", name, i,
                         x->sku);
                return -1;
            }
        }
    }
    return 0;
}

static int validate_field(const field *f, const char *p, char *err, size_t errlen)
{
    switch (f->kind) {
    case K_INT: {
        int64_t v = *(const int64_t *)p;
        if (v < f->min || v > f->max) {
            snprintf(err, errlen, "%s: must be between %lld and %lld", f->json, (long long)f->min,
                     (long long)f->max);
            return -1;
        }
        return 0;
    }
    case K_LINES:
        return validate_lines(f->json, (const ev_lines *)p, err, errlen);
    case K_SKUS: {
        const ev_skus *k = (const ev_skus *)p;
        if (k->n > EV_LINES_MAX) {
            snprintf(err, errlen, "%s: at most %d entries", f->json, EV_LINES_MAX);
            return -1;
        }
        for (size_t i = 0; i < k->n; i++) {
            if (!valid_string(K_SKU, k->items[i])) {
                snprintf(err, errlen, "%s[%zu]: %s", f->json, i, kind_rule(K_SKU));
                return -1;
            }
        }
        return 0;
    }
    default:
        if (memchr(p, '\0', f->size) == NULL) {
            snprintf(err, errlen, "%s: not terminated", f->json);
            return -1;
        }
        if (p[0] == '\0') {
            if (f->optional)
                return 0;
            snprintf(err, errlen, "%s: missing", f->json);
            return -1;
        }
        if (!valid_string(f->kind, p)) {
            snprintf(err, errlen, "%s: %s", f->json, kind_rule(f->kind));
            return -1;
        }
        return 0;
    }
}

int ev_validate(const ev_event *ev, char *err, size_t errlen)
{
    const event_desc *d;
    if ((unsigned)ev->type >= EV__COUNT) {
        snprintf(err, errlen, "type: unknown event type %d", (int)ev->type);
        return -1;
    }
    d = &events[ev->type];
    for (size_t i = 0; i < d->nfields; i++) {
        if (validate_field(&d->fields[i], (const char *)&ev->u + d->fields[i].off, err, errlen))
            return -1;
    }
    return d->check ? d->check(&ev->u, err, errlen) : 0;
}

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
    const event_desc *d;
    cJSON *root;
    char *out = NULL;

    if (ev_validate(ev, err, errlen) < 0)
        return NULL;
    if (causation_id && *causation_id && !uuid_valid(causation_id)) {
        snprintf(err, errlen, "causation_id: must be a UUID");
        return NULL;
    }
    d = &events[ev->type];
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
    d = &events[t];
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
    for (size_t i = 0; i < d->nfields; i++) {
        if (read_field(root, &d->fields[i], (char *)&out->u + d->fields[i].off, err, errlen))
            goto out;
    }
    rc = ev_validate(out, err, errlen);
out:
    cJSON_Delete(root);
    if (rc < 0) {
        ev_free(out);
        if (causation_id)
            causation_id[0] = '\0';
    }
    return rc;
}

void ev_now_rfc3339(char out[EV_TIME_MAX + 1])
{
    struct timespec ts;
    struct tm tm;
    int n;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(out, EV_TIME_MAX + 1, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(ts.tv_nsec / 1000000));
    /* 24 bytes while the year has four digits: the clock, not input. */
    assert(n == 24);
    (void)n;
}
