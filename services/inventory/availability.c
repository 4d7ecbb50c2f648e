/*
 * availability.c — inventory's answer to inventory.availability
 * (contracts/availability.h), a request/reply question: the SKU's stock on
 * hand, read from the stock table on the answering thread's own connection
 * (worker_rpc.c), never in a work-queue batch.
 */
#include "availability.h"
#include "inventory.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int error_reply(int error, char **reply, size_t *reply_len, char *err, size_t errlen)
{
    if (av_error_encode(error, reply) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *reply_len = strlen(*reply);
    return 0;
}

int inv_on_availability(worker *w, db_conn *db, const mq_rpc_request *req, char **reply,
                        size_t *reply_len, char *err, size_t errlen)
{
    av_reply r;
    const char *p[1];
    PGresult *res = NULL;
    int rc;

    (void)w;
    memset(&r, 0, sizeof(r));
    /* A request inventory cannot answer gets an error reply, not silence:
     * the asker would wait for its deadline (contracts/availability.h). */
    if (av_request_decode(req->body, req->len, r.sku, err, errlen) < 0) {
        log_write(LOG_WARN, req->correlation_id, NULL, "availability: bad request: %s", err);
        return error_reply(AV_ERR_BAD_REQUEST, reply, reply_len, err, errlen);
    }
    p[0] = r.sku;
    rc = db_execp(db, "av_stock", "SELECT on_hand FROM stock WHERE sku = $1", 1, p, &res, err,
                  errlen);
    if (rc != DB_OK) {
        log_write(LOG_WARN, req->correlation_id, NULL, "availability of %s: %s", r.sku, err);
        return error_reply(AV_ERR_UNAVAILABLE, reply, reply_len, err, errlen);
    }
    if (PQntuples(res) == 1) {
        r.found = 1;
        r.available = strtoll(db_get(res, 0, "on_hand"), NULL, 10);
    }
    PQclear(res);
    if (av_reply_encode(&r, reply) < 0) {
        snprintf(err, errlen, "out of memory, or stock out of the contract's range");
        return -1;
    }
    *reply_len = strlen(*reply);
    return 0;
}
