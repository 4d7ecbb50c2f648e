/*
 * spine_worker — a worker built on common/worker.c for the spine's
 * integration tests. It consumes sale.completed into SPINE_SERVICE's queue
 * and records an effect row per message it processes, behaving by store_id:
 *   OK           record the effect
 *   TRANSIENT-N  fail transiently until the delivery's attempt count is N
 *   PERMANENT    reject: the message can never succeed
 *   EMIT         record the effect and emit a follow-up sale (store OK) via the outbox
 * The schema named by SPINE_SERVICE must have inbox, outbox and effects.
 * With SPINE_SET=1 the route has a set handler (worker_set_fn) that behaves
 * the same, with one INSERT for the set's effects and one worker_emit_all
 * for its follow-ups, so the tests run the set-based path too.
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

/* The same, for a set: each message's failure as above fails the set; the
 * effects in one INSERT, the follow-ups in one worker_emit_all. */
static mq_result on_sales(worker *w, db_conn *db, const worker_msg *m, size_t n, char *err,
                          size_t errlen)
{
    db_array col[8];
    const char *p[8];
    ev_event *next = calloc(n, sizeof(*next));
    worker_out *out = calloc(n, sizeof(*out));
    size_t nout = 0;
    mq_result r = MQ_DONE;
    int rc = DB_OK;

    for (int c = 0; c < 8; c++)
        db_array_init(&col[c]);
    if (!next || !out) {
        snprintf(err, errlen, "out of memory");
        r = MQ_RETRY;
        goto out;
    }
    for (size_t i = 0; i < n && r == MQ_DONE; i++) {
        const ev_envelope *env = m[i].env;
        const sale_completed *s = &m[i].ev->u.sale_completed;
        if (record_call(env, err, errlen) < 0) {
            r = MQ_RETRY;
        } else if (strcmp(s->store_id, "PERMANENT") == 0) {
            snprintf(err, errlen, "store PERMANENT never succeeds");
            r = MQ_REJECT;
        } else if (strncmp(s->store_id, "TRANSIENT-", 10) == 0 &&
                   env->attempt < atoi(s->store_id + 10)) {
            snprintf(err, errlen, "transient failure %d of %s", env->attempt + 1, s->store_id + 10);
            r = MQ_RETRY;
        } else {
            db_array_add(&col[0], env->message_id);
            db_array_add(&col[1], env->correlation_id);
            db_array_add(&col[2], env->causation_id[0] ? env->causation_id : NULL);
            db_array_add(&col[3], env->type);
            db_array_add(&col[4], env->app_id);
            db_array_add_i64(&col[5], (long long)env->timestamp);
            db_array_add_i64(&col[6], env->attempt);
            db_array_add(&col[7], s->sale_id);
            if (strcmp(s->store_id, "EMIT") == 0) {
                ev_init(&next[nout], EV_SALE_COMPLETED);
                next[nout].u.sale_completed = *s;
                if (uuid_v4(next[nout].u.sale_completed.sale_id) < 0)
                    r = MQ_RETRY;
                snprintf(next[nout].u.sale_completed.store_id,
                         sizeof(next[nout].u.sale_completed.store_id), "OK");
                out[nout].cause = &m[i];
                out[nout].ev = &next[nout];
                nout++;
            }
        }
    }
    for (int c = 0; c < 8 && r == MQ_DONE; c++) {
        if (!(p[c] = db_array_text(&col[c]))) {
            snprintf(err, errlen, "out of memory");
            r = MQ_RETRY;
        }
    }
    if (r == MQ_DONE)
        rc = db_exec(db,
                     "INSERT INTO effects (message_id, correlation_id, causation_id, type, app_id,"
                     " ts, attempt, sale_id) SELECT * FROM unnest($1::uuid[], $2::uuid[],"
                     " $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::int[], $8::uuid[])",
                     8, p, NULL, err, errlen);
    if (r == MQ_DONE && rc == DB_OK)
        rc = worker_emit_all(w, db, out, nout, err, errlen);
    if (rc != DB_OK)
        r = worker_db_result(rc);
out:
    for (int c = 0; c < 8; c++)
        db_array_release(&col[c]);
    free(next);
    free(out);
    return r;
}

int main(int argc, char **argv)
{
    static const worker_route one[] = {{EV_SALE_COMPLETED, on_sale, NULL}};
    static const worker_route set[] = {{EV_SALE_COMPLETED, NULL, on_sales}};
    const char *svc = getenv("SPINE_SERVICE"), *as_set = getenv("SPINE_SET");
    worker_def def = {.service = svc ? svc : "spine_test",
                      .routes = as_set && strcmp(as_set, "1") == 0 ? set : one,
                      .nroutes = 1};
    return worker_main(&def, argc, argv);
}
