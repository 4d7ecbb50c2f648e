/*
 * writer.c — group commit. POST /orders validates and prices an order on its
 * job thread, then hands it here: one writer thread writes the orders that
 * are waiting, up to ORDER_BATCH_MAX of them, in one statement (store.c: one
 * transaction, one commit), and each request is answered only after that
 * commit. The writer never waits to fill a batch: when it is free it takes
 * what is queued, so a lone order is written at once, and orders gather only
 * while a write is under way: the busier the API, the larger the batches.
 *
 * One failing order costs the others nothing: a batch that fails for a
 * reason of its own (a permanent error, e.g. a constraint one order's row
 * breaks; the SQLSTATE says which; not a reused Idempotency-Key, which the
 * write itself skips with ON CONFLICT, store.c) is written again one order
 * per statement, as the workers' dispatch does with a failed
 * batch, and each order gets its own outcome. A batch that fails because the
 * database is away (a transient error) is not tried again: every order in it
 * gets the error (the API answers 503), as a request writing alone did;
 * except a wait for a lock (55P03, 40P01), which may be one order's own (a
 * same-key INSERT held by another session): that batch falls back too, and
 * an order whose request would stop waiting before its own statement could
 * end is then left unwritten (503, not stored).
 *
 * A request waits at most ORDER_WRITE_TIMEOUT_MS for its write. An order the
 * writer has not taken by then is withdrawn, never written; one it is
 * already writing is left to it (the answer is a 503 either way, and the
 * Idempotency-Key tells a retry which it was). order-api refuses to start
 * unless that wait is longer than DB_STATEMENT_TIMEOUT_MS plus the connect
 * timeout (api_write_wait_check), so an order the writer takes as soon as it
 * arrives has its outcome before its request stops waiting.
 */
#include "api.h"

#include "log.h"
#include "util.h"

#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { W_QUEUED, W_TAKEN, W_DONE } write_state;

/* One order on its way: the request's, until it is answered or given up;
 * then the writer's. */
typedef struct api_write {
    struct api_write *next;
    cJSON *row;
    write_state state;
    int abandoned; /* the request stopped waiting: the writer frees it */
    int rc;        /* the outcome: DB_OK or a db error */
    int64_t until; /* util_now_ms() when its request stops waiting */
    char sqlstate[6];
    char err[DB_ERR_LEN];
    char *doc;
    api_earlier earlier; /* rc API_WRITE_KEY_USED: the order its key names */
} api_write;

struct api_writer {
    pthread_mutex_t lock;
    pthread_cond_t work; /* the writer's: something queued, or stop */
    pthread_cond_t done; /* the requests': a write ended */
    api_write *head, *tail;
    int stop;
    int batch_max, wait_ms;
    long statement_ms; /* the writer connection's statement_timeout, 0: none */
    pthread_t thread;
    /* The writer thread's alone: */
    db_conn *db;
    api_write **batch; /* batch_max each */
    cJSON **rows;
    api_stored *outs;
    api_writer_stats stats; /* copied to shown, under the lock, after each write */
    api_writer_stats shown;
};

static void write_free(api_write *x)
{
    if (!x)
        return;
    cJSON_Delete(x->row);
    free(x->doc);
    free(x);
}

/* Writes batch[0..n) in one statement; fills each one's outcome. Returns the
 * statement's db status. */
static int write_together(api_writer *w, api_write **batch, size_t n)
{
    cJSON **rows = w->rows;
    api_stored *outs = w->outs;
    char err[DB_ERR_LEN];
    size_t written = 0;
    int rc;

    for (size_t i = 0; i < n; i++)
        rows[i] = batch[i]->row;
    rc = api_store(w->db, rows, n, outs, err, sizeof(err));
    for (size_t i = 0; i < n; i++) {
        api_write *x = batch[i];
        x->rc = rc;
        x->doc = rc == DB_OK ? outs[i].doc : NULL;
        written += x->doc != NULL;
        if (rc == DB_OK && !x->doc &&
            cJSON_IsString(cJSON_GetObjectItemCaseSensitive(x->row, "idempotency_key"))) {
            /* Not written: its client's key names an earlier order. */
            x->rc = API_WRITE_KEY_USED;
            memcpy(x->earlier.id, outs[i].earlier, sizeof(x->earlier.id));
            x->earlier.same = outs[i].same;
        } else if (rc == DB_OK && !x->doc) {
            x->rc = DB_ERR;
            snprintf(x->err, sizeof(x->err), "the order was stored but its document is missing");
        } else if (rc != DB_OK) {
            snprintf(x->err, sizeof(x->err), "%s", err);
            snprintf(x->sqlstate, sizeof(x->sqlstate), "%s", db_last_sqlstate(w->db));
        }
    }
    if (rc == DB_OK) {
        w->stats.writes++;
        w->stats.orders += written;
        if (n > w->stats.largest)
            w->stats.largest = n;
    }
    return rc;
}

int api_write_wait_check(long wait_ms, long statement_ms, long connect_ms, char *err, size_t errlen)
{
    if (connect_ms == -2) {
        snprintf(err, errlen, "DATABASE_URL: not a connection string libpq can parse");
        return -1;
    }
    if (statement_ms <= 0 || connect_ms < 0) {
        snprintf(err, errlen,
                 "ORDER_WRITE_TIMEOUT_MS=%ld needs a bound on the writer's statement: "
                 "DB_STATEMENT_TIMEOUT_MS and DATABASE_URL's connect_timeout must not be 0",
                 wait_ms);
        return -1;
    }
    if (wait_ms <= statement_ms + connect_ms) {
        snprintf(err, errlen,
                 "ORDER_WRITE_TIMEOUT_MS=%ld must be more than DB_STATEMENT_TIMEOUT_MS (%ld) plus "
                 "the connect timeout (%ld ms): a request could stop waiting while its order "
                 "is still being written",
                 wait_ms, statement_ms, connect_ms);
        return -1;
    }
    return 0;
}

int api_batch_falls_back(int rc, const char *sqlstate, size_t n)
{
    if (n < 2)
        return 0;
    if (rc == DB_ERR)
        return 1;
    /* A lock wait may be one order's own (a same-key INSERT another session
     * holds): the others must not pay for it. */
    return rc == DB_ERR_TRANSIENT && sqlstate &&
           (strcmp(sqlstate, "55P03") == 0 || strcmp(sqlstate, "40P01") == 0);
}

/* The write of one batch, with the fallback one by one. */
static void write_batch(api_writer *w, api_write **batch, size_t n)
{
    char err[DB_ERR_LEN];
    int rc;

    if (db_ensure(w->db, err, sizeof(err)) != DB_OK) {
        log_warn("writer: database unavailable: %s", err);
        for (size_t i = 0; i < n; i++) {
            batch[i]->rc = DB_ERR_TRANSIENT;
            snprintf(batch[i]->err, sizeof(batch[i]->err), "%s", err);
        }
        return;
    }
    rc = write_together(w, batch, n);
    if (!api_batch_falls_back(rc, batch[0]->sqlstate, n))
        return; /* written, or the database is away: the outcome stands for all */
    log_warn("writer: a batch of %zu orders failed (%s); writing them one by one", n,
             batch[0]->err);
    w->stats.fallbacks++;
    for (size_t i = 0; i < n; i++) {
        batch[i]->sqlstate[0] = '\0';
        /* One by one, lock waits add up: an order whose request would stop
         * waiting before its statement could end is not written (its 503
         * then says so, rather than "may have been stored"). */
        if (w->statement_ms <= 0 || util_now_ms() + w->statement_ms >= batch[i]->until) {
            batch[i]->rc = DB_ERR_TRANSIENT;
            snprintf(batch[i]->err, sizeof(batch[i]->err),
                     "not written: its batch failed and too little of its wait was left");
            continue;
        }
        if (db_ensure(w->db, err, sizeof(err)) != DB_OK) {
            batch[i]->rc = DB_ERR_TRANSIENT;
            snprintf(batch[i]->err, sizeof(batch[i]->err), "%s", err);
            continue;
        }
        write_together(w, &batch[i], 1);
    }
}

static void *writer_main(void *arg)
{
    api_writer *w = arg;
    api_write **batch = w->batch;

    pthread_mutex_lock(&w->lock);
    for (;;) {
        size_t n = 0;
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->work, &w->lock);
        if (!w->head)
            break; /* stopping, and nothing is left */
        /* What is queued, oldest first: never wait for more. */
        while (w->head && n < (size_t)w->batch_max) {
            api_write *x = w->head;
            w->head = x->next;
            x->next = NULL;
            x->state = W_TAKEN;
            batch[n++] = x;
        }
        if (!w->head)
            w->tail = NULL;
        pthread_mutex_unlock(&w->lock);
        write_batch(w, batch, n);
        pthread_mutex_lock(&w->lock);
        w->shown = w->stats;
        for (size_t i = 0; i < n; i++) {
            batch[i]->state = W_DONE;
            if (batch[i]->abandoned)
                write_free(batch[i]);
        }
        pthread_cond_broadcast(&w->done);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

api_writer *api_writer_start(const api_writer_opts *o, char *err, size_t errlen)
{
    api_writer *w = calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    int e;

    if (!w)
        goto oom;
    w->batch_max = o->batch_max > 0 ? o->batch_max : API_BATCH_MAX_DEFAULT;
    w->db = db_new(o->database_url, ORDER_SERVICE);
    w->batch = calloc((size_t)w->batch_max, sizeof(*w->batch));
    w->rows = calloc((size_t)w->batch_max, sizeof(*w->rows));
    w->outs = calloc((size_t)w->batch_max, sizeof(*w->outs));
    if (!w->db || !w->batch || !w->rows || !w->outs)
        goto oom;
    if (o->timeouts) {
        db_set_timeouts(w->db, o->timeouts);
        w->statement_ms = o->timeouts->statement_ms;
    }
    w->wait_ms = o->wait_ms > 0 ? o->wait_ms : API_WRITE_WAIT_DEFAULT;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->work, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the requests' deadlines */
    pthread_cond_init(&w->done, &ca);
    pthread_condattr_destroy(&ca);
    if ((e = pthread_create(&w->thread, NULL, writer_main, w)) != 0) {
        snprintf(err, errlen, "writer: cannot start its thread: %s", strerror(e));
        pthread_cond_destroy(&w->done);
        pthread_cond_destroy(&w->work);
        pthread_mutex_destroy(&w->lock);
        goto fail;
    }
    return w;
oom:
    snprintf(err, errlen, "writer: out of memory");
fail:
    if (w) {
        db_free(w->db);
        free(w->batch);
        free(w->rows);
        free(w->outs);
    }
    free(w);
    return NULL;
}

void api_writer_stop(api_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_signal(&w->work);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    log_info("writer: %llu orders in %llu statements (at most %llu in one), %llu batches "
             "written again one by one",
             (unsigned long long)w->stats.orders, (unsigned long long)w->stats.writes,
             (unsigned long long)w->stats.largest, (unsigned long long)w->stats.fallbacks);
    pthread_cond_destroy(&w->done);
    pthread_cond_destroy(&w->work);
    pthread_mutex_destroy(&w->lock);
    db_free(w->db);
    free(w->batch);
    free(w->rows);
    free(w->outs);
    free(w);
}

void api_writer_get_stats(api_writer *w, api_writer_stats *out)
{
    pthread_mutex_lock(&w->lock);
    *out = w->shown;
    pthread_mutex_unlock(&w->lock);
}

int api_writer_store(api_writer *w, cJSON *row, char **doc, api_earlier *earlier, char sqlstate[6],
                     char *err, size_t errlen)
{
    api_write *x = calloc(1, sizeof(*x));
    struct timespec until;
    int rc;

    *doc = NULL;
    *earlier = (api_earlier){0};
    sqlstate[0] = '\0';
    if (!x) {
        cJSON_Delete(row);
        snprintf(err, errlen, "out of memory");
        return DB_ERR_TRANSIENT;
    }
    x->row = row;
    x->until = util_now_ms() + w->wait_ms;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += w->wait_ms / 1000;
    until.tv_nsec += (long)(w->wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }

    pthread_mutex_lock(&w->lock);
    if (w->stop) {
        pthread_mutex_unlock(&w->lock);
        write_free(x);
        snprintf(err, errlen, "the order writer is stopping");
        return DB_ERR_TRANSIENT;
    }
    if (w->tail)
        w->tail->next = x;
    else
        w->head = x;
    w->tail = x;
    pthread_cond_signal(&w->work);
    while (x->state != W_DONE) {
        if (pthread_cond_timedwait(&w->done, &w->lock, &until) == ETIMEDOUT && x->state != W_DONE)
            break;
    }
    if (x->state == W_DONE) {
        pthread_mutex_unlock(&w->lock);
        rc = x->rc;
        *doc = x->doc;
        x->doc = NULL;
        *earlier = x->earlier;
        snprintf(sqlstate, 6, "%s", x->sqlstate);
        snprintf(err, errlen, "%s", x->err);
        write_free(x);
        return rc;
    }
    if (x->state == W_QUEUED) {
        /* Not taken yet: withdrawn, so it is never written. */
        api_write **p = &w->head, *prev = NULL;
        while (*p != x) {
            prev = *p;
            p = &(*p)->next;
        }
        *p = x->next;
        if (w->tail == x)
            w->tail = prev;
        pthread_mutex_unlock(&w->lock);
        write_free(x);
        snprintf(err, errlen, "the order writer did not take the order within %d ms; not stored",
                 w->wait_ms);
        return API_WRITE_TIMEOUT;
    }
    x->abandoned = 1; /* being written: the writer frees it when it is done */
    pthread_mutex_unlock(&w->lock);
    snprintf(err, errlen, "the order's write did not end within %d ms; it may have been stored",
             w->wait_ms);
    return API_WRITE_TIMEOUT;
}
