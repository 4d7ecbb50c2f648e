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

int inv_on_availability(worker *w, db_conn *db, const mq_rpc_request *req, char **reply,
                        size_t *reply_len, char *err, size_t errlen)
{
    av_reply r;
    const char *p[1];
    PGresult *res = NULL;
    int rc;

    (void)w;
    memset(&r, 0, sizeof(r));
    if (av_request_decode(req->body, req->len, r.sku, err, errlen) < 0)
        return -1; /* the asker checks the SKU first: this is no request of ours */
    p[0] = r.sku;
    rc = db_execp(db, "av_stock", "SELECT on_hand FROM stock WHERE sku = $1", 1, p, &res, err,
                  errlen);
    if (rc != DB_OK)
        return -1;
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
