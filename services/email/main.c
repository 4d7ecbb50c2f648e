/*
 * email — renders and delivers customer and operations mail.
 *
 *   order.confirmed           order confirmation with the invoice (order-api
 *                             confirmed the order: billing.invoiced is not mailed)
 *   inventory.rejected        order rejected for stock
 *   billing.payment_failed    payment failed
 *   sale.completed            POS receipt, when the sale has an email
 *   inventory.low_stock       alert to OPS_EMAIL
 *   order.expired             order cancelled by its deadline (one mail per order
 *                             about how it ended: mails.c)
 *
 * Every mail is recorded in email.messages (one per cause and kind), in the
 * message's transaction, by the handlers of mails.c; nothing leaves the
 * process there. When SMTP_URL is set (smtp://host:port) the row is
 * 'pending' and the mailer (mailer.h) delivers it after COMMIT and marks it
 * 'sent'; a server that is down, refuses the session or answers 4xx is tried
 * again with backoff, a 5xx to the mail's RCPT or DATA sends the cause to
 * email.dlq with the reply. A mail is sent twice only when the process or
 * its database dies between the server's 250 and the row's update
 * (at-least-once delivery of mail).
 *
 * Environment (besides the worker's): SMTP_URL, MAIL_FROM, OPS_EMAIL,
 * MAIL_MAX_ATTEMPTS (50), MAIL_RETRY_MAX_MS (60000, the cap of the backoff),
 * MAIL_LEASE_S (120) and MAIL_SMTP_TIMEOUT_S (15, at most half the lease),
 * MAIL_READY_MAX_PENDING (1000) and MAIL_READY_MAX_AGE_S (300): /readyz is
 * 503 past them (mailer_ready). Only running reads them: --declare-topology
 * reads the worker's AMQP_URL and nothing of email's own.
 */
#include "cfg.h"
#include "log.h"
#include "mailer.h"
#include "mails.h"
#include "worker.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* worker_def.ready: the mailer's backlog and connection (mailer_ready). */
static int email_ready(void *app, char *why, size_t whylen)
{
    const email_cfg *cfg = app;
    return !cfg->ml ||
           mailer_ready(cfg->ml, cfg->ready_max_pending, cfg->ready_max_age_s, why, whylen);
}

int main(int argc, char **argv)
{
    static const worker_route routes[] = {
        {EV_ORDER_CONFIRMED, mails_confirmed, NULL},
        {EV_INVENTORY_REJECTED, mails_rejected, NULL},
        {EV_BILLING_PAYMENT_FAILED, mails_payment_failed, NULL},
        {EV_SALE_COMPLETED, mails_sale, NULL},
        {EV_INVENTORY_LOW_STOCK, mails_low_stock, NULL},
        {EV_ORDER_EXPIRED, mails_expired, NULL},
    };
    email_cfg cfg = {0};
    char err[CFG_ERR_LEN];
    char *smtp = NULL, *amqp = NULL, *dburl = NULL;
    long max_attempts = 50, retry_max_ms = 60000, lease_s = 120, smtp_timeout_s = 15;
    const cfg_spec specs[] = {
        {"MAIL_FROM", CFG_STR, "orders@ordersuite.local", 0, 0, &cfg.from},
        {"OPS_EMAIL", CFG_STR, "ops@ordersuite.local", 0, 0, &cfg.ops},
        {"MAIL_MAX_ATTEMPTS", CFG_LONG, "50", 1, 100000, &max_attempts},
        {"MAIL_RETRY_MAX_MS", CFG_LONG, "60000", 100, 86400000, &retry_max_ms},
        {"MAIL_LEASE_S", CFG_LONG, "120", 2, 86400, &lease_s},
        {"MAIL_SMTP_TIMEOUT_S", CFG_LONG, "15", 1, 600, &smtp_timeout_s},
        {"MAIL_READY_MAX_PENDING", CFG_LONG, "1000", 1, 1000000000, &cfg.ready_max_pending},
        {"MAIL_READY_MAX_AGE_S", CFG_LONG, "300", 1, 864000, &cfg.ready_max_age_s},
    };
    const size_t nspecs = sizeof(specs) / sizeof(specs[0]);
    /* Only running reads them (and SMTP_URL): --declare-topology, which
     * `make migrate` runs with AMQP_URL alone, reads none (worker_main reads
     * what it needs). */
    const cfg_group settings[] = {{specs, nspecs, WORKER_RUN}};
    const size_t nsettings = sizeof(settings) / sizeof(settings[0]);
    unsigned mode = worker_mode(argc, argv);
    int declare_only = mode == WORKER_DECLARE;
    worker_def def = {.service = "email",
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .app = &cfg,
                      .ready = email_ready,
                      .default_port = 9103};
    int rc;

    log_init("email", LOG_INFO);
    if (cfg_load_mode(settings, nsettings, mode, err, sizeof(err)) < 0 ||
        (!declare_only && cfg_raw("SMTP_URL", &smtp, err, sizeof(err)) < 0)) {
        log_error("configuration: %s", err);
        rc = 1;
        goto out_cfg;
    }
    if (smtp && strncmp(smtp, "smtp://", 7) != 0 && strncmp(smtp, "smtps://", 8) != 0) {
        log_error("configuration: SMTP_URL must start with smtp:// or smtps://");
        rc = 1;
        goto out_cfg;
    }
    if (!declare_only && lease_s < 2 * smtp_timeout_s) {
        /* A send must end well inside its claim, or another mailer may
         * claim the row again and send it too. */
        log_error("configuration: MAIL_LEASE_S (%ld) must be at least twice"
                  " MAIL_SMTP_TIMEOUT_S (%ld)",
                  lease_s, smtp_timeout_s);
        rc = 1;
        goto out_cfg;
    }
    cfg.smtp_url = smtp && *smtp ? smtp : NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        rc = 1;
        goto out_cfg;
    }
    if (!cfg.smtp_url && !declare_only)
        log_info("SMTP_URL not set: mail is recorded in email.messages, not sent");
    if (cfg.smtp_url && !declare_only) {
        /* worker_main checks these two and says what is wrong with them. */
        if (cfg_raw("AMQP_URL", &amqp, err, sizeof(err)) > 0 &&
            cfg_raw("DATABASE_URL", &dburl, err, sizeof(err)) > 0) {
            mailer_opts mo = {.database_url = dburl,
                              .amqp_url = amqp,
                              .smtp_url = cfg.smtp_url,
                              .from = cfg.from,
                              .max_attempts = (int)max_attempts,
                              .retry_max_ms = (int)retry_max_ms,
                              .lease_s = (int)lease_s,
                              .smtp_timeout_s = (int)smtp_timeout_s};
            /* worker_main checks these too and says what is wrong. */
            if (worker_db_timeouts(&mo.timeouts, err, sizeof(err)) < 0) {
                log_error("%s", err);
                rc = 1;
                goto out;
            }
            cfg.ml = mailer_start(&mo, err, sizeof(err));
            if (!cfg.ml) {
                log_error("%s", err);
                rc = 1;
                goto out;
            }
        }
    }
    rc = worker_main(&def, argc, argv);
    mailer_stop(cfg.ml);
out:
    curl_global_cleanup();
out_cfg:
    cfg_free_groups(settings, nsettings);
    free(smtp);
    free(amqp);
    free(dburl);
    return rc;
}
