/*
 * email — renders and delivers customer and operations mail.
 *
 *   billing.invoiced (order)  order confirmation with the invoice
 *   inventory.rejected        order rejected for stock
 *   billing.payment_failed    payment failed
 *   sale.completed            POS receipt, when the sale has an email
 *   inventory.low_stock       alert to OPS_EMAIL
 *
 * Every mail is recorded in email.messages (one per cause and kind). When
 * SMTP_URL is set (smtp://host:port) it is also sent, with libcurl; a mail
 * server that is down makes the handler ask for a retry, so the message goes
 * through the retry tiers and nothing is recorded as sent that was not. A
 * mail can be sent twice if the database fails right after the SMTP
 * server took it (at-least-once delivery of mail).
 */
#include "cfg.h"
#include "log.h"
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
} email_cfg;

typedef struct {
    const char *data;
    size_t len, pos;
} payload;

static size_t read_payload(char *buf, size_t size, size_t n, void *arg)
{
    payload *p = arg;
    size_t room = size * n, left = p->len - p->pos;
    size_t k = left < room ? left : room;
    memcpy(buf, p->data + p->pos, k);
    p->pos += k;
    return k;
}

static int smtp_send(const email_cfg *cfg, const char *to, const char *subject, const char *body,
                     char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    struct curl_slist *rcpt = NULL;
    char *msg;
    payload p;
    CURLcode rc;
    int n;

    if (!c) {
        snprintf(err, errlen, "curl: out of memory");
        return -1;
    }
    n = asprintf(&msg,
                 "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
                 cfg->from, to, subject, body);
    if (n < 0) {
        curl_easy_cleanup(c);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p = (payload){msg, (size_t)n, 0};
    rcpt = curl_slist_append(NULL, to);
    curl_easy_setopt(c, CURLOPT_URL, cfg->smtp_url);
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, cfg->from);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_payload);
    curl_easy_setopt(c, CURLOPT_READDATA, &p);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        snprintf(err, errlen, "smtp: %s", curl_easy_strerror(rc));
    curl_slist_free_all(rcpt);
    curl_easy_cleanup(c);
    free(msg);
    return rc == CURLE_OK ? 0 : -1;
}

static void money(char *out, size_t n, int64_t minor, const char *currency)
{
    snprintf(out, n, "%lld.%02lld %s", (long long)(minor / 100), (long long)(minor % 100),
             currency);
}

/* Records (and sends, with SMTP_URL) one mail caused by env. */
static mq_result deliver(worker *w, db_conn *db, const ev_envelope *env, const char *kind,
                         const char *to, const char *subject, const char *body, char *err,
                         size_t errlen)
{
    const email_cfg *cfg = worker_app(w);
    const char *p[7];
    PGresult *r;
    int rc, fresh;

    p[0] = env->message_id;
    p[1] = kind;
    p[2] = env->correlation_id;
    p[3] = to;
    p[4] = subject;
    p[5] = body;
    p[6] = cfg->smtp_url ? "sent" : "recorded";
    rc = db_execp(db, "mail_add",
                  "INSERT INTO messages (cause_id, kind, correlation_id, recipient, subject, body,"
                  " status) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                  " ON CONFLICT (cause_id, kind) DO NOTHING RETURNING id",
                  7, p, &r, err, errlen);
    if (rc != DB_OK)
        return worker_db_result(rc);
    fresh = PQntuples(r) == 1;
    PQclear(r);
    if (!fresh)
        return MQ_DONE;
    if (cfg->smtp_url && smtp_send(cfg, to, subject, body, err, errlen) < 0)
        return MQ_RETRY; /* the row rolls back with the transaction */
    log_write(LOG_INFO, env->correlation_id, env->message_id, "%s mail %s to %s", kind,
              cfg->smtp_url ? "sent" : "recorded", to);
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
    return deliver(w, db, env, "order_confirmed", b->customer_email, subject, body, err, errlen);
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
    return deliver(w, db, env, "order_rejected", r->customer_email, subject, body, err, errlen);
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
    return deliver(w, db, env, "payment_failed", f->customer_email, subject, body, err, errlen);
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
    return deliver(w, db, env, "receipt", s->customer_email, subject, body, err, errlen);
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
    return deliver(w, db, env, "low_stock", cfg->ops, subject, body, err, errlen);
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
    char *smtp = NULL;
    const cfg_spec specs[] = {
        {"MAIL_FROM", CFG_STR, "orders@ordersuite.local", 0, 0, &cfg.from},
        {"OPS_EMAIL", CFG_STR, "ops@ordersuite.local", 0, 0, &cfg.ops},
    };
    worker_def def = {.service = "email",
                      .routes = routes,
                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                      .app = &cfg,
                      .default_port = 9103};
    int rc;

    log_init("email", LOG_INFO);
    if (cfg_load(specs, 2, err, sizeof(err)) < 0 ||
        cfg_raw("SMTP_URL", &smtp, err, sizeof(err)) < 0) {
        log_error("configuration: %s", err);
        return 1;
    }
    if (smtp && strncmp(smtp, "smtp://", 7) != 0 && strncmp(smtp, "smtps://", 8) != 0) {
        log_error("configuration: SMTP_URL must start with smtp:// or smtps://");
        return 1;
    }
    cfg.smtp_url = smtp && *smtp ? smtp : NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        return 1;
    }
    if (!cfg.smtp_url)
        log_info("SMTP_URL not set: mail is recorded in email.messages, not sent");
    rc = worker_main(&def, argc, argv);
    curl_global_cleanup();
    cfg_free(specs, 2);
    free(smtp);
    return rc;
}
