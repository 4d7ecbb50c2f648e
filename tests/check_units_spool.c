/*
 * check_units_spool.c — pos's spool file (services/pos/spool.c) without
 * servers: the publisher is a function of the test that confirms what it is
 * told to. Each test works in a fresh directory of its own under TMPDIR.
 */
#include "catalog.h"
#include "otel.h"
#include "spool.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <ftw.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE "UNIT-01"

static char dir[512];
static spool sp;

static void setup(void)
{
    char err[256];
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(dir, sizeof(dir), "%s/check_units_spool.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_msg(n > 0 && (size_t)n < sizeof(dir), "TMPDIR is longer than the test's %zu bytes",
                  sizeof(dir) - sizeof("/check_units_spool.XXXXXX"));
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(spool_init(&sp, dir, STORE, err, sizeof(err)) == 0, "%s", err);
}

/* nftw: removes one entry, children before their directory. */
static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes the test's directory with what is in it, no shell involved. */
static void teardown(void)
{
    ck_assert_msg(nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "removing %s: %s", dir,
                  strerror(errno));
}

/* A sale.completed body of store with a new sale id (in sale_id). */
static char *sale(const char *store, char sale_id[UUID_STR_LEN])
{
    ev_event ev;
    char err[256], *body;
    tu_sample_event(EV_SALE_COMPLETED, &ev);
    ck_assert_int_eq(uuid_v4(ev.u.sale_completed.sale_id), 0);
    snprintf(ev.u.sale_completed.store_id, sizeof(ev.u.sale_completed.store_id), "%s", store);
    if (sale_id)
        memcpy(sale_id, ev.u.sale_completed.sale_id, UUID_STR_LEN);
    body = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_msg(body != NULL, "%s", err);
    ev_free(&ev);
    return body;
}

static void append(char sale_id[UUID_STR_LEN])
{
    char err[256], *body = sale(STORE, sale_id);
    ck_assert_msg(spool_append(&sp, body, err, sizeof(err)) == 0, "%s", err);
    free(body);
}

/* The whole content of path ("" when missing), malloc'd. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *b = calloc(1, 1 << 20);
    size_t n = 0;
    ck_assert_ptr_nonnull(b);
    if (f) {
        n = fread(b, 1, (1 << 20) - 1, f);
        fclose(f);
    }
    b[n] = '\0';
    return b;
}

static long lines_in(const char *path)
{
    char *b = slurp(path);
    long n = 0;
    for (char *p = b; *p; p++)
        n += *p == '\n';
    free(b);
    return n;
}

static void write_raw(const char *path, const char *text)
{
    FILE *f = fopen(path, "a");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

/* ------------------------------------------------------ the publisher */

typedef struct {
    int calls;
    size_t seen;                     /* entries handed over, all calls */
    char sale_ids[16][UUID_STR_LEN]; /* the first 16 handed over */
    const int *confirm;              /* confirm[i] for the i-th entry of a call; NULL = all */
    int fail;                        /* return -1 (after confirming as told) */
    int during;                      /* run the checks of the lock-free test */
    int lock_free, busy, appended;
} fake;

static int publish(void *arg, const spool_entry *e, size_t n, int *confirmed, char *err,
                   size_t errlen)
{
    fake *f = arg;
    f->calls++;
    for (size_t i = 0; i < n; i++) {
        ck_assert(uuid_valid(e[i].message_id));
        ck_assert_uint_eq(strlen(e[i].body), e[i].len);
        if (f->seen < 16)
            memcpy(f->sale_ids[f->seen], e[i].sale_id, UUID_STR_LEN);
        f->seen++;
        confirmed[i] = f->confirm ? f->confirm[i] : 1;
    }
    if (f->during) {
        /* Another till while this one waits for the broker. */
        spool other;
        char e2[256];
        int fd = open(sp.lock, O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        f->lock_free = flock(fd, LOCK_EX | LOCK_NB) == 0;
        close(fd);
        ck_assert_int_eq(spool_init(&other, dir, STORE, e2, sizeof(e2)), 0);
        f->busy = spool_flush(&other, publish, f, NULL, e2, sizeof(e2)) == SPOOL_BUSY;
        if (f->lock_free) {
            char *body = sale(STORE, NULL);
            f->appended = spool_append(&other, body, e2, sizeof(e2)) == 0;
            free(body);
        }
    }
    if (f->fail) {
        snprintf(err, errlen, "the broker went away");
        return -1;
    }
    return 0;
}

static long flush(fake *f, long *sent)
{
    char err[256] = "";
    long left = spool_flush(&sp, publish, f, sent, err, sizeof(err));
    ck_assert_msg(left >= 0, "spool_flush: %ld %s", left, err);
    return left;
}

/* ------------------------------------------------------------ the tests */

START_TEST(no_spool_file_is_nothing_to_send)
{
    fake f = {0};
    ck_assert_int_eq(flush(&f, NULL), 0);
    ck_assert_int_eq(f.calls, 0);
}
END_TEST

START_TEST(an_empty_spool_file_sends_nothing_and_is_removed)
{
    fake f = {0};
    write_raw(sp.path, "");
    ck_assert_int_eq(flush(&f, NULL), 0);
    ck_assert_int_eq(f.calls, 0);
    ck_assert_int_ne(access(sp.path, F_OK), 0);
}
END_TEST

START_TEST(every_confirmed_sale_leaves_the_spool_in_order)
{
    char ids[3][UUID_STR_LEN];
    fake f = {0};
    long sent = 0;
    for (int i = 0; i < 3; i++)
        append(ids[i]);
    ck_assert_int_eq(lines_in(sp.path), 3);
    ck_assert_int_eq(flush(&f, &sent), 0);
    ck_assert_int_eq(sent, 3);
    ck_assert_uint_eq(f.seen, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(f.sale_ids[i], ids[i]);
    ck_assert_int_ne(access(sp.path, F_OK), 0);
}
END_TEST

START_TEST(a_sale_not_confirmed_stays_and_is_sent_next_time)
{
    char ids[3][UUID_STR_LEN];
    const int only_second[] = {0, 1, 0};
    fake f = {.confirm = only_second, .fail = 1};
    long sent = 0;
    for (int i = 0; i < 3; i++)
        append(ids[i]);
    ck_assert_int_eq(flush(&f, &sent), 2);
    ck_assert_int_eq(sent, 1);
    ck_assert_int_eq(lines_in(sp.path), 2);
    f = (fake){0};
    ck_assert_int_eq(flush(&f, &sent), 0);
    ck_assert_int_eq(sent, 3);
    ck_assert_uint_eq(f.seen, 2);
    ck_assert_str_eq(f.sale_ids[0], ids[0]);
    ck_assert_str_eq(f.sale_ids[1], ids[2]);
}
END_TEST

/* A crash in the middle of an append leaves a last line without its
 * newline: it was never reported as rung up, so it is moved aside, and the
 * complete lines are sent. */
START_TEST(a_torn_last_line_after_a_crash_is_set_aside_and_the_rest_sent)
{
    char ids[2][UUID_STR_LEN], *rej;
    fake f = {0};
    append(ids[0]);
    append(ids[1]);
    write_raw(sp.path, "6f1c0a52-3d1e-4b7a-9c43-0e5b8f1a2d3c {\"sale_id\":\"6f1c");
    ck_assert_int_eq(flush(&f, NULL), 0);
    ck_assert_uint_eq(f.seen, 2);
    ck_assert_str_eq(f.sale_ids[1], ids[1]);
    rej = slurp(sp.rejected);
    ck_assert_str_eq(rej, "6f1c0a52-3d1e-4b7a-9c43-0e5b8f1a2d3c {\"sale_id\":\"6f1c\n");
    free(rej);
}
END_TEST

/* The next append after a crash cuts the torn line off first, so its own
 * line starts on a line of its own. */
START_TEST(an_append_after_a_torn_line_starts_a_clean_line)
{
    char id[UUID_STR_LEN];
    fake f = {0};
    write_raw(sp.path, "6f1c0a52-3d1e-4b7a");
    append(id);
    ck_assert_int_eq(lines_in(sp.path), 1);
    ck_assert_int_eq(lines_in(sp.rejected), 1);
    ck_assert_int_eq(flush(&f, NULL), 0);
    ck_assert_uint_eq(f.seen, 1);
    ck_assert_str_eq(f.sale_ids[0], id);
}
END_TEST

/* A spool of another store (copied or renamed into this one's place) is not
 * sent as this till's, nor lost: its lines go to the .rejected file. */
START_TEST(a_file_from_another_store_is_set_aside_not_sent)
{
    char *body = sale("OTHER-02", NULL), line[EV_BODY_MAX], *rej;
    fake f = {0};
    snprintf(line, sizeof(line), "6f1c0a52-3d1e-4b7a-9c43-0e5b8f1a2d3c %s\nnot a sale line\n",
             body);
    write_raw(sp.path, line);
    ck_assert_int_eq(flush(&f, NULL), 0);
    ck_assert_int_eq(f.calls, 0);
    ck_assert_int_ne(access(sp.path, F_OK), 0);
    rej = slurp(sp.rejected);
    ck_assert_str_eq(rej, line);
    free(rej);
    free(body);
}
END_TEST

/* Sets the file size limit (a full disk as the writer sees it: a short
 * write, then EFBIG); SIGXFSZ is ignored so the write returns instead. */
static void limit_file_size(rlim_t bytes)
{
    struct rlimit r;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &r), 0);
    r.rlim_cur = bytes;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &r), 0);
}

static rlim_t max_file_size(void)
{
    struct rlimit r;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &r), 0);
    return r.rlim_max;
}

START_TEST(a_short_write_on_a_full_disk_fails_and_leaves_the_spool_as_it_was)
{
    char id[UUID_STR_LEN], err[256] = "", *before, *after, *body = sale(STORE, NULL);
    struct stat st;
    rlim_t max = max_file_size();
    fake f = {0};
    int rc;

    signal(SIGXFSZ, SIG_IGN);
    append(id);
    before = slurp(sp.path);
    ck_assert_int_eq(stat(sp.path, &st), 0);
    /* Room for 10 more bytes: the line's write is cut short. Nothing of
     * Check's may be written before the limit is lifted again. */
    limit_file_size((rlim_t)st.st_size + 10);
    rc = spool_append(&sp, body, err, sizeof(err));
    limit_file_size(max);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(err, strerror(EFBIG)) != NULL, "err: %s", err);
    after = slurp(sp.path);
    ck_assert_str_eq(after, before);
    /* With room again the next sale goes in, and both are sent. */
    ck_assert_int_eq(spool_append(&sp, body, err, sizeof(err)), 0);
    ck_assert_int_eq(flush(&f, NULL), 0);
    ck_assert_uint_eq(f.seen, 2);
    ck_assert_str_eq(f.sale_ids[0], id);
    free(before);
    free(after);
    free(body);
}
END_TEST

/* A full disk while the spool is rewritten after a confirm: the old spool
 * stays whole (the confirmed sale in it is sent again with its message id,
 * which the consumers' inboxes drop). */
START_TEST(a_full_disk_during_the_rewrite_keeps_the_old_spool)
{
    char id[3][UUID_STR_LEN], err[256] = "", *before, *after;
    const int only_first[] = {1, 0, 0};
    fake f = {.confirm = only_first};
    rlim_t max = max_file_size();
    long left;

    signal(SIGXFSZ, SIG_IGN);
    for (int i = 0; i < 3; i++)
        append(id[i]);
    before = slurp(sp.path);
    limit_file_size(100);
    left = spool_flush(&sp, publish, &f, NULL, err, sizeof(err));
    limit_file_size(max);
    ck_assert_int_eq(left, -1);
    after = slurp(sp.path);
    ck_assert_str_eq(after, before);
    free(before);
    free(after);
}
END_TEST

/* While a till publishes, the spool's lock is free (another till appends,
 * and its sale is kept by the rewrite) and the claim is taken (another
 * till's flush does not send the same sales a second time). */
START_TEST(a_till_publishing_holds_the_claim_but_not_the_lock)
{
    char id[2][UUID_STR_LEN];
    fake f = {.during = 1};
    long sent = 0, left;
    append(id[0]);
    append(id[1]);
    left = flush(&f, &sent);
    ck_assert_msg(f.lock_free, "the spool's lock was held while publishing");
    ck_assert_msg(f.busy, "another till's flush was not refused while one was publishing");
    ck_assert(f.appended);
    ck_assert_int_eq(left, 1);
    ck_assert_int_eq(sent, 2);
    ck_assert_int_eq(lines_in(sp.path), 1);
    f = (fake){0};
    ck_assert_int_eq(flush(&f, &sent), 0);
    ck_assert_uint_eq(f.seen, 1);
}
END_TEST

START_TEST(a_store_name_that_cannot_be_a_file_name_is_refused)
{
    char err[256], long_dir[SPOOL_PATH_MAX + 10];
    spool s;
    ck_assert_int_eq(spool_init(&s, dir, "", err, sizeof(err)), -1);
    ck_assert_int_eq(spool_init(&s, dir, "A/B", err, sizeof(err)), -1);
    memset(long_dir, 'd', sizeof(long_dir) - 1);
    long_dir[sizeof(long_dir) - 1] = '\0';
    ck_assert_int_eq(spool_init(&s, long_dir, STORE, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "longer than"));
}
END_TEST

/* ------------------------------------------------------------- catalog */

static void write_catalog(const char *path, size_t padding)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(
        fprintf(f, "[{\"sku\":\"MUG-WHITE\",\"currency\":\"EUR\",\"price_minor\":800}]"), 1);
    static char spaces[65536];
    memset(spaces, ' ', sizeof(spaces));
    while (padding > 0) {
        size_t k = padding < sizeof(spaces) ? padding : sizeof(spaces);
        ck_assert_uint_eq(fwrite(spaces, 1, k, f), k);
        padding -= k;
    }
    ck_assert_int_eq(fclose(f), 0);
}

START_TEST(a_catalog_file_is_read)
{
    static catalog cat;
    char path[600], err[256] = "";
    snprintf(path, sizeof(path), "%s/catalog.json", dir);
    write_catalog(path, 16);
    ck_assert_msg(catalog_load(&cat, NULL, path, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(cat.n, 1);
    ck_assert_str_eq(cat.items[0].sku, "MUG-WHITE");
}
END_TEST

/* A file past CATALOG_BYTES_MAX is refused whole, even when what fits under
 * the cap would parse: it was read up to the cap and that part taken. */
START_TEST(a_catalog_file_past_its_cap_is_refused)
{
    static catalog cat;
    char path[600], err[256] = "";
    snprintf(path, sizeof(path), "%s/catalog.json", dir);
    write_catalog(path, CATALOG_BYTES_MAX);
    ck_assert_msg(catalog_load(&cat, NULL, path, err, sizeof(err)) == -1,
                  "a catalog file over %d bytes was taken (%zu products)", CATALOG_BYTES_MAX,
                  cat.n);
    ck_assert_msg(strstr(err, "larger than") != NULL, "error: %s", err);
}
END_TEST

/* A sale's trace is its message id: every attempt to send it, after a
 * restart too, lands in one trace (docs/TRACING.md). */
START_TEST(a_sales_trace_id_is_its_message_id)
{
    trace_ctx c;
    char hex[TRACE_ID_HEX];
    spool_trace_root("0b5c1f64-3c2d-4f4e-9a51-0c1b2d3e4f50", &c);
    trace_id_hex(&c, hex);
    ck_assert_str_eq(hex, "0b5c1f643c2d4f4e9a510c1b2d3e4f50");
    spool_trace_root("not-a-uuid", &c);
    trace_id_hex(&c, hex);
    ck_assert_str_eq(hex, "00000000000000000000000000000000");
}
END_TEST

/* uuid_valid takes either case; the trace id is the same for both. */
START_TEST(an_uppercase_message_id_gives_the_same_trace)
{
    trace_ctx c;
    char hex[TRACE_ID_HEX];
    spool_trace_root("0B5C1F64-3C2D-4F4E-9A51-0C1B2D3E4F5A", &c);
    trace_id_hex(&c, hex);
    ck_assert_str_eq(hex, "0b5c1f643c2d4f4e9a510c1b2d3e4f5a");
}
END_TEST

/* A sale's trace id is a UUIDv4, whose byte 8 has fixed variant bits:
 * traceidratio must still sample about its ratio of sales. */
START_TEST(traceidratio_samples_its_ratio_of_sales)
{
    char id[UUID_STR_LEN];
    trace_ctx c;
    int sampled = 0;
    for (int i = 0; i < 10000; i++) {
        ck_assert_int_eq(uuid_v4(id), 0);
        spool_trace_root(id, &c);
        sampled += otel_decide(OTEL_RATIO, 0.25, NULL, c.trace_id);
    }
    ck_assert_msg(sampled >= 2200 && sampled <= 2800, "%d of 10000 sampled at 0.25", sampled);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_spool");
    TCase *t = tcase_create("spool");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, no_spool_file_is_nothing_to_send);
    tcase_add_test(t, an_empty_spool_file_sends_nothing_and_is_removed);
    tcase_add_test(t, every_confirmed_sale_leaves_the_spool_in_order);
    tcase_add_test(t, a_sale_not_confirmed_stays_and_is_sent_next_time);
    tcase_add_test(t, a_torn_last_line_after_a_crash_is_set_aside_and_the_rest_sent);
    tcase_add_test(t, an_append_after_a_torn_line_starts_a_clean_line);
    tcase_add_test(t, a_file_from_another_store_is_set_aside_not_sent);
    tcase_add_test(t, a_short_write_on_a_full_disk_fails_and_leaves_the_spool_as_it_was);
    tcase_add_test(t, a_full_disk_during_the_rewrite_keeps_the_old_spool);
    tcase_add_test(t, a_till_publishing_holds_the_claim_but_not_the_lock);
    tcase_add_test(t, a_store_name_that_cannot_be_a_file_name_is_refused);
    tcase_add_test(t, a_catalog_file_is_read);
    tcase_add_test(t, a_catalog_file_past_its_cap_is_refused);
    tcase_add_test(t, a_sales_trace_id_is_its_message_id);
    tcase_add_test(t, an_uppercase_message_id_gives_the_same_trace);
    tcase_add_test(t, traceidratio_samples_its_ratio_of_sales);
    suite_add_tcase(s, t);
    return tu_run(s);
}
