/*
 * events.c — the event codec (see events.h): what each event is.
 *
 * Every event is described once, by a table of fields: JSON name, kind,
 * where it lives in the struct, its range. Encoding, decoding and validation
 * are three walks over that table, so a new event is a struct and a table,
 * not new parsing code. The walks live beside it: events_valid.c checks
 * values (patterns, ranges), events_json.c writes and reads the JSON.
 *
 * Here: the tables, the cross-field rules of each event (totals, exactly one
 * of order_id and sale_id), routing keys, and the events' memory.
 */
#include "events_int.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

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

/* order.placed as its latest version (2) writes it: the total is
 * amount_minor. Version 1 called it total_minor; upcast.c turns one into the
 * other, so the codec knows one shape. */
static const field f_order_placed[] = {
    S(order_placed, order_id, "order_id", K_UUID, 0),
    S(order_placed, customer_id, "customer_id", K_ID, 0),
    S(order_placed, customer_email, "customer_email", K_EMAIL, 0),
    S(order_placed, currency, "currency", K_CURRENCY, 0),
    L(order_placed, lines, "lines"),
    I(order_placed, total, "amount_minor", 0, EV_TOTAL_MAX),
};

/* inventory.reserved: the order's fields, at version 1. */
static const field f_inventory_reserved[] = {
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

static const field f_order_expired[] = {
    S(order_expired, order_id, "order_id", K_UUID, 0),
    S(order_expired, customer_email, "customer_email", K_EMAIL, 0),
    S(order_expired, reason, "reason", K_TEXT, 0),
};

static const field f_order_confirmed[] = {
    S(order_confirmed, order_id, "order_id", K_UUID, 0),
    S(order_confirmed, customer_email, "customer_email", K_EMAIL, 1),
    S(order_confirmed, invoice_id, "invoice_id", K_UUID, 0),
    I(order_confirmed, invoice_number, "invoice_number", 1, INT64_C(1) << 52),
    S(order_confirmed, currency, "currency", K_CURRENCY, 0),
    I(order_confirmed, amount, "amount_minor", 0, EV_TOTAL_MAX),
    I(order_confirmed, tax, "tax_minor", 0, EV_TOTAL_MAX),
};

static int lines_total(const ev_lines *l, int64_t *sum)
{
    *sum = 0;
    for (size_t i = 0; i < l->n; i++)
        *sum += l->items[i].quantity * l->items[i].unit_price;
    return 0;
}

/* name: the total's JSON name in the event. */
static int check_total(const char *name, const ev_lines *l, int64_t total, char *err, size_t errlen)
{
    int64_t sum;
    lines_total(l, &sum);
    if (sum != total) {
        snprintf(err, errlen, "%s: %lld is not the sum of the lines (%lld)", name, (long long)total,
                 (long long)sum);
        return -1;
    }
    return 0;
}

static int check_order(const void *ev, char *err, size_t errlen)
{
    const order_placed *o = ev;
    return check_total("amount_minor", &o->lines, o->total, err, errlen);
}

static int check_reserved(const void *ev, char *err, size_t errlen)
{
    const order_placed *o = ev;
    return check_total("total_minor", &o->lines, o->total, err, errlen);
}

static int check_sale(const void *ev, char *err, size_t errlen)
{
    const sale_completed *s = ev;
    return check_total("total_minor", &s->lines, s->total, err, errlen);
}

static int check_confirmed(const void *ev, char *err, size_t errlen)
{
    const order_confirmed *c = ev;
    if (c->tax > c->amount) {
        snprintf(err, errlen, "tax_minor: larger than amount_minor");
        return -1;
    }
    return 0;
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

const event_desc ev__events[EV__COUNT] = {
    [EV_ORDER_PLACED] = {RK_ORDER_PLACED, f_order_placed, N(f_order_placed), check_order},
    [EV_INVENTORY_RESERVED] = {RK_INVENTORY_RESERVED, f_inventory_reserved, N(f_inventory_reserved),
                               check_reserved},
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
    [EV_ORDER_EXPIRED] = {RK_ORDER_EXPIRED, f_order_expired, N(f_order_expired), NULL},
    [EV_ORDER_CONFIRMED] = {RK_ORDER_CONFIRMED, f_order_confirmed, N(f_order_confirmed),
                            check_confirmed},
};

const char *ev_routing_key(ev_type t)
{
    return (unsigned)t < EV__COUNT ? ev__events[t].key : NULL;
}

int ev_type_from_key(const char *key, ev_type *out)
{
    for (int t = 0; t < EV__COUNT; t++) {
        if (strcmp(ev__events[t].key, key) == 0) {
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
    for (size_t i = 0; i < ev__events[ev->type].nfields; i++) {
        const field *f = &ev__events[ev->type].fields[i];
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
