/*
 * api.h — order-api's HTTP side (api.c), shared with main.c.
 */
#ifndef ORDER_API_H
#define ORDER_API_H

#include "db.h"
#include "events.h"
#include "http.h"

#include <stddef.h>

#define ORDER_SERVICE "order-api" /* queue, outbox channel, app_id */

typedef struct {
    const char *database_url;
    db_timeouts timeouts; /* for the job threads' connections */
} api_ctx;

/* The route table of the API. */
const http_route *api_routes(size_t *n);

/* Why a request body was refused: the HTTP status (400 or 422), the field
 * (JSON path, "" for the whole body) and a sentence. */
typedef struct {
    int status;
    char field[64];
    char detail[EV_ERR_LEN];
} api_problem;

/* Decodes a POST /orders body into ev (an order.placed without prices or
 * order id yet) and checks it against the contract. 0, or -1 with p filled;
 * ev_free(ev) either way. Pure: no database, for tests and the fuzzer. */
int api_decode_order(const char *body, size_t len, ev_event *ev, api_problem *p);

/* Frees a pool thread's database connection (http_opts.thread_exit). */
void api_thread_exit(void *db);

#endif
