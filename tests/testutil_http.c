/*
 * testutil_http.c — see testutil.h: HTTP requests with libcurl and
 * Prometheus samples.
 */
#include "testutil.h"
#include "util.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double tu_metric_sample(const char *page, const char *series)
{
    const char *p = page;
    while ((p = strstr(p, series)) != NULL) {
        if (p == page || p[-1] == '\n') {
            const char *eol = strchr(p, '\n'), *sp = NULL;
            for (const char *q = p; *q && q != eol; q++)
                sp = *q == ' ' ? q : sp;
            return sp ? strtod(sp + 1, NULL) : -1;
        }
        p++;
    }
    return -1;
}

double tu_metric(const char *base, const char *series)
{
    char url[256], *page = NULL;
    double v = -1;
    snprintf(url, sizeof(url), "%s/metrics", base);
    if (tu_http("GET", url, NULL, NULL, 0, &page) == 200)
        v = tu_metric_sample(page, series);
    free(page);
    return v;
}

long tu_http(const char *method, const char *url, const char *const *headers, const char *body,
             size_t len, char **body_out)
{
    return tu_http_h(method, url, headers, body, len, body_out, NULL);
}

long tu_http_h(const char *method, const char *url, const char *const *headers, const char *body,
               size_t len, char **body_out, char **headers_out)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    util_buf b = {NULL, 0, TU_HTTP_MAX}, hb = {NULL, 0, TU_HTTP_MAX};
    long code = 0;

    ck_assert_ptr_nonnull(c);
    for (const char *const *x = headers; x && *x; x++)
        h = curl_slist_append(h, *x);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, util_buf_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, util_buf_collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (body_out)
        *body_out = b.p ? b.p : strdup("");
    else
        free(b.p);
    if (headers_out)
        *headers_out = hb.p ? hb.p : strdup("");
    else
        free(hb.p);
    return code;
}
