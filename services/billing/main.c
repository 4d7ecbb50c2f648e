/*
 * billing — invoices for reserved orders and for POS sales.
 *
 *   inventory.reserved  the payment rule, then an invoice → billing.invoiced,
 *                       or billing.payment_failed
 *   sale.completed      an invoice for the sale (paid at the till) → billing.invoiced
 *   order.expired       the order's invoice void, or none ever made (voids.c)
 *
 * Payment rule (documented in the README): an order whose total is above
 * CREDIT_LIMIT_MINOR (default 50000, i.e. 500.00) is refused. Prices include
 * tax at TAX_RATE_BP basis points (default 2000 = 20 %); the invoice shows the
 * tax part, rounded half up. Invoice numbers come from a sequence, so they
 * are unique but may have gaps (a rolled-back transaction uses a number).
 * The handlers are in invoices.c. Only running reads these two:
 * --declare-topology reads the worker's AMQP_URL and nothing of billing's.
 */
#include "billing.h"
#include "cfg.h"
#include "log.h"

#include <curl/curl.h>

int main(int argc, char **argv)
{
    static const worker_route routes[] = {
        {EV_INVENTORY_RESERVED, NULL, bil_reserved_set},
        {EV_SALE_COMPLETED, NULL, bil_sale_set},
        {EV_ORDER_EXPIRED, bil_on_order_expired, NULL},
    };
    billing_cfg cfg;
    char err[CFG_ERR_LEN];
    const cfg_spec specs[] = {
        {"CREDIT_LIMIT_MINOR", CFG_LONG, "50000", 0, 1000000000000L, &cfg.credit_limit},
        {"TAX_RATE_BP", CFG_LONG, "2000", 0, 10000, &cfg.tax_bp},
    };
    const cfg_group settings[] = {{specs, sizeof(specs) / sizeof(specs[0]), WORKER_RUN}};
    worker_def def = {.service = "billing",
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .app = &cfg,
                      .default_port = 9102};

    log_init("billing", LOG_INFO);
    if (cfg_load_mode(settings, 1, worker_mode(argc, argv), err, sizeof(err)) < 0) {
        log_error("configuration: %s", err);
        return 1;
    }
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
