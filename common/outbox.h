/*
 * outbox.h — the transactional outbox and its relay.
 *
 * A service that changes its tables and emits an event writes both in one
 * PostgreSQL transaction: outbox_add inserts the event into the service's
 * outbox table (its own schema, via search_path) inside the caller's
 * transaction, and the relay is woken when that transaction commits. The
 * relay, a thread in the same
 * process with its own database and broker connections, claims pending rows
 * in id order (FOR UPDATE SKIP LOCKED, so two instances can run), publishes
 * them with confirms, and deletes the rows the broker acked, all in one
 * transaction. It wakes on a commit in its process (an eventfd; NOTIFY
 * <service>_outbox works too, for writers elsewhere) and also sweeps on a
 * timer, so nothing waits for the next event and nothing is stranded after a
 * crash. The timer also runs a service's scheduled work (opts.due): what has
 * fallen due by the service's own tables, so a deadline survives any crash.
 * Rows the broker did not take stay pending and are tried again with backoff
 * when the broker is away. A row the broker returns as unroutable
 * (basic.return: no queue is bound for its key) while the connection is fine
 * is this row's problem: it counts a return without backoff for the others,
 * and is parked only after park_after returns AND park_min_age_s since its
 * first return (refused_since), so a short routing gap (a queue declared
 * again) parks nothing however busy the relay is. A parked row is kept with
 * the broker's reply (parked_at, last_error), skipped by the relay, listed
 * and put back by `dlq outbox`. A nack (the broker refused it for now, e.g.
 * a full queue with reject-publish) is the broker's state, not the row's:
 * the relay backs off and tries again; a nack never parks a row.
 */
#ifndef ORDERSUITE_OUTBOX_H
#define ORDERSUITE_OUTBOX_H

#include "db.h"
#include "events.h"
#include "trace.h"

#include <stdint.h>

/* Adds ev to the outbox in db's open transaction. correlation_id is the order
 * or sale the event belongs to; causation_id the message_id that caused it
 * (NULL or "" for none). The new message_id is written to message_id_out when
 * it is not NULL. Returns DB_OK, DB_ERR (ev invalid, or a permanent SQL error)
 * or DB_ERR_TRANSIENT, with err. */
int outbox_add(db_conn *db, const char *service, const ev_event *ev, const char *correlation_id,
               const char *causation_id, char message_id_out[UUID_STR_LEN], char *err,
               size_t errlen);

/* One event of outbox_add_all: its correlation and causation ids as for
 * outbox_add. */
typedef struct {
    const ev_event *ev;
    const char *correlation_id;
    const char *causation_id; /* NULL or "" for none */
    const trace_ctx *trace;   /* the span that writes it (outbox_add's trace_current); NULL: none */
} outbox_msg;

/* Adds msgs[0..n) to the outbox in db's open transaction in ONE statement
 * (a set-based handler's events: one round trip whatever n is), in that
 * order. n 0 does nothing. Returns as outbox_add; on an error nothing was
 * added. */
int outbox_add_all(db_conn *db, const outbox_msg *msgs, size_t n, char *err, size_t errlen);

/* For a writer that inserts the outbox row in its own statement (order-api
 * writes an order and its event in one): a new message id and the event's
 * JSON (malloc'd). Returns DB_OK, or DB_ERR / DB_ERR_TRANSIENT with err. */
int outbox_row(const ev_event *ev, const char *causation_id, char message_id[UUID_STR_LEN],
               char **body, char *err, size_t errlen);

/* outbox_row writing version (upcast.h) of ev's schema; the caller stores
 * the version in the row's schema_version, which the relay publishes as the
 * header. outbox_row writes EV_SCHEMA_VERSION. */
int outbox_row_version(const ev_event *ev, const char *causation_id, int version,
                       char message_id[UUID_STR_LEN], char **body, char *err, size_t errlen);

/* Wakes this process's relays; for rows written without outbox_add, after
 * their commit (outbox_add arranges it through db_after_commit). */
void outbox_wake(void);

typedef struct outbox_relay outbox_relay;

typedef struct {
    const char *database_url;
    const char *amqp_url;
    const char *service;         /* app_id, and the NOTIFY channel "<service>_outbox" */
    int batch;                   /* rows per claim; 0 = 200 */
    int sweep_ms;                /* timer sweep; 0 = 1000 */
    struct metrics *metrics;     /* counts published messages; may be NULL */
    const db_timeouts *timeouts; /* for the relay's connection; NULL: the server's */
    int park_after;              /* returns (unroutable) before a row is parked; 0 = 5 */
    int park_min_age_s;          /* and seconds since its first return; 0 = none */
    /* Scheduled work (order-api's saga timeout): called at most once per
     * sweep_ms, in a transaction of its own on the relay's connection, before
     * the relay claims rows. It does what has fallen due (in its own tables)
     * and adds the events that says with outbox_add, which the same sweep then
     * publishes. Returns the rows it did (>= 0), or DB_ERR / DB_ERR_TRANSIENT
     * with err: the transaction is rolled back, the failure logged and
     * counted, and the next sweep tries again; publishing goes on either way.
     * Its lock waits end after 250 ms (SET LOCAL lock_timeout), so a table
     * an operator holds delays the relay's publishing by that much a sweep
     * at most.
     * When it returns due_batch or more, it is called again at once. NULL:
     * nothing scheduled. */
    int (*due)(db_conn *db, void *arg, char *err, size_t errlen);
    void *due_arg;
    int due_batch; /* see due; 0 = never again at once */
} outbox_relay_opts;

/* Starts the relay thread. Returns NULL with err when out of memory or the
 * thread cannot start; connection problems are retried inside the thread. */
outbox_relay *outbox_relay_start(const outbox_relay_opts *o, char *err, size_t errlen);

/* Stops the relay: it publishes what is pending (for at most timeout_ms),
 * then closes its connections. Frees r. NULL is a no-op. */
void outbox_relay_stop(outbox_relay *r, int timeout_ms);

typedef struct {
    uint64_t published;    /* rows published and deleted */
    uint64_t failures;     /* sweeps that failed (broker or database) */
    int64_t pending;       /* rows seen pending at the last sweep */
    int64_t oldest_age_s;  /* age of the oldest pending row at the last sweep */
    int connected;         /* 1 when both connections are up */
    uint64_t due_done;     /* rows the due hook did */
    uint64_t due_failures; /* due hook runs that failed */
} outbox_relay_stats;

void outbox_relay_get_stats(outbox_relay *r, outbox_relay_stats *out);

#endif
