/*
 * idempotency.c — Idempotency-Key: a client that sends the same key with the
 * same body gets the same order back (200, Idempotent-Replayed), with another
 * body a 409; keys are per client. The database keeps the key and the
 * SHA-256 of the body with the order; the unique (client, key) lets one of
 * two racing requests win, and the loser answers as its replay (routes.c).
 */
#include "api.h"

#include <stdio.h>
#include <string.h>

int api_idem_key_valid(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > API_IDEM_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < 0x21 || k[i] > 0x7e)
            return 0;
    }
    return 1;
}

int api_idem_find(db_conn *db, const char *client, const char *key, const char *body,
                  char id[UUID_STR_LEN], int *same, int *dbrc, char *err, size_t errlen)
{
    const char *p[] = {key, body, client};
    PGresult *res;
    int found;
    *dbrc = db_execp(db, "api_idem",
                     "SELECT id, coalesce(request_hash = encode(sha256(convert_to($2, 'UTF8')),"
                     " 'hex'), false) AS same FROM orders"
                     " WHERE client_id = $3 AND idempotency_key = $1",
                     3, p, &res, err, errlen);
    if (*dbrc != DB_OK)
        return -1;
    found = PQntuples(res) == 1;
    if (found) {
        /* An order with no request hash (NULL) is never "the same body":
         * the coalesce says false, and a NULL is checked all the same. */
        const char *s = db_get(res, 0, "same");
        snprintf(id, UUID_STR_LEN, "%s", db_get(res, 0, "id"));
        *same = s && strcmp(s, "t") == 0;
    }
    PQclear(res);
    return found;
}

api_idem_decision api_idem_decide(int found, int same)
{
    if (!found)
        return API_IDEM_NEW;
    return same ? API_IDEM_REPLAY : API_IDEM_CONFLICT;
}
