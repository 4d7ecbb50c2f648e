/*
 * events_valid.c — the value rules of the event codec (see events.h):
 * UTF-8, the string kinds' patterns (UUID, id, email, currency, SKU, text,
 * RFC 3339 time), integer ranges, the lines; ev_validate walks an event's
 * table (events.c) with them, before encoding and after decoding alike.
 */
#include "events_int.h"

#include <stdio.h>
#include <string.h>

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
    d = &ev__events[ev->type];
    for (size_t i = 0; i < d->nfields; i++) {
        if (validate_field(&d->fields[i], (const char *)&ev->u + d->fields[i].off, err, errlen))
            return -1;
    }
    return d->check ? d->check(&ev->u, err, errlen) : 0;
}
