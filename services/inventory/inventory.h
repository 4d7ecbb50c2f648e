/*
 * inventory.h — the inventory worker's handlers, shared with main.c's route
 * table: reservations.c (orders: reserve, release), expiry.c (an expired
 * order's stock), sales.c (till sales) and stock.c (what both do to a stock
 * row).
 */
#ifndef ORDERSUITE_INVENTORY_H
#define ORDERSUITE_INVENTORY_H

#include "worker.h"

#include <stddef.h>
#include <stdint.h>

/* order.placed, a set handler: each order reserves every line or none, the
 * batch's orders together, in order of arrival (reservations.c). */
mq_result inv_reserve_set(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                          size_t errlen);

/* billing.payment_failed: release the order's reservation (reservations.c). */
mq_result inv_on_payment_failed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                                char *err, size_t errlen);

/* order.expired: release what the order holds, or decide it as never to be
 * reserved (expiry.c). */
mq_result inv_on_order_expired(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen);

/* sale.completed: the sold units off the shelf, once per sale id (sales.c). */
mq_result inv_on_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev, char *err,
                      size_t errlen);

/* inventory.availability (request/reply): the SKU's stock on hand
 * (availability.c). */
int inv_on_availability(worker *w, db_conn *db, const mq_rpc_request *req, char **reply,
                        size_t *reply_len, char *err, size_t errlen);

/* Takes the transaction-scoped advisory lock of each order of ids (their
 * ids as text; released whatever the outcome), in order id order, so that two sets never wait for
 * each other in a cycle: what orders an order.placed and an order.expired of one order handled at
 * the same moment by two consumers. Each looks for the order's decision after it has the lock, in a
 * statement of its own (a statement's snapshot is taken when it starts, before any wait), and so
 * sees what the other committed (stock.c). DB_OK or an error with err. */
int inv_lock_orders(db_conn *db, db_array *ids, char *err, size_t errlen);

/* qsort order of ev_lines by SKU: the order in which rows of stock are
 * locked, so two transactions cannot deadlock on each other (stock.c). */
int inv_cmp_line(const void *a, const void *b);

/* Emits inventory.low_stock when a SKU's stock went from above threshold to
 * at or below it; DB_OK when it did not (stock.c). */
int inv_maybe_low_stock(worker *w, db_conn *db, const ev_envelope *env, const char *sku,
                        int64_t before, int64_t after, int64_t threshold, char *err, size_t errlen);

#endif
