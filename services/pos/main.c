/*
 * pos — a point-of-sale terminal that publishes sale.completed.
 *
 *   pos [--store S] [--email E]                 interactive: Enter rings up a
 *                                               random sale, q quits
 *   pos --count N [--rate R] [--store S] [--email E]
 *                                               a burst of N sales, R a second
 *                                               (0 = as fast as confirms allow)
 *
 * Store and forward: every sale is appended (and fsynced) to a spool file
 * before it is published, and removed from it only after the broker's
 * publisher confirm. Several tills of one store may share a spool: every
 * change to it (an append, a flush that rewrites it) holds an exclusive
 * flock on pos-<store>.spool.lock beside it, the rewrite goes through a
 * temporary file of its own (mkstemp) and rename, and the directory is
 * fsynced after the spool is created, replaced or removed. When the broker is unreachable the till
 * keeps selling into the spool and sends everything when the broker is back, at the next sale or at
 * the next start. A sale confirmed but still in the spool (a crash in between) is sent again with
 * the same message_id, and the consumers' inboxes drop the copy. So a till never loses a sale.
 *
 * Environment: AMQP_URL (required), CATALOG_URL (default
 * http://127.0.0.1:8080/products: order-api's public catalog) or CATALOG_FILE
 * (the same JSON), POS_SPOOL_DIR (default "."), POS_FLUSH_TIMEOUT_S (how long
 * to keep trying at the end of a run, default 30), LOG_LEVEL.
 * Exit status: 0 when every sale was confirmed, 1 on bad usage or
 * configuration, 2 when sales are left in the spool.
 */
#include "cfg.h"
#include "events.h"
#include "log.h"
#include "mq.h"
#include "util.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <unistd.h>

#define MAX_PRODUCTS 1000
#define SPOOL_LINE   (EV_BODY_MAX + 64)

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

typedef struct {
    char sku[EV_SKU_MAX + 1];
    int64_t price;
    char currency[4];
} product;

typedef struct {
    product items[MAX_PRODUCTS];
    size_t n;
} catalog;

typedef struct {
    const char *store, *email;
    char dir[4096];   /* the spool's directory */
    char spool[4096]; /* <dir>/pos-<store>.spool */
    mq_conn *mq;
    catalog cat;
    long sent, spooled_now;
} till;

/* ------------------------------------------------------------- catalog */

typedef struct {
    char *buf;
    size_t len;
} growbuf;

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
    growbuf *g = arg;
    size_t k = size * n;
    char *b;
    if (g->len + k > 4 * 1024 * 1024)
        return 0; /* a catalog this large is not one */
    b = realloc(g->buf, g->len + k + 1);
    if (!b)
        return 0;
    g->buf = b;
    memcpy(g->buf + g->len, data, k);
    g->len += k;
    g->buf[g->len] = '\0';
    return k;
}

static int load_catalog(catalog *cat, const char *url, const char *file, char *err, size_t errlen)
{
    growbuf g = {NULL, 0};
    cJSON *root, *it;
    int rc = -1;

    if (file) {
        FILE *f = fopen(file, "r");
        char chunk[8192];
        size_t k;
        if (!f) {
            snprintf(err, errlen, "CATALOG_FILE: %s: %s", file, strerror(errno));
            return -1;
        }
        while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0) {
            if (collect(chunk, 1, k, &g) != k)
                break;
        }
        fclose(f);
    } else {
        CURL *c = curl_easy_init();
        CURLcode cc;
        long code = 0;
        if (!c) {
            snprintf(err, errlen, "curl: out of memory");
            return -1;
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        cc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(c);
        if (cc != CURLE_OK || code != 200) {
            snprintf(err, errlen, "CATALOG_URL %s: %s (is order-api running? or set CATALOG_FILE)",
                     url, cc != CURLE_OK ? curl_easy_strerror(cc) : "not 200");
            free(g.buf);
            return -1;
        }
    }
    root = g.buf ? ev_json_parse(g.buf, g.len, 3, err, errlen) : NULL;
    if (!root) {
        if (!g.buf)
            snprintf(err, errlen, "the catalog is empty");
        free(g.buf);
        return -1;
    }
    cat->n = 0;
    cJSON_ArrayForEach(it, root)
    {
        const cJSON *sku = cJSON_GetObjectItemCaseSensitive(it, "sku");
        const cJSON *cur = cJSON_GetObjectItemCaseSensitive(it, "currency");
        int64_t price;
        if (cat->n == MAX_PRODUCTS || !cJSON_IsString(sku) || !cJSON_IsString(cur) ||
            strlen(sku->valuestring) > EV_SKU_MAX || strlen(cur->valuestring) != 3 ||
            ev_json_int(cJSON_GetObjectItemCaseSensitive(it, "price_minor"), &price) < 0 ||
            price < 0 || price > EV_PRICE_MAX)
            continue;
        snprintf(cat->items[cat->n].sku, sizeof(cat->items[0].sku), "%s", sku->valuestring);
        snprintf(cat->items[cat->n].currency, 4, "%s", cur->valuestring);
        cat->items[cat->n].price = price;
        cat->n++;
    }
    if (cat->n == 0)
        snprintf(err, errlen, "the catalog has no usable products");
    else
        rc = 0;
    cJSON_Delete(root);
    free(g.buf);
    return rc;
}

/* ---------------------------------------------------------------- spool */

/* Takes the spool's lock: an exclusive flock on <spool>.lock, a file that is
 * never replaced (the spool itself is, by rename, so a lock on it would be
 * on the old file). Returns the locked fd, or -1 with err. */
static int spool_lock(const till *t, char *err, size_t errlen)
{
    char path[4200];
    int fd;
    snprintf(path, sizeof(path), "%s.lock", t->spool);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "spool lock %s: %s", path, strerror(errno));
        return -1;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            snprintf(err, errlen, "spool lock %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    return fd;
}

static void spool_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

/* Makes a create, rename or unlink in the spool's directory durable. */
static int sync_dir(const till *t)
{
    int fd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Appends "message_id body\n" and fsyncs (and the directory when the spool
 * was created): the sale is safe on disk. */
static int spool_add(const till *t, const char *id, const char *body, char *err, size_t errlen)
{
    int lock = spool_lock(t, err, errlen), created = 1;
    int fd = -1, n = -1, ok = 0;
    char *line = NULL;

    if (lock < 0)
        return -1;
    fd = open(t->spool, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        fd = open(t->spool, O_WRONLY | O_APPEND | O_CLOEXEC);
    }
    if (fd < 0) {
        snprintf(err, errlen, "spool %s: %s", t->spool, strerror(errno));
        goto out;
    }
    n = asprintf(&line, "%s %s\n", id, body);
    ok = n > 0 && write(fd, line, (size_t)n) == n && fsync(fd) == 0 &&
         (!created || sync_dir(t) == 0);
    if (!ok)
        snprintf(err, errlen, "spool %s: %s", t->spool, strerror(errno));
out:
    if (n > 0)
        free(line);
    if (fd >= 0)
        close(fd);
    spool_unlock(lock);
    return ok ? 0 : -1;
}

/* Writes lines[i] for every i not confirmed (st[i] != MQ_OK) to a temporary
 * file of this process's own and renames it over the spool; no line left
 * removes the spool. Called with the lock held. Returns 0 or -1. */
static int spool_rewrite(const till *t, char **lines, const int *st, size_t n, long left)
{
    char tmp[4200];
    FILE *out;
    int fd;

    if (left == 0)
        return unlink(t->spool) == 0 && sync_dir(t) == 0 ? 0 : -1;
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", t->spool);
    fd = mkstemp(tmp);
    if (fd < 0)
        return -1;
    out = fdopen(fd, "w");
    if (!out) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (st[i] != MQ_OK)
            fprintf(out, "%s\n", lines[i]);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0) {
        fclose(out);
        unlink(tmp);
        return -1;
    }
    fclose(out);
    if (rename(tmp, t->spool) != 0) {
        unlink(tmp);
        return -1;
    }
    return sync_dir(t);
}

/* Publishes everything in the spool; what the broker confirmed leaves it.
 * Returns the number of sales still spooled, or -1 on a spool I/O error. */
static long spool_flush(till *t)
{
    char err[MQ_ERR_LEN];
    int lock = spool_lock(t, err, sizeof(err));
    FILE *f;
    char *line;
    char **lines = NULL;
    size_t n = 0, cap = 0;
    long left = 0;
    int short_read = 0;

    /* The lock is held from the read to the rename: a sale another till
     * appends meanwhile waits, and is in the spool that is read next. */
    if (lock < 0) {
        log_warn("%s", err);
        return -1;
    }
    f = fopen(t->spool, "r");
    if (!f) {
        left = errno == ENOENT ? 0 : -1;
        spool_unlock(lock);
        return left;
    }
    line = malloc(SPOOL_LINE);
    while (line && fgets(line, SPOOL_LINE, f)) {
        char **l2;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            l2 = realloc(lines, cap * sizeof(*lines));
            if (!l2) {
                short_read = 1;
                break;
            }
            lines = l2;
        }
        line[strcspn(line, "\n")] = '\0';
        if (strlen(line) > UUID_STR_LEN && line[UUID_STR_LEN - 1] == ' ') {
            if (!(lines[n] = strdup(line))) {
                short_read = 1;
                break;
            }
            n++;
        }
    }
    fclose(f);
    short_read |= !line;
    free(line);
    if (short_read) {
        /* Out of memory: rewriting now would drop what was not read. */
        for (size_t i = 0; i < n; i++)
            free(lines[i]);
        free(lines);
        spool_unlock(lock);
        return -1;
    }
    if (n == 0) {
        free(lines);
        left = unlink(t->spool) == 0 && sync_dir(t) == 0 ? 0 : -1;
        spool_unlock(lock);
        return left;
    }
    {
        mq_msg *m = calloc(n, sizeof(*m));
        int *st = calloc(n, sizeof(*st));
        char(*ids)[UUID_STR_LEN] = calloc(n, UUID_STR_LEN);
        char(*corr)[UUID_STR_LEN] = calloc(n, UUID_STR_LEN);
        if (!m || !st || !ids || !corr) {
            left = -1;
            goto done;
        }
        for (size_t i = 0; i < n; i++) {
            const char *body = lines[i] + UUID_STR_LEN;
            const char *sid = strstr(body, "\"sale_id\":\"");
            memcpy(ids[i], lines[i], UUID_STR_LEN - 1);
            if (sid)
                snprintf(corr[i], UUID_STR_LEN, "%.36s", sid + 11);
            m[i].routing_key = RK_SALE_COMPLETED;
            m[i].message_id = ids[i];
            m[i].correlation_id = corr[i];
            m[i].body = body;
            m[i].len = strlen(body);
            st[i] = MQ_ERR;
        }
        if (mq_publish_batch(t->mq, m, n, st, err, sizeof(err)) != MQ_OK)
            log_warn("broker: %s; sales stay in the spool", err);
        for (size_t i = 0; i < n; i++) {
            if (st[i] == MQ_OK)
                t->sent++;
            else
                left++;
        }
        /* Replace the spool atomically with what is left. A failure here
         * keeps the old spool: confirmed sales in it are sent again with
         * their message ids, and the consumers' inboxes drop the copies. */
        if (spool_rewrite(t, lines, st, n, left) < 0) {
            log_warn("spool %s: %s", t->spool, strerror(errno));
            left = -1;
        }
    done:
        free(m);
        free(st);
        free(ids);
        free(corr);
    }
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
    spool_unlock(lock);
    return left;
}

/* ----------------------------------------------------------------- sales */

static uint32_t rnd(uint32_t n)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = (uint32_t)util_now_ms();
    return n ? r % n : 0;
}

/* Rings up a random sale of 1-3 products and spools it. */
static int ring_up(till *t, char *summary, size_t sumlen, char *err, size_t errlen)
{
    ev_event ev;
    sale_completed *s = &ev.u.sale_completed;
    size_t lines = 1 + rnd(3), n = 0;
    char id[UUID_STR_LEN];
    char *body;
    int rc;

    ev_init(&ev, EV_SALE_COMPLETED);
    if (uuid_v4(s->sale_id) < 0 || uuid_v4(id) < 0 || ev_lines_alloc(&s->lines, lines) < 0) {
        snprintf(err, errlen, "out of memory or randomness");
        return -1;
    }
    snprintf(s->store_id, sizeof(s->store_id), "%s", t->store);
    snprintf(s->customer_email, sizeof(s->customer_email), "%s", t->email ? t->email : "");
    for (size_t i = 0; i < lines; i++) {
        const product *p = &t->cat.items[rnd((uint32_t)t->cat.n)];
        int dup = 0;
        for (size_t j = 0; j < n; j++)
            dup |= strcmp(s->lines.items[j].sku, p->sku) == 0;
        if (dup || (n > 0 && strcmp(p->currency, s->currency) != 0))
            continue;
        snprintf(s->currency, sizeof(s->currency), "%s", p->currency);
        snprintf(s->lines.items[n].sku, sizeof(s->lines.items[n].sku), "%s", p->sku);
        s->lines.items[n].quantity = 1 + rnd(3);
        s->lines.items[n].unit_price = p->price;
        s->total += s->lines.items[n].quantity * p->price;
        n++;
    }
    s->lines.n = n;
    ev_now_rfc3339(s->paid_at);
    body = ev_to_json(&ev, NULL, err, errlen);
    if (!body) {
        ev_free(&ev);
        return -1;
    }
    rc = spool_add(t, id, body, err, errlen);
    snprintf(summary, sumlen, "sale %.8s at %s: %zu line(s), %lld.%02lld %s", s->sale_id, t->store,
             n, (long long)(s->total / 100), (long long)(s->total % 100), s->currency);
    free(body);
    ev_free(&ev);
    return rc;
}

static int usage(void)
{
    fprintf(stderr, "usage: pos [--store S] [--email E]              interactive till\n"
                    "       pos --count N [--rate R] [--store S] [--email E]   a burst\n"
                    "env: AMQP_URL, CATALOG_URL or CATALOG_FILE, POS_SPOOL_DIR\n");
    return 1;
}

int main(int argc, char **argv)
{
    till t;
    long count = -1, rate = 0, flush_s = 30;
    char *amqp = NULL, *curl_url = NULL, *spool_dir = NULL, *level = NULL, *cat_file = NULL;
    char err[512], msg[256];
    const cfg_spec specs[] = {
        {"AMQP_URL", CFG_STR, NULL, 0, 0, &amqp},
        {"CATALOG_URL", CFG_STR, "http://127.0.0.1:8080/products", 0, 0, &curl_url},
        {"POS_SPOOL_DIR", CFG_STR, ".", 0, 0, &spool_dir},
        {"LOG_LEVEL", CFG_STR, "info", 0, 0, &level},
        {"POS_FLUSH_TIMEOUT_S", CFG_LONG, "30", 0, 3600, &flush_s},
    };
    const size_t nspecs = sizeof(specs) / sizeof(specs[0]);
    mq_opts mo;
    log_level lvl;
    struct sigaction sa;
    long left;
    int rc = 1, broken = 0;

    memset(&t, 0, sizeof(t));
    t.store = "NEPAL-01";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--store") == 0 && v) {
            t.store = v;
        } else if (strcmp(a, "--email") == 0 && v) {
            t.email = v;
        } else if (strcmp(a, "--count") == 0 && v) {
            if (cfg_parse_long("--count", v, 1, 10000000, &count, err, sizeof(err)) < 0) {
                fprintf(stderr, "pos: %s\n", err);
                return 1;
            }
        } else if (strcmp(a, "--rate") == 0 && v) {
            if (cfg_parse_long("--rate", v, 0, 1000000, &rate, err, sizeof(err)) < 0) {
                fprintf(stderr, "pos: %s\n", err);
                return 1;
            }
        } else {
            return usage();
        }
        i++;
    }
    log_init("pos", LOG_INFO);
    if (cfg_load(specs, nspecs, err, sizeof(err)) < 0 ||
        cfg_raw("CATALOG_FILE", &cat_file, err, sizeof(err)) < 0 ||
        log_parse_level(level, &lvl) < 0 || mq_check_url(amqp, err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: configuration: %s\n", err[0] ? err : "LOG_LEVEL");
        goto out;
    }
    log_init("pos", lvl);
    /* The contract checks --store and --email on the first sale; their
     * length bounds the spool's file name here. */
    if (strlen(t.store) > EV_ID_MAX || (t.email && strlen(t.email) > EV_EMAIL_MAX) ||
        strchr(t.store, '/')) {
        fprintf(stderr, "pos: --store must be 1-64 of A-Z a-z 0-9 . _ : -; --email at most %d\n",
                EV_EMAIL_MAX);
        goto out;
    }
    snprintf(t.dir, sizeof(t.dir), "%s", spool_dir);
    snprintf(t.spool, sizeof(t.spool), "%s/pos-%s.spool", spool_dir, t.store);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (load_catalog(&t.cat, curl_url, cat_file, err, sizeof(err)) < 0) {
        fprintf(stderr, "pos: %s\n", err);
        goto out_curl;
    }
    memset(&mo, 0, sizeof(mo));
    mo.url = amqp;
    mo.app_id = "pos";
    t.mq = mq_new(&mo);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    left = spool_flush(&t); /* what an earlier run could not send */
    if (left > 0)
        log_warn("%ld sales from an earlier run are still spooled", left);

    if (count < 0) {
        char line[256];
        printf("pos %s: Enter rings up a sale, q quits\n", t.store);
        fflush(stdout);
        while (!stop_flag && fgets(line, sizeof(line), stdin)) {
            if (line[0] == 'q')
                break;
            if (ring_up(&t, msg, sizeof(msg), err, sizeof(err)) < 0) {
                fprintf(stderr, "pos: %s\n", err);
                broken = 1;
                break;
            }
            left = spool_flush(&t);
            printf("%s -> %s\n", msg, left == 0 ? "confirmed" : "spooled (broker unreachable)");
            fflush(stdout);
        }
    } else {
        int64_t t0 = util_now_ms();
        for (long i = 0; i < count && !stop_flag; i++) {
            if (ring_up(&t, msg, sizeof(msg), err, sizeof(err)) < 0) {
                fprintf(stderr, "pos: %s\n", err);
                broken = 1;
                break;
            }
            if (rate > 0) {
                int64_t due = t0 + (i + 1) * 1000 / rate;
                /* Send what is spooled now and then, and before each pause. */
                spool_flush(&t);
                if (due > util_now_ms())
                    util_sleep_ms(due - util_now_ms(), &stop_flag);
            } else if ((i + 1) % 100 == 0) {
                spool_flush(&t);
            }
        }
        log_info("%ld sale(s) rung up; sending what is spooled", count);
    }
    /* Try for a while to send what is left before giving up for this run. */
    {
        backoff b;
        int64_t end = util_now_ms() + flush_s * 1000;
        backoff_init(&b, 200, 5000);
        while ((left = spool_flush(&t)) > 0 && util_now_ms() < end && !stop_flag)
            util_sleep_ms(backoff_next(&b), &stop_flag);
    }
    if (left == 0) {
        printf("pos %s: %ld sale(s) sent and confirmed\n", t.store, t.sent);
        rc = broken ? 1 : 0;
    } else {
        printf("pos %s: %ld sale(s) confirmed, %ld left in %s; they are sent on the next run\n",
               t.store, t.sent, left, t.spool);
        rc = 2;
    }
    mq_free(t.mq);
out_curl:
    curl_global_cleanup();
out:
    cfg_free(specs, nspecs);
    free(cat_file);
    return rc;
}
