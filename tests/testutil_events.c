/*
 * testutil_events.c — see testutil.h: sample events (tu_sale,
 * tu_sample_event).
 */
#include "testutil.h"
#include "events.h"
#include "uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OID "0b6e4a8c-3f1d-4c2a-9a57-2f8d1c6b9e01"
#define SID "5d0c9f7e-8a21-4b3c-b6d4-7e1f2a3b4c5d"
#define IID "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"

static void set_lines(ev_lines *l)
{
    ck_assert_int_eq(ev_lines_alloc(l, 2), 0);
    strcpy(l->items[0].sku, "TEA-SENCHA");
    l->items[0].quantity = 2;
    l->items[0].unit_price = 890;
    strcpy(l->items[1].sku, "MUG-WHITE");
    l->items[1].quantity = 1;
    l->items[1].unit_price = 800;
}

void tu_sale(ev_event *ev, const char *store, const char *sku, int64_t quantity, int64_t unit_price)
{
    sale_completed *s = &ev->u.sale_completed;
    ev_init(ev, EV_SALE_COMPLETED);
    ck_assert_int_eq(uuid_v4(s->sale_id), 0);
    snprintf(s->store_id, sizeof(s->store_id), "%s", store);
    strcpy(s->currency, "EUR");
    ck_assert_int_eq(ev_lines_alloc(&s->lines, 1), 0);
    snprintf(s->lines.items[0].sku, sizeof(s->lines.items[0].sku), "%s", sku);
    s->lines.items[0].quantity = quantity;
    s->lines.items[0].unit_price = unit_price;
    s->total = quantity * unit_price;
    ev_now_rfc3339(s->paid_at);
}

void tu_sample_event(ev_type t, ev_event *ev)
{
    ev_init(ev, t);
    switch (t) {
    case EV_ORDER_PLACED:
    case EV_INVENTORY_RESERVED: {
        order_placed *o = &ev->u.order_placed;
        strcpy(o->order_id, OID);
        strcpy(o->customer_id, "cust-42");
        strcpy(o->customer_email, "ada@example.com");
        strcpy(o->currency, "EUR");
        set_lines(&o->lines);
        o->total = 2 * 890 + 800;
        break;
    }
    case EV_INVENTORY_REJECTED: {
        inventory_rejected *r = &ev->u.inventory_rejected;
        strcpy(r->order_id, OID);
        strcpy(r->customer_email, "ada@example.com");
        strcpy(r->reason, "not enough stock");
        r->skus_short.items = calloc(1, sizeof(*r->skus_short.items));
        r->skus_short.n = 1;
        strcpy(r->skus_short.items[0], "TEA-MATCHA");
        break;
    }
    case EV_INVENTORY_RELEASED:
        strcpy(ev->u.inventory_released.order_id, OID);
        strcpy(ev->u.inventory_released.reason, "payment failed");
        break;
    case EV_INVENTORY_LOW_STOCK:
        strcpy(ev->u.inventory_low_stock.sku, "POT-CAST-IRON");
        ev->u.inventory_low_stock.on_hand = 2;
        ev->u.inventory_low_stock.threshold = 2;
        break;
    case EV_BILLING_INVOICED: {
        billing_invoiced *b = &ev->u.billing_invoiced;
        strcpy(b->invoice_id, IID);
        b->invoice_number = 1001;
        strcpy(b->order_id, OID);
        strcpy(b->customer_id, "cust-42");
        strcpy(b->customer_email, "ada@example.com");
        strcpy(b->currency, "EUR");
        b->amount = 2580;
        b->tax = 412;
        break;
    }
    case EV_BILLING_PAYMENT_FAILED: {
        billing_payment_failed *p = &ev->u.billing_payment_failed;
        strcpy(p->order_id, OID);
        strcpy(p->customer_email, "ada@example.com");
        strcpy(p->currency, "EUR");
        p->amount = 250000;
        strcpy(p->reason, "over the credit limit");
        break;
    }
    case EV_SALE_COMPLETED: {
        sale_completed *s = &ev->u.sale_completed;
        strcpy(s->sale_id, SID);
        strcpy(s->store_id, "NEPAL-01");
        strcpy(s->currency, "EUR");
        set_lines(&s->lines);
        s->total = 2580;
        strcpy(s->paid_at, "2026-11-23T19:42:26.123Z");
        break;
    }
    case EV_ORDER_EXPIRED:
        strcpy(ev->u.order_expired.order_id, OID);
        strcpy(ev->u.order_expired.customer_email, "ada@example.com");
        strcpy(ev->u.order_expired.reason, "no final status within 900 s");
        break;
    case EV_ORDER_CONFIRMED: {
        order_confirmed *c = &ev->u.order_confirmed;
        strcpy(c->order_id, OID);
        strcpy(c->customer_email, "ada@example.com");
        strcpy(c->invoice_id, IID);
        c->invoice_number = 1001;
        strcpy(c->currency, "EUR");
        c->amount = 2580;
        c->tax = 412;
        break;
    }
    default:
        ck_abort_msg("no sample for %d", t);
    }
}
