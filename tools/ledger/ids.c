/*
 * ids.c — the ledger's input from loadgen: "O <key> <order id>" and
 * "S <sale id>" lines into PostgreSQL array literals of ids.
 */
#include "ledger.h"

#include "uuid.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int append_id(char **buf, size_t *len, size_t *cap, const char *id)
{
    if (*len + UUID_STR_LEN + 3 > *cap) {
        size_t nc = *cap * 2 + UUID_STR_LEN + 4096;
        char *p = realloc(*buf, nc);
        if (!p)
            return -1;
        *buf = p;
        *cap = nc;
    }
    *len += (size_t)snprintf(*buf + *len, *cap - *len, "%s%s", *len > 1 ? "," : "", id);
    return 0;
}

/* Ends the array literal of len characters with "}". */
static int close_array(char **buf, size_t len)
{
    char *p = realloc(*buf, len + 2);
    if (!p)
        return -1;
    p[len] = '}';
    p[len + 1] = '\0';
    *buf = p;
    return 0;
}

int ledger_read_ids(const char *path, sent *s)
{
    FILE *f = fopen(path, "r");
    char line[256], key[128], id[64];
    size_t ol = 1, oc = 0, sl = 1, sc = 0;
    int lineno = 0;

    if (!f) {
        fprintf(stderr, "ledger: %s: %s\n", path, strerror(errno));
        return -1;
    }
    s->order_ids = strdup("{");
    s->sale_ids = strdup("{");
    oc = sc = 2; /* what strdup allocated */
    while (s->order_ids && s->sale_ids && fgets(line, sizeof(line), f)) {
        lineno++;
        if (sscanf(line, "O %127s %63s", key, id) == 2 && uuid_valid(id)) {
            if (append_id(&s->order_ids, &ol, &oc, id) < 0)
                break;
            s->orders++;
        } else if (sscanf(line, "S %63s", id) == 1 && uuid_valid(id)) {
            if (append_id(&s->sale_ids, &sl, &sc, id) < 0)
                break;
            s->sales++;
        } else {
            fprintf(stderr, "ledger: %s:%d: not \"O KEY ID\" or \"S ID\"\n", path, lineno);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    if (!s->order_ids || !s->sale_ids || close_array(&s->order_ids, ol) < 0 ||
        close_array(&s->sale_ids, sl) < 0) {
        fprintf(stderr, "ledger: out of memory\n");
        return -1;
    }
    return 0;
}

/* The orders of the run with the count of each effect. */
