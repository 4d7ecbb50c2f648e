/*
 * mailer.c — email's mail outbox relay (see mailer.h for the contract): the
 * thread, its claims under a lease, the outcome of each send written back,
 * dead letters, and the readiness figures. One send is smtp.c's.
 */
#include "mailer.h"

#include "db.h"
#include "events.h"
#include "log.h"
#include "mq.h"
#include "smtp.h"
#include "util.h"
#include "uuid.h"

#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* The process has one mailer; handlers wake it after a commit through this
 * eventfd (set in mailer_start before any handler runs, closed in
 * mailer_stop after they are done). The only mutable file-level state. */
static int wake_fd = -1;

struct mailer {
    char *db_url, *amqp_url, *smtp_url, *from;
    int max_attempts, retry_max_ms, batch, lease_s, smtp_timeout_s;
    db_timeouts timeouts;
    pthread_t thread;
    atomic_int stop;          /* set by mailer_stop on another thread */
    CURL *curl;               /* kept across sends taken: libcurl reuses the connection */
    char claim[UUID_STR_LEN]; /* the token of the rows in hand (sweep) */
    /* For mailer_ready, written by the thread, read by the HTTP threads: */
    int64_t pending, oldest_s; /* unsent mail and the oldest one's age */
    int64_t stats_ms;          /* when they were read (0: never) */
    int db_up;                 /* the mailer's connection answered last time */
    int64_t stats_due_ms;      /* the thread's own: next read */
};

/* One claimed row; the strings belong to the claim's PGresult. */
typedef struct {
    const char *id, *cause_id, *kind, *correlation_id, *recipient, *subject, *body;
    const char *cause_key, *cause_body, *cause_app, *cause_ts;
    int attempts;
} mail;

void mailer_wake(void)
{
    uint64_t one = 1;
    if (wake_fd >= 0)
        (void)!write(wake_fd, &one, sizeof(one)); /* full counter: already awake */
}

/* -------------------------------------------------------------- outcomes */

/* Every write below is WHERE claim = the sweep's token: a row that another
 * mailer claimed since (its lease ran out) is that mailer's now. */

/* Renews the lease of a row in hand just before it is sent, so that the
 * send (at most smtp_timeout_s, well under the lease) ends inside it. Sets
 * *mine to 0 when the row is no longer this sweep's. */
static int renew(const mailer *m, db_conn *db, const mail *ml, int *mine, char *err, size_t errlen)
{
    char lease[24];
    const char *p[] = {ml->id, m->claim, util_i64(lease, m->lease_s)};
    PGresult *r;
    int rc = db_execp(db, "mailer_renew",
                      "UPDATE messages SET next_attempt_at = now() + $3::int * interval '1 s'"
                      " WHERE id = $1 AND claim = $2::uuid AND status = 'pending' RETURNING id",
                      3, p, &r, err, errlen);
    if (rc == DB_OK) {
        *mine = PQntuples(r) == 1;
        PQclear(r);
    }
    return rc;
}

static int mark_sent(const mailer *m, db_conn *db, const mail *ml, char *err, size_t errlen)
{
    const char *p[] = {ml->id, m->claim};
    PGresult *r;
    int rc = db_execp(db, "mailer_sent",
                      "UPDATE messages SET status = 'sent', sent_at = now(), last_error = NULL"
                      " WHERE id = $1 AND claim = $2::uuid AND status = 'pending' RETURNING id",
                      2, p, &r, err, errlen);
    if (rc == DB_OK) {
        if (PQntuples(r) != 1)
            log_write(LOG_ERROR, ml->correlation_id, ml->cause_id,
                      "%s mail to %s was sent after its claim ran out: another mailer may"
                      " send it again (MAIL_LEASE_S too short for MAIL_SMTP_TIMEOUT_S?)",
                      ml->kind, ml->recipient);
        PQclear(r);
    }
    return rc;
}

/* Due again in delay_ms; attempts_back = 1 gives back the claim's attempt
 * (a mail not tried at all). */
static int mark_later(const mailer *m, db_conn *db, const mail *ml, int64_t delay_ms,
                      int attempts_back, const char *why, char *err, size_t errlen)
{
    char ms[24], back[24];
    const char *p[] = {ml->id, util_i64(ms, delay_ms), why, util_i64(back, attempts_back),
                       m->claim};
    return db_execp(db, "mailer_later",
                    "UPDATE messages SET next_attempt_at = now() + $2::bigint * interval '1 ms',"
                    " last_error = coalesce($3, last_error), attempts = attempts - $4::int"
                    " WHERE id = $1 AND claim = $5::uuid AND status = 'pending'",
                    5, p, NULL, err, errlen);
}

#define DL_BROKER 1 /* dead_letter: the broker did not take the copy */

/* The cause message to email.dlq (confirmed), then the row 'refused' and the
 * cause out of the inbox, in one transaction: a replay runs the handler
 * again. A crash between the two leaves the row pending: it is tried again
 * and dead-lettered again (a second DLQ copy, never a lost one). Returns
 * DB_OK, DL_BROKER, or a db status, with err. */
static int dead_letter(const mailer *m, db_conn *db, mq_conn *mq, const mail *ml,
                       const char *reason, const char *why, char *err, size_t errlen)
{
    int rc, mine = 0;
    if (ml->cause_key && ml->cause_body) {
        mq_delivery d;
        memset(&d, 0, sizeof(d));
        snprintf(d.routing_key, sizeof(d.routing_key), "%s", ml->cause_key);
        snprintf(d.type, sizeof(d.type), "%s", ml->cause_key);
        snprintf(d.message_id, sizeof(d.message_id), "%s", ml->cause_id);
        snprintf(d.correlation_id, sizeof(d.correlation_id), "%s",
                 ml->correlation_id ? ml->correlation_id : "");
        snprintf(d.app_id, sizeof(d.app_id), "%s", ml->cause_app ? ml->cause_app : "");
        d.timestamp = ml->cause_ts ? strtoll(ml->cause_ts, NULL, 10) : 0;
        d.schema_version = EV_SCHEMA_VERSION;
        d.attempt = ml->attempts;
        d.body = ml->cause_body;
        d.len = strlen(ml->cause_body);
        if (!mq_is_connected(mq) && mq_connect_publisher(mq, err, errlen) != MQ_OK)
            return DL_BROKER;
        if (mq_forward(mq, "email", &d, ml->attempts, MQ_DLX, "email", reason, why, err, errlen) !=
            MQ_OK)
            return DL_BROKER;
    }
    if ((rc = db_begin(db, err, errlen)) != DB_OK)
        return rc;
    {
        const char *p[] = {ml->id, why, m->claim};
        PGresult *r;
        rc = db_execp(db, "mailer_refused",
                      "UPDATE messages SET status = 'refused', last_error = $2"
                      " WHERE id = $1 AND claim = $3::uuid AND status = 'pending' RETURNING id",
                      3, p, &r, err, errlen);
        if (rc == DB_OK) {
            mine = PQntuples(r) == 1;
            PQclear(r);
        }
    }
    if (rc == DB_OK && mine) { /* else it is another mailer's now: its inbox row too */
        const char *p[] = {ml->cause_id};
        rc = db_execp(db, "mailer_uninbox", "DELETE FROM inbox WHERE message_id = $1::uuid", 1, p,
                      NULL, err, errlen);
    }
    if (rc == DB_OK)
        rc = db_commit(db, err, errlen);
    else
        db_rollback(db);
    return rc;
}

static int64_t retry_delay(const mailer *m, int attempts)
{
    int64_t d = 1000;
    for (int i = 1; i < attempts && d < m->retry_max_ms; i++)
        d *= 2;
    return d < m->retry_max_ms ? d : m->retry_max_ms;
}

/* ----------------------------------------------------------------- sweep */

#define STATS_EVERY_MS 1000
#define STATS_FRESH_MS 10000 /* beyond one SMTP exchange: see mailer_ready */

/* Reads the backlog for mailer_ready, at most once every STATS_EVERY_MS.
 * The partial index messages_pending keeps it cheap. */
static void read_stats(mailer *m, db_conn *db)
{
    char err[DB_ERR_LEN];
    PGresult *r;
    int64_t now = util_now_ms();

    if (now < m->stats_due_ms)
        return;
    m->stats_due_ms = now + STATS_EVERY_MS;
    if (db_execp(db, "mailer_stats",
                 "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)),"
                 " 0)::bigint AS age FROM messages WHERE status = 'pending'",
                 0, NULL, &r, err, sizeof(err)) != DB_OK) {
        log_debug("mailer: reading the backlog: %s", err);
        return;
    }
    __atomic_store_n(&m->pending, strtoll(db_get(r, 0, "n"), NULL, 10), __ATOMIC_RELAXED);
    __atomic_store_n(&m->oldest_s, strtoll(db_get(r, 0, "age"), NULL, 10), __ATOMIC_RELAXED);
    __atomic_store_n(&m->stats_ms, util_now_ms(), __ATOMIC_RELEASE);
    PQclear(r);
}

/* Claims the due rows (under a fresh token) and delivers them. Returns the
 * number claimed, or -1 when the database failed (the caller backs off). */
static int sweep(mailer *m, db_conn *db, mq_conn *mq)
{
    char err[DB_ERR_LEN], lim[24], lease[24];
    const char *p[] = {util_i64(lim, m->batch), util_i64(lease, m->lease_s), m->claim};
    PGresult *r;
    int n, rc = DB_OK;
    char down[300] = ""; /* set when there was no session: skip the rest */

    if (uuid_v4(m->claim) != 0) {
        log_warn("mailer: no random bytes for a claim token");
        return -1;
    }
    rc = db_execp(db, "mailer_claim",
                  "UPDATE messages SET attempts = attempts + 1, claim = $3::uuid,"
                  " next_attempt_at = now() + $2::int * interval '1 s'"
                  " WHERE id IN (SELECT id FROM messages WHERE status = 'pending'"
                  " AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT $1::int"
                  " FOR UPDATE SKIP LOCKED)"
                  " RETURNING id, cause_id, kind, correlation_id, recipient, subject, body,"
                  " attempts, cause_key, cause_body, cause_app, cause_ts",
                  3, p, &r, err, sizeof(err));
    if (rc != DB_OK) {
        log_warn("mailer: claiming mail: %s", err);
        return -1;
    }
    n = PQntuples(r);
    for (int i = 0; i < n && rc == DB_OK; i++) {
        mail ml = {db_get(r, i, "id"),         db_get(r, i, "cause_id"),
                   db_get(r, i, "kind"),       db_get(r, i, "correlation_id"),
                   db_get(r, i, "recipient"),  db_get(r, i, "subject"),
                   db_get(r, i, "body"),       db_get(r, i, "cause_key"),
                   db_get(r, i, "cause_body"), db_get(r, i, "cause_app"),
                   db_get(r, i, "cause_ts"),   (int)strtol(db_get(r, i, "attempts"), NULL, 10)};
        char why[300];
        smtp_server sv = {m->smtp_url, m->from, m->smtp_timeout_s};
        smtp_mail sm = {ml.recipient, ml.subject, ml.body, ml.cause_id, ml.kind};
        smtp_result s;
        int mine = 0;

        if (m->stop || down[0]) {
            /* Not tried: due again at once (stopping) or with the others. */
            rc = mark_later(m, db, &ml, m->stop ? 0 : retry_delay(m, ml.attempts), 1,
                            m->stop ? NULL : down, err, sizeof(err));
            continue;
        }
        read_stats(m, db);
        rc = renew(m, db, &ml, &mine, err, sizeof(err));
        if (rc != DB_OK || !mine)
            continue; /* claimed by another mailer since: its to send */
        s = smtp_send(&m->curl, &sv, &sm, why, sizeof(why));
        if (s == SMTP_OK) {
            rc = mark_sent(m, db, &ml, err, sizeof(err));
            if (rc == DB_OK)
                log_write(LOG_INFO, ml.correlation_id, ml.cause_id, "%s mail sent to %s", ml.kind,
                          ml.recipient);
        } else if (s == SMTP_PERM || ml.attempts >= m->max_attempts) {
            const char *reason = s == SMTP_PERM ? "rejected" : "retries-exhausted";
            rc = dead_letter(m, db, mq, &ml, reason, why, err, sizeof(err));
            if (rc == DB_OK) {
                log_write(LOG_ERROR, ml.correlation_id, ml.cause_id,
                          "%s mail to %s not delivered (%s): %s; its cause is in email.dlq",
                          ml.kind, ml.recipient, reason, why);
            } else if (rc == DL_BROKER) {
                log_warn("mailer: dead-lettering %s: %s; trying again", ml.cause_id, err);
                rc = mark_later(m, db, &ml, 1000, 0, why, err, sizeof(err));
            }
        } else {
            int64_t d = retry_delay(m, ml.attempts);
            if (s == SMTP_DOWN)
                snprintf(down, sizeof(down), "%s", why);
            rc = mark_later(m, db, &ml, d, 0, why, err, sizeof(err));
            if (rc == DB_OK)
                log_write(LOG_WARN, ml.correlation_id, ml.cause_id,
                          "%s mail to %s: attempt %d failed: %s; next in %lld ms", ml.kind,
                          ml.recipient, ml.attempts, why, (long long)d);
        }
    }
    PQclear(r);
    if (rc != DB_OK) {
        /* The rows not written stay claimed until their lease ends. */
        log_warn("mailer: %s", err);
        return -1;
    }
    return n;
}

/* Waits up to ms for mailer_wake (or mailer_stop). */
static void wait_wake(int ms)
{
    struct pollfd fd = {.fd = wake_fd, .events = POLLIN};
    uint64_t v;
    if (poll(&fd, 1, ms) > 0 && (fd.revents & POLLIN))
        (void)!read(wake_fd, &v, sizeof(v));
}

static void *mailer_main(void *arg)
{
    mailer *m = arg;
    mq_opts mo = {.url = m->amqp_url, .app_id = "email"};
    db_conn *db = db_new(m->db_url, "email-mailer");
    mq_conn *mq = mq_new(&mo);
    char err[DB_ERR_LEN];
    backoff b;

    backoff_init(&b, 200, 10000);
    if (!db || !mq) {
        log_error("mailer: out of memory");
        goto out;
    }
    db_set_timeouts(db, &m->timeouts); /* a held lock delays mail, never stalls it */
    while (!m->stop) {
        int n;
        if (db_ensure(db, err, sizeof(err)) != DB_OK) {
            __atomic_store_n(&m->db_up, 0, __ATOMIC_RELAXED);
            log_warn("mailer: database: %s", err);
            util_sleep_ms_atomic(backoff_next(&b), &m->stop);
            continue;
        }
        __atomic_store_n(&m->db_up, 1, __ATOMIC_RELAXED);
        n = sweep(m, db, mq);
        read_stats(m, db);
        if (n < 0) {
            util_sleep_ms_atomic(backoff_next(&b), &m->stop);
            continue;
        }
        backoff_reset(&b);
        if (n >= m->batch)
            continue; /* more may be due: no pause */
        if (mq_is_connected(mq))
            mq_tick(mq);
        wait_wake(1000); /* a retry's due time is checked once a second */
    }
out:
    mq_free(mq);
    db_free(db);
    return NULL;
}

static void mailer_free(mailer *m)
{
    if (!m)
        return;
    if (m->curl)
        curl_easy_cleanup(m->curl);
    free(m->db_url);
    free(m->amqp_url);
    free(m->smtp_url);
    free(m->from);
    free(m);
}

mailer *mailer_start(const mailer_opts *o, char *err, size_t errlen)
{
    mailer *m = calloc(1, sizeof(*m));
    int rc;

    if (!m || !(m->db_url = strdup(o->database_url)) || !(m->amqp_url = strdup(o->amqp_url)) ||
        !(m->smtp_url = strdup(o->smtp_url)) || !(m->from = strdup(o->from)) ||
        !(m->curl = curl_easy_init())) {
        mailer_free(m);
        snprintf(err, errlen, "mailer: out of memory");
        return NULL;
    }
    m->max_attempts = o->max_attempts > 0 ? o->max_attempts : 50;
    m->retry_max_ms = o->retry_max_ms > 0 ? o->retry_max_ms : 60000;
    m->batch = o->batch > 0 ? o->batch : 16;
    m->lease_s = o->lease_s > 0 ? o->lease_s : 120;
    m->smtp_timeout_s = o->smtp_timeout_s > 0 ? o->smtp_timeout_s : 15;
    m->timeouts = o->timeouts;
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd < 0) {
        snprintf(err, errlen, "mailer: eventfd: %s", strerror(errno));
        mailer_free(m);
        return NULL;
    }
    if ((rc = pthread_create(&m->thread, NULL, mailer_main, m)) != 0) {
        snprintf(err, errlen, "mailer: pthread_create: %s", strerror(rc));
        close(wake_fd);
        wake_fd = -1;
        mailer_free(m);
        return NULL;
    }
    return m;
}

int mailer_ready(mailer *m, long max_pending, long max_age_s, char *why, size_t whylen)
{
    int64_t at = __atomic_load_n(&m->stats_ms, __ATOMIC_ACQUIRE);
    int64_t pending = __atomic_load_n(&m->pending, __ATOMIC_RELAXED);
    int64_t age = __atomic_load_n(&m->oldest_s, __ATOMIC_RELAXED);
    /* A sweep reads the backlog between mails; one send takes at most the
     * SMTP timeout, the reads the database's. */
    int64_t fresh_ms = (int64_t)m->smtp_timeout_s * 1000 + STATS_FRESH_MS;

    if (!__atomic_load_n(&m->db_up, __ATOMIC_RELAXED)) {
        snprintf(why, whylen, "the mailer's database connection is down");
        return 0;
    }
    if (at == 0 || util_now_ms() - at > fresh_ms) {
        snprintf(why, whylen, "the mailer has not read its backlog for %lld ms",
                 at ? (long long)(util_now_ms() - at) : -1LL);
        return 0;
    }
    if (pending > max_pending || age > max_age_s) {
        snprintf(why, whylen, "unsent mail %lld (limit %ld), the oldest %lld s (limit %ld)",
                 (long long)pending, max_pending, (long long)age, max_age_s);
        return 0;
    }
    return 1;
}

void mailer_stop(mailer *m)
{
    if (!m)
        return;
    m->stop = 1;
    mailer_wake();
    pthread_join(m->thread, NULL);
    close(wake_fd);
    wake_fd = -1;
    mailer_free(m);
}
