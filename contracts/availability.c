/*
 * availability.c — the availability request and reply (availability.h):
 * strict JSON both ways, through the same reader as the events.
 */
#include "availability.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AV_DEPTH 2
#define AV_MAX   ((int64_t)1 << 53)

int av_sku_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > EV_SKU_MAX || s[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return 1;
}

/* Prints o into *out and frees o. 0, or -1. */
static int print(cJSON *o, char **out)
{
    *out = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return *out ? 0 : -1;
}

int av_request_encode(const char *sku, char **out)
{
    cJSON *o;
    *out = NULL;
    if (!av_sku_valid(sku))
        return -1;
    o = cJSON_CreateObject();
    if (o && !cJSON_AddStringToObject(o, "sku", sku)) {
        cJSON_Delete(o);
        o = NULL;
    }
    return print(o, out);
}

int av_reply_encode(const av_reply *r, char **out)
{
    cJSON *o;
    *out = NULL;
    if (!av_sku_valid(r->sku) || r->available < 0 || r->available > AV_MAX ||
        (!r->found && r->available != 0))
        return -1;
    o = cJSON_CreateObject();
    if (o && (!cJSON_AddStringToObject(o, "sku", r->sku) ||
              !cJSON_AddBoolToObject(o, "found", r->found) ||
              (r->found && !cJSON_AddNumberToObject(o, "available", (double)r->available)))) {
        cJSON_Delete(o);
        o = NULL;
    }
    return print(o, out);
}

static const char *const av_errors[] = {
    [AV_ERR_UNAVAILABLE] = "unavailable", [AV_ERR_BAD_REQUEST] = "bad-request"};

int av_error_encode(int error, char **out)
{
    cJSON *o;
    *out = NULL;
    if (error != AV_ERR_UNAVAILABLE && error != AV_ERR_BAD_REQUEST)
        return -1;
    o = cJSON_CreateObject();
    if (o && !cJSON_AddStringToObject(o, "error", av_errors[error])) {
        cJSON_Delete(o);
        o = NULL;
    }
    return print(o, out);
}

/* Parses body into an object whose every key is in allowed (NULL-ended)
 * and appears once; NULL with err otherwise. */
static cJSON *object_of(const char *body, size_t len, const char *const *allowed, char *err,
                        size_t errlen)
{
    cJSON *o = ev_json_parse(body, len, AV_DEPTH, err, errlen), *it;
    const char *dup;
    if (!o)
        return NULL;
    if (!cJSON_IsObject(o)) {
        snprintf(err, errlen, "body: not a JSON object");
        goto bad;
    }
    if ((dup = ev_json_duplicate_key(o)) != NULL) {
        snprintf(err, errlen, "%.64s: appears twice", dup);
        goto bad;
    }
    cJSON_ArrayForEach(it, o)
    {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], it->string) != 0)
            i++;
        if (!allowed[i]) {
            snprintf(err, errlen, "%.64s: unknown field", it->string);
            goto bad;
        }
    }
    return o;
bad:
    cJSON_Delete(o);
    return NULL;
}

/* The field "sku" of o into sku. 0, or -1 with err. */
static int read_sku(const cJSON *o, char sku[EV_SKU_MAX + 1], char *err, size_t errlen)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "sku");
    if (!cJSON_IsString(s) || !av_sku_valid(s->valuestring)) {
        snprintf(err, errlen, "sku: must be a SKU (A-Z, 0-9, '-'; 1 to %d characters)", EV_SKU_MAX);
        return -1;
    }
    memcpy(sku, s->valuestring, strlen(s->valuestring) + 1);
    return 0;
}

int av_request_decode(const char *body, size_t len, char sku[EV_SKU_MAX + 1], char *err,
                      size_t errlen)
{
    static const char *const allowed[] = {"sku", NULL};
    cJSON *o = object_of(body, len, allowed, err, errlen);
    int rc;
    if (!o)
        return -1;
    rc = read_sku(o, sku, err, errlen);
    cJSON_Delete(o);
    return rc;
}

int av_reply_decode(const char *body, size_t len, av_reply *r, char *err, size_t errlen)
{
    static const char *const allowed[] = {"sku", "found", "available", "error", NULL};
    cJSON *o = object_of(body, len, allowed, err, errlen);
    const cJSON *f, *a, *e;
    int rc = -1;
    memset(r, 0, sizeof(*r));
    if (!o)
        return -1;
    if ((e = cJSON_GetObjectItemCaseSensitive(o, "error")) != NULL) {
        /* An error reply: exactly {"error": one of av_errors} */
        for (int i = AV_ERR_UNAVAILABLE; i <= AV_ERR_BAD_REQUEST; i++) {
            if (cJSON_IsString(e) && strcmp(e->valuestring, av_errors[i]) == 0)
                r->error = i;
        }
        if (!r->error || cJSON_GetArraySize(o) != 1) {
            r->error = AV_OK;
            snprintf(err, errlen, "error: must be \"unavailable\" or \"bad-request\", alone");
        } else {
            rc = 0;
        }
        goto out;
    }
    if (read_sku(o, r->sku, err, errlen) < 0)
        goto out;
    f = cJSON_GetObjectItemCaseSensitive(o, "found");
    a = cJSON_GetObjectItemCaseSensitive(o, "available");
    if (!cJSON_IsBool(f)) {
        snprintf(err, errlen, "found: must be true or false");
        goto out;
    }
    r->found = cJSON_IsTrue(f);
    if (r->found && (!a || ev_json_int(a, &r->available) < 0 || r->available < 0)) {
        snprintf(err, errlen, "available: must be an integer of 0 or more");
        goto out;
    }
    if (!r->found && a) {
        snprintf(err, errlen, "available: not with found false");
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}
