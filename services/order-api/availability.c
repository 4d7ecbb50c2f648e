/*
 * availability.c — GET /products/{sku}/availability: how many of a SKU
 * inventory can sell now, asked of inventory over the broker (request/reply,
 * common/mq_rpc.h; the contract is contracts/availability.h) and answered
 * while the client waits, within AVAILABILITY_TIMEOUT_MS.
 *
 *   200  {"sku": ..., "available": N}
 *   404  no such SKU in inventory's stock (or not a SKU at all)
 *   503  the broker is not reachable (Retry-After: 2)
 *   503  inventory could not answer (its error reply "unavailable": e.g. its
 *        database fails; Retry-After: 2)
 *   504  inventory did not answer in time (it is down, stopped or slow)
 *   502  inventory's answer could not be read, or inventory could not read
 *        the request (its error reply "bad-request")
 * It needs the bearer token, like the order routes: a stock level is the
 * business's to tell its clients, not the public's (GET /products, the
 * catalog the tills read, stays open).
 */
#include "api.h"
#include "availability.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUFFIX "/availability"

int api_availability_sku(const char *rest, char sku[EV_SKU_MAX + 1])
{
    size_t n = strlen(rest), s = strlen(SUFFIX);
    if (n <= s || n - s > EV_SKU_MAX || strcmp(rest + n - s, SUFFIX) != 0)
        return -1;
    memcpy(sku, rest, n - s);
    sku[n - s] = '\0';
    return av_sku_valid(sku) ? 0 : -1;
}

void api_get_availability(http_req *r, void *cls, http_resp *out)
{
    const api_ctx *ctx = cls;
    char sku[EV_SKU_MAX + 1], err[MQ_ERR_LEN], *req = NULL, *rep = NULL, *doc;
    size_t rlen = 0;
    av_reply a;
    int rc;

    if (!api_client_of(r, ctx, out))
        return;
    if (api_availability_sku(http_path_rest(r), sku) < 0) {
        http_problem(out, 404, "Not Found", "no such resource: /products/{sku}/availability", NULL);
        return;
    }
    if (!ctx->rpc || av_request_encode(sku, &req) < 0) {
        http_problem(out, 503, "Service Unavailable", "request/reply is not running", NULL);
        http_add_header(out, "Retry-After", "2"); /* as every 503 of this route */
        return;
    }
    rc = mq_rpc_call(ctx->rpc, RPC_INVENTORY_AVAILABILITY, req, strlen(req),
                     (int)ctx->availability_timeout_ms, &rep, &rlen, err, sizeof(err));
    free(req);
    if (rc == MQ_RPC_TIMEOUT) {
        log_warn("availability of %s: %s", sku, err);
        http_problem(out, 504, "Gateway Timeout", "inventory did not answer in time", NULL);
        return;
    }
    if (rc != MQ_OK) {
        log_warn("availability of %s: %s", sku, err);
        http_problem(out, 503, "Service Unavailable", "the message broker is unavailable", NULL);
        http_add_header(out, "Retry-After", "2");
        return;
    }
    rc = av_reply_decode(rep, rlen, &a, err, sizeof(err));
    free(rep);
    if (rc == 0 && a.error == AV_ERR_UNAVAILABLE) {
        log_warn("availability of %s: inventory could not answer", sku);
        http_problem(out, 503, "Service Unavailable", "inventory could not answer", NULL);
        http_add_header(out, "Retry-After", "2");
        return;
    }
    if (rc == 0 && a.error == AV_ERR_BAD_REQUEST) {
        log_error("availability of %s: inventory could not read the request", sku);
        http_problem(out, 502, "Bad Gateway", "inventory could not read the request", NULL);
        return;
    }
    if (rc < 0 || strcmp(a.sku, sku) != 0) {
        log_error("availability of %s: inventory's reply: %s", sku, rc < 0 ? err : "another SKU");
        http_problem(out, 502, "Bad Gateway", "inventory's answer could not be read", NULL);
        return;
    }
    if (!a.found) {
        http_problem(out, 404, "Not Found", "no such product", NULL);
        return;
    }
    if (asprintf(&doc, "{\"sku\":\"%s\",\"available\":%lld}", a.sku, (long long)a.available) < 0) {
        http_problem(out, 503, "Service Unavailable", "out of memory", NULL);
        return;
    }
    http_json(out, 200, doc);
}
