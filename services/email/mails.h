/*
 * mails.h — email's mails: one handler per event it routes, each rendering
 * a text mail and recording it in email.messages in the message's
 * transaction ('pending' for the mailer with SMTP_URL, 'recorded' without;
 * one per cause and kind):
 *
 *   mails_confirmed       order.confirmed (order-api's CONFIRMED): the confirmation
 *   mails_rejected        inventory.rejected: order rejected for stock
 *   mails_payment_failed  billing.payment_failed
 *   mails_sale            sale.completed: the POS receipt, when it has an email
 *   mails_low_stock       inventory.low_stock: an alert to OPS_EMAIL
 *   mails_expired         order.expired: the order is cancelled, nothing charged
 */
#ifndef ORDERSUITE_MAILS_H
#define ORDERSUITE_MAILS_H

#include "mailer.h"
#include "worker.h"

/* email's app state (worker_app). */
typedef struct {
    char *smtp_url; /* NULL: record only */
    char *from;
    char *ops;
    mailer *ml; /* NULL without SMTP_URL */
    long ready_max_pending, ready_max_age_s;
} email_cfg;

mq_result mails_confirmed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                          char *err, size_t errlen);
mq_result mails_rejected(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         char *err, size_t errlen);
mq_result mails_payment_failed(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                               char *err, size_t errlen);
mq_result mails_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev, char *err,
                     size_t errlen);
mq_result mails_low_stock(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                          char *err, size_t errlen);
mq_result mails_expired(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                        char *err, size_t errlen);

#endif
