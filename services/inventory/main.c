/*
 * inventory — stock per SKU.
 *
 *   order.placed            reserve every line or none → inventory.reserved
 *                           or inventory.rejected (with the SKUs short)
 *   billing.payment_failed  release the order's reservation → inventory.released
 *   order.expired           release the order's reservation → inventory.released,
 *                           or mark it never to be reserved (expiry.c)
 *   sale.completed          take the sold units off the shelf (never below zero),
 *                           once per sale id, whatever message id carries it
 * and inventory.low_stock when a SKU's stock crosses its threshold. It also
 * answers the request inventory.availability (request/reply: the stock of a
 * SKU now) from its queue inventory.requests, on a thread of its own
 * (availability.c).
 *
 * Stock never goes below zero under concurrency (reservations.c says how).
 * order.placed has a set handler: the orders of a batch are reserved with a
 * few statements for all of them; the rarer events go one at a time.
 * The handlers: reservations.c (orders), sales.c (tills), stock.c (shared).
 */
#include "availability.h"
#include "inventory.h"
#include "log.h"
#include "worker.h"

#include <curl/curl.h>

int main(int argc, char **argv)
{
    static const worker_route routes[] = {
        {EV_ORDER_PLACED, NULL, inv_reserve_set},
        {EV_BILLING_PAYMENT_FAILED, inv_on_payment_failed, NULL},
        {EV_SALE_COMPLETED, inv_on_sale, NULL},
        {EV_ORDER_EXPIRED, inv_on_order_expired, NULL},
    };
    static const worker_rpc_route answers[] = {
        {RPC_INVENTORY_AVAILABILITY, inv_on_availability},
    };
    worker_def def = {.service = "inventory",
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .default_port = 9101,
                      .rpc_routes = answers,
                      .n_rpc_routes = sizeof(answers) / sizeof(answers[0])};
    int rc;
    /* Before any thread: the span exporter (otel.c) uses libcurl. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        return 1;
    }
    rc = worker_main(&def, argc, argv);
    curl_global_cleanup();
    return rc;
}
