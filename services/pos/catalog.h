/*
 * catalog.h — what the till sells: the products of order-api's public
 * catalog (or a file of the same JSON), and random sales made of them.
 */
#ifndef ORDERSUITE_POS_CATALOG_H
#define ORDERSUITE_POS_CATALOG_H

#include "events.h"

#include <stddef.h>
#include <stdint.h>

#define CATALOG_MAX       1000              /* products beyond it are left out */
#define CATALOG_BYTES_MAX (4 * 1024 * 1024) /* a larger catalog is refused */

typedef struct {
    char sku[EV_SKU_MAX + 1];
    int64_t price;
    char currency[4];
} product;

typedef struct {
    product items[CATALOG_MAX];
    size_t n;
} catalog;

/* Loads the catalog from file when it is not NULL, else from url (GET, 10 s
 * timeout; curl_global_init has run). Entries that are not a product the
 * contract allows are skipped. Returns 0, or -1 with err (also when no
 * usable product is left). */
int catalog_load(catalog *cat, const char *url, const char *file, char *err, size_t errlen);

/* Rings up a random sale of 1-3 distinct products of one currency, 1-3 of
 * each, for store and email (NULL: none), paid now, and writes a one-line
 * summary. Returns its sale.completed JSON body (the caller frees it), or
 * NULL with err. */
char *catalog_sale(const catalog *cat, const char *store, const char *email, char *summary,
                   size_t sumlen, char *err, size_t errlen);

#endif
