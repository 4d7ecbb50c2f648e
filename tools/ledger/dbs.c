/*
 * dbs.c — the ledger's database connections: each service's tables through
 * that service's own URL, since each service's schema may live on another
 * PostgreSQL server (make up PG2=..., docs/SCALING.md). No statement of the
 * ledger joins two services' schemas (tables.c).
 */
#include "ledger.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The connection to url, opened once for every schema that shares it. */
static PGconn *open_url(ledger_dbs *dbs, const char *var, const char *url)
{
    PGconn *c;
    for (int i = 0; i < dbs->n; i++) {
        if (strcmp(dbs->url[i], url) == 0)
            return dbs->conn[i];
    }
    if (dbs->n == LEDGER_MAX_DBS)
        return NULL; /* cannot happen: five URLs at most */
    c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        /* The variable's name, never its value: it holds a password. */
        fprintf(stderr, "ledger: %s: %s", var, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    dbs->conn[dbs->n] = c;
    dbs->url[dbs->n++] = url;
    return c;
}

/* The connection of one schema: <SCHEMA>_DATABASE_URL, else DATABASE_URL. */
static PGconn *open_schema(ledger_dbs *dbs, const char *var, const char *fallback)
{
    const char *url = getenv(var);
    if (url && *url)
        return open_url(dbs, var, url);
    if (fallback)
        return open_url(dbs, "DATABASE_URL", fallback);
    fprintf(stderr, "ledger: set %s (or DATABASE_URL)\n", var);
    return NULL;
}

int ledger_dbs_open(ledger_dbs *dbs)
{
    const char *all = getenv("DATABASE_URL");
    memset(dbs, 0, sizeof(*dbs));
    if (all && !*all)
        all = NULL;
    if (!(dbs->orders = open_schema(dbs, "ORDERS_DATABASE_URL", all)) ||
        !(dbs->inventory = open_schema(dbs, "INVENTORY_DATABASE_URL", all)) ||
        !(dbs->billing = open_schema(dbs, "BILLING_DATABASE_URL", all)) ||
        !(dbs->email = open_schema(dbs, "EMAIL_DATABASE_URL", all)) ||
        (all && !(dbs->other = open_url(dbs, "DATABASE_URL", all)))) {
        ledger_dbs_close(dbs);
        return -1;
    }
    return 0;
}

void ledger_dbs_close(ledger_dbs *dbs)
{
    for (int i = 0; i < dbs->n; i++)
        PQfinish(dbs->conn[i]);
    memset(dbs, 0, sizeof(*dbs));
}

PGconn *ledger_db_for(const ledger_dbs *dbs, const char *schema)
{
    if (strcmp(schema, "orders") == 0)
        return dbs->orders;
    if (strcmp(schema, "inventory") == 0)
        return dbs->inventory;
    if (strcmp(schema, "billing") == 0)
        return dbs->billing;
    if (strcmp(schema, "email") == 0)
        return dbs->email;
    return dbs->other;
}
