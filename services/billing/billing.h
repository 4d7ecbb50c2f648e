/*
 * billing.h — the billing worker's handlers (invoices.c, voids.c), shared with
 * main.c's route table and configuration.
 */
#ifndef ORDERSUITE_BILLING_H
#define ORDERSUITE_BILLING_H

#include "worker.h"

#include <stddef.h>
#include <stdint.h>

/* The worker's app data (worker_def.app), from the environment. */
typedef struct {
    long credit_limit; /* minor units */
    long tax_bp;       /* tax rate in basis points */
} billing_cfg;

/* inventory.reserved, a set handler: the payment rule, then an invoice or a
 * payment failure for each order of the set. */
mq_result bil_reserved_set(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                           size_t errlen);

/* sale.completed, a set handler: an invoice for each sale (paid at the
 * till). */
mq_result bil_sale_set(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                       size_t errlen);

/* order.expired: the order's invoice void, or none to be made (voids.c). */
mq_result bil_on_order_expired(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen);

/* Takes the order's advisory lock for the transaction, then says whether the
 * order is void (voids.c): what bil_on_order_expired does first
 * (bil_reserved_set takes the same locks for its whole set). DB_OK, or DB_ERR / DB_ERR_TRANSIENT
 * with err. */
int bil_order_lock(db_conn *db, const char *order_id, int *is_void, char *err, size_t errlen);

/* The tax inside a gross amount at bp basis points, rounded half up, for
 * gross in [0, EV_TOTAL_MAX] and bp in [0, 10000] without overflow. Pure. */
int64_t bil_tax_part(int64_t gross, long bp);

#endif
