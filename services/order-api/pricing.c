/*
 * pricing.c — an order's prices come from the catalog (products), never
 * from the client: each line's unit price, then the total. The contract's
 * maxima (EV_QTY_MAX units of EV_PRICE_MAX on each of EV_LINES_MAX lines) sum
 * to EV_TOTAL_MAX, well inside int64; a catalog price beyond the contract is
 * the server's data, refused with a 500 before it is multiplied.
 *
 * The price cache keeps the catalog rows POSTs have read, so an order whose
 * SKUs are all in it costs the database no round trip before its write. It
 * is correct because it is dropped whenever the catalog may have changed:
 *
 *  - a trigger on orders.products (migration 0013) notifies the channel
 *    orders_products after every change commits, and a thread of its own
 *    LISTENs there and drops the whole cache on each notification;
 *  - the cache serves only while that thread is listening: when its
 *    connection is lost (a notification could be lost with it) the cache is
 *    dropped and stays off, every POST reading the catalog, until it listens
 *    again;
 *  - a row is served at most PRICE_CACHE_MAX_AGE_MS after the read that
 *    fetched it began, so a change whose notification is lost without the
 *    connection seeming lost (a change made with triggers disabled, a network
 *    that drops packets silently) is seen within that bound anyway;
 *  - a read that began before a drop does not fill the cache (a generation
 *    number says so), so a row read before a change cannot be stored after
 *    the notification of the change was handled.
 *
 * A change is seen by the POSTs that start after order-api has received its
 * notification (milliseconds after the commit), and by every POST that starts
 * PRICE_CACHE_MAX_AGE_MS after the commit whatever happened to it.
 */
#include "api.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PRICE_CHANNEL "orders_products"     /* migration 0013's trigger notifies it */
#define PRICE_SLOTS   1024                  /* a power of two */
#define PRICE_FILL    (PRICE_SLOTS * 3 / 4) /* full: dropped whole (correct, if slower) */

typedef struct {
    char sku[EV_SKU_MAX + 1]; /* "": a free slot */
    char currency[4];
    int64_t price;
    int64_t read_ms; /* util_now_ms() when the read that fetched it began */
} price_entry;

struct api_prices {
    pthread_mutex_t lock;
    price_entry *slots; /* PRICE_SLOTS, open addressing */
    size_t used;
    uint64_t gen;  /* bumped by every drop */
    int listening; /* the cache serves only while its LISTEN connection is up */
    int64_t max_age_ms;
    api_prices_stats stats;
    /* The listener thread's: */
    pthread_t thread;
    atomic_int stop;
    int wake[2]; /* a pipe: api_prices_stop writes, the listener's poll wakes */
    char *url;
    db_timeouts timeouts;
    int has_timeouts;
};

int api_price_lines(order_placed *o, const api_price *cat, size_t n, api_problem *p)
{
    o->total = 0;
    for (size_t i = 0; i < o->lines.n; i++) {
        ev_line *l = &o->lines.items[i];
        const api_price *c = NULL;
        int64_t line_total;
        char path[32];

        for (size_t row = 0; row < n; row++) {
            if (strcmp(cat[row].sku, l->sku) == 0)
                c = &cat[row];
        }
        if (!c) {
            snprintf(path, sizeof(path), "items[%zu].sku", i); /* fits: i < EV_LINES_MAX */
            return api_fail(p, 422, path, "unknown SKU %s (see GET /products)", l->sku);
        }
        if (strcmp(c->currency, o->currency) != 0)
            return api_fail(p, 422, "currency", "the catalog sells in %.3s", c->currency);
        l->unit_price = c->price;
        /* The quantity was checked against the contract (api_validate); the
         * catalog's price is checked here, before multiplying. */
        if (l->unit_price < 0 || l->unit_price > EV_PRICE_MAX ||
            __builtin_mul_overflow(l->unit_price, l->quantity, &line_total) ||
            __builtin_add_overflow(o->total, line_total, &o->total)) {
            log_error("catalog price of %s (%lld) is outside the contract's 0..%lld", l->sku,
                      (long long)c->price, (long long)EV_PRICE_MAX);
            return api_fail(p, 500, NULL, "the catalog price of %s is out of range", l->sku);
        }
    }
    return 0;
}

int api_price_order(api_prices *c, db_conn *db, order_placed *o, api_problem *p, int *dbrc,
                    char *err, size_t errlen)
{
    /* A text[] literal of the SKUs: each at most EV_SKU_MAX of the
     * contract's SKU characters (no quote or backslash), quoted. */
    char skus[EV_LINES_MAX * (EV_SKU_MAX + 3) + 3];
    api_price cat[EV_LINES_MAX];
    size_t n = 0, rows;
    PGresult *res;
    const char *params[1];
    uint64_t gen = 0;
    int64_t at = 0;
    int rc = -1, fill;

    skus[n++] = '{';
    for (size_t i = 0; i < o->lines.n; i++) {
        int k =
            snprintf(skus + n, sizeof(skus) - n, "%s\"%s\"", i ? "," : "", o->lines.items[i].sku);
        if (k < 0 || (size_t)k >= sizeof(skus) - n - 1) {
            snprintf(err, errlen, "the order's SKUs do not fit the query (%zu lines)", o->lines.n);
            *dbrc = DB_ERR;
            return -1;
        }
        n += (size_t)k;
    }
    skus[n++] = '}';
    skus[n] = '\0';
    params[0] = skus;
    fill = api_price_read_begins(c, &gen, &at);
    *dbrc = db_execp(db, "api_prices",
                     "SELECT sku, price_minor, currency FROM products WHERE sku = ANY($1::text[])",
                     1, params, &res, err, errlen);
    if (*dbrc != DB_OK)
        return -1;
    rows = (size_t)PQntuples(res);
    if (rows > EV_LINES_MAX)
        rows = EV_LINES_MAX; /* SKUs are unique: never more rows than lines */
    for (size_t i = 0; i < rows; i++) {
        const char *price = db_get(res, (int)i, "price_minor");
        cat[i].sku = db_get(res, (int)i, "sku");
        cat[i].currency = db_get(res, (int)i, "currency");
        /* strtoll saturates: a price past int64 is out of the contract's range
         * too. */
        cat[i].price = strtoll(price, NULL, 10);
    }
    if (fill)
        api_price_read_ends(c, gen, at, cat, rows);
    rc = api_price_lines(o, cat, rows, p);
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------------ the cache */

static size_t slot_of(const char *sku)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *q = (const unsigned char *)sku; *q; q++)
        h = (h ^ *q) * 16777619u;
    return h & (PRICE_SLOTS - 1);
}

/* The slot holding sku, or the free slot where it would go. Under lock. */
static price_entry *find_slot(api_prices *c, const char *sku)
{
    size_t i = slot_of(sku);
    while (c->slots[i].sku[0] && strcmp(c->slots[i].sku, sku) != 0)
        i = (i + 1) & (PRICE_SLOTS - 1);
    return &c->slots[i];
}

/* Forgets every row, and every read under way. Under lock. */
static void drop_locked(api_prices *c)
{
    memset(c->slots, 0, PRICE_SLOTS * sizeof(*c->slots));
    c->used = 0;
    c->gen++;
}

void api_prices_set_listening(api_prices *c, int on)
{
    pthread_mutex_lock(&c->lock);
    drop_locked(c);
    c->listening = on;
    if (!on)
        c->stats.losses++;
    pthread_mutex_unlock(&c->lock);
}

int api_price_cached(api_prices *c, order_placed *o, api_problem *p)
{
    price_entry got[EV_LINES_MAX];
    api_price cat[EV_LINES_MAX];
    int64_t now = util_now_ms();
    size_t i, n = o->lines.n < EV_LINES_MAX ? o->lines.n : EV_LINES_MAX;

    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    for (i = 0; c->listening && i < n; i++) {
        const price_entry *e = find_slot(c, o->lines.items[i].sku);
        if (!e->sku[0] || now - e->read_ms >= c->max_age_ms)
            break;
        got[i] = *e;
    }
    if (i < n || !c->listening || n == 0) {
        c->stats.misses++;
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    c->stats.hits++;
    pthread_mutex_unlock(&c->lock);
    for (i = 0; i < n; i++)
        cat[i] = (api_price){.sku = got[i].sku, .price = got[i].price, .currency = got[i].currency};
    return api_price_lines(o, cat, n, p) < 0 ? -1 : 1;
}

/* The state a read must find unchanged to fill the cache with its rows. */
int api_price_read_begins(api_prices *c, uint64_t *gen, int64_t *at)
{
    int on;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    on = c->listening;
    *gen = c->gen;
    pthread_mutex_unlock(&c->lock);
    *at = util_now_ms();
    return on;
}

/* Keeps the rows cat[0..n) a read begun at (gen, at) returned, unless the
 * cache was dropped since (or is off). */
void api_price_read_ends(api_prices *c, uint64_t gen, int64_t at, const api_price *cat, size_t n)
{
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; c->listening && c->gen == gen && i < n; i++) {
        price_entry *e;
        if (!cat[i].sku || !cat[i].currency || strlen(cat[i].sku) > EV_SKU_MAX ||
            strlen(cat[i].currency) != 3)
            continue; /* not the contract's: priced (and refused) uncached */
        e = find_slot(c, cat[i].sku);
        if (!e->sku[0]) {
            if (c->used >= PRICE_FILL) {
                drop_locked(c);
                c->stats.fulls++;
                gen = c->gen; /* this read's rows are still current */
                e = find_slot(c, cat[i].sku);
            }
            c->used++;
        }
        snprintf(e->sku, sizeof(e->sku), "%s", cat[i].sku);
        snprintf(e->currency, sizeof(e->currency), "%s", cat[i].currency);
        e->price = cat[i].price;
        e->read_ms = at;
    }
    pthread_mutex_unlock(&c->lock);
}

void api_prices_changed(api_prices *c)
{
    pthread_mutex_lock(&c->lock);
    drop_locked(c);
    c->stats.drops++;
    pthread_mutex_unlock(&c->lock);
}

void api_prices_get_stats(api_prices *c, api_prices_stats *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->stats;
    pthread_mutex_unlock(&c->lock);
}

void api_prices_metrics_text(const api_prices_stats *s, char *buf, size_t len)
{
    snprintf(
        buf, len,
        "# HELP ordersuite_price_cache_hits_total Orders priced from order-api's price cache.\n"
        "# TYPE ordersuite_price_cache_hits_total counter\n"
        "ordersuite_price_cache_hits_total %llu\n"
        "# HELP ordersuite_price_cache_misses_total Orders that read the catalog.\n"
        "# TYPE ordersuite_price_cache_misses_total counter\n"
        "ordersuite_price_cache_misses_total %llu\n"
        "# HELP ordersuite_price_cache_drops_total Times the price cache was dropped whole,"
        " by reason.\n"
        "# TYPE ordersuite_price_cache_drops_total counter\n"
        "ordersuite_price_cache_drops_total{reason=\"catalog_changed\"} %llu\n"
        "ordersuite_price_cache_drops_total{reason=\"connection_lost\"} %llu\n"
        "ordersuite_price_cache_drops_total{reason=\"full\"} %llu\n",
        (unsigned long long)s->hits, (unsigned long long)s->misses, (unsigned long long)s->drops,
        (unsigned long long)s->losses, (unsigned long long)s->fulls);
}

void api_prices_metrics(void *cls, char *buf, size_t len)
{
    const api_ctx *ctx = cls;
    api_prices_stats s;
    if (len)
        buf[0] = '\0';
    if (!ctx->prices)
        return;
    api_prices_get_stats(ctx->prices, &s);
    api_prices_metrics_text(&s, buf, len);
}

/* ---------------------------------------------------------- the listener */

/* Waits up to ms for the stop pipe; 1 when stopping. */
static int wait_stop(api_prices *c, int64_t ms)
{
    struct pollfd fd = {.fd = c->wake[0], .events = POLLIN};
    if (ms > 0)
        (void)poll(&fd, 1, (int)ms);
    return atomic_load(&c->stop);
}

static int listen_connect(db_conn *db, char *err, size_t errlen)
{
    if (db_connect(db, err, errlen) != DB_OK)
        return -1;
    /* A constant identifier: nothing to escape. */
    return db_exec(db, "LISTEN " PRICE_CHANNEL, 0, NULL, NULL, err, errlen) == DB_OK ? 0 : -1;
}

/* Waits for a notification or the stop pipe: 1 when the catalog changed, 0
 * when nothing did (or stopping), -1 when the connection is lost. */
static int wait_change(api_prices *c, db_conn *db)
{
    PGconn *pg = db_pg(db);
    PGnotify *n;
    struct pollfd fds[2];
    int sock = pg ? PQsocket(pg) : -1, changed = 0;

    if (sock < 0)
        return -1;
    fds[0] = (struct pollfd){.fd = sock, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = c->wake[0], .events = POLLIN};
    if (poll(fds, 2, -1) < 0 && errno != EINTR)
        return -1;
    if (atomic_load(&c->stop))
        return 0;
    if (!PQconsumeInput(pg))
        return -1;
    while ((n = PQnotifies(pg)) != NULL) {
        changed = 1;
        PQfreemem(n);
    }
    if (PQstatus(pg) != CONNECTION_OK)
        return -1;
    return changed;
}

static void *listen_main(void *arg)
{
    api_prices *c = arg;
    db_conn *db = db_new(c->url, "order-api-prices");
    char err[DB_ERR_LEN];
    backoff b;
    int up = 0;

    if (!db) {
        log_error("price cache: out of memory; the catalog is read for every order");
        return NULL;
    }
    if (c->has_timeouts)
        db_set_timeouts(db, &c->timeouts);
    backoff_init(&b, 100, 5000);
    while (!atomic_load(&c->stop)) {
        int r;
        if (!up) {
            if (listen_connect(db, err, sizeof(err)) < 0) {
                log_warn("price cache: cannot listen for catalog changes (%s); the catalog is "
                         "read for every order until it can",
                         err);
                wait_stop(c, backoff_next(&b));
                continue;
            }
            backoff_reset(&b);
            api_prices_set_listening(c, 1); /* from an empty cache: nothing read before is kept */
            up = 1;
            log_info("price cache: listening for catalog changes");
            continue;
        }
        r = wait_change(c, db);
        if (r < 0) {
            api_prices_set_listening(c, 0);
            up = 0;
            log_warn("price cache: lost its LISTEN connection; dropped, and off until it "
                     "listens again");
        } else if (r > 0) {
            api_prices_changed(c);
        }
    }
    db_free(db);
    return NULL;
}

api_prices *api_prices_new(long max_age_ms)
{
    api_prices *c = calloc(1, sizeof(*c));
    if (!c || !(c->slots = calloc(PRICE_SLOTS, sizeof(*c->slots)))) {
        free(c);
        return NULL;
    }
    c->max_age_ms = max_age_ms;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void api_prices_free(api_prices *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->lock);
    free(c->slots);
    free(c->url);
    free(c);
}

api_prices *api_prices_start(const api_prices_opts *o, char *err, size_t errlen)
{
    api_prices *c;
    int e;

    if (o->max_age_ms <= 0)
        return NULL; /* no cache: every order reads its prices */
    c = api_prices_new(o->max_age_ms);
    if (!c || !(c->url = strdup(o->database_url))) {
        snprintf(err, errlen, "price cache: out of memory");
        api_prices_free(c);
        return NULL;
    }
    if (o->timeouts) {
        c->timeouts = *o->timeouts;
        c->has_timeouts = 1;
    }
    if (pipe(c->wake) < 0) {
        snprintf(err, errlen, "price cache: pipe: %s", strerror(errno));
        api_prices_free(c);
        return NULL;
    }
    if ((e = pthread_create(&c->thread, NULL, listen_main, c)) != 0) {
        snprintf(err, errlen, "price cache: cannot start its thread: %s", strerror(e));
        close(c->wake[0]);
        close(c->wake[1]);
        api_prices_free(c);
        return NULL;
    }
    return c;
}

void api_prices_stop(api_prices *c)
{
    if (!c)
        return;
    atomic_store(&c->stop, 1);
    (void)!write(c->wake[1], "x", 1);
    pthread_join(c->thread, NULL);
    log_info("price cache: %llu orders priced from it, %llu read the catalog, dropped %llu "
             "times on a catalog change, %llu times on a lost connection and %llu times full",
             (unsigned long long)c->stats.hits, (unsigned long long)c->stats.misses,
             (unsigned long long)c->stats.drops, (unsigned long long)c->stats.losses,
             (unsigned long long)c->stats.fulls);
    close(c->wake[0]);
    close(c->wake[1]);
    api_prices_free(c);
}
