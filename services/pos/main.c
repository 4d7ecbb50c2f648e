/*
 * pos — a point-of-sale terminal that publishes sale.completed: interactive
 * (Enter rings up a random sale, q quits) or a burst of --count N sales,
 * --rate R a second (0 = as fast as confirms allow); see usage().
 *
 * Store and forward: every sale is appended (and fsynced) to a spool file
 * before it is published, and removed from it only after the broker's
 * publisher confirm. Several tills of one store may share a spool; the
 * file, its locks and its recovery are in spool.c, the products in
 * catalog.c. When the broker is unreachable (or slow) the till keeps selling
 * into the spool and sends everything when the broker is back, at the next
 * sale or at the next start. So a till never loses a sale.
 *
 * Environment: AMQP_URL (required), CATALOG_URL (default
 * http://127.0.0.1:8080/products: order-api's public catalog) or CATALOG_FILE
 * (the same JSON), POS_SPOOL_DIR (default "."), POS_FLUSH_TIMEOUT_S (how long
 * to keep trying at the end of a run, default 30), LOG_LEVEL.
 * Exit status: 0 when every sale was confirmed, 1 on bad usage or
 * configuration, 2 when sales are left in the spool.
 */
#include "catalog.h"
#include "cfg.h"
#include "log.h"
#include "mq.h"
#include "spool.h"
#include "util.h"

#include <curl/curl.h>
#include "otel.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop_flag; /* SIGINT, SIGTERM */

typedef struct {
    const char *store, *email;
    spool sp;
    mq_conn *mq;
    catalog cat;
    long sent;
} till;

static int usage(void)
{
    fprintf(stderr, "usage: pos [--store S] [--email E]              interactive till\n"
                    "       pos --count N [--rate R] [--store S] [--email E]   a burst\n"
                    "env: AMQP_URL, CATALOG_URL or CATALOG_FILE, POS_SPOOL_DIR\n");
    return 1;
}

/* The flags; returns 0, or 1 after printing why. */
static int parse_args(int argc, char **argv, till *t, long *count, long *rate)
{
    char err[256];
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v)
            return usage();
        if (strcmp(a, "--store") == 0)
            t->store = v;
        else if (strcmp(a, "--email") == 0)
            t->email = v;
        else if (strcmp(a, "--count") == 0)
            bad = cfg_parse_long("--count", v, 1, 10000000, count, err, sizeof(err)) < 0;
        else if (strcmp(a, "--rate") == 0)
            bad = cfg_parse_long("--rate", v, 0, 1000000, rate, err, sizeof(err)) < 0;
        else
            return usage();
        if (bad) {
            fprintf(stderr, "pos: %s\n", err);
            return 1;
        }
    }
    return 0;
}

/* Rings up count random sales (count < 0: one per Enter on stdin until q),
 * rate a second (0: as fast as the spool takes them), each spooled, sending
 * as it goes. Returns
 * 0, or -1 when a sale could not be spooled. */
static int sell(till *t, long count, long rate)
{
    char err[512], msg[256], line[256], *body;
    int64_t t0 = util_now_ms();
    long left;
    int rc;

    if (count < 0) {
        printf("pos %s: Enter rings up a sale, q quits\n", t->store);
        fflush(stdout);
    }
    for (long i = 0; (count < 0 || i < count) && !stop_flag; i++) {
        if (count < 0 && (!fgets(line, sizeof(line), stdin) || line[0] == 'q'))
            break;
        body = catalog_sale(&t->cat, t->store, t->email, msg, sizeof(msg), err, sizeof(err));
        rc = body ? spool_append(&t->sp, body, err, sizeof(err)) : -1;
        free(body);
        if (rc < 0) {
            fprintf(stderr, "pos: %s\n", err);
            return -1;
        }
        if (count < 0) {
            left = spool_send(&t->sp, t->mq, &t->sent);
            printf("%s -> %s\n", msg,
                   left == 0            ? "confirmed"
                   : left == SPOOL_BUSY ? "spooled (another till of the store is sending)"
                                        : "spooled (broker unreachable)");
            fflush(stdout);
        } else if (rate > 0) {
            int64_t due = t0 + (i + 1) * 1000 / rate;
            /* Send what is spooled now and then, and before each pause. */
            spool_send(&t->sp, t->mq, &t->sent);
            if (due > util_now_ms())
                util_sleep_ms(due - util_now_ms(), &stop_flag);
        } else if ((i + 1) % 100 == 0) {
            spool_send(&t->sp, t->mq, &t->sent);
        }
    }
    if (count >= 0)
        log_info("%ld sale(s) rung up; sending what is spooled", count);
    return 0;
}

int main(int argc, char **argv)
{
    till t;
    long count = -1, rate = 0, flush_s = 30, left;
    char *amqp = NULL, *curl_url = NULL, *spool_dir = NULL, *level = NULL, *cat_file = NULL;
    char err[512];
    const cfg_spec specs[] = {
        {"AMQP_URL", CFG_STR, NULL, 0, 0, &amqp},
        {"CATALOG_URL", CFG_STR, "http://127.0.0.1:8080/products", 0, 0, &curl_url},
        {"POS_SPOOL_DIR", CFG_STR, ".", 0, 0, &spool_dir},
        {"LOG_LEVEL", CFG_STR, "info", 0, 0, &level},
        {"POS_FLUSH_TIMEOUT_S", CFG_LONG, "30", 0, 3600, &flush_s},
    };
    const size_t nspecs = sizeof(specs) / sizeof(specs[0]);
    mq_opts mo = {0};
    log_level lvl;
    int rc = 1, broken;

    memset(&t, 0, sizeof(t));
    t.store = "NEPAL-01";
    if (parse_args(argc, argv, &t, &count, &rate) != 0)
        return 1;
    log_init("pos", LOG_INFO);
    if (cfg_load(specs, nspecs, err, sizeof(err)) < 0 ||
        cfg_raw("CATALOG_FILE", &cat_file, err, sizeof(err)) < 0 ||
        log_parse_level(level, &lvl) < 0 || mq_check_url(amqp, err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: configuration: %s\n", err[0] ? err : "LOG_LEVEL");
        goto out;
    }
    log_init("pos", lvl);
    if (otel_init("pos", err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: configuration: %s\n", err);
        goto out;
    }
    /* The contract checks --store and --email on the first sale; here
     * their length (the store's bounds the spool's file name). */
    if (t.email && strlen(t.email) > EV_EMAIL_MAX) {
        fprintf(stderr, "pos: --email: at most %d characters\n", EV_EMAIL_MAX);
        goto out;
    }
    if (spool_init(&t.sp, spool_dir, t.store, err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: --store: %s\n", err);
        goto out;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (otel_start(err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: %s\n", err);
        goto out_curl;
    }
    if (catalog_load(&t.cat, curl_url, cat_file, err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: %s\n", err);
        goto out_curl;
    }
    mo.url = amqp;
    mo.app_id = "pos";
    t.mq = mq_new(&mo);
    util_stop_on_signals(&stop_flag);
    signal(SIGPIPE, SIG_IGN);

    left = spool_send(&t.sp, t.mq, &t.sent); /* what an earlier run could not send */
    if (left > 0)
        log_warn("%ld sales from an earlier run are still spooled", left);
    broken = sell(&t, count, rate) < 0;

    /* Try for a while to send what is left before giving up for this run. */
    left = spool_drain(&t.sp, t.mq, &t.sent, flush_s * 1000, &stop_flag);
    if (left == 0) {
        printf("pos %s: %ld sale(s) sent and confirmed\n", t.store, t.sent);
        rc = broken ? 1 : 0;
    } else {
        printf("pos %s: %ld sale(s) confirmed, %ld left in %s; they are sent on the next run\n",
               t.store, t.sent, left, t.sp.path);
        rc = 2;
    }
    mq_free(t.mq);
out_curl:
    otel_stop(0);
    curl_global_cleanup();
out:
    cfg_free(specs, nspecs);
    free(cat_file);
    return rc;
}
