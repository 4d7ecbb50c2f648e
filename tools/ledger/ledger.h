/*
 * ledger.h — the ledger checker's parts, one file each by role (main.c says
 * what it checks):
 *
 *   main.c    the options, the wait for quiet, the report and RESULT line
 *   ids.c     loadgen's ids file into PostgreSQL array literals
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

/* tables.c: the orders (of s, or of --tag, or all), sales, stock and stuck
 * work into fg; verbose prints the figures. 0, or -1 on a query error. */
int ledger_check_db(PGconn *db, const sent *s, figures *fg, int verbose);

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
