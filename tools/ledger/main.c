/*
 * ledger — after a run, checks from the tables and the queues that nothing
 * was lost, nothing was applied twice, and everything finished.
 *
 *   ledger [--ids FILE] [--tag TAG] [--wait SECONDS] [--dlq SERVICE=N ...]
 *
 * --ids is loadgen's file ("O <key> <order id>" per order answered 2xx,
 * "S <sale id>" per sale the broker confirmed). --tag limits the order and
 * sale checks to one run (loadgen's customer_id / store_id); without it every
 * order in the database is checked. --wait first waits, up to SECONDS, for the
 * suite to go quiet: every order of the run final, every sale applied,
 * outboxes empty (parked rows aside: nothing moves them but an operator),
 * work and retry queues empty.
 *
 * Checked:
 *   orders   every accepted id exists (else lost); none is left in a
 *            non-final status; each final order has exactly its effects:
 *            CONFIRMED  reservation held, one invoice, one order_confirmed mail
 *            REJECTED   one rejection, no reservation, one order_rejected mail
 *            CANCELLED  reservation released, one payment failure, one mail
 *            EXPIRED    (the saga's timeout) no stock held (released, or never
 *                       reserved), billing's void with the invoice if one was
 *                       made, one mail about how it ended and no confirmation
 *            (anything more is counted as duplicated, anything less as lost)
 *   sales    every confirmed sale has its stock lines, one invoice, one receipt
 *   stock    per SKU: on_hand >= 0 and on_hand = adjustments - held - sold
 *   queues   work queues are empty; each DLQ holds what --dlq says (DLQs not
 *            named are reported, not checked)
 *   in flight messages a consumer holds unacked in a work queue (from the
 *            management API: a passive queue.declare counts only the ready
 *            ones) are waited for and, left after the wait, count as stuck
 *   stuck    work neither lost nor done after the wait: a row left in any
 *            schema's outbox (unpublished), a parked outbox row (one the
 *            broker returned OUTBOX_PARK_AFTER times; any age: the relay never
 *            retries it, only `dlq outbox replay` does), a mail
 *            left pending in email's mail outbox (email.messages, not yet
 *            delivered), a message left in a retry tier, a message left
 *            unacked in a work queue. Outbox rows and mail belong to the
 *            order or sale they are about (correlation_id): with --tag or
 *            --ids only the run's orders' and sales' count (another run's
 *            parked row is not this run's stuck work); without, all of them
 *
 * Prints the counts, then
 * "RESULT lost=L duplicated=D stuck=S inconsistent=I ok=0|1".
 * Environment: each service's tables are read through that service's own
 * URL, since each schema may live on another PostgreSQL server
 * (docs/SCALING.md): ORDERS_DATABASE_URL, INVENTORY_DATABASE_URL,
 * BILLING_DATABASE_URL, EMAIL_DATABASE_URL (the service's role, or the owner
 * on that server), each defaulting to DATABASE_URL (the owner role, when
 * every schema is on one server; also where the outboxes of other schemas
 * are read); no statement joins two services' schemas.
 * AMQP_URL (the administrator: it looks at every queue; its user and password
 * also log in to the management API at MGMT_URL, default
 * http://<AMQP host>:MGMT_PORT, MGMT_PORT default 15672; at most 511 bytes,
 * refused past that), LEDGER_SERVICES
 * (default order-api,inventory,billing,email), RETRY_DELAYS_MS (default
 * 1000,10000,60000). Exit: 0 when ok, 1 when not, 2 on bad usage.
 *
 * The parts, one file each by role, are listed in ledger.h.
 */
#include "ledger.h"
#include "mq.h"
#include "util.h"
#include "worker.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ledger_options ledger_opt;

static int usage(void)
{
    fprintf(stderr, "usage: ledger [--ids FILE] [--tag TAG] [--wait SECONDS] [--dlq SERVICE=N]...\n"
                    "env: DATABASE_URL (owner) or <SCHEMA>_DATABASE_URL each, AMQP_URL "
                    "(administrator), LEDGER_SERVICES\n");
    return 2;
}

static int quiet(const figures *fg)
{
    return fg->not_final == 0 && fg->found == fg->accepted && fg->sales_missing == 0 &&
           fg->outbox_pending == 0 && fg->mail_pending == 0 && fg->queue_ready == 0 &&
           fg->retry_ready == 0 && fg->in_flight == 0;
}

static int set_services(const char *list)
{
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        return -1;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (ledger_opt.nservices == MAX_SERVICES)
            return -1;
        ledger_opt.dlq_expect[ledger_opt.nservices] = -1;
        ledger_opt.services[ledger_opt.nservices++] = t;
    }
    return ledger_opt.nservices > 0 ? 0 : -1;
}

static int expect_dlq(const char *arg)
{
    const char *eq = strchr(arg, '=');
    char *end;
    long n;
    if (!eq)
        return -1;
    errno = 0;
    n = strtol(eq + 1, &end, 10);
    if (errno || end == eq + 1 || *end || n < 0)
        return -1;
    for (int i = 0; i < ledger_opt.nservices; i++) {
        if (strlen(ledger_opt.services[i]) == (size_t)(eq - arg) &&
            strncmp(ledger_opt.services[i], arg, (size_t)(eq - arg)) == 0) {
            ledger_opt.dlq_expect[i] = n;
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"ids", required_argument, 0, 'i'},  {"tag", required_argument, 0, 't'},
        {"wait", required_argument, 0, 'w'}, {"dlq", required_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},       {0, 0, 0, 0}};
    const char *amqp = getenv("AMQP_URL");
    const char *services = getenv("LEDGER_SERVICES"), *tiers = getenv("RETRY_DELAYS_MS");
    char *dlq_args[MAX_SERVICES];
    int ndlq = 0, c, ok;
    sent s = {0};
    figures fg = {0};
    ledger_dbs dbs = {0};
    mq_conn *mq;
    mq_opts mo = {0};
    char err[256];
    int64_t deadline;
    long lost, dup, bad, stuck;

    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'i':
            ledger_opt.ids_path = optarg;
            break;
        case 't':
            ledger_opt.tag = optarg;
            break;
        case 'w':
            errno = 0;
            ledger_opt.wait_s = strtod(optarg, &end);
            if (errno || *end || ledger_opt.wait_s < 0 || ledger_opt.wait_s > 3600)
                return usage();
            break;
        case 'q':
            if (ndlq == MAX_SERVICES)
                return usage();
            dlq_args[ndlq++] = optarg;
            break;
        default:
            return usage();
        }
    }
    if (optind != argc)
        return usage();
    if (!amqp) {
        fprintf(stderr, "ledger: set AMQP_URL (administrator)\n");
        return 2;
    }
    if (set_services(services ? services : "order-api,inventory,billing,email") < 0) {
        fprintf(stderr, "ledger: LEDGER_SERVICES must be 1-%d comma-separated names\n",
                MAX_SERVICES);
        return 2;
    }
    for (int i = 0; i < ndlq; i++) {
        if (expect_dlq(dlq_args[i]) < 0) {
            fprintf(stderr, "ledger: --dlq wants SERVICE=N with a service of LEDGER_SERVICES\n");
            return 2;
        }
    }
    if (worker_parse_tiers(tiers ? tiers : "1000,10000,60000", ledger_opt.tiers, err, sizeof(err)) <
        0) {
        fprintf(stderr, "ledger: %s\n", err);
        return 2;
    }
    if (ledger_opt.ids_path && ledger_read_ids(ledger_opt.ids_path, &s) < 0)
        return 1;

    if (ledger_dbs_open(&dbs) < 0)
        return 1;
    if (ledger_mgmt_init(amqp, err, sizeof(err)) < 0) {
        fprintf(stderr, "ledger: %s\n", err);
        ledger_dbs_close(&dbs);
        return 1;
    }
    mo.url = amqp;
    mo.app_id = "ledger";
    mq = mq_new(&mo);
    if (!mq || mq_connect_publisher(mq, err, sizeof(err)) != MQ_OK) {
        fprintf(stderr, "ledger: AMQP_URL: %s\n", mq ? err : "not an AMQP URL");
        ledger_dbs_close(&dbs);
        mq_free(mq);
        return 1;
    }

    deadline = util_now_ms() + (int64_t)(ledger_opt.wait_s * 1000);
    for (;;) {
        if (ledger_check_db(&dbs, &s, &fg, 0) < 0 || ledger_check_queues(mq, &fg, 0) < 0) {
            ok = 0;
            goto out;
        }
        if (quiet(&fg) || util_now_ms() >= deadline)
            break;
        util_sleep_ms(1000, NULL); /* each look costs the database a scan */
    }
    fg.quiet = quiet(&fg);
    /* Once more, printing. */
    if (ledger_check_db(&dbs, &s, &fg, 1) < 0 || ledger_check_queues(mq, &fg, 1) < 0) {
        ok = 0;
        goto out;
    }
    lost = (fg.accepted - fg.found) + fg.sales_missing;
    dup = fg.duplicated + fg.sales_dup;
    /* An order that is final but lacks an effect: lost effects, counted as inconsistent. */
    bad = fg.incomplete + fg.not_final + fg.negative + fg.off_ledger + fg.queue_ready +
          fg.dlq_mismatch;
    /* Neither lost nor done: still waiting in an outbox or a retry tier, or
     * parked (any parked row: it waits for an operator, not for time). */
    stuck = fg.outbox_pending + fg.outbox_parked + fg.mail_pending + fg.retry_ready + fg.in_flight;
    printf("orders     %s%s: %ld stored", ledger_opt.tag ? "tag " : "all",
           ledger_opt.tag ? ledger_opt.tag : "", fg.stored);
    if (s.orders)
        printf(", %ld accepted by the API, %ld of them found", fg.accepted, fg.found);
    printf("\n           CONFIRMED %ld, REJECTED %ld, CANCELLED %ld, EXPIRED %ld, not final %ld; "
           "%ld with exactly their effects, %ld without\n",
           fg.by_status[0], fg.by_status[1], fg.by_status[2], fg.by_status[3], fg.not_final,
           fg.consistent, fg.incomplete);
    if (s.sales)
        printf("sales      %ld confirmed by the broker: %ld complete, %ld missing an effect, "
               "%ld extra effects\n",
               s.sales, fg.sales_done, fg.sales_missing, fg.sales_dup);
    printf("stock      %ld SKUs: %ld negative, %ld off the ledger\n", fg.skus, fg.negative,
           fg.off_ledger);
    printf("stuck      %ld outbox row(s) unpublished, %ld parked, %ld mail(s) undelivered, "
           "%ld message(s) in retry tiers, %ld delivered and not acked\n",
           fg.outbox_pending, fg.outbox_parked, fg.mail_pending, fg.retry_ready, fg.in_flight);
    printf("quiet      %s\n", fg.quiet ? "yes" : "no (timed out waiting)");
    ok = lost == 0 && dup == 0 && stuck == 0 && bad == 0;
    printf("RESULT lost=%ld duplicated=%ld stuck=%ld inconsistent=%ld ok=%d\n", lost, dup, stuck,
           bad, ok);
out:
    free(s.order_ids);
    free(s.sale_ids);
    free(ledger_opt.services[0]);
    ledger_mgmt_free();
    curl_global_cleanup();
    mq_free(mq);
    ledger_dbs_close(&dbs);
    return ok ? 0 : 1;
}
