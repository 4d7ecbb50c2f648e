/*
 * spool.c — the till's store-and-forward file.
 *
 * The file: <dir>/pos-<store>.spool, one sale a line,
 *
 *     <message_id> <sale.completed JSON>\n
 *
 * the message id a 36-character UUID, one space, the body as the contract
 * encodes it (compact, no newline, at most EV_BODY_MAX bytes). A sale is in
 * the spool once its whole line, newline included, is written and fsynced;
 * a last line without its newline is an append that never finished (a crash
 * or a short write), was never reported as rung up, and is cut off by the
 * next till that takes the lock. A complete line that is not a sale of this
 * store (a file from another store, a line damaged on disk) is never sent and
 * never silently dropped: it is moved to pos-<store>.spool.rejected and
 * logged. No spool file means nothing is waiting; an empty one is the same.
 *
 * Several tills of one store share the file, with two flocks on files that
 * are never replaced (the spool itself is, by rename, so a lock on it would
 * be on the old file):
 *   - <spool>.lock is held for every change to the spool and every read of
 *     it, never across network I/O: an append, the read at the start of a
 *     flush, the rewrite at its end;
 *   - <spool>.flush (the claim) is held by the one till that is sending, from
 *     its read to its rewrite; a till that finds it taken does not wait and
 *     sends at its next flush. So a line is in one till's hands at a time and
 *     is published once, unless its confirm never came.
 * Only the claim's holder replaces the file, so between its read and its
 * rewrite the spool only grows at the end: the rewrite keeps the lines read
 * but not confirmed and every byte appended after the read. Each replacement
 * goes through a temporary file of the till's own (mkstemp), fsync and
 * rename; the directory is fsynced after the spool is created, replaced or
 * removed. A crash after the confirm but before the rewrite leaves confirmed
 * sales in the spool: they are sent again with the same message id and the
 * consumers' inboxes drop the copy.
 */
#include "spool.h"

#include "log.h"
#include "mq.h"
#include "otel.h"
#include "trace.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int spool_init(spool *s, const char *dir, const char *store, char *err, size_t errlen)
{
    size_t n = strlen(store);
    memset(s, 0, sizeof(*s));
    if (n == 0 || n > EV_ID_MAX || strchr(store, '/')) {
        snprintf(err, errlen, "store '%s': 1-%d characters, no '/'", store, EV_ID_MAX);
        return -1;
    }
    memcpy(s->store, store, n + 1);
    if ((size_t)snprintf(s->dir, sizeof(s->dir), "%s", dir) >= sizeof(s->dir) ||
        (size_t)snprintf(s->path, sizeof(s->path), "%s/pos-%s.spool", dir, store) >=
            sizeof(s->path) ||
        (size_t)snprintf(s->lock, sizeof(s->lock), "%s.lock", s->path) >= sizeof(s->lock) ||
        (size_t)snprintf(s->claim, sizeof(s->claim), "%s.flush", s->path) >= sizeof(s->claim) ||
        (size_t)snprintf(s->rejected, sizeof(s->rejected), "%s.rejected", s->path) >=
            sizeof(s->rejected)) {
        snprintf(err, errlen, "POS_SPOOL_DIR is longer than %d bytes with the spool's name",
                 SPOOL_PATH_MAX - 1);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------- file helpers */

/* An exclusive flock on path (created when missing). Returns the fd, which
 * close() releases; SPOOL_BUSY when nowait and another holds it; or -1 with
 * err. */
static int lock_file(const char *path, int nowait, char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "spool lock %s: %s", path, strerror(errno));
        return -1;
    }
    while (flock(fd, LOCK_EX | (nowait ? LOCK_NB : 0)) != 0) {
        if (errno == EWOULDBLOCK && nowait) {
            close(fd);
            return SPOOL_BUSY;
        }
        if (errno != EINTR) {
            snprintf(err, errlen, "spool lock %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* Makes a create, rename or unlink in the spool's directory durable. */
static int sync_dir(const spool *s)
{
    int fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Writes all n bytes (a write may be short: a full disk, a file size
 * limit). Returns 0, or -1 with errno. */
static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = ENOSPC;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads bytes [from, to) of fd into a malloc'd, NUL-terminated buffer. */
static int read_range(int fd, off_t from, off_t to, char **out)
{
    size_t n = (size_t)(to - from), got = 0;
    char *b = malloc(n + 1);
    if (!b)
        return -1;
    while (got < n) {
        ssize_t k = pread(fd, b + got, n - got, from + (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EIO; /* shorter than fstat said: someone broke the lock */
            free(b);
            return -1;
        }
        got += (size_t)k;
    }
    b[n] = '\0';
    *out = b;
    return 0;
}

/* Appends len bytes and a newline to the .rejected file, fsynced. */
static int reject(const spool *s, const char *line, size_t len, const char *why)
{
    int fd = open(s->rejected, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd < 0)
        return -1;
    if (write_all(fd, line, len) == 0 && write_all(fd, "\n", 1) == 0 && fsync(fd) == 0 &&
        sync_dir(s) == 0)
        rc = 0;
    close(fd);
    if (rc == 0)
        log_warn("spool %s: a line (%zu bytes) is no sale of store %s (%s): moved to %s", s->path,
                 len, s->store, why, s->rejected);
    return rc;
}

/* With the lock held: cuts a torn last line (no newline) off fd, after
 * moving it to the .rejected file. *size is the file's size after. */
static int recover_tail(const spool *s, int fd, off_t *size, char *err, size_t errlen)
{
    struct stat st;
    off_t keep;
    char *torn = NULL, c;

    if (fstat(fd, &st) != 0)
        goto fail;
    *size = st.st_size;
    if (st.st_size == 0)
        return 0;
    if (pread(fd, &c, 1, st.st_size - 1) != 1)
        goto fail;
    if (c == '\n')
        return 0;
    /* Back to the last newline, a byte at a time: only after a crash, and a
     * torn line is at most one line long. */
    for (keep = st.st_size - 1; keep > 0; keep--) {
        if (pread(fd, &c, 1, keep - 1) != 1)
            goto fail;
        if (c == '\n')
            break;
    }
    if (read_range(fd, keep, st.st_size, &torn) < 0 ||
        reject(s, torn, (size_t)(st.st_size - keep), "torn last line: an unfinished append") < 0 ||
        ftruncate(fd, keep) != 0 || fsync(fd) != 0) {
        free(torn);
        goto fail;
    }
    free(torn);
    *size = keep;
    return 0;
fail:
    snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
    return -1;
}

/* ---------------------------------------------------------------- append */

int spool_append(const spool *s, const char *body, char *err, size_t errlen)
{
    int lock, fd = -1, created = 1, rc = -1;
    size_t blen = strlen(body);
    char *line = NULL, message_id[UUID_STR_LEN];
    off_t size = 0;

    if (blen == 0 || blen > EV_BODY_MAX || memchr(body, '\n', blen)) {
        snprintf(err, errlen, "spool: a sale's body is 1-%d bytes without a newline", EV_BODY_MAX);
        return -1;
    }
    if (uuid_v4(message_id) < 0) {
        snprintf(err, errlen, "spool: no randomness for a message id");
        return -1;
    }
    if ((lock = lock_file(s->lock, 0, err, errlen)) < 0)
        return -1;
    fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        fd = open(s->path, O_RDWR | O_APPEND | O_CLOEXEC);
    }
    if (fd < 0) {
        snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
        goto out;
    }
    if (recover_tail(s, fd, &size, err, errlen) < 0)
        goto out;
    line = malloc(UUID_STR_LEN + blen + 1);
    if (!line) {
        snprintf(err, errlen, "spool: out of memory");
        goto out;
    }
    memcpy(line, message_id, UUID_STR_LEN - 1);
    line[UUID_STR_LEN - 1] = ' ';
    memcpy(line + UUID_STR_LEN, body, blen);
    line[UUID_STR_LEN + blen] = '\n';
    if (write_all(fd, line, UUID_STR_LEN + blen + 1) != 0 || fsync(fd) != 0 ||
        (created && sync_dir(s) != 0)) {
        int e = errno;
        /* Cut off what a short write left, so the next line starts clean;
         * failing that, the next till's recover_tail does it. */
        if (ftruncate(fd, size) == 0)
            (void)fsync(fd);
        snprintf(err, errlen, "spool %s: %s", s->path, strerror(e));
        goto out;
    }
    rc = 0;
out:
    free(line);
    if (fd >= 0)
        close(fd);
    close(lock);
    return rc;
}

/* ----------------------------------------------------------------- flush */

typedef struct {
    char *text; /* in the read buffer, NUL-terminated (the newline replaced) */
    size_t len;
    int keep; /* written back by the rewrite */
} line;

/* Whether text is a sale line of s's store; fills e. */
static int parse_line(const spool *s, const line *l, spool_entry *e, char *why, size_t whylen)
{
    ev_event ev;
    int rc = -1;

    if (l->len <= UUID_STR_LEN || l->text[UUID_STR_LEN - 1] != ' ') {
        snprintf(why, whylen, "not '<message id> <body>'");
        return -1;
    }
    memcpy(e->message_id, l->text, UUID_STR_LEN - 1);
    e->message_id[UUID_STR_LEN - 1] = '\0';
    if (!uuid_valid(e->message_id)) {
        snprintf(why, whylen, "the message id is no UUID");
        return -1;
    }
    e->body = l->text + UUID_STR_LEN;
    e->len = l->len - UUID_STR_LEN;
    if (ev_from_json(EV_SALE_COMPLETED, e->body, e->len, &ev, NULL, why, whylen) < 0)
        return -1;
    if (strcmp(ev.u.sale_completed.store_id, s->store) != 0) {
        snprintf(why, whylen, "a sale of store %s", ev.u.sale_completed.store_id);
    } else {
        memcpy(e->sale_id, ev.u.sale_completed.sale_id, UUID_STR_LEN);
        rc = 0;
    }
    ev_free(&ev);
    return rc;
}

/* Splits buf (len bytes of complete lines) into lines. */
static line *split_lines(char *buf, size_t len, size_t *n)
{
    size_t cap = 0, k = 0;
    line *v = NULL;
    for (size_t i = 0; i < len; i++)
        cap += buf[i] == '\n';
    if (cap && !(v = calloc(cap, sizeof(*v))))
        return NULL;
    for (char *p = buf, *nl; p < buf + len && (nl = memchr(p, '\n', (size_t)(buf + len - p)));
         p = nl + 1) {
        *nl = '\0';
        v[k].text = p;
        v[k].len = (size_t)(nl - p);
        v[k].keep = 1;
        k++;
    }
    *n = k;
    return v;
}

/* With the lock and the claim held: replaces the spool by the kept lines and
 * tail (bytes appended since the read), or removes it when both are empty. */
static int rewrite(const spool *s, const line *v, size_t n, const char *tail, size_t tlen)
{
    char tmp[SPOOL_PATH_MAX + 8];
    size_t kept = 0;
    int fd, ok;

    for (size_t i = 0; i < n; i++)
        kept += v[i].keep;
    if (kept == 0 && tlen == 0)
        return unlink(s->path) == 0 && sync_dir(s) == 0 ? 0 : -1;
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", s->path); /* fits: SPOOL_PATH_MAX bounds path */
    if ((fd = mkstemp(tmp)) < 0)
        return -1;
    ok = 1;
    for (size_t i = 0; ok && i < n; i++)
        if (v[i].keep)
            ok = write_all(fd, v[i].text, v[i].len) == 0 && write_all(fd, "\n", 1) == 0;
    ok = ok && write_all(fd, tail, tlen) == 0 && fsync(fd) == 0;
    if (close(fd) != 0)
        ok = 0;
    if (!ok || rename(tmp, s->path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return -1;
    }
    return sync_dir(s);
}

long spool_flush(const spool *s, spool_publish_fn publish, void *arg, long *sent, char *err,
                 size_t errlen)
{
    int claim, lock = -1, fd = -1, changed = 0;
    char *buf = NULL, *tail = NULL, why[256];
    line *v = NULL;
    spool_entry *e = NULL;
    size_t n = 0, ne = 0, *at = NULL;
    int *confirmed = NULL;
    off_t end = 0, size = 0;
    long left = -1;

    claim = lock_file(s->claim, 1, err, errlen);
    if (claim < 0)
        return claim; /* SPOOL_BUSY or -1 */

    /* 1. Read under the lock; set aside what is no sale of this store. */
    if ((lock = lock_file(s->lock, 0, err, errlen)) < 0)
        goto out;
    fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            left = 0;
        else
            snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
        goto out;
    }
    if (recover_tail(s, fd, &end, err, errlen) < 0)
        goto out;
    if (read_range(fd, 0, end, &buf) < 0 || (end > 0 && !(v = split_lines(buf, (size_t)end, &n)))) {
        snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
        goto out;
    }
    close(fd);
    fd = -1;
    if (n > 0 && (!(e = calloc(n, sizeof(*e))) || !(at = calloc(n, sizeof(*at))) ||
                  !(confirmed = calloc(n, sizeof(*confirmed))))) {
        snprintf(err, errlen, "spool: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (parse_line(s, &v[i], &e[ne], why, sizeof(why)) == 0) {
            at[ne++] = i;
        } else if (reject(s, v[i].text, v[i].len, why) == 0) {
            v[i].keep = 0; /* it stays in the spool when it could not be moved */
            changed = 1;
        }
    }
    close(lock);
    lock = -1;

    /* 2. Publish without the lock: other tills append meanwhile. */
    if (ne > 0 && publish(arg, e, ne, confirmed, why, sizeof(why)) < 0)
        log_warn("broker: %s; sales stay in the spool", why);
    for (size_t j = 0; j < ne; j++) {
        if (confirmed[j]) {
            v[at[j]].keep = 0;
            changed = 1;
            if (sent)
                (*sent)++;
        }
    }

    /* 3. Under the lock again: drop what left, keep what came meanwhile. */
    if ((lock = lock_file(s->lock, 0, err, errlen)) < 0)
        goto out;
    fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (fd < 0 || recover_tail(s, fd, &size, err, errlen) < 0) {
        if (fd < 0)
            snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
        goto out;
    }
    if (size < end) {
        snprintf(err, errlen, "spool %s: shorter than when it was read (its lock was not kept)",
                 s->path);
        goto out;
    }
    if (read_range(fd, end, size, &tail) < 0) {
        snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
        goto out;
    }
    /* An empty spool goes too (nothing is waiting). */
    if ((changed || size == 0) && rewrite(s, v, n, tail, (size_t)(size - end)) < 0) {
        /* The old spool stays: confirmed sales in it are sent again with
         * their message ids, and the consumers' inboxes drop the copies. */
        snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
        goto out;
    }
    left = 0;
    for (size_t i = 0; i < n; i++)
        left += v[i].keep;
    for (off_t i = 0; i < size - end; i++)
        left += tail[i] == '\n';
out:
    if (fd >= 0)
        close(fd);
    if (lock >= 0)
        close(lock);
    close(claim);
    free(buf);
    free(tail);
    free(v);
    free(e);
    free(at);
    free(confirmed);
    return left;
}

long spool_count(const spool *s, char *err, size_t errlen)
{
    int lock = lock_file(s->lock, 0, err, errlen), fd;
    char *buf = NULL;
    struct stat st;
    long n = -1;

    if (lock < 0)
        return -1;
    fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        n = errno == ENOENT ? 0 : -1;
    } else if (fstat(fd, &st) == 0 && read_range(fd, 0, st.st_size, &buf) == 0) {
        n = 0;
        for (off_t i = 0; i < st.st_size; i++)
            n += buf[i] == '\n';
    }
    if (n < 0)
        snprintf(err, errlen, "spool %s: %s", s->path, strerror(errno));
    free(buf);
    if (fd >= 0)
        close(fd);
    close(lock);
    return n;
}

/* ------------------------------------------------------- to the broker */

void spool_trace_root(const char *message_id, trace_ctx *out)
{
    size_t k = 0;
    memset(out, 0, sizeof(*out));
    if (!uuid_valid(message_id))
        return;
    /* A valid UUID: 32 hex digits of either case and four dashes; one
     * trace id for both cases. */
    for (const char *p = message_id; *p && k < 32; p++) {
        int v = *p >= 'a' ? *p - 'a' + 10 : *p >= 'A' ? *p - 'A' + 10 : *p - '0';
        if (*p == '-')
            continue;
        out->trace_id[k / 2] = (uint8_t)(out->trace_id[k / 2] << 4 | v);
        k++;
    }
}

/* The PRODUCER span of one spooled sale. A sale's trace id is its message
 * id's 16 bytes (spool_trace_root), so every attempt to send it, in this
 * run or a later one, is in one trace without a new field in the spool
 * file; each attempt is a root span of that trace. */
static void spool_publish_span(trace_span *s, const spool_entry *e, mq_msg *m,
                               char tp[TRACE_PARENT_LEN])
{
    trace_ctx root;
    trace_span_start(s, "publish " RK_SALE_COMPLETED, TRACE_KIND_PRODUCER, NULL);
    spool_trace_root(e->message_id, &root);
    if (trace_valid(&s->ctx) && memcmp(root.trace_id, (uint8_t[16]){0}, 16) != 0) {
        memcpy(s->ctx.trace_id, root.trace_id, 16);
        s->ctx.flags = otel_sample(NULL, root.trace_id) ? TRACE_FLAG_SAMPLED : 0;
    }
    trace_span_str(s, "messaging.system", "rabbitmq");
    trace_span_str(s, "messaging.operation.type", "send");
    trace_span_str(s, "messaging.operation.name", "publish");
    trace_span_str(s, "messaging.destination.name", MQ_EXCHANGE);
    trace_span_str(s, "messaging.rabbitmq.destination.routing_key", RK_SALE_COMPLETED);
    trace_span_str(s, "messaging.message.id", e->message_id);
    trace_span_str(s, "messaging.message.conversation_id", e->sale_id);
    if (!trace_valid(&s->ctx))
        return;
    trace_format(&s->ctx, tp);
    m->traceparent = tp;
}

/* spool_publish_fn: the spooled sales to sales.events, pipelined, each
 * confirmed or not. */
static int publish_mq(void *arg, const spool_entry *e, size_t n, int *confirmed, char *err,
                      size_t errlen)
{
    mq_msg *m = calloc(n, sizeof(*m));
    int *st = calloc(n, sizeof(*st));
    trace_span *sp = calloc(n, sizeof(*sp));
    char(*tp)[TRACE_PARENT_LEN] = calloc(n, sizeof(*tp));
    int rc = -1;

    if (!m || !st || !sp || !tp) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        m[i].routing_key = RK_SALE_COMPLETED;
        m[i].message_id = e[i].message_id;
        m[i].correlation_id = e[i].sale_id;
        m[i].body = e[i].body;
        m[i].len = e[i].len;
        st[i] = MQ_ERR;
        spool_publish_span(&sp[i], &e[i], &m[i], tp[i]);
    }
    log_debug("publishing %zu spooled sale(s)", n);
    rc = mq_publish_batch(arg, m, n, st, err, errlen) == MQ_OK ? 0 : -1;
    for (size_t i = 0; i < n; i++) {
        confirmed[i] = st[i] == MQ_OK;
        if (!confirmed[i])
            trace_span_fail(&sp[i], "not confirmed");
        trace_span_end(&sp[i], e[i].sale_id);
    }
out:
    free(m);
    free(st);
    free(sp);
    free(tp);
    return rc;
}

long spool_send(const spool *s, mq_conn *mq, long *sent)
{
    char err[512];
    long left = spool_flush(s, publish_mq, mq, sent, err, sizeof(err));
    if (left == -1)
        log_warn("%s", err);
    return left;
}

long spool_drain(const spool *s, mq_conn *mq, long *sent, int64_t timeout_ms,
                 volatile sig_atomic_t *stop)
{
    int64_t end = util_now_ms() + timeout_ms;
    char err[512];
    backoff b;
    long left;

    backoff_init(&b, 200, 5000);
    while (((left = spool_send(s, mq, sent)) > 0 || left == SPOOL_BUSY) && util_now_ms() < end &&
           !*stop)
        util_sleep_ms(backoff_next(&b), stop);
    if (left == SPOOL_BUSY && (left = spool_count(s, err, sizeof(err))) < 0)
        log_warn("%s", err);
    return left;
}
