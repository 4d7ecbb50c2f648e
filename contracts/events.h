/*
 * events.h — every message shape of ordersuite, once.
 *
 * Each event of DESIGN.md is a plain C struct; ev_event is the tagged union
 * the codec reads and writes. Routing key = event type ("order.placed").
 *
 * Money is always an integer count of minor units (cents) with an ISO 4217
 * currency code, never a double. Decoding is strict: a missing or mistyped
 * field, a value out of range, a string longer than its buffer below (never
 * cut to fit), a duplicate key, invalid UTF-8, a string holding \u0000,
 * nesting deeper than the shapes allow, or totals that do not add up are
 * refused, and the error names the field ("lines[2].quantity: must be
 * between 1 and 10000"). An integer field takes any JSON number with an
 * integral value within 2^53 (1.0 and 1e0 are 1; 01 has a leading zero, which
 * JSON does not allow, and is refused). Unknown fields are ignored
 * (tolerant reader), so a producer may add an optional field without a new
 * schema version; they are still read as strictly (duplicates, depth).
 *
 * The envelope's AMQP properties (message_id, correlation_id, type,
 * timestamp, app_id, header schema_version) travel outside the body; the body
 * holds causation_id and the event's fields.
 */
#ifndef ORDERSUITE_EVENTS_H
#define ORDERSUITE_EVENTS_H

#include "uuid.h"

#include <stddef.h>
#include <stdint.h>

/* The schema version written when a writer does not choose one (ev_to_json,
 * mq_msg.schema_version 0), which every reader knows. An event's later
 * versions, what readers accept and the upcasting: upcast.h. */
#define EV_SCHEMA_VERSION 1

#define EV_ID_MAX    64  /* customer_id, store_id */
#define EV_EMAIL_MAX 254 /* RFC 5321 path limit */
#define EV_SKU_MAX   32
#define EV_TEXT_MAX  256                /* reasons */
#define EV_TIME_MAX  32                 /* RFC 3339 UTC: 2026-11-23T19:42:26.123Z */
#define EV_LINES_MAX 100                /* lines per order or sale */
#define EV_QTY_MAX   10000              /* units per line */
#define EV_PRICE_MAX 1000000000LL       /* minor units per unit: 10 M in major units */
#define EV_TOTAL_MAX 1000000000000000LL /* sum of lines; exact in a JSON double */
#define EV_BODY_MAX  (256 * 1024)       /* larger bodies are refused unread */
#define EV_ERR_LEN   256

/* An envelope's (ev_envelope) type, the routing key, and app_id, the
 * publisher: a longer one is refused (the message goes to the DLQ,
 * worker_envelope_of), never cut to fit. */
#define EV_KEY_MAX    47
#define EV_APP_ID_MAX 47

typedef enum {
    EV_ORDER_PLACED = 0,
    EV_INVENTORY_RESERVED,
    EV_INVENTORY_REJECTED,
    EV_INVENTORY_RELEASED,
    EV_INVENTORY_LOW_STOCK,
    EV_BILLING_INVOICED,
    EV_BILLING_PAYMENT_FAILED,
    EV_SALE_COMPLETED,
    EV_ORDER_EXPIRED,
    EV_ORDER_CONFIRMED,
    EV__COUNT
} ev_type;

/* Routing keys, one per event type. */
#define RK_ORDER_PLACED           "order.placed"
#define RK_INVENTORY_RESERVED     "inventory.reserved"
#define RK_INVENTORY_REJECTED     "inventory.rejected"
#define RK_INVENTORY_RELEASED     "inventory.released"
#define RK_INVENTORY_LOW_STOCK    "inventory.low_stock"
#define RK_BILLING_INVOICED       "billing.invoiced"
#define RK_BILLING_PAYMENT_FAILED "billing.payment_failed"
#define RK_SALE_COMPLETED         "sale.completed"
#define RK_ORDER_EXPIRED          "order.expired"
#define RK_ORDER_CONFIRMED        "order.confirmed"

typedef struct {
    char sku[EV_SKU_MAX + 1];
    int64_t quantity;   /* 1 .. EV_QTY_MAX */
    int64_t unit_price; /* minor units, 0 .. EV_PRICE_MAX */
} ev_line;

typedef struct {
    ev_line *items; /* malloc'd; freed by ev_free */
    size_t n;
} ev_lines;

typedef struct {
    char (*items)[EV_SKU_MAX + 1]; /* malloc'd; freed by ev_free */
    size_t n;
} ev_skus;

typedef struct {
    char order_id[UUID_STR_LEN];
    char customer_id[EV_ID_MAX + 1];
    char customer_email[EV_EMAIL_MAX + 1];
    char currency[4];
    ev_lines lines; /* priced by order-api from its catalog */
    int64_t total;  /* = sum of quantity * unit_price */
} order_placed;

/* Same fields as order.placed: billing invoices from it alone. */
typedef order_placed inventory_reserved;

typedef struct {
    char order_id[UUID_STR_LEN];
    char customer_email[EV_EMAIL_MAX + 1];
    char reason[EV_TEXT_MAX + 1];
    ev_skus skus_short; /* at least one unless reason says otherwise */
} inventory_rejected;

typedef struct {
    char order_id[UUID_STR_LEN];
    char reason[EV_TEXT_MAX + 1];
} inventory_released;

typedef struct {
    char sku[EV_SKU_MAX + 1];
    int64_t on_hand;
    int64_t threshold;
} inventory_low_stock;

typedef struct {
    char invoice_id[UUID_STR_LEN];
    int64_t invoice_number;
    char order_id[UUID_STR_LEN]; /* exactly one of order_id / sale_id is set */
    char sale_id[UUID_STR_LEN];
    char customer_id[EV_ID_MAX + 1];       /* optional ("" for anonymous sales) */
    char customer_email[EV_EMAIL_MAX + 1]; /* optional */
    char currency[4];
    int64_t amount; /* minor units, tax included */
    int64_t tax;    /* minor units, part of amount */
} billing_invoiced;

typedef struct {
    char order_id[UUID_STR_LEN];
    char customer_email[EV_EMAIL_MAX + 1];
    char currency[4];
    int64_t amount;
    char reason[EV_TEXT_MAX + 1];
} billing_payment_failed;

typedef struct {
    char sale_id[UUID_STR_LEN];
    char store_id[EV_ID_MAX + 1];
    char currency[4];
    ev_lines lines;
    int64_t total;
    char paid_at[EV_TIME_MAX + 1];         /* RFC 3339, UTC ("...Z") */
    char customer_email[EV_EMAIL_MAX + 1]; /* optional: a receipt is mailed when set */
} sale_completed;

/* The saga's timeout: order-api closed an order that reached no final
 * status within ORDER_TIMEOUT_S. Each service undoes what it did for it
 * (inventory releases the stock, billing voids the invoice) and email tells
 * the customer. */
typedef struct {
    char order_id[UUID_STR_LEN];
    char customer_email[EV_EMAIL_MAX + 1];
    char reason[EV_TEXT_MAX + 1];
} order_expired;

/* order-api confirmed the order (billing.invoiced moved it to CONFIRMED):
 * the outcome the customer is told of, with the invoice billing made. It
 * comes from order-api, which alone decides how an order ends, so an order
 * that expired while billing invoiced it (its invoice then void) never gets
 * one. */
typedef struct {
    char order_id[UUID_STR_LEN];
    char customer_email[EV_EMAIL_MAX + 1]; /* optional, as in billing.invoiced */
    char invoice_id[UUID_STR_LEN];
    int64_t invoice_number;
    char currency[4];
    int64_t amount; /* minor units, tax included */
    int64_t tax;    /* minor units, part of amount */
} order_confirmed;

typedef struct {
    ev_type type;
    union {
        order_placed order_placed;
        inventory_reserved inventory_reserved;
        inventory_rejected inventory_rejected;
        inventory_released inventory_released;
        inventory_low_stock inventory_low_stock;
        billing_invoiced billing_invoiced;
        billing_payment_failed billing_payment_failed;
        sale_completed sale_completed;
        order_expired order_expired;
        order_confirmed order_confirmed;
    } u;
} ev_event;

/* The envelope: AMQP properties of every message. */
typedef struct {
    char message_id[UUID_STR_LEN];
    char correlation_id[UUID_STR_LEN]; /* the order or sale, unchanged along the flow */
    char causation_id[UUID_STR_LEN];   /* message that caused this one; "" for the first */
    char type[EV_KEY_MAX + 1];         /* = routing key */
    char app_id[EV_APP_ID_MAX + 1];    /* the publishing service */
    int64_t timestamp;                 /* seconds since the epoch */
    int schema_version;
    int attempt; /* failed attempts before this delivery (0 = first) */
} ev_envelope;

/* The routing key of t ("order.placed"); NULL for an invalid t. */
const char *ev_routing_key(ev_type t);

/* Looks up the type of a routing key. Returns 0, or -1 for an unknown key. */
int ev_type_from_key(const char *key, ev_type *out);

/* Initialises ev as an empty event of type t (all zero). */
void ev_init(ev_event *ev, ev_type t);

/* Frees the arrays inside ev (not ev itself) and zeroes them. NULL is a no-op. */
void ev_free(ev_event *ev);

/* Allocates ev's lines (n zeroed entries). Returns 0, or -1 when out of memory
 * or n > EV_LINES_MAX. */
int ev_lines_alloc(ev_lines *l, size_t n);

/* Encodes ev as the JSON body, with causation_id ("" or NULL: left out).
 * Validates first, as the decoder would; returns NULL and a message in err
 * when ev is not valid. The caller free()s the result. */
char *ev_to_json(const ev_event *ev, const char *causation_id, char *err, size_t errlen);

/* Decodes a body of type t (len bytes, need not be NUL-terminated) into *out.
 * causation_id (may be NULL) receives the body's causation_id or "". Returns
 * 0, or -1 with "field: why" in err and *out left empty. On success the
 * caller calls ev_free(out). */
int ev_from_json(ev_type t, const char *body, size_t len, ev_event *out,
                 char causation_id[UUID_STR_LEN], char *err, size_t errlen);

/* Checks an event's fields as the decoder does. Returns 0 or -1 with err. */
int ev_validate(const ev_event *ev, char *err, size_t errlen);

/* 1 when s is a valid UTF-8 byte string of len bytes, else 0. */
int ev_utf8_valid(const char *s, size_t len);

/* Helpers for other strict JSON readers (the HTTP API):
 * ev_json_parse checks UTF-8 and nesting depth (without recursing), then
 * parses a NUL-terminated copy with cJSON_ParseWithLengthOpts; NULL with
 * "body: ..." in err on failure; the caller cJSON_Delete()s the result.
 * ev_json_depth is the deepest [ / { nesting outside strings.
 * ev_json_duplicate_key returns a key that appears twice in obj, or NULL.
 * ev_json_int reads an integral JSON number within +-2^53: 0, or -1. */
struct cJSON;
struct cJSON *ev_json_parse(const char *body, size_t len, int max_depth, char *err, size_t errlen);
int ev_json_depth(const char *s, size_t len);
const char *ev_json_duplicate_key(const struct cJSON *obj);
int ev_json_int(const struct cJSON *it, int64_t *out);

/* Writes the current UTC time as RFC 3339 with milliseconds into out. */
void ev_now_rfc3339(char out[EV_TIME_MAX + 1]);

#endif
