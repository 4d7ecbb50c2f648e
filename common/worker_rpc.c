/*
 * worker_rpc.c — request/reply in the worker runtime (see worker.h's
 * rpc_client and rpc_routes, and mq_rpc.h): the asking client of a service
 * that asks, and the thread that answers the requests of a service that
 * answers, with its own broker connections, prefetch and database
 * connection, apart from the consume loop of the work queue.
 */
#include "worker_int.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hands a request to the route of its key (mq_rpc_fn). */
static int answer(const mq_rpc_request *req, char **reply, size_t *reply_len, void *ctx, char *err,
                  size_t errlen)
{
    worker *w = ctx;
    for (size_t i = 0; i < w->def->n_rpc_routes; i++) {
        if (strcmp(w->def->rpc_routes[i].key, req->routing_key) == 0)
            return w->def->rpc_routes[i].fn(w, w->rpc_db, req, reply, reply_len, err, errlen);
    }
    snprintf(err, errlen, "no route for %s", req->routing_key);
    return -1;
}

static void *serve_thread(void *arg)
{
    worker *w = arg;
    char q[MQ_NAME_LEN], err[MQ_ERR_LEN + DB_ERR_LEN];
    mq_rpc_server_opts o = {.url = w->rpc_amqp_url,
                            .app_id = w->def->service,
                            .queue = q,
                            .prefetch = (int)w->rpc_prefetch,
                            .heartbeat_s = w->heartbeat_s,
                            .metrics = w->metrics,
                            .serving = &w->rpc_serving};

    mq_rpc_queue_name(w->def->service, q, sizeof(q)); /* fits: worker_main checked it */
    if (db_connect_retry(w->rpc_db, -1, &w->rpc_stop, err, sizeof(err)) == DB_ERR) {
        log_error("requests: DATABASE_URL: %s; not answering requests", err);
        return NULL;
    }
    if (mq_rpc_serve(&o, answer, w, &w->rpc_stop, err, sizeof(err)) < 0)
        log_error("requests: %s; not answering requests", err);
    return NULL;
}

int worker__rpc_start(worker *w, const char *amqp_url, const char *db_url, const db_timeouts *t,
                      char *err, size_t errlen)
{
    const worker_def *def = w->def;
    if (def->rpc_client) {
        mq_opts o = {.url = amqp_url,
                     .app_id = def->service,
                     .heartbeat_s = w->heartbeat_s,
                     .metrics = w->metrics};
        if (!(w->rpc_client = mq_rpc_client_start(&o, err, errlen)))
            return -1;
        *def->rpc_client = w->rpc_client;
    }
    if (def->n_rpc_routes == 0)
        return 0;
    if (!(w->rpc_amqp_url = strdup(amqp_url)) || !(w->rpc_db = db_new(db_url, def->service))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    db_set_timeouts(w->rpc_db, t);
    w->rpc_stop = 0;
    if (pthread_create(&w->rpc_thread, NULL, serve_thread, w) != 0) {
        snprintf(err, errlen, "cannot start the thread that answers requests");
        return -1;
    }
    w->rpc_running = 1;
    return 0;
}

void worker__rpc_stop(worker *w)
{
    if (w->rpc_running) {
        w->rpc_stop = 1;
        pthread_join(w->rpc_thread, NULL);
        w->rpc_running = 0;
    }
    db_free(w->rpc_db);
    w->rpc_db = NULL;
    free(w->rpc_amqp_url);
    w->rpc_amqp_url = NULL;
    if (w->def->rpc_client)
        *w->def->rpc_client = NULL;
    mq_rpc_client_stop(w->rpc_client);
    w->rpc_client = NULL;
}
