/*
 * api.h — order-api's HTTP side (api.c), shared with main.c.
 */
#ifndef ORDER_API_H
#define ORDER_API_H

#include "http.h"

#include <stddef.h>

#define ORDER_SERVICE "order-api" /* queue, outbox channel, app_id */

typedef struct {
    const char *database_url;
} api_ctx;

/* The route table of the API. */
const http_route *api_routes(size_t *n);

/* Frees a pool thread's database connection (http_opts.thread_exit). */
void api_thread_exit(void *db);

#endif
