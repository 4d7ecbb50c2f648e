/*
 * dlq — look at and repair the dead-letter queues.
 *
 *   dlq list                                    every service's DLQ and its depth
 *   dlq show <service> [--limit N]              the messages, with why they failed
 *   dlq replay <service> (--id ID | --all) [--dry-run] [--rate N]
 *                                               back to the service's work queue
 *   dlq purge <service> --yes                   drop them all
 *   dlq outbox list <service>                   the service's parked outbox rows
 *   dlq outbox replay <service> (--id ID | --all)
 *                                               un-park them: the relay sends them again
 *
 * Parked outbox rows are events the broker refused (unroutable, nacked) too
 * many times; they wait in the service's outbox table (needs DATABASE_URL,
 * the owner's) until the route is fixed and they are replayed.
 *
 * Replay publishes a copy of each chosen message, with its original
 * properties and body and a fresh attempt count, to the service's work queue
 * (through sales.retry), waits for the broker's confirm, and only then acks
 * the dead letter: a tool that dies halfway leaves every message in the DLQ
 * or in the work queue, never nowhere (a copy in both is absorbed by the
 * service's inbox). Messages not chosen stay in the DLQ. `show` takes the
 * messages without acking them, so they stay too.
 *
 * Environment: AMQP_URL (required), DLQ_SERVICES (default
 * "order-api,inventory,billing,email"). Exit status: 0, 1 on a broker error,
 * 2 on bad usage.
 */
#include "cfg.h"
#include "db.h"
#include "log.h"
#include "mq.h"
#include "util.h"
#include "uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SERVICES 32

static int usage(void)
{
    fprintf(stderr, "usage: dlq list\n"
                    "       dlq show <service> [--limit N]\n"
                    "       dlq replay <service> (--id MESSAGE_ID | --all) [--dry-run] [--rate N]\n"
                    "       dlq purge <service> --yes\n"
                    "       dlq outbox list <service>\n"
                    "       dlq outbox replay <service> (--id MESSAGE_ID | --all)\n"
                    "env: AMQP_URL, DLQ_SERVICES (default order-api,inventory,billing,email)\n");
    return 2;
}

static int valid_service(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 48 || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static mq_conn *open_conn(const char *url, char *err, size_t errlen)
{
    mq_opts o = {.url = url, .app_id = "dlq"};
    mq_conn *c = mq_new(&o);
    if (!c) {
        snprintf(err, errlen, "AMQP_URL is not an AMQP URL");
        return NULL;
    }
    if (mq_connect_retry(c, 0, 10000, NULL, err, errlen) != MQ_OK) {
        mq_free(c);
        return NULL;
    }
    return c;
}

static void print_message(int i, const mq_delivery *d)
{
    char when[32] = "?";
    time_t t = (time_t)d->failed_at;
    struct tm tm;
    if (d->failed_at > 0 && gmtime_r(&t, &tm))
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("#%d  message_id %s\n", i, d->message_id[0] ? d->message_id : "(none)");
    printf("    routing_key    %s\n", d->routing_key);
    printf("    correlation_id %s\n", d->correlation_id[0] ? d->correlation_id : "(none)");
    printf("    reason         %s\n",
           d->reason[0] ? d->reason : "(set by the broker: delivery limit)");
    printf("    attempts       %d\n", d->attempt);
    printf("    failed         %s in %s\n", when, d->failed_service[0] ? d->failed_service : "?");
    printf("    error          %s\n", d->error[0] ? d->error : "(none)");
    printf("    body           %.*s%s\n", (int)(d->len > 300 ? 300 : d->len), d->body,
           d->len > 300 ? "..." : "");
}

static int cmd_list(mq_conn *c, const char *url, char *services)
{
    char err[MQ_ERR_LEN];
    int rc = 0;
    printf("%-24s %s\n", "DLQ", "MESSAGES");
    for (char *save = NULL, *s = strtok_r(services, ",", &save); s;
         s = strtok_r(NULL, ",", &save)) {
        char q[128];
        long n;
        if (!valid_service(s)) {
            fprintf(stderr, "dlq: DLQ_SERVICES: bad service name \"%s\"\n", s);
            return 2;
        }
        mq_dlq_name(s, q, sizeof(q));
        if (!mq_is_connected(c) && mq_connect_publisher(c, err, sizeof(err)) != MQ_OK) {
            fprintf(stderr, "dlq: %s\n", err);
            return 1;
        }
        n = mq_queue_depth(c, q, err, sizeof(err));
        if (n == MQ_ERR_CONFIG)
            printf("%-24s %s\n", q, "(no such queue)");
        else if (n < 0) {
            fprintf(stderr, "dlq: %s: %s\n", q, err);
            rc = 1;
        } else
            printf("%-24s %ld\n", q, n);
    }
    (void)url;
    return rc;
}

static int cmd_show(mq_conn *c, const char *q, long limit)
{
    char err[MQ_ERR_LEN];
    mq_got *held[1000];
    int n = 0, rc = 0;

    while (n < limit && n < 1000) {
        int got = mq_get(c, q, &held[n], err, sizeof(err));
        if (got < 0) {
            fprintf(stderr, "dlq: %s: %s\n", q, err);
            rc = 1;
            break;
        }
        if (got == 0)
            break;
        print_message(n + 1, mq_got_delivery(held[n]));
        n++;
    }
    printf("%d message(s) shown from %s; they stay in the queue\n", n, q);
    /* Closing the connection returns the unacked messages to the queue. */
    mq_disconnect(c);
    for (int i = 0; i < n; i++)
        mq_got_free(held[i]);
    return rc;
}

/* Keeps g unacked until the end of the run (it then returns to the DLQ). */
static int hold(mq_got ***held, size_t *n, size_t *cap, mq_got *g)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        mq_got **h = realloc(*held, nc * sizeof(**held));
        if (!h)
            return -1;
        *held = h;
        *cap = nc;
    }
    (*held)[(*n)++] = g;
    return 0;
}

static int cmd_replay(mq_conn *c, const char *url, const char *service, const char *q,
                      const char *id, int dry, long rate)
{
    char err[MQ_ERR_LEN], note[sizeof("replayed from ") + 128]; /* q is at most 127 */
    mq_conn *pub = dry ? NULL : open_conn(url, err, sizeof(err));
    mq_got **held = NULL;
    size_t nheld = 0, cap = 0;
    long replayed = 0, kept = 0, limit;
    int rc = 0;

    if (!dry && !pub) {
        fprintf(stderr, "dlq: %s\n", err);
        return 1;
    }
    /* Only what is there now: a replayed message the service still refuses
     * comes back to the DLQ and must not be taken again in this run. */
    limit = mq_queue_depth(c, q, err, sizeof(err));
    if (limit < 0) {
        fprintf(stderr, "dlq: %s: %s\n", q, err);
        mq_free(pub);
        return 1;
    }
    snprintf(note, sizeof(note), "replayed from %s", q);
    while (replayed + kept < limit) {
        mq_got *g;
        const mq_delivery *d;
        int got = mq_get(c, q, &g, err, sizeof(err));
        if (got < 0) {
            fprintf(stderr, "dlq: %s: %s\n", q, err);
            rc = 1;
            break;
        }
        if (got == 0)
            break;
        d = mq_got_delivery(g);
        if ((id && strcmp(d->message_id, id) != 0) || dry) {
            /* Not chosen (or a dry run): held unacked, so the loop moves on. */
            if (dry && !(id && strcmp(d->message_id, id) != 0)) {
                printf("would replay %s (%s, %s)\n", d->message_id, d->routing_key,
                       d->reason[0] ? d->reason : "broker");
                replayed++;
            } else {
                kept++;
            }
            if (hold(&held, &nheld, &cap, g) < 0) {
                mq_got_free(g);
                rc = 1;
                break;
            }
            continue;
        }
        /* Publish with confirm first, then ack: never lost in between. */
        if (mq_forward(pub, service, d, 0, MQ_RETRY_EXCHANGE, service, NULL, note, err,
                       sizeof(err)) != MQ_OK) {
            fprintf(stderr, "dlq: replaying %s: %s; it stays in the DLQ\n", d->message_id, err);
            mq_got_free(g);
            rc = 1;
            break;
        }
        if (mq_settle(c, g, 1, err, sizeof(err)) != MQ_OK) {
            fprintf(stderr, "dlq: ack %s: %s (it may be replayed twice; the inbox absorbs it)\n",
                    d->message_id, err);
            mq_got_free(g);
            rc = 1;
            break;
        }
        printf("replayed %s (%s)\n", d->message_id, d->routing_key);
        mq_got_free(g);
        replayed++;
        if (id)
            break;
        if (rate > 0)
            util_sleep_ms(1000 / rate, NULL);
    }
    mq_disconnect(c); /* returns the held messages to the DLQ */
    for (size_t i = 0; i < nheld; i++)
        mq_got_free(held[i]);
    free(held);
    mq_free(pub);
    printf("%s %ld message(s) of %s to %s; %ld left in the DLQ\n",
           dry ? "would replay" : "replayed", replayed, q, service, kept + (dry ? replayed : 0));
    if (id && replayed == 0 && rc == 0) {
        fprintf(stderr, "dlq: no message %s in %s\n", id, q);
        return 1;
    }
    return rc;
}

/* dlq outbox list|replay <service> [--id ID | --all], on the database. */
static int cmd_outbox(int argc, char **argv)
{
    const char *verb = argc > 2 ? argv[2] : "", *service = argc > 3 ? argv[3] : NULL;
    const char *id = NULL, *schema;
    char *url = NULL, *ident = NULL, sql[512], err[DB_ERR_LEN], channel[96];
    const cfg_spec specs[] = {{"DATABASE_URL", CFG_STR, NULL, 0, 0, &url}};
    int all = 0, rc = 1;
    db_conn *db = NULL;
    PGresult *res = NULL;

    if (!service || !valid_service(service))
        return usage();
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--id") == 0 && i + 1 < argc && uuid_valid(argv[i + 1]))
            id = argv[++i];
        else if (strcmp(argv[i], "--all") == 0)
            all = 1;
        else
            return usage();
    }
    if (strcmp(verb, "list") == 0 ? (id || all) : strcmp(verb, "replay") != 0 || !!id == all)
        return usage();
    if (cfg_load(specs, 1, err, sizeof(err)) < 0) {
        fprintf(stderr, "dlq: configuration: %s\n", err);
        return 1;
    }
    /* order-api's tables are in schema orders; every other service's in its own. */
    schema = strcmp(service, "order-api") == 0 ? "orders" : service;
    db = db_new(url, "dlq");
    if (!db || db_connect(db, err, sizeof(err)) != DB_OK) {
        fprintf(stderr, "dlq: %s\n", db ? err : "out of memory");
        goto out;
    }
    ident = PQescapeIdentifier(db_pg(db), schema, strlen(schema));
    if (!ident) {
        fprintf(stderr, "dlq: %s\n", PQerrorMessage(db_pg(db)));
        goto out;
    }
    /* The schema is an identifier (escaped by libpq); the values are parameters. */
    if (strcmp(verb, "list") == 0) {
        snprintf(sql, sizeof(sql),
                 "SELECT message_id, routing_key, attempts, parked_at, last_error"
                 " FROM %s.outbox WHERE parked_at IS NOT NULL ORDER BY id",
                 ident);
        if (db_exec(db, sql, 0, NULL, &res, err, sizeof(err)) != DB_OK) {
            fprintf(stderr, "dlq: %s\n", err);
            goto out;
        }
        for (int i = 0; i < PQntuples(res); i++)
            printf("%s %s attempts=%s parked_at=%s reason=%s\n", db_get(res, i, "message_id"),
                   db_get(res, i, "routing_key"), db_get(res, i, "attempts"),
                   db_get(res, i, "parked_at"), db_get(res, i, "last_error"));
        printf("%d parked row(s) in %s.outbox\n", PQntuples(res), schema);
        rc = 0;
        goto out;
    }
    snprintf(sql, sizeof(sql),
             "UPDATE %s.outbox SET parked_at = NULL, attempts = 0, refused_since = NULL"
             " WHERE parked_at IS NOT NULL"
             " AND ($1::uuid IS NULL OR message_id = $1::uuid) RETURNING id",
             ident);
    {
        const char *p[] = {id};
        const char *n[] = {channel};
        snprintf(channel, sizeof(channel), "%s_outbox", service);
        if (db_exec(db, sql, 1, p, &res, err, sizeof(err)) != DB_OK ||
            db_exec(db, "SELECT pg_notify($1, '')", 1, n, NULL, err, sizeof(err)) != DB_OK) {
            fprintf(stderr, "dlq: %s\n", err);
            goto out;
        }
    }
    printf("replayed %d parked row(s) of %s.outbox\n", PQntuples(res), schema);
    rc = id && PQntuples(res) == 0 ? 1 : 0;
    if (rc)
        fprintf(stderr, "dlq: no parked row %s in %s.outbox\n", id, schema);
out:
    PQclear(res);
    if (ident)
        PQfreemem(ident);
    db_free(db);
    cfg_free(specs, 1);
    return rc;
}

int main(int argc, char **argv)
{
    char *url = NULL, *services = NULL;
    char err[MQ_ERR_LEN], q[128];
    const cfg_spec specs[] = {
        {"AMQP_URL", CFG_STR, NULL, 0, 0, &url},
        {"DLQ_SERVICES", CFG_STR, "order-api,inventory,billing,email", 0, 0, &services},
    };
    const char *verb = argc > 1 ? argv[1] : "", *service = argc > 2 ? argv[2] : NULL;
    const char *id = NULL;
    long limit = 20, rate = 0;
    int all = 0, dry = 0, yes = 0, rc = 2;
    mq_conn *c = NULL;

    log_init("dlq", LOG_WARN);
    if (strcmp(verb, "outbox") == 0)
        return cmd_outbox(argc, argv);
    if (strcmp(verb, "list") != 0) {
        if (!service || !valid_service(service))
            return usage();
        for (int i = 3; i < argc; i++) {
            const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (strcmp(a, "--id") == 0 && v) {
                id = argv[++i];
            } else if (strcmp(a, "--limit") == 0 && v) {
                if (cfg_parse_long("--limit", argv[++i], 1, 1000, &limit, err, sizeof(err)) < 0)
                    return fprintf(stderr, "dlq: %s\n", err), 2;
            } else if (strcmp(a, "--rate") == 0 && v) {
                if (cfg_parse_long("--rate", argv[++i], 1, 100000, &rate, err, sizeof(err)) < 0)
                    return fprintf(stderr, "dlq: %s\n", err), 2;
            } else if (strcmp(a, "--all") == 0) {
                all = 1;
            } else if (strcmp(a, "--dry-run") == 0) {
                dry = 1;
            } else if (strcmp(a, "--yes") == 0) {
                yes = 1;
            } else {
                return usage();
            }
        }
    } else if (argc != 2) {
        return usage();
    }
    if (strcmp(verb, "replay") == 0 && (!!id == all))
        return usage();
    if (strcmp(verb, "purge") == 0 && !yes) {
        fprintf(stderr, "dlq: purge drops every message for good; add --yes to mean it\n");
        return 2;
    }
    if (strcmp(verb, "list") && strcmp(verb, "show") && strcmp(verb, "replay") &&
        strcmp(verb, "purge"))
        return usage();
    if (cfg_load(specs, 2, err, sizeof(err)) < 0) {
        fprintf(stderr, "dlq: configuration: %s\n", err);
        rc = 1;
        goto out;
    }
    c = open_conn(url, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "dlq: %s\n", err);
        rc = 1;
        goto out;
    }
    if (service)
        mq_dlq_name(service, q, sizeof(q));
    if (strcmp(verb, "list") == 0) {
        rc = cmd_list(c, url, services);
    } else if (strcmp(verb, "show") == 0) {
        rc = cmd_show(c, q, limit);
    } else if (strcmp(verb, "replay") == 0) {
        rc = cmd_replay(c, url, service, q, id, dry, rate);
    } else {
        long n = mq_purge(c, q, err, sizeof(err));
        if (n < 0) {
            fprintf(stderr, "dlq: %s: %s\n", q, err);
            rc = 1;
        } else {
            printf("purged %ld message(s) from %s\n", n, q);
            rc = 0;
        }
    }
out:
    mq_free(c);
    cfg_free(specs, 2);
    return rc;
}
