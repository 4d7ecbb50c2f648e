/*
 * trace — an order's trace as a waterfall in the terminal, from the
 * services' logs: no collector needed.
 *
 *     build/bin/trace <order-id | trace-id> [LOG_FILE ...]
 *
 * Every sampled span is logged as it ends (trace.c: one JSON line with
 * "span", "trace_id", "span_id", "parent_span_id", "start_us", "dur_us").
 * For an order id (a UUID) the tool finds the trace ids of the lines whose
 * correlation_id is the order's (an order is one trace; a retried or
 * replayed message keeps it), for a trace id (32 hex digits) it takes that
 * one; then it prints each span of the trace, nested under its parent, with
 * its service, its start offset from the first span and its duration.
 * The log files are the arguments after the id, or every .log file in var/log/
 * (make demo's) under ORDERSUITE_VAR (default ./var). Lines that are not
 * JSON are skipped.
 *
 * Exit status: 0 when spans were printed, 1 when none were found, 2 on a
 * usage or I/O error.
 */
#include "uuid.h"

#include <cJSON.h>
#include <ctype.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SPANS  4096
#define MAX_TRACES 16
#define MAX_DEPTH  24

typedef struct {
    char trace[33], id[17], parent[17];
    char service[64], name[96], error[128];
    long long start_us, dur_us;
    int depth, printed;
} span;

typedef struct {
    span *v;
    size_t n;
    char traces[MAX_TRACES][33];
    size_t ntraces;
} found;

static int is_trace_id(const char *s)
{
    if (strlen(s) != 32)
        return 0;
    for (; *s; s++) {
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
            return 0;
    }
    return 1;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void add_trace(found *f, const char *t)
{
    for (size_t i = 0; i < f->ntraces; i++) {
        if (strcmp(f->traces[i], t) == 0)
            return;
    }
    if (f->ntraces < MAX_TRACES && is_trace_id(t))
        snprintf(f->traces[f->ntraces++], sizeof(f->traces[0]), "%s", t);
}

static int wanted(const found *f, const char *t)
{
    for (size_t i = 0; i < f->ntraces; i++) {
        if (strcmp(f->traces[i], t) == 0)
            return 1;
    }
    return 0;
}

/* Reads every line of the files holding needle; pass 1 (spans = 0) collects
 * the trace ids of the order's lines, pass 2 the spans of those traces.
 * Returns 0, or -1 when a file could not be read. */
static int scan(char **files, size_t nfiles, const char *order, found *f, int spans)
{
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;

    for (size_t i = 0; i < nfiles; i++) {
        FILE *fp = fopen(files[i], "r");
        ssize_t len;
        if (!fp) {
            fprintf(stderr, "trace: cannot read %s\n", files[i]);
            rc = -1;
            continue;
        }
        while ((len = getline(&line, &cap, fp)) > 0) {
            cJSON *j;
            /* Cheap filters first: most lines are of other orders. */
            if (!spans && !strstr(line, order))
                continue;
            if (spans && !strstr(line, "\"span\":"))
                continue;
            j = cJSON_ParseWithLengthOpts(line, (size_t)len, NULL, 0);
            if (!j)
                continue;
            if (!spans && strcmp(str(j, "correlation_id"), order) == 0)
                add_trace(f, str(j, "trace_id"));
            if (spans && wanted(f, str(j, "trace_id")) && f->n < MAX_SPANS && *str(j, "span")) {
                span *s = &f->v[f->n++];
                memset(s, 0, sizeof(*s));
                snprintf(s->trace, sizeof(s->trace), "%s", str(j, "trace_id"));
                snprintf(s->id, sizeof(s->id), "%s", str(j, "span_id"));
                snprintf(s->parent, sizeof(s->parent), "%s", str(j, "parent_span_id"));
                snprintf(s->service, sizeof(s->service), "%s", str(j, "service"));
                snprintf(s->name, sizeof(s->name), "%s", str(j, "span"));
                snprintf(s->error, sizeof(s->error), "%s", str(j, "error"));
                s->start_us = strtoll(str(j, "start_us"), NULL, 10);
                s->dur_us = strtoll(str(j, "dur_us"), NULL, 10);
            }
            cJSON_Delete(j);
        }
        fclose(fp);
    }
    free(line);
    return rc;
}

static int by_start(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->start_us < y->start_us ? -1 : x->start_us > y->start_us;
}

static span *find(found *f, const char *trace, const char *id)
{
    for (size_t i = 0; *id && i < f->n; i++) {
        if (strcmp(f->v[i].id, id) == 0 && strcmp(f->v[i].trace, trace) == 0)
            return &f->v[i];
    }
    return NULL;
}

/* Prints s and, under it, its children in start order (f->v is sorted). */
static void print_tree(found *f, span *s, int depth, long long t0)
{
    s->printed = 1;
    printf("%10.1f ms %10.1f ms  %-10s %*s%s%s%s\n", (double)(s->start_us - t0) / 1000.0,
           (double)s->dur_us / 1000.0, s->service, depth * 2, "", s->name,
           s->error[0] ? "  ! " : "", s->error);
    for (size_t i = 0; i < f->n; i++) {
        span *c = &f->v[i];
        if (!c->printed && strcmp(c->parent, s->id) == 0 && strcmp(c->trace, s->trace) == 0)
            print_tree(f, c, depth < MAX_DEPTH ? depth + 1 : depth, t0);
    }
}

int main(int argc, char **argv)
{
    found f = {0};
    glob_t g = {0};
    char **files;
    size_t nfiles;
    char id[UUID_STR_LEN];
    int by_order, rc = 0;

    if (argc < 2 || (!uuid_valid(argv[1]) && !is_trace_id(argv[1]))) {
        fprintf(stderr, "usage: trace <order-id | trace-id> [LOG_FILE ...]\n"
                        "  an order id is a UUID, a trace id 32 hex digits;\n"
                        "  the logs are var/log/*.log unless files are given\n");
        return 2;
    }
    /* The logs hold ids in lowercase (uuid_v4, trace_id_hex): an id
     * pasted in uppercase names the same order or trace. */
    snprintf(id, sizeof(id), "%s", argv[1]);
    for (char *p = id; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    by_order = uuid_valid(id);
    if (argc > 2) {
        files = argv + 2;
        nfiles = (size_t)(argc - 2);
    } else {
        const char *var = getenv("ORDERSUITE_VAR");
        char pat[4096];
        snprintf(pat, sizeof(pat), "%s/log/*.log", var && *var ? var : "var");
        if (glob(pat, 0, NULL, &g) != 0) {
            fprintf(stderr, "trace: no logs at %s (make demo writes them; or name the files)\n",
                    pat);
            return 2;
        }
        files = g.gl_pathv;
        nfiles = g.gl_pathc;
    }
    f.v = calloc(MAX_SPANS, sizeof(*f.v));
    if (!f.v) {
        fprintf(stderr, "trace: out of memory\n");
        return 2;
    }
    if (by_order) {
        if (scan(files, nfiles, id, &f, 0) < 0)
            rc = 2;
    } else {
        add_trace(&f, id);
    }
    if (f.ntraces > 0 && scan(files, nfiles, id, &f, 1) < 0)
        rc = 2;
    if (f.n == 0) {
        fprintf(stderr,
                "trace: no spans of %s %s in the logs (sampled spans are logged unless "
                "TRACE_LOG_SPANS=0)\n",
                by_order ? "order" : "trace", id);
        rc = rc ? rc : 1;
        goto out;
    }
    qsort(f.v, f.n, sizeof(*f.v), by_start);
    for (size_t t = 0; t < f.ntraces; t++) {
        long long t0 = 0, end = 0;
        size_t n = 0;
        for (size_t i = 0; i < f.n; i++) {
            if (strcmp(f.v[i].trace, f.traces[t]) != 0)
                continue;
            if (n++ == 0)
                t0 = f.v[i].start_us;
            if (f.v[i].start_us + f.v[i].dur_us > end)
                end = f.v[i].start_us + f.v[i].dur_us;
        }
        if (n == 0)
            continue;
        printf("trace %s%s%s: %zu spans, %.1f ms\n", f.traces[t], by_order ? " of order " : "",
               by_order ? id : "", n, (double)(end - t0) / 1000.0);
        printf("%13s %13s  %-10s %s\n", "start", "duration", "service", "span");
        /* Roots: spans whose parent is not in the logs (the caller's). */
        for (size_t i = 0; i < f.n; i++) {
            span *s = &f.v[i];
            if (!s->printed && strcmp(s->trace, f.traces[t]) == 0 && !find(&f, s->trace, s->parent))
                print_tree(&f, s, 0, t0);
        }
    }
out:
    free(f.v);
    if (argc <= 2)
        globfree(&g);
    return rc;
}
