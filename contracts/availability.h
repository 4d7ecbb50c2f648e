/*
 * availability.h — the contract of one request/reply question (mq_rpc.h):
 * "how many of this SKU can be sold now?", asked by order-api and answered
 * by inventory from its stock table.
 *
 *   request  inventory.availability on sales.rpc   {"sku": "TEA-SENCHA"}
 *   reply    to the request's reply_to              {"sku": "TEA-SENCHA", "found": true,
 *                                                    "available": 400}
 *                                                   {"sku": "NOPE", "found": false}
 *           or, when inventory cannot answer it     {"error": "unavailable"}
 *                                                   {"error": "bad-request"}
 * (unavailable: inventory cannot read its stock now, e.g. its database
 * fails; bad-request: the request is not one of this contract's), so that
 * the asker answers at once instead of waiting for its deadline.
 * Both are strict: exactly these fields, a SKU of the catalog's form, an
 * available count of 0..2^53. available is the stock on hand, which already
 * excludes what reservations hold.
 */
#ifndef ORDERSUITE_AVAILABILITY_H
#define ORDERSUITE_AVAILABILITY_H

#include "events.h"

#include <stddef.h>
#include <stdint.h>

#define RPC_INVENTORY_AVAILABILITY "inventory.availability"

enum { AV_OK = 0, AV_ERR_UNAVAILABLE, AV_ERR_BAD_REQUEST };

typedef struct {
    char sku[EV_SKU_MAX + 1];
    int found;
    int64_t available; /* 0 when not found */
    int error;         /* AV_OK, or the error reply's (then no other field is set) */
} av_reply;

/* 1 when sku has the catalog's form (^[A-Z0-9][A-Z0-9-]{0,31}$), else 0. */
int av_sku_valid(const char *sku);

/* The request for sku (valid) as JSON into *out (malloc'd, NUL-terminated;
 * the caller frees it). 0, or -1 when sku is not valid or out of memory. */
int av_request_encode(const char *sku, char **out);

/* Reads a request: 0 with sku, or -1 with err naming what is wrong. */
int av_request_decode(const char *body, size_t len, char sku[EV_SKU_MAX + 1], char *err,
                      size_t errlen);

/* The reply r as JSON into *out (malloc'd). 0, or -1. */
int av_reply_encode(const av_reply *r, char **out);

/* The error reply for error (AV_ERR_*) as JSON into *out (malloc'd). 0, or -1. */
int av_error_encode(int error, char **out);

/* Reads a reply, an answer or an error reply, into r: 0, or -1 with err. */
int av_reply_decode(const char *body, size_t len, av_reply *r, char *err, size_t errlen);

#endif
