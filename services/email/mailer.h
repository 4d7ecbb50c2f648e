/*
 * mailer.h — email's mail outbox relay: delivers recorded mail after COMMIT.
 *
 * The handlers only write a mail into email.messages (status 'pending') in
 * the message's transaction, so a transaction that is rolled back or run
 * again (a batch falling back) sends nothing. This thread, with its own
 * database and broker connections, claims due pending rows (a lease: a
 * claimed row is due again after its lease, so a crash mid-send does not
 * strand it), talks SMTP (libcurl), and writes the outcome:
 *
 *   accepted (2xx)          status 'sent', sent_at
 *   refused for now (4xx),  attempts + 1 and next_attempt_at pushed back
 *   server unreachable      (capped exponential backoff); after max_attempts
 *                           the mail is dead-lettered as retries-exhausted
 *   refused for good (5xx)  the cause message goes to email.dlq (reason
 *                           "rejected", x-error = the server's reply), then
 *                           the row becomes 'refused' with that reply in
 *                           last_error and the cause leaves email's inbox, so
 *                           `dlq replay email` records the mail again
 *
 * Mail is delivered at least once: a crash (or a lost database) between the
 * server's 250 and the UPDATE to 'sent' sends it again when the lease ends.
 */
#ifndef ORDERSUITE_MAILER_H
#define ORDERSUITE_MAILER_H

#include "db.h"

#include <stddef.h>

typedef struct mailer mailer;

typedef struct {
    const char *database_url;
    const char *amqp_url;
    const char *smtp_url; /* smtp://host:port */
    const char *from;     /* envelope and header sender */
    int max_attempts;     /* tries before a mail is dead-lettered */
    int retry_max_ms;     /* cap of the backoff between tries */
    int batch;            /* rows per claim; 0 = 16 */
    int lease_s;          /* a claimed row is due again after this; 0 = 120 */
    int smtp_timeout_s;   /* bound of one SMTP exchange; 0 = 15 */
    db_timeouts timeouts; /* the worker's DB_*_TIMEOUT_MS, for the mailer's own connection */
} mailer_opts;

/* Starts the thread; copies what it needs from o. Returns NULL with err when
 * out of memory or the thread cannot start; connection problems are retried
 * inside the thread. */
mailer *mailer_start(const mailer_opts *o, char *err, size_t errlen);

/* Stops the thread after the mail in hand (at most one SMTP timeout) and
 * frees m. NULL is a no-op. Pending mail stays pending for the next start. */
void mailer_stop(mailer *m);

/* Wakes the mailer: for db_after_commit, after a handler recorded mail. */
void mailer_wake(void);

#endif
