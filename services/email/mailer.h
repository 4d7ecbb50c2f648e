/*
 * mailer.h — email's mail outbox relay: delivers recorded mail after COMMIT.
 *
 * The handlers only write a mail into email.messages (status 'pending') in
 * the message's transaction, so a transaction that is rolled back or run
 * again (a batch falling back) sends nothing. This thread, with its own
 * database and broker connections, claims due pending rows under a token of
 * its own (a lease: a claimed row is due again after lease_s, so a crash
 * mid-send does not strand it), renews a row's lease just before sending it
 * (one exchange takes at most smtp_timeout_s, at most half the lease), talks
 * SMTP (smtp.h, on libcurl), and writes the outcome only WHERE claim = its token (a row
 * claimed again by another mailer is that one's):
 *
 *   accepted (2xx)            status 'sent', sent_at
 *   4xx to RCPT or DATA,      attempts + 1 and next_attempt_at pushed back
 *   no session: unreachable,  (capped exponential backoff; without a session
 *   or a 4xx/5xx to greeting, the rest of the claim waits untried); after
 *   EHLO, AUTH, MAIL FROM     max_attempts: dead-lettered, retries-exhausted
 *   5xx to RCPT or DATA       the cause message goes to email.dlq (reason
 *                             "rejected", x-error = the server's reply), then
 *                             the row becomes 'refused' with that reply in
 *                             last_error and the cause leaves email's inbox,
 *                             so `dlq replay email` records the mail again
 *
 * A reply is judged by its code and the command it answered (libcurl's
 * protocol log), never by its text. Mail is delivered at least once: a crash
 * (or a lost database) between the server's 250 and the UPDATE to 'sent'
 * sends it again when the lease ends.
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

/* For email's /readyz (answers from memory, any thread): 1 when the mailer's
 * database connection is up, it read its backlog lately (within the SMTP
 * timeout + 10 s), and the backlog is at most max_pending unsent mails, the
 * oldest at most max_age_s old; else 0 with why. */
int mailer_ready(mailer *m, long max_pending, long max_age_s, char *why, size_t whylen);

/* Wakes the mailer: for db_after_commit, after a handler recorded mail. */
void mailer_wake(void);

#endif
