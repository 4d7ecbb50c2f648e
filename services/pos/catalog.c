/*
 * catalog.c — the till's products (order-api's GET /products, or
 * CATALOG_FILE) and the random sales it rings up from them.
 */
#include "catalog.h"

#include "util.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

int catalog_load(catalog *cat, const char *url, const char *file, char *err, size_t errlen)
{
    /* A catalog larger than CATALOG_BYTES_MAX is not one. */
    util_buf g = {NULL, 0, CATALOG_BYTES_MAX};
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
            if (util_buf_collect(chunk, 1, k, &g) != k) {
                /* Refused whole: what fits under the cap may parse. */
                snprintf(err, errlen, "CATALOG_FILE: %s: larger than %d bytes", file,
                         CATALOG_BYTES_MAX);
                break;
            }
        }
        if (k == 0 && ferror(f))
            snprintf(err, errlen, "CATALOG_FILE: %s: read failed", file);
        if (k > 0 || ferror(f)) {
            fclose(f);
            free(g.p);
            return -1;
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
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, util_buf_collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        cc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(c);
        if (cc != CURLE_OK || code != 200) {
            snprintf(err, errlen, "CATALOG_URL %s: %s (is order-api running? or set CATALOG_FILE)",
                     url, cc != CURLE_OK ? curl_easy_strerror(cc) : "not 200");
            free(g.p);
            return -1;
        }
    }
    root = g.p ? ev_json_parse(g.p, g.len, 3, err, errlen) : NULL;
    if (!root) {
        if (!g.p)
            snprintf(err, errlen, "the catalog is empty");
        free(g.p);
        return -1;
    }
    cat->n = 0;
    cJSON_ArrayForEach(it, root)
    {
        const cJSON *sku = cJSON_GetObjectItemCaseSensitive(it, "sku");
        const cJSON *cur = cJSON_GetObjectItemCaseSensitive(it, "currency");
        int64_t price;
        if (cat->n == CATALOG_MAX || !cJSON_IsString(sku) || !cJSON_IsString(cur) ||
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
    free(g.p);
    return rc;
}

/* ----------------------------------------------------------------- sales */

static uint32_t rnd(uint32_t n)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = (uint32_t)util_now_ms();
    return n ? r % n : 0;
}

char *catalog_sale(const catalog *cat, const char *store, const char *email, char *summary,
                   size_t sumlen, char *err, size_t errlen)
{
    ev_event ev;
    sale_completed *s = &ev.u.sale_completed;
    size_t lines = 1 + rnd(3), n = 0;
    char *body;

    ev_init(&ev, EV_SALE_COMPLETED);
    if (strlen(store) > EV_ID_MAX || (email && strlen(email) > EV_EMAIL_MAX)) {
        snprintf(err, errlen, "store longer than %d or email longer than %d", EV_ID_MAX,
                 EV_EMAIL_MAX);
        return NULL;
    }
    if (uuid_v4(s->sale_id) < 0 || ev_lines_alloc(&s->lines, lines) < 0) {
        snprintf(err, errlen, "out of memory or randomness");
        ev_free(&ev);
        return NULL;
    }
    snprintf(s->store_id, sizeof(s->store_id), "%s", store);
    snprintf(s->customer_email, sizeof(s->customer_email), "%s", email ? email : "");
    for (size_t i = 0; i < lines; i++) {
        const product *p = &cat->items[rnd((uint32_t)cat->n)];
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
    /* The summary is for the cashier's screen: cut short when sumlen is. */
    (void)snprintf(summary, sumlen, "sale %.8s at %s: %zu line(s), %lld.%02lld %s", s->sale_id,
                   store, n, (long long)(s->total / 100), (long long)(s->total % 100), s->currency);
    body = ev_to_json(&ev, NULL, err, errlen);
    ev_free(&ev);
    return body;
}
