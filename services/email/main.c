/*
 * email — renders and delivers customer and operations mail.
 *
 *   billing.invoiced (order)  order confirmation with the invoice
 *   inventory.rejected        order rejected for stock
 *   billing.payment_failed    payment failed
 *   sale.completed            POS receipt, when the sale has an email
 *   inventory.low_stock       alert to OPS_EMAIL
 *
 * Every mail is recorded in email.messages (one per cause and kind), in the
 * message's transaction; nothing leaves the process there. When SMTP_URL is
 * set (smtp://host:port) the row is 'pending' and the mailer (mailer.h)
 * delivers it after COMMIT and marks it 'sent'; a server that is down,
 * refuses the session or answers 4xx is tried again with backoff, a 5xx to
 * the mail's RCPT or DATA sends the cause to email.dlq with the reply. A mail can be sent twice
 * when the process or the database dies between the server's 250 and the row's update
 * (at-least-once delivery of mail).
 *
 * Environment (besides the worker's): SMTP_URL, MAIL_FROM, OPS_EMAIL,
 * MAIL_MAX_ATTEMPTS (50), MAIL_RETRY_MAX_MS (60000, the cap of the backoff),
 * MAIL_LEASE_S (120) and MAIL_SMTP_TIMEOUT_S (15, at most half the lease),
 * MAIL_READY_MAX_PENDING (1000) and MAIL_READY_MAX_AGE_S (300): /readyz is
 * 503 past them (mailer_ready).
 */
#include "cfg.h"
#include "log.h"
#include "mailer.h"
#include "util.h"
#include "worker.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *smtp_url; /* NULL: record only */
    char *from;
    char *ops;
    mailer *ml; /* NULL without SMTP_URL */
    long ready_max_pending, ready_max_age_s;
} email_cfg;

/* worker_def.ready: the mailer's backlog and connection (mailer_ready). */
static int email_ready(void *app, char *why, size_t whylen)
{
    const email_cfg *cfg = app;
    return !cfg->ml ||
           mailer_ready(cfg->ml, cfg->ready_max_pending, cfg->ready_max_age_s, why, whylen);
}

static void money(char *out, size_t n, int64_t minor, const char *currency)
{
    snprintf(out, n, "%lld.%02lld %s", (long long)(minor / 100), (long long)(minor % 100),
             currency);
}

/* Records one mail caused by env (and ev) in the handler's transaction:
 * 'pending' for the mailer with SMTP_URL, 'recorded' without. The cause is
 * kept with it, re-encoded, for email.dlq if the server refuses the mail. A
 * mail refused before is recorded again (a DLQ replay); any other existing
 * mail of this cause and kind is left alone. */
static mq_result deliver(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         const char *kind, const char *to, const char *subject, const char *body,
                         char *err, size_t errlen)
{
    const email_cfg *cfg = worker_app(w);
    const char *p[11];
    char ts[24];
    char *cause;
    PGresult *r;
    int rc, fresh;

    cause = ev_to_json(ev, env->causation_id, err, errlen);
    if (!cause)
        return MQ_REJECT;
    p[0] = env->message_id;
    p[1] = kind;
    p[2] = env->correlation_id;
    p[3] = to;
    p[4] = subject;
    p[5] = body;
    p[6] = cfg->smtp_url ? "pending" : "recorded";
    p[7] = ev_routing_key(ev->type);
    p[8] = cause;
    p[9] = env->app_id;
    p[10] = util_i64(ts, env->timestamp);
    rc = db_execp(db, "mail_add",
                  "INSERT INTO messages AS m (cause_id, kind, correlation_id, recipient, subject,"
                  " body, status, cause_key, cause_body, cause_app, cause_ts)"
                  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                  " ON CONFLICT (cause_id, kind) DO UPDATE SET recipient = EXCLUDED.recipient,"
                  " subject = EXCLUDED.subject, body = EXCLUDED.body, status = EXCLUDED.status,"
                  " attempts = 0, next_attempt_at = now(), last_error = NULL,"
                  " cause_key = EXCLUDED.cause_key, cause_body = EXCLUDED.cause_body,"
                  " cause_app = EXCLUDED.cause_app, cause_ts = EXCLUDED.cause_ts"
                  " WHERE m.status = 'refused' RETURNING id",
                  11, p, &r, err, errlen);
    free(cause);
    if (rc != DB_OK)
        return worker_db_result(rc);
    fresh = PQntuples(r) == 1;
    PQclear(r);
    if (!fresh)
        return MQ_DONE;
    if (cfg->smtp_url)
        db_after_commit(db, mailer_wake);
    log_write(LOG_INFO, env->correlation_id, env->message_id, "%s mail %s for %s", kind,
              cfg->smtp_url ? "queued" : "recorded", to);
    return MQ_DONE;
}

static mq_result on_invoiced(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                             char *err, size_t errlen)
{
    const billing_invoiced *b = &ev->u.billing_invoiced;
    char subject[160], body[1024], amt[48], tax[48];
    if (!b->order_id[0] || !b->customer_email[0])
        return MQ_DONE; /* POS sales get their receipt from sale.completed */
    money(amt, sizeof(amt), b->amount, b->currency);
    money(tax, sizeof(tax), b->tax, b->currency);
    snprintf(subject, sizeof(subject), "Order %.8s confirmed - invoice %lld", b->order_id,
             (long long)b->invoice_number);
    snprintf(body, sizeof(body),
             "Thank you for your order %s.\n\nInvoice %lld\nTotal: %s (of which tax %s)\n\n"
             "Your items are reserved and on their way.\n",
             b->order_id, (long long)b->invoice_number, amt, tax);
    return deliver(w, db, env, ev, "order_confirmed", b->customer_email, subject, body, err,
                   errlen);
}

static mq_result on_rejected(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                             char *err, size_t errlen)
{
    const inventory_rejected *r = &ev->u.inventory_rejected;
    char subject[160], body[2048];
    size_t n;
    snprintf(subject, sizeof(subject), "Order %.8s could not be accepted", r->order_id);
    n = (size_t)snprintf(body, sizeof(body),
                         "We are sorry: your order %s could not be accepted (%s).\n"
                         "Out of stock:",
                         r->order_id, r->reason);
    for (size_t i = 0; i < r->skus_short.n && n < sizeof(body) - 64; i++)
        n += (size_t)snprintf(body + n, sizeof(body) - n, " %s", r->skus_short.items[i]);
    snprintf(body + n, sizeof(body) - n, "\nYou have not been charged.\n");
    return deliver(w, db, env, ev, "order_rejected", r->customer_email, subject, body, err, errlen);
}

static mq_result on_payment_failed(worker *w, db_conn *db, const ev_envelope *env,
                                   const ev_event *ev, char *err, size_t errlen)
{
    const billing_payment_failed *f = &ev->u.billing_payment_failed;
    char subject[160], body[1024], amt[48];
    money(amt, sizeof(amt), f->amount, f->currency);
    snprintf(subject, sizeof(subject), "Payment for order %.8s failed", f->order_id);
    snprintf(body, sizeof(body),
             "The payment of %s for your order %s failed: %s.\n"
             "The order is cancelled and nothing was charged.\n",
             amt, f->order_id, f->reason);
    return deliver(w, db, env, ev, "payment_failed", f->customer_email, subject, body, err, errlen);
}

static mq_result on_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         char *err, size_t errlen)
{
    const sale_completed *s = &ev->u.sale_completed;
    char subject[160], body[8192], amt[48];
    size_t n;
    if (!s->customer_email[0])
        return MQ_DONE;
    money(amt, sizeof(amt), s->total, s->currency);
    snprintf(subject, sizeof(subject), "Your receipt from %s", s->store_id);
    n = (size_t)snprintf(body, sizeof(body), "Receipt %s, %s, paid %s\n\n", s->sale_id, s->store_id,
                         s->paid_at);
    for (size_t i = 0; i < s->lines.n && n < sizeof(body) - 128; i++) {
        char price[48];
        money(price, sizeof(price), s->lines.items[i].unit_price, s->currency);
        n += (size_t)snprintf(body + n, sizeof(body) - n, "%4lld x %-32s %s\n",
                              (long long)s->lines.items[i].quantity, s->lines.items[i].sku, price);
    }
    snprintf(body + n, sizeof(body) - n, "\nTotal: %s\n", amt);
    return deliver(w, db, env, ev, "receipt", s->customer_email, subject, body, err, errlen);
}

static mq_result on_low_stock(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                              char *err, size_t errlen)
{
    const inventory_low_stock *l = &ev->u.inventory_low_stock;
    const email_cfg *cfg = worker_app(w);
    char subject[160], body[512];
    snprintf(subject, sizeof(subject), "Low stock: %s (%lld left)", l->sku, (long long)l->on_hand);
    snprintf(body, sizeof(body), "%s is down to %lld units (threshold %lld). Time to reorder.\n",
             l->sku, (long long)l->on_hand, (long long)l->threshold);
    return deliver(w, db, env, ev, "low_stock", cfg->ops, subject, body, err, errlen);
}

int main(int argc, char **argv)
{
    static const worker_route routes[] = {
        {EV_BILLING_INVOICED, on_invoiced},
        {EV_INVENTORY_REJECTED, on_rejected},
        {EV_BILLING_PAYMENT_FAILED, on_payment_failed},
        {EV_SALE_COMPLETED, on_sale},
        {EV_INVENTORY_LOW_STOCK, on_low_stock},
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
    int declare_only = argc > 1 && strcmp(argv[1], "--declare-topology") == 0;
    worker_def def = {.service = "email",
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .app = &cfg,
                      .ready = email_ready,
                      .default_port = 9103};
    int rc;

    log_init("email", LOG_INFO);
    if (cfg_load(specs, nspecs, err, sizeof(err)) < 0 ||
        cfg_raw("SMTP_URL", &smtp, err, sizeof(err)) < 0) {
        log_error("configuration: %s", err);
        return 1;
    }
    if (smtp && strncmp(smtp, "smtp://", 7) != 0 && strncmp(smtp, "smtps://", 8) != 0) {
        log_error("configuration: SMTP_URL must start with smtp:// or smtps://");
        return 1;
    }
    if (lease_s < 2 * smtp_timeout_s) {
        /* A send must end well inside its claim, or another mailer may
         * claim the row again and send it too. */
        log_error("configuration: MAIL_LEASE_S (%ld) must be at least twice"
                  " MAIL_SMTP_TIMEOUT_S (%ld)",
                  lease_s, smtp_timeout_s);
        return 1;
    }
    cfg.smtp_url = smtp && *smtp ? smtp : NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        return 1;
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
    cfg_free(specs, nspecs);
    free(smtp);
    free(amqp);
    free(dburl);
    return rc;
}
