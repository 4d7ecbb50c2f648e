/*
 * ledger.h — the ledger checker's parts, one file each by role (main.c says
 * what it checks):
 *
 *   main.c    the options, the wait for quiet, the report and RESULT line
 *   ids.c     loadgen's ids file into PostgreSQL array literals
 *   dbs.c     one connection per service's database (each service's URL)
 *   tables.c  orders, sales, stock and stuck work, from the tables
 *   queues.c  work, retry and dead-letter queues, and what consumers hold
 *             unacked (the management API)
 *
 * The options (ledger_opt) are set by main before any check runs and only
 * read after.
 */
#ifndef ORDERSUITE_LEDGER_H
#define ORDERSUITE_LEDGER_H

#include "mq.h"

#include <libpq-fe.h>

#define MAX_SERVICES 16

typedef struct {
    const char *ids_path, *tag;
    double wait_s;
    char *services[MAX_SERVICES];
    int nservices;
    long dlq_expect[MAX_SERVICES]; /* -1 = not checked */
    int tiers[MQ_MAX_TIERS];
} ledger_options;

extern ledger_options ledger_opt;

/* What was sent, from loadgen's file, as PostgreSQL array literals. */
typedef struct {
    char *order_ids, *sale_ids; /* "{id,id}" */
    long orders, sales;
} sent;

typedef struct {
    long accepted, found, stored, not_final, consistent, incomplete, duplicated;
    long by_status[4]; /* CONFIRMED, REJECTED, CANCELLED, EXPIRED */
    long sales, sales_done, sales_missing, sales_dup;
    long skus, negative, off_ledger;
    long outbox_pending, outbox_parked, mail_pending;
    long queue_ready, retry_ready, in_flight;
    long dlq_mismatch;
    int quiet;
} figures;

/* ids.c: reads loadgen's file at path into s (order and sale ids as
 * array literals). 0, or -1 after printing why. */
int ledger_read_ids(const char *path, sent *s);

/* dbs.c: the databases of the four services' schemas (orders, inventory,
 * billing, email), each through its own URL: <SCHEMA>_DATABASE_URL (e.g.
 * INVENTORY_DATABASE_URL), else DATABASE_URL. The schemas may live on
 * different PostgreSQL servers (docs/SCALING.md); one connection per
 * distinct URL (conn[0..n-1]); any other schema (a service made by make
 * new-service) is read through DATABASE_URL's, when it is set. */
#define LEDGER_MAX_DBS 5
typedef struct {
    PGconn *orders, *inventory, *billing, *email, *other; /* other: DATABASE_URL's or NULL */
    PGconn *conn[LEDGER_MAX_DBS];
    const char *url[LEDGER_MAX_DBS];
    int n;
} ledger_dbs;

/* 0, or -1 after printing which URL is missing or failed. */
int ledger_dbs_open(ledger_dbs *dbs);
void ledger_dbs_close(ledger_dbs *dbs);
/* The connection that holds schema (NULL: none of ours). */
PGconn *ledger_db_for(const ledger_dbs *dbs, const char *schema);

/* tables.c: the orders (of s, or of --tag, or all), sales, stock and stuck
 * work into fg, each service's tables read through its own connection;
 * verbose prints the figures. 0, or -1 on a query error. */
int ledger_check_db(const ledger_dbs *dbs, const sent *s, figures *fg, int verbose);

/* queues.c: the management API's address and login from MGMT_URL /
 * MGMT_PORT and amqp_url; -1 with err when amqp_url cannot be parsed or the
 * address is longer than LEDGER_MGMT_URL_MAX bytes (refused, never cut).
 * Free with ledger_mgmt_free. */
#define LEDGER_MGMT_URL_MAX 511
int ledger_mgmt_init(const char *amqp_url, char *err, size_t errlen);
void ledger_mgmt_free(void);

/* queues.c: every service's work, retry and dead-letter queue, and the
 * messages held unacked, into fg; verbose prints them. 0 or -1. */
int ledger_check_queues(mq_conn *mq, figures *fg, int verbose);

#endif
