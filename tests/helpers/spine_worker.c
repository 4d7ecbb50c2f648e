/*
 * spine_worker — a worker built on common/worker.c for the spine's
 * integration tests. It consumes sale.completed into SPINE_SERVICE's queue
 * and records an effect row per message it processes, behaving by store_id:
 *   OK           record the effect
 *   TRANSIENT-N  fail transiently until the delivery's attempt count is N
 *   PERMANENT    reject: the message can never succeed
 *   EMIT         record the effect and emit a follow-up sale (store OK) via the outbox
 * The schema named by SPINE_SERVICE must have inbox, outbox and effects.
 * With SPINE_CALLS_FILE set, every call of the handler appends the message id
 * to that file, outside the transaction: a test counts how often the handler
 * ran (a batch rolled back and applied again runs it twice), not only what
 * was committed.
 */
#include "worker.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Appends "message_id\n" to SPINE_CALLS_FILE (when set) in one write. */
static int record_call(const ev_envelope *env, char *err, size_t errlen)
{
    const char *path = getenv("SPINE_CALLS_FILE");
    char line[UUID_STR_LEN + 2];
    int fd, n, ok;
    if (!path || !*path)
        return 0;
    n = snprintf(line, sizeof(line), "%s\n", env->message_id);
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "open %s failed", path);
        return -1;
    }
    ok = write(fd, line, (size_t)n) == n;
    close(fd);
    if (!ok)
        snprintf(err, errlen, "write %s failed", path);
    return ok ? 0 : -1;
}

static mq_result on_sale(worker *w, db_conn *db, const ev_envelope *env, const ev_event *ev,
                         char *err, size_t errlen)
{
    const sale_completed *s = &ev->u.sale_completed;
    char attempt[16], ts[32];
    const char *p[8];
    int rc;

    if (record_call(env, err, errlen) < 0)
        return MQ_RETRY;
    if (strcmp(s->store_id, "PERMANENT") == 0) {
        snprintf(err, errlen, "store PERMANENT never succeeds");
        return MQ_REJECT;
    }
    if (strncmp(s->store_id, "TRANSIENT-", 10) == 0 && env->attempt < atoi(s->store_id + 10)) {
        snprintf(err, errlen, "transient failure %d of %s", env->attempt + 1, s->store_id + 10);
        return MQ_RETRY;
    }
    snprintf(attempt, sizeof(attempt), "%d", env->attempt);
    snprintf(ts, sizeof(ts), "%lld", (long long)env->timestamp);
    p[0] = env->message_id;
    p[1] = env->correlation_id;
    p[2] = env->causation_id[0] ? env->causation_id : NULL;
    p[3] = env->type;
    p[4] = env->app_id;
    p[5] = ts;
    p[6] = attempt;
    p[7] = s->sale_id;
    rc = db_exec(db,
                 "INSERT INTO effects (message_id, correlation_id, causation_id, type, app_id,"
                 " ts, attempt, sale_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                 8, p, NULL, err, errlen);
    if (rc != DB_OK)
        return worker_db_result(rc);
    if (strcmp(s->store_id, "EMIT") == 0) {
        /* A follow-up sale through the outbox, consumed by this worker too. */
        ev_event next;
        ev_init(&next, EV_SALE_COMPLETED);
        next.u.sale_completed = *s;
        if (uuid_v4(next.u.sale_completed.sale_id) < 0)
            return MQ_RETRY;
        snprintf(next.u.sale_completed.store_id, sizeof(next.u.sale_completed.store_id), "OK");
        rc = worker_emit(w, db, env, &next, err, errlen);
        if (rc != DB_OK)
            return worker_db_result(rc);
    }
    return MQ_DONE;
}

int main(int argc, char **argv)
{
    static const worker_route routes[] = {{EV_SALE_COMPLETED, on_sale}};
    const char *svc = getenv("SPINE_SERVICE");
    worker_def def = {.service = svc ? svc : "spine_test", .routes = routes, .nroutes = 1};
    return worker_main(&def, argc, argv);
}
