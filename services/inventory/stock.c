/*
 * stock.c — what reservations and sales both do to a row of stock: lock
 * rows in SKU order, and tell when a SKU runs low; and the order's lock that
 * reservations and expiries both take.
 */
#include "inventory.h"

#include "log.h"

#include <stdio.h>
#include <string.h>

int inv_lock_orders(db_conn *db, db_array *ids, char *err, size_t errlen)
{
    return db_exec_arrays(
        db, "inv_orders_lock",
        "SELECT pg_advisory_xact_lock(hashtext('inventory.order'), hashtext(o::text))"
        " FROM (SELECT DISTINCT o FROM unnest($1::uuid[]) AS o ORDER BY o) s",
        ids, 1, NULL, err, errlen);
}

int inv_cmp_line(const void *a, const void *b)
{
    return strcmp(((const ev_line *)a)->sku, ((const ev_line *)b)->sku);
}

int inv_maybe_low_stock(worker *w, db_conn *db, const ev_envelope *env, const char *sku,
                        int64_t before, int64_t after, int64_t threshold, char *err, size_t errlen)
{
    ev_event low;
    if (!(before > threshold && after <= threshold))
        return DB_OK;
    ev_init(&low, EV_INVENTORY_LOW_STOCK);
    if ((size_t)snprintf(low.u.inventory_low_stock.sku, sizeof(low.u.inventory_low_stock.sku), "%s",
                         sku) >= sizeof(low.u.inventory_low_stock.sku)) {
        snprintf(err, errlen, "low stock: SKU %.40s is longer than %d", sku, EV_SKU_MAX);
        return DB_ERR;
    }
    low.u.inventory_low_stock.on_hand = after;
    low.u.inventory_low_stock.threshold = threshold;
    log_write(LOG_INFO, env->correlation_id, env->message_id, "low stock: %s at %lld", sku,
              (long long)after);
    return worker_emit(w, db, env, &low, err, errlen);
}
