/*
 * spool.h — the till's store-and-forward file: a sale is appended (and
 * fsynced) before it is published and leaves only after the broker's confirm.
 * The file format and the locking are described at the top of spool.c.
 */
#ifndef ORDERSUITE_POS_SPOOL_H
#define ORDERSUITE_POS_SPOOL_H

#include "events.h"
#include "mq.h"
#include "trace.h"
#include "uuid.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define SPOOL_PATH_MAX 4096 /* the longest spool path (dir + "/pos-<store>.spool.rejected") */
#define SPOOL_BUSY     (-2) /* spool_flush: another till of the store is sending */

typedef struct {
    char store[EV_ID_MAX + 1];
    char dir[SPOOL_PATH_MAX];      /* the spool's directory */
    char path[SPOOL_PATH_MAX];     /* <dir>/pos-<store>.spool */
    char lock[SPOOL_PATH_MAX];     /* <path>.lock: held for each change to the file */
    char claim[SPOOL_PATH_MAX];    /* <path>.flush: held by the till that is sending */
    char rejected[SPOOL_PATH_MAX]; /* <path>.rejected: lines that are no sale of store */
} spool;

/* One spooled sale handed to the publisher. */
typedef struct {
    char message_id[UUID_STR_LEN];
    char sale_id[UUID_STR_LEN]; /* the correlation id */
    const char *body;           /* the sale.completed JSON, NUL-terminated */
    size_t len;
} spool_entry;

/* Publishes e[0..n) and sets confirmed[i] = 1 for each the broker confirmed
 * (confirmed[] comes zeroed). Called without the spool's lock held, so other
 * tills keep appending meanwhile. Returns 0, or -1 with a reason in err (the
 * entries not confirmed stay in the spool). */
typedef int (*spool_publish_fn)(void *arg, const spool_entry *e, size_t n, int *confirmed,
                                char *err, size_t errlen);

/* Sets up s for store's spool in dir. Nothing is opened. Returns 0, or -1
 * with err when store is not 1-EV_ID_MAX characters without '/' or the paths
 * would be longer than SPOOL_PATH_MAX. */
int spool_init(spool *s, const char *dir, const char *store, char *err, size_t errlen);

/* Appends one sale (its JSON body, at most EV_BODY_MAX bytes, no newline)
 * with a new message id and fsyncs it: when this returns 0 the sale is safe
 * on disk. On any failure (a short write on a full disk included) the file
 * is cut back to what it was and -1 is returned with err. */
int spool_append(const spool *s, const char *body, char *err, size_t errlen);

/* Sends what is spooled: takes the flush claim (never waiting for it), reads
 * the spool under its lock, calls publish without the lock, then under the
 * lock again removes the confirmed sales, keeping every line appended
 * meanwhile. Lines that are no sale of this store (and a torn last line) go
 * to the .rejected file first. *sent (may be NULL) is increased by the
 * number confirmed. Returns the number of sales still spooled (>= 0),
 * SPOOL_BUSY when another till holds the claim, or -1 with err on an I/O
 * error (the spool is then as it was, less any confirmed sales it could
 * remove). */
long spool_flush(const spool *s, spool_publish_fn publish, void *arg, long *sent, char *err,
                 size_t errlen);

/* spool_flush with the publisher mq (mq_new'd; connected on the first
 * publish): each sale goes to sales.events as sale.completed with its spooled
 * message id and its sale id as the correlation id. An I/O error is logged. */
long spool_send(const spool *s, mq_conn *mq, long *sent);

/* spool_send until nothing is left, timeout_ms passes or *stop, with capped
 * backoff between tries (also while another till of the store is sending).
 * Returns the sales still spooled, or -1 on an I/O error (logged). */
long spool_drain(const spool *s, mq_conn *mq, long *sent, int64_t timeout_ms,
                 volatile sig_atomic_t *stop);

/* The trace of a spooled sale: out's trace id is the 16 bytes of its
 * message id (a UUID), the rest zeroed; all zero when message_id is no
 * UUID. Pure. */
void spool_trace_root(const char *message_id, trace_ctx *out);

/* The number of complete lines in the spool now (0 when there is none), or
 * -1 with err. */
long spool_count(const spool *s, char *err, size_t errlen);

#endif
