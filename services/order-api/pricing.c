/*
 * pricing.c — an order's prices come from the catalog (products), never
 * from the client: each line's unit price, then the total. The contract's
 * maxima (EV_QTY_MAX units of EV_PRICE_MAX on each of EV_LINES_MAX lines) sum
 * to EV_TOTAL_MAX, well inside int64; a catalog price beyond the contract is
 * the server's data, refused with a 500 before it is multiplied.
 */
#include "api.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int api_price_lines(order_placed *o, const api_price *cat, size_t n, api_problem *p)
{
    o->total = 0;
    for (size_t i = 0; i < o->lines.n; i++) {
        ev_line *l = &o->lines.items[i];
        const api_price *c = NULL;
        int64_t line_total;
        char path[32];

        for (size_t row = 0; row < n; row++) {
            if (strcmp(cat[row].sku, l->sku) == 0)
                c = &cat[row];
        }
        if (!c) {
            snprintf(path, sizeof(path), "items[%zu].sku", i); /* fits: i < EV_LINES_MAX */
            return api_fail(p, 422, path, "unknown SKU %s (see GET /products)", l->sku);
        }
        if (strcmp(c->currency, o->currency) != 0)
            return api_fail(p, 422, "currency", "the catalog sells in %.3s", c->currency);
        l->unit_price = c->price;
        /* The quantity was checked against the contract (api_validate); the
         * catalog's price is checked here, before multiplying. */
        if (l->unit_price < 0 || l->unit_price > EV_PRICE_MAX ||
            __builtin_mul_overflow(l->unit_price, l->quantity, &line_total) ||
            __builtin_add_overflow(o->total, line_total, &o->total)) {
            log_error("catalog price of %s (%lld) is outside the contract's 0..%lld", l->sku,
                      (long long)c->price, (long long)EV_PRICE_MAX);
            return api_fail(p, 500, NULL, "the catalog price of %s is out of range", l->sku);
        }
    }
    return 0;
}

int api_price_order(db_conn *db, order_placed *o, api_problem *p, int *dbrc, char *err,
                    size_t errlen)
{
    /* A text[] literal of the SKUs: each at most EV_SKU_MAX of the
     * contract's SKU characters (no quote or backslash), quoted. */
    char skus[EV_LINES_MAX * (EV_SKU_MAX + 3) + 3];
    api_price cat[EV_LINES_MAX];
    size_t n = 0, rows;
    PGresult *res;
    const char *params[1];
    int rc = -1;

    skus[n++] = '{';
    for (size_t i = 0; i < o->lines.n; i++) {
        int k =
            snprintf(skus + n, sizeof(skus) - n, "%s\"%s\"", i ? "," : "", o->lines.items[i].sku);
        if (k < 0 || (size_t)k >= sizeof(skus) - n - 1) {
            snprintf(err, errlen, "the order's SKUs do not fit the query (%zu lines)", o->lines.n);
            *dbrc = DB_ERR;
            return -1;
        }
        n += (size_t)k;
    }
    skus[n++] = '}';
    skus[n] = '\0';
    params[0] = skus;
    *dbrc = db_execp(db, "api_prices",
                     "SELECT sku, price_minor, currency FROM products WHERE sku = ANY($1::text[])",
                     1, params, &res, err, errlen);
    if (*dbrc != DB_OK)
        return -1;
    rows = (size_t)PQntuples(res);
    if (rows > EV_LINES_MAX)
        rows = EV_LINES_MAX; /* SKUs are unique: never more rows than lines */
    for (size_t i = 0; i < rows; i++) {
        const char *price = db_get(res, (int)i, "price_minor");
        cat[i].sku = db_get(res, (int)i, "sku");
        cat[i].currency = db_get(res, (int)i, "currency");
        /* strtoll saturates: a price past int64 is out of the contract's range
         * too. */
        cat[i].price = strtoll(price, NULL, 10);
    }
    rc = api_price_lines(o, cat, rows, p);
    PQclear(res);
    return rc;
}
