/*
 * check_spine.c — the messaging spine end to end: mq helper, worker runtime,
 * inbox, outbox relay, retry tiers and dead-lettering, against the real
 * RabbitMQ and PostgreSQL from `make up`, with the real spine_worker
 * executable (tests/helpers/spine_worker.c) as the consumer.
 *
 * It runs in the broker vhost "ordersuite-test", so its test events never
 * reach the services' queues. Each test gets a fresh schema spine_test
 * (inbox, outbox, effects) and fresh queues, starts the worker, and stops it with SIGTERM at the
 * end (which must exit 0).
 *
 * One file (over 600 lines) on purpose: every test runs on the same fixture
 * (fresh schema and queues, the spine_worker started and stopped) and reads
 * through the same 30-odd helpers of this file; split, each part repeats them.
 */
#include "events.h"
#include "mq.h"
#include "outbox.h"
#include "testutil.h"
#include "util.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SVC "spine_test"

static tu_svc worker;
static char db_url[1024];
static char calls_path[512]; /* the worker's SPINE_CALLS_FILE */

/* ------------------------------------------------------------ AMQP bits */

static amqp_connection_state_t amqp_open(void)
{
    return tu_amqp_open("SPINE_AMQP_URL");
}

static void amqp_done(amqp_connection_state_t c)
{
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

static void queue_delete(const char *q)
{
    amqp_connection_state_t c = amqp_open();
    amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
    amqp_done(c);
}

typedef struct {
    char reason[64], error[512], key[128], message_id[64], service[64];
    long attempt;
    char body[4096];
} dlq_msg;

static int hdr_str(const amqp_table_t *t, const char *k, char *out, size_t n)
{
    for (int i = 0; i < t->num_entries; i++) {
        if (t->entries[i].key.len == strlen(k) &&
            memcmp(t->entries[i].key.bytes, k, strlen(k)) == 0) {
            amqp_bytes_t b = t->entries[i].value.value.bytes;
            snprintf(out, n, "%.*s", (int)b.len, (char *)b.bytes);
            return 0;
        }
    }
    return -1;
}

static long hdr_int(const amqp_table_t *t, const char *k)
{
    for (int i = 0; i < t->num_entries; i++) {
        if (t->entries[i].key.len == strlen(k) &&
            memcmp(t->entries[i].key.bytes, k, strlen(k)) == 0)
            return (long)t->entries[i].value.value.i64;
    }
    return -1;
}

/* Takes one message from q (basic.get + ack); 0 when there was one. */
static int queue_get(const char *q, dlq_msg *out)
{
    amqp_connection_state_t c = amqp_open();
    amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(q), 1);
    amqp_message_t m;
    int rc = -1;
    ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
    memset(out, 0, sizeof(*out));
    if (r.reply.id == AMQP_BASIC_GET_OK_METHOD) {
        ck_assert_int_eq(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
        hdr_str(&m.properties.headers, MQ_H_REASON, out->reason, sizeof(out->reason));
        hdr_str(&m.properties.headers, MQ_H_ERROR, out->error, sizeof(out->error));
        hdr_str(&m.properties.headers, MQ_H_ORIGINAL_KEY, out->key, sizeof(out->key));
        hdr_str(&m.properties.headers, MQ_H_SERVICE, out->service, sizeof(out->service));
        out->attempt = hdr_int(&m.properties.headers, MQ_H_ATTEMPT);
        snprintf(out->message_id, sizeof(out->message_id), "%.*s", (int)m.properties.message_id.len,
                 (char *)m.properties.message_id.bytes);
        snprintf(out->body, sizeof(out->body), "%.*s", (int)m.body.len, (char *)m.body.bytes);
        amqp_destroy_message(&m);
        rc = 0;
    }
    amqp_done(c);
    return rc;
}

/* --------------------------------------------------------------- fixture */

static int worker_consuming(void *arg)
{
    int consumers = 0;
    (void)arg;
    return tu_queue_counts("SPINE_AMQP_URL", SVC, &consumers) >= 0 && consumers > 0;
}

/* An extra "K=V" for the next start_worker, or NULL. */
static const char *worker_extra_env;
/* The variable with the AMQP_URL of the next start_worker. */
static const char *worker_amqp_env = "SPINE_AMQP_URL";

static void start_worker(void)
{
    char path[512], db[1200], calls[600];
    const char *env[] = {db,
                         "SPINE_SERVICE=" SVC,
                         "RETRY_DELAYS_MS=200,400,800",
                         "LOG_LEVEL=debug",
                         "HEARTBEAT_S=5",
                         calls,
                         worker_extra_env,
                         NULL};
    const tu_svc_opts o = {.exe = path,
                           .amqp_env = worker_amqp_env,
                           .env = env,
                           .log = "spine_worker",
                           .ready_queue = SVC,
                           .ready_amqp_env = "SPINE_AMQP_URL",
                           .ready_ms = 20000};
    snprintf(path, sizeof(path), "%s/spine_worker", tu_env("ORDERSUITE_TEST_BIN"));
    snprintf(db, sizeof(db), "DATABASE_URL=%s", db_url);
    snprintf(calls, sizeof(calls), "SPINE_CALLS_FILE=%s", calls_path);
    tu_svc_start(&worker, &o);
}

static void stop_worker(void)
{
    tu_svc_stop_ok(&worker);
}

static void setup(void)
{
    const char *owner = tu_env("OWNER_DATABASE_URL");
    char q[160], err[MQ_ERR_LEN];
    mq_conn *admin;
    snprintf(db_url, sizeof(db_url), "%s?options=-csearch_path%%3D" SVC, owner);
    free(tu_sql(owner,
                "DROP SCHEMA IF EXISTS " SVC " CASCADE;"
                "SELECT public.ordersuite_add_service('" SVC "');"
                "SELECT public.ordersuite_add_messaging('" SVC "');"
                "CREATE TABLE " SVC ".effects (message_id uuid, correlation_id uuid,"
                " causation_id uuid, type text, app_id text, ts bigint, attempt int,"
                " sale_id uuid, at timestamptz DEFAULT clock_timestamp())",
                0, NULL));
    /* The shared exchanges, as `make migrate` declares them in "/". */
    admin = tu_publisher("SPINE_AMQP_URL", "check_spine");
    ck_assert_msg(mq_declare_exchanges(admin, err, sizeof(err)) == MQ_OK, "%s", err);
    mq_free(admin);
    snprintf(calls_path, sizeof(calls_path), "%s/log/tests/spine_calls.txt",
             tu_env("ORDERSUITE_VAR"));
    unlink(calls_path);
    queue_delete(SVC);
    queue_delete(SVC ".dlq");
    for (int ms = 200; ms <= 800; ms *= 2) {
        mq_retry_queue_name(SVC, ms, q, sizeof(q));
        queue_delete(q);
    }
    start_worker();
}

static void teardown(void)
{
    tu_svc_stop_ok(&worker);
}

/* ---------------------------------------------------------------- events */

/* A sale.completed body for store; the sale id is written to sale_id. */
static char *sale_body(const char *store, char sale_id[UUID_STR_LEN])
{
    ev_event ev;
    sale_completed *s = &ev.u.sale_completed;
    char err[EV_ERR_LEN];
    char *json;
    tu_sale(&ev, store, "TEA-SENCHA", 1, 890);
    json = ev_to_json(&ev, NULL, err, sizeof(err));
    ck_assert_msg(json != NULL, "%s", err);
    memcpy(sale_id, s->sale_id, UUID_STR_LEN);
    ev_free(&ev);
    return json;
}

/* Publishes body as sale.completed with message id mid (generated when
 * NULL) and correlation id corr. */
static int publish(mq_conn *c, const char *body, const char *mid, const char *corr,
                   int schema_version)
{
    char id[UUID_STR_LEN], err[MQ_ERR_LEN];
    mq_msg m = {0};
    int rc;
    if (!mid) {
        uuid_v4(id);
        mid = id;
    }
    m.routing_key = RK_SALE_COMPLETED;
    m.message_id = mid;
    m.correlation_id = corr;
    m.body = body;
    m.len = strlen(body);
    m.schema_version = schema_version;
    rc = mq_publish(c, &m, err, sizeof(err));
    return rc;
}

typedef struct {
    const char *sale_id;
    long want;
} effects_arg;

static long effects_for(const char *sale_id)
{
    const char *p[] = {sale_id};
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                      "SELECT count(*) FROM " SVC ".effects WHERE sale_id = $1", 1, p);
}

static int effects_reached(void *arg)
{
    effects_arg *a = arg;
    return effects_for(a->sale_id) >= a->want;
}

static long total_effects(void)
{
    return tu_sql_int(tu_env("OWNER_DATABASE_URL"), "SELECT count(*) FROM " SVC ".effects", 0,
                      NULL);
}

static int total_reached(void *arg)
{
    return total_effects() >= *(long *)arg;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* How often the worker's handler ran (SPINE_CALLS_FILE), committed or not;
 * *twice: how many messages it ran more than once. */
static long handler_calls(long *twice)
{
    FILE *f = fopen(calls_path, "r");
    char line[64], **ids = NULL;
    long n = 0;
    *twice = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        char **more = realloc(ids, (size_t)(n + 1) * sizeof(*ids));
        ck_assert_ptr_nonnull(more);
        ids = more;
        ids[n++] = strdup(line);
    }
    fclose(f);
    qsort(ids, (size_t)n, sizeof(*ids), cmp_str);
    /* Sorted: a message handled more than once is a run of equal lines. */
    for (long i = 0, run = 1; i < n; i++, run++) {
        if (i + 1 == n || strcmp(ids[i], ids[i + 1]) != 0) {
            *twice += run > 1;
            run = 0;
        }
    }
    for (long i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    return n;
}

static int dlq_has(void *arg)
{
    return tu_queue_counts("SPINE_AMQP_URL", SVC ".dlq", NULL) >= *(int *)arg;
}

/* ----------------------------------------------------------------- tests */

START_TEST(a_confirmed_publish_is_consumed_once_with_its_properties)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN], mid[UUID_STR_LEN];
    char *body = sale_body("OK", sale);
    effects_arg a = {sale, 1};
    const char *p[] = {sale};
    char *row;

    uuid_v4(mid);
    ck_assert_int_eq(publish(c, body, mid, sale, 0), MQ_OK);
    ck_assert_msg(tu_poll(10000, effects_reached, &a), "the sale was not processed");
    row = tu_sql(tu_env("OWNER_DATABASE_URL"),
                 "SELECT message_id || '|' || correlation_id || '|' || type || '|' || app_id ||"
                 " '|' || (abs(ts - extract(epoch from now())) < 60) || '|' || attempt"
                 " FROM " SVC ".effects WHERE sale_id = $1",
                 1, p);
    {
        char want[256];
        snprintf(want, sizeof(want), "%s|%s|sale.completed|check_spine|true|0", mid, sale);
        ck_assert_str_eq(row, want);
    }
    free(row);
    /* It was acked: nothing is left in the queue or the DLQ. */
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC, NULL), 0);
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC ".dlq", NULL), 0);
    ck_assert_int_eq(effects_for(sale), 1);
    free(body);
    mq_free(c);
}
END_TEST

START_TEST(a_transient_failure_is_retried_through_the_tiers_then_processed_once)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN];
    char *body = sale_body("TRANSIENT-3", sale);
    effects_arg a = {sale, 1};
    const char *p[] = {sale};
    int64_t t0 = util_now_ms(), took;

    ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
    ck_assert_msg(tu_poll(20000, effects_reached, &a), "never processed after the retries");
    took = util_now_ms() - t0;
    /* Three failures wait out 200 + 400 + 800 ms in the tiers. */
    ck_assert_msg(took >= 1400, "processed after %lld ms, before the delays", (long long)took);
    ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                "SELECT attempt FROM " SVC ".effects WHERE sale_id = $1", 1, p),
                     3);
    ck_assert_int_eq(effects_for(sale), 1);
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC ".dlq", NULL), 0);
    free(body);
    mq_free(c);
}
END_TEST

START_TEST(a_message_failing_past_the_last_tier_is_dead_lettered)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN];
    char *body = sale_body("TRANSIENT-9", sale);
    int one = 1;
    dlq_msg m;

    ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
    ck_assert_msg(tu_poll(20000, dlq_has, &one), "never reached the DLQ");
    ck_assert_int_eq(queue_get(SVC ".dlq", &m), 0);
    ck_assert_str_eq(m.reason, "retries-exhausted");
    ck_assert_int_eq(m.attempt, 4);
    ck_assert_str_eq(m.key, "sale.completed");
    ck_assert_msg(strstr(m.error, "transient failure 4 of 9"), "%s", m.error);
    ck_assert_str_eq(m.body, body);
    ck_assert_int_eq(effects_for(sale), 0);
    free(body);
    mq_free(c);
}
END_TEST

START_TEST(a_permanent_failure_goes_to_the_dlq_with_its_reason)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN], mid[UUID_STR_LEN];
    char *body = sale_body("PERMANENT", sale);
    int one = 1;
    dlq_msg m;
    int64_t t0 = util_now_ms();

    uuid_v4(mid);
    ck_assert_int_eq(publish(c, body, mid, sale, 0), MQ_OK);
    ck_assert_msg(tu_poll(10000, dlq_has, &one), "never reached the DLQ");
    ck_assert_int_lt(util_now_ms() - t0, 5000); /* no trip through the retry tiers */
    ck_assert_int_eq(queue_get(SVC ".dlq", &m), 0);
    ck_assert_str_eq(m.reason, "rejected");
    ck_assert_str_eq(m.error, "store PERMANENT never succeeds");
    ck_assert_str_eq(m.key, "sale.completed");
    ck_assert_str_eq(m.service, SVC);
    ck_assert_str_eq(m.message_id, mid);
    ck_assert_int_eq(m.attempt, 0);
    free(body);
    mq_free(c);
}
END_TEST

/* Deliveries that arrive together are applied in one transaction; one that
 * fails there must not cost the others their effect, nor give any of them a
 * second one. The worker is paused while they are published so they reach it
 * as one batch (checked: the handler ran twice for some of them). */
static void failing_message_in_a_batch(void)
{
    enum { N = 60 };
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN];
    long want = N, calls, twice;
    int one = 1;

    ck_assert_int_eq(kill(worker.pid, SIGSTOP), 0);
    for (int i = 0; i < N; i++) {
        char *body = sale_body(i == N / 2 ? "PERMANENT" : "OK", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
        if (i == N / 2) { /* and one more good one, so N good ones in all */
            body = sale_body("OK", sale);
            ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
            free(body);
        }
    }
    ck_assert_int_eq(kill(worker.pid, SIGCONT), 0);
    ck_assert_msg(tu_poll(30000, total_reached, &want), "only %ld of %d effects", total_effects(),
                  N);
    ck_assert_msg(tu_poll(10000, dlq_has, &one), "the failing one never reached the DLQ");
    ck_assert_int_eq(total_effects(), N);
    ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                "SELECT count(DISTINCT message_id) FROM " SVC ".effects", 0, NULL),
                     N);
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC ".dlq", NULL), 1);
    /* A batch really formed: the failing message shared a transaction with
     * good ones, whose handler ran there, was rolled back, and ran again on
     * its own (one BATCH_MAX=1 never shows). Each kept exactly one effect. */
    calls = handler_calls(&twice);
    ck_assert_msg(twice >= 1 && calls > N + 1,
                  "no message was handled twice (%ld calls for %d messages): the failing one"
                  " was never in a batch with others",
                  calls, N + 1);
    ck_assert_int_eq(calls, N + 1 + twice);
    mq_free(c);
}

START_TEST(a_failing_message_in_a_batch_holds_back_nothing)
{
    failing_message_in_a_batch();
}
END_TEST

/* The same through a set handler (worker_set_fn, SPINE_SET=1): the failing
 * message fails its whole set; the batch is rolled back and each message
 * handled again alone, so the set handler ran twice for some of them. */
START_TEST(a_failing_message_in_a_set_holds_back_nothing)
{
    stop_worker();
    worker_extra_env = "SPINE_SET=1";
    start_worker();
    worker_extra_env = NULL;
    failing_message_in_a_batch();
}
END_TEST

/* Copies of one message in one batch (the worker paused while they are
 * published): the batch's one inbox statement inserts the id once, and the
 * other copies are duplicates found by what it returned; one effect. Run
 * for both entry points. */
static void copies_in_one_batch(const char *extra)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN], mid[UUID_STR_LEN], sentinel[UUID_STR_LEN];
    char *body = sale_body("OK", sale);
    char *after = sale_body("OK", sentinel);
    effects_arg a = {sentinel, 1};

    if (extra) {
        stop_worker();
        worker_extra_env = extra;
        start_worker();
        worker_extra_env = NULL;
    }
    uuid_v4(mid);
    ck_assert_int_eq(kill(worker.pid, SIGSTOP), 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(publish(c, body, mid, sale, 0), MQ_OK);
    ck_assert_int_eq(publish(c, after, NULL, sentinel, 0), MQ_OK);
    ck_assert_int_eq(kill(worker.pid, SIGCONT), 0);
    ck_assert(tu_poll(10000, effects_reached, &a));
    ck_assert_int_eq(effects_for(sale), 1);
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC, NULL), 0);
    free(body);
    free(after);
    mq_free(c);
}

START_TEST(copies_of_a_message_in_one_batch_have_one_effect)
{
    copies_in_one_batch(NULL);
}
END_TEST

START_TEST(copies_of_a_message_in_one_set_have_one_effect)
{
    copies_in_one_batch("SPINE_SET=1");
}
END_TEST

/* A set handler's follow-ups go out through worker_emit_all's one outbox
 * statement, each caused by its own message. */
START_TEST(a_set_handler_emits_through_the_outbox)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[2][UUID_STR_LEN], mid[2][UUID_STR_LEN];
    char *body[2];

    stop_worker();
    worker_extra_env = "SPINE_SET=1";
    start_worker();
    worker_extra_env = NULL;
    ck_assert_int_eq(kill(worker.pid, SIGSTOP), 0);
    for (int i = 0; i < 2; i++) {
        body[i] = sale_body("EMIT", sale[i]);
        uuid_v4(mid[i]);
        ck_assert_int_eq(publish(c, body[i], mid[i], sale[i], 0), MQ_OK);
    }
    ck_assert_int_eq(kill(worker.pid, SIGCONT), 0);
    /* Each follow-up is consumed too: an effect caused by each message,
     * under its correlation id. */
    for (int i = 0; i < 2; i++) {
        const char *p[] = {mid[i], sale[i]};
        tu_await_count(10000, "SELECT count(*) FROM " SVC ".effects WHERE causation_id = $1::uuid",
                       mid[i], 1);
        ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                    "SELECT count(*) FROM " SVC ".effects WHERE causation_id ="
                                    " $1::uuid AND correlation_id = $2::uuid",
                                    2, p),
                         1);
        free(body[i]);
    }
    mq_free(c);
}
END_TEST

#define SPINE_METRICS_PORT "19191"

static double worker_metric(const char *series)
{
    return tu_metric("http://127.0.0.1:" SPINE_METRICS_PORT, series);
}

static int queue_holds(void *arg)
{
    return tu_queue_counts("SPINE_AMQP_URL", SVC, NULL) == *(long *)arg;
}

static int all_acked(void *arg)
{
    return worker_metric("ordersuite_deliveries_acked_total{") >= *(double *)arg;
}

/* How often the worker consumed again after losing its channel, not
 * counting a consumer the broker cancelled (right after a broker restart
 * in the test before, a quorum queue may cancel a new consumer once: seen
 * in a fresh-clone run). */
static long refused_reconnects(void)
{
    return tu_file_count(worker.log, "consuming from", NULL) -
           tu_file_count(worker.log, "cancelled our consumer", NULL);
}

/* A batch's successes share one multiple-ack, sent only after each failure
 * of the batch is settled on its own (its copy confirmed, then acked): a
 * multiple-ack that covered a failure would ack it without its copy (lost)
 * or ack it twice (the broker closes the channel; the worker reconnects). */
START_TEST(a_batch_is_acked_with_one_multiple_ack_after_its_failures_are_settled)
{
    enum { N = 60 };
    mq_conn *c;
    char sale[UUID_STR_LEN];
    long want = N, reconnects, twice;
    int one = 1;
    double all = N + 1, frames;
    dlq_msg m;

    stop_worker();
    worker_extra_env = "METRICS_PORT=" SPINE_METRICS_PORT;
    start_worker();
    worker_extra_env = NULL;
    reconnects = refused_reconnects();
    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    ck_assert_int_eq(kill(worker.pid, SIGSTOP), 0);
    for (int i = 0; i <= N; i++) {
        char *body = sale_body(i == N / 2 ? "PERMANENT" : "OK", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
    }
    ck_assert_int_eq(kill(worker.pid, SIGCONT), 0);
    ck_assert_msg(tu_poll(30000, total_reached, &want), "only %ld of %d effects", total_effects(),
                  N);
    ck_assert_msg(tu_poll(10000, dlq_has, &one), "the failing one never reached the DLQ");
    ck_assert_msg(tu_poll(10000, all_acked, &all), "%.0f of %.0f deliveries acked",
                  worker_metric("ordersuite_deliveries_acked_total{"), all);
    ck_assert_int_eq(total_effects(), N);
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC, NULL), 0);
    ck_assert_int_eq(queue_get(SVC ".dlq", &m), 0);
    ck_assert_str_eq(m.reason, "rejected");
    /* They came as a batch (the failing one ran in it, then alone) and the
     * batch's successes were acked together, never twice. */
    handler_calls(&twice);
    ck_assert_msg(twice >= 1, "the failing message was never in a batch with others");
    frames = worker_metric("ordersuite_ack_frames_total{");
    ck_assert_msg(frames >= 2 && frames * 4 <= all,
                  "%.0f basic.ack frames for %.0f deliveries: no multiple-ack", frames, all);
    ck_assert_msg(refused_reconnects() == reconnects,
                  "the worker reconnected: the broker refused an ack");
    mq_free(c);
}
END_TEST

/* A worker that dies after its batch's COMMIT, before the batch's ack, gets
 * every delivery of the batch again, and the inbox gives none of them a
 * second effect. */
START_TEST(a_crash_after_a_batch_commit_redelivers_the_batch_without_second_effects)
{
    enum { N = 40 };
    mq_conn *c;
    char sale[UUID_STR_LEN];
    long want = N, none = 0, committed;
    int status;

    stop_worker();
    worker_extra_env = "CRASH_AFTER_COMMIT=true";
    start_worker();
    worker_extra_env = NULL;
    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    ck_assert_int_eq(kill(worker.pid, SIGSTOP), 0);
    for (int i = 0; i < N; i++) {
        char *body = sale_body("OK", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
    }
    ck_assert_int_eq(kill(worker.pid, SIGCONT), 0);
    status = tu_svc_wait(&worker, 30000);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 3, "wait status %d", status);
    committed = total_effects();
    ck_assert_msg(committed > 1, "%ld effects: no batch was committed before the crash", committed);
    /* Nothing of it was acked: the broker has every message again. */
    ck_assert_msg(tu_poll(10000, queue_holds, &want), "%ld of %d back in the queue",
                  tu_queue_counts("SPINE_AMQP_URL", SVC, NULL), N);
    start_worker();
    ck_assert_msg(tu_poll(30000, total_reached, &want), "only %ld of %d effects", total_effects(),
                  N);
    ck_assert_msg(tu_poll(10000, queue_holds, &none), "%ld left in the queue",
                  tu_queue_counts("SPINE_AMQP_URL", SVC, NULL));
    ck_assert_int_eq(total_effects(), N);
    ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                "SELECT count(DISTINCT message_id) FROM " SVC ".effects", 0, NULL),
                     N);
    mq_free(c);
}
END_TEST

START_TEST(undecodable_bodies_and_unknown_schema_versions_are_dead_lettered_at_once)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN], corr[UUID_STR_LEN];
    char *body = sale_body("OK", sale);
    int two = 2;
    dlq_msg m1, m2;
    effects_arg a = {sale, 1};

    uuid_v4(corr);
    ck_assert_int_eq(publish(c, "{\"sale_id\": oops", NULL, corr, 0), MQ_OK);
    ck_assert_int_eq(publish(c, body, NULL, sale, 99), MQ_OK);
    ck_assert_msg(tu_poll(10000, dlq_has, &two), "did not reach the DLQ");
    ck_assert_int_eq(queue_get(SVC ".dlq", &m1), 0);
    ck_assert_int_eq(queue_get(SVC ".dlq", &m2), 0);
    ck_assert_msg(strncmp(m1.error, "undecodable: body: malformed JSON", 33) == 0, "%s", m1.error);
    ck_assert_msg(strstr(m2.error, "schema_version 99 is not supported"), "%s", m2.error);
    /* The worker is still running and processing. */
    ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
    ck_assert(tu_poll(10000, effects_reached, &a));
    free(body);
    mq_free(c);
}
END_TEST

START_TEST(a_message_delivered_twice_has_one_effect)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN], mid[UUID_STR_LEN], sentinel[UUID_STR_LEN];
    char *body = sale_body("OK", sale);
    char *after = sale_body("OK", sentinel);
    effects_arg a = {sentinel, 1};

    uuid_v4(mid);
    ck_assert_int_eq(publish(c, body, mid, sale, 0), MQ_OK);
    ck_assert_int_eq(publish(c, body, mid, sale, 0), MQ_OK);
    ck_assert_int_eq(publish(c, body, mid, sale, 0), MQ_OK);
    /* One consumer takes them in order: once the sentinel is done, so are
     * the three copies before it. */
    ck_assert_int_eq(publish(c, after, NULL, sentinel, 0), MQ_OK);
    ck_assert(tu_poll(10000, effects_reached, &a));
    ck_assert_int_eq(effects_for(sale), 1);
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", SVC, NULL), 0);
    free(body);
    free(after);
    mq_free(c);
}
END_TEST

START_TEST(an_unroutable_publish_is_reported)
{
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char err[MQ_ERR_LEN], id[UUID_STR_LEN];
    mq_msg m = {0};
    uuid_v4(id);
    m.routing_key = "nobody.listens";
    m.message_id = id;
    m.body = "{}";
    m.len = 2;
    ck_assert_int_eq(mq_publish(c, &m, err, sizeof(err)), MQ_ERR_RETURNED);
    ck_assert_msg(strstr(err, "unroutable"), "%s", err);
    /* The connection is still good for the next one. */
    m.routing_key = "nobody.either";
    ck_assert_int_eq(mq_publish(c, &m, err, sizeof(err)), MQ_ERR_RETURNED);
    mq_free(c);
}
END_TEST

/* Outbox rows written while the broker is down are all published when it is
 * back, and each has exactly one effect. */
START_TEST(outbox_rows_written_while_the_broker_is_down_are_published_after)
{
    enum { N = 40 };
    db_conn *db = db_new(db_url, "check_spine");
    char err[DB_ERR_LEN];
    long want = N;

    ck_assert_msg(db_connect_retry(db, 10000, NULL, err, sizeof(err)) == DB_OK, "%s", err);
    tu_broker("stop_app");
    ck_assert_int_eq(db_begin(db, err, sizeof(err)), DB_OK);
    for (int i = 0; i < N; i++) {
        char sale[UUID_STR_LEN];
        char *body = sale_body("OK", sale);
        ev_event ev;
        ck_assert_int_eq(
            ev_from_json(EV_SALE_COMPLETED, body, strlen(body), &ev, NULL, err, sizeof(err)), 0);
        ck_assert_msg(outbox_add(db, SVC, &ev, sale, NULL, NULL, err, sizeof(err)) == DB_OK, "%s",
                      err);
        ev_free(&ev);
        free(body);
    }
    ck_assert_int_eq(db_commit(db, err, sizeof(err)), DB_OK);
    tu_broker("start_app");
    ck_assert_msg(tu_poll(60000, total_reached, &want), "only %ld of %d effects", total_effects(),
                  N);
    ck_assert_int_eq(total_effects(), N);
    ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                "SELECT count(DISTINCT sale_id) FROM " SVC ".effects", 0, NULL),
                     N);
    ck_assert_int_eq(
        tu_sql_int(tu_env("OWNER_DATABASE_URL"), "SELECT count(*) FROM " SVC ".outbox", 0, NULL),
        0);
    db_free(db);
}
END_TEST

/* The broker goes away under a running consumer: it reconnects on its own
 * and nothing is lost or applied twice; events its handler emitted through
 * the outbox get out too. */
START_TEST(the_consumer_survives_a_broker_restart)
{
    enum { N = 30 };
    mq_conn *c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    char sale[UUID_STR_LEN];
    long want = 2 * N;
    char err[MQ_ERR_LEN];

    for (int i = 0; i < N / 2; i++) {
        char *body = sale_body("EMIT", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
    }
    tu_broker("stop_app");
    tu_broker("start_app");
    ck_assert_msg(tu_poll(60000, worker_consuming, NULL), "the worker did not come back");
    ck_assert_msg(mq_connect_retry(c, 0, 20000, NULL, err, sizeof(err)) == MQ_OK, "%s", err);
    for (int i = N / 2; i < N; i++) {
        char *body = sale_body("EMIT", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
    }
    /* Each EMIT sale has its effect and a follow-up sale caused by it. */
    ck_assert_msg(tu_poll(60000, total_reached, &want), "only %ld of %ld effects", total_effects(),
                  want);
    ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                "SELECT count(DISTINCT sale_id) FROM " SVC ".effects", 0, NULL),
                     2 * N);
    ck_assert_int_eq(tu_sql_int(tu_env("OWNER_DATABASE_URL"),
                                "SELECT count(*) FROM " SVC ".effects e JOIN " SVC ".effects f"
                                " ON f.causation_id = e.message_id",
                                0, NULL),
                     N);
    ck_assert_int_eq(total_effects(), 2 * N);
    mq_free(c);
}
END_TEST

/* AMQP_URL as a list of endpoints, the first of which nothing answers on
 * (port 1 on loopback: refused at once): the worker connects to the second,
 * and after the broker went away it tries the list again, round after round
 * with its backoff, and consumes again when a node is back. */
START_TEST(a_list_of_endpoints_is_tried_in_turn_at_start_and_after_a_loss)
{
    const char *real = tu_env("SPINE_AMQP_URL");
    const char *at = strrchr(real, '@');
    const char *colon = strchr(at ? at : real, ':');
    const char *slash = strchr(colon ? colon : real, '/');
    char list[2600], sale[UUID_STR_LEN], err[MQ_ERR_LEN];
    mq_conn *c;
    long want = 2, connected0, connected1, none0;
    int k;

    ck_assert_msg(at && colon && slash, "SPINE_AMQP_URL has no @host:port/: %s", real);
    /* The same URL with the port changed to 1, then the real one. */
    k = snprintf(list, sizeof(list), "%.*s:1%s,%s", (int)(colon - real), real, slash, real);
    ck_assert_int_lt(k, (int)sizeof(list));
    ck_assert_int_eq(setenv("SPINE_LIST_URL", list, 1), 0);
    tu_svc_stop_ok(&worker);
    /* The log is appended to by every run: count what this one adds. */
    connected0 = tu_file_count(worker.log, "connected to endpoint 2 of 2", NULL);
    none0 = tu_file_count(worker.log, "none of the 2 endpoints answered", NULL);
    worker_amqp_env = "SPINE_LIST_URL";
    start_worker();
    worker_amqp_env = "SPINE_AMQP_URL";
    /* Each of its connections (consumer, outbox relay...) says so. */
    connected1 = tu_file_count(worker.log, "connected to endpoint 2 of 2", NULL);
    ck_assert_int_gt(connected1, connected0);

    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    {
        char *body = sale_body("OK", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
    }
    tu_broker("stop_app");
    tu_broker("start_app");
    ck_assert_msg(tu_poll(60000, worker_consuming, NULL), "the worker did not come back");
    ck_assert_msg(mq_connect_retry(c, 0, 20000, NULL, err, sizeof(err)) == MQ_OK, "%s", err);
    {
        char *body = sale_body("OK", sale);
        ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
        free(body);
    }
    ck_assert_msg(tu_poll(60000, total_reached, &want), "only %ld of %ld effects", total_effects(),
                  want);
    /* It went round the list: endpoint 1 refused, then endpoint 2 again. */
    ck_assert_int_gt(tu_file_count(worker.log, "none of the 2 endpoints answered", NULL), none0);
    ck_assert_int_gt(tu_file_count(worker.log, "connected to endpoint 2 of 2", NULL), connected1);
    mq_free(c);
}
END_TEST

/* The worker's queue deleted under it: the broker cancels the consumer
 * (basic.cancel, sent only to a client that logged in with the
 * consumer_cancel_notify capability); the worker declares its queues again,
 * consumes, and the next event is handled. */
START_TEST(a_deleted_queue_is_declared_again_and_consumed)
{
    mq_conn *c;
    char sale[UUID_STR_LEN];
    char *body = sale_body("OK", sale);
    effects_arg a = {sale, 1};

    queue_delete(SVC);
    ck_assert_msg(tu_poll(15000, worker_consuming, NULL),
                  "the worker did not declare its queue again and consume");
    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
    ck_assert_msg(tu_poll(10000, effects_reached, &a),
                  "the event after the deletion was not handled");
    free(body);
    mq_free(c);
}
END_TEST

/* Sets SVC's delivery limit the way `make migrate` does. */
static void set_delivery_limit(int limit)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd %s && bash -c 'source scripts/lib.sh && load_env && source scripts/broker-perms.sh"
             " && broker_policy ordersuite-test " SVC " %d' >/dev/null 2>&1",
             tu_env("ORDERSUITE_ROOT"), limit);
    ck_assert_msg(system(cmd) == 0, "broker_policy failed");
}

/* With no consumer, takes the next message of SVC and hands it back
 * (requeue) until it leaves the queue; returns how many times it was
 * delivered. */
static int deliveries_until_gone(void)
{
    amqp_connection_state_t c = amqp_open();
    int n = 0;
    for (; n < 100; n++) {
        amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(SVC), 0);
        amqp_message_t m;
        ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
            break;
        ck_assert_int_eq(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
        amqp_destroy_message(&m);
        ck_assert_int_eq(
            amqp_basic_reject(c, 1, ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag, 1), 0);
    }
    amqp_done(c);
    return n;
}

/* With no consumer, takes the next message of SVC and hands it back
 * (requeue) n times: the broker counts each (x-delivery-count). */
static void hand_back(int n)
{
    amqp_connection_state_t c = amqp_open();
    for (int i = 0; i < n; i++) {
        amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(SVC), 0);
        amqp_message_t m;
        ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        ck_assert_msg(r.reply.id == AMQP_BASIC_GET_OK_METHOD, "the message left after %d", i);
        ck_assert_int_eq(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
        amqp_destroy_message(&m);
        ck_assert_int_eq(
            amqp_basic_reject(c, 1, ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag, 1), 0);
    }
    amqp_done(c);
}

/* One sale, published with no worker running and handed back `returns`
 * times; then the worker starts with DELIVERY_LIMIT=limit. Returns whether
 * it handled the sale (1) or dead-lettered it unhandled (0). */
static int handled_after_returns(int returns, const char *limit_env)
{
    mq_conn *c;
    char sale[UUID_STR_LEN];
    char *body = sale_body("OK", sale);
    effects_arg a = {sale, 1};
    int dlq_before = (int)tu_queue_counts("SPINE_AMQP_URL", SVC ".dlq", NULL), want;
    int handled;

    stop_worker();
    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
    mq_free(c);
    hand_back(returns);
    worker_extra_env = limit_env;
    start_worker(); /* fails the test if it does not start and consume */
    worker_extra_env = NULL;
    want = dlq_before + 1;
    ck_assert_msg(tu_poll(10000, effects_reached, &a) || tu_poll(10000, dlq_has, &want),
                  "handed back %d times, then neither handled nor dead-lettered (%s)", returns,
                  limit_env);
    handled = effects_for(sale) > 0;
    free(body);
    return handled;
}

/* DELIVERY_LIMIT is the worker's own setting (and `make migrate`'s policy,
 * the broker's backstop; none is set for SVC): a worker restarted with
 * another value starts on the queue it had, and the new limit is in force:
 * a message the broker handed out that many times goes to the DLQ
 * unhandled, one handed out fewer times is handled. */
START_TEST(a_changed_delivery_limit_does_not_stop_the_worker_and_is_in_force)
{
    ck_assert_msg(!handled_after_returns(3, "DELIVERY_LIMIT=3"),
                  "handled after 3 deliveries with DELIVERY_LIMIT=3");
    ck_assert_msg(handled_after_returns(2, "DELIVERY_LIMIT=3"),
                  "not handled after 2 deliveries with DELIVERY_LIMIT=3");
    /* Restarted with another limit: the same 3 deliveries are now fine... */
    ck_assert_msg(handled_after_returns(3, "DELIVERY_LIMIT=5"),
                  "not handled after 3 deliveries with DELIVERY_LIMIT=5");
    /* ...and the service's own variable wins over DELIVERY_LIMIT. */
    ck_assert_msg(!handled_after_returns(2, "SPINE_TEST_DELIVERY_LIMIT=2"),
                  "handled after 2 deliveries with SPINE_TEST_DELIVERY_LIMIT=2");
}
END_TEST

/* SVC's work queue as an older version declared it: its delivery limit an
 * x-delivery-limit argument, bound for sale.completed. */
static void declare_old_work_queue(int limit)
{
    amqp_connection_state_t c = amqp_open();
    amqp_table_entry_t e[6];
    amqp_table_t t = {6, e};
    const char *k[] = {"x-queue-type", "x-dead-letter-exchange", "x-dead-letter-routing-key",
                       "x-dead-letter-strategy", "x-overflow"};
    const char *v[] = {"quorum", MQ_DLX, SVC, "at-least-once", "reject-publish"};
    for (int i = 0; i < 5; i++) {
        e[i].key = amqp_cstring_bytes(k[i]);
        e[i].value.kind = AMQP_FIELD_KIND_UTF8;
        e[i].value.value.bytes = amqp_cstring_bytes(v[i]);
    }
    e[5].key = amqp_cstring_bytes("x-delivery-limit");
    e[5].value.kind = AMQP_FIELD_KIND_I64;
    e[5].value.value.i64 = limit;
    amqp_queue_delete(c, 1, amqp_cstring_bytes(SVC), 0, 0);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_queue_declare(c, 1, amqp_cstring_bytes(SVC), 0, 1, 0, 0, t);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_queue_bind(c, 1, amqp_cstring_bytes(SVC), amqp_cstring_bytes(MQ_EXCHANGE),
                    amqp_cstring_bytes(RK_SALE_COMPLETED), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_done(c);
}

/* `make migrate` for SVC: the worker's --declare-topology, as the
 * administrator; returns its exit status. */
static int declare_topology(void)
{
    char path[512], *argv[] = {"spine_worker", "--declare-topology", NULL};
    static const char *const env[] = {"SPINE_SERVICE=" SVC, "RETRY_DELAYS_MS=200,400,800", NULL};
    const tu_svc_opts o = {
        .exe = path, .amqp_env = "SPINE_AMQP_URL", .env = env, .argv = argv, .log = "spine_worker"};
    snprintf(path, sizeof(path), "%s/spine_worker", tu_env("ORDERSUITE_TEST_BIN"));
    return tu_tool(&o, NULL);
}

/* A queue an older version declared with x-delivery-limit: RabbitMQ applies
 * the lower of that argument and the policy, so a DELIVERY_LIMIT above it
 * would never be in force. `make migrate` declares it anew when it is empty
 * and unused, and the configured limit holds; one that holds messages is an
 * error for `make migrate` (the migration step: let it drain), and a worker
 * still starts on it and handles them. */
START_TEST(a_queue_with_an_older_x_delivery_limit_takes_the_configured_limit)
{
    mq_conn *c;
    char sale[UUID_STR_LEN], sale2[UUID_STR_LEN];
    char *body = sale_body("OK", sale), *body2 = sale_body("OK", sale2);
    effects_arg a = {sale2, 1};
    int n, migrated;

    stop_worker();
    declare_old_work_queue(2);
    set_delivery_limit(4);
    migrated = declare_topology();
    worker_extra_env = "DELIVERY_LIMIT=4";
    start_worker();
    stop_worker();
    worker_extra_env = NULL;
    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    ck_assert_int_eq(publish(c, body, NULL, sale, 0), MQ_OK);
    n = deliveries_until_gone();
    set_delivery_limit(20);
    ck_assert_int_eq(migrated, 0);
    ck_assert_msg(n >= 4 && n <= 5,
                  "delivered %d times with DELIVERY_LIMIT 4 over an old x-delivery-limit of 2", n);
    /* Holding a message: make migrate refuses (and says why), a worker
     * starts on the queue as it is and handles it. */
    declare_old_work_queue(2);
    ck_assert_int_eq(publish(c, body2, NULL, sale2, 0), MQ_OK);
    mq_free(c);
    ck_assert_msg(declare_topology() != 0, "make migrate declared a queue holding a message anew");
    start_worker();
    ck_assert_msg(tu_poll(10000, effects_reached, &a),
                  "the message in the old queue was not handled");
    free(body);
    free(body2);
}
END_TEST

/* A key the worker no longer handles is unbound by `make migrate` (its
 * --declare-topology, as the administrator). Not by the worker when it
 * starts: its own broker user may bind or unbind on sales.events only the
 * keys it handles (scripts/broker-perms.sh), and unbinding one it does not
 * would close its channel with 403 (check_privileges runs the services as
 * their own users). */
START_TEST(a_route_no_longer_handled_is_unbound)
{
    amqp_connection_state_t a = amqp_open();
    mq_conn *c;
    char err[MQ_ERR_LEN], id[UUID_STR_LEN];
    mq_msg m = {0};

    /* As if an older version had consumed order.placed. */
    amqp_queue_bind(a, 1, amqp_cstring_bytes(SVC), amqp_cstring_bytes(MQ_EXCHANGE),
                    amqp_cstring_bytes(RK_ORDER_PLACED), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(a).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_done(a);
    stop_worker();
    ck_assert_int_eq(declare_topology(), 0);
    start_worker();
    /* Nothing else in this vhost is bound to order.placed. */
    c = tu_publisher("SPINE_AMQP_URL", "check_spine");
    uuid_v4(id);
    m.routing_key = RK_ORDER_PLACED;
    m.message_id = id;
    m.body = "{}";
    m.len = 2;
    ck_assert_msg(mq_publish(c, &m, err, sizeof(err)) == MQ_ERR_RETURNED,
                  "order.placed still reaches " SVC " (%s)", err);
    mq_free(c);
}
END_TEST

/* ------------------------------------------------- outbox refusals (#11) */

/* Inserts an outbox row of SVC under key; returns nothing, the key finds it. */
static void outbox_insert(const char *key)
{
    const char *p[] = {key};
    free(tu_sql(tu_env("OWNER_DATABASE_URL"),
                "INSERT INTO " SVC ".outbox (message_id, routing_key, correlation_id, body)"
                " VALUES (gen_random_uuid(), $1, gen_random_uuid(), '{}')",
                1, p));
}

/* One column of the row under key, as text ("" when there is no row). */
static char *outbox_col(const char *key, const char *expr)
{
    char sql[512];
    const char *p[] = {key};
    snprintf(sql, sizeof(sql), "SELECT (%s)::text FROM " SVC ".outbox WHERE routing_key = $1",
             expr);
    return tu_sql(tu_env("OWNER_DATABASE_URL"), sql, 1, p);
}

static long outbox_long(const char *key, const char *expr)
{
    char *s = outbox_col(key, expr);
    long v = s && *s ? strtol(s, NULL, 10) : -1;
    free(s);
    return v;
}

/* Wakes the relay (it LISTENs on SVC_outbox), as a commit elsewhere would. */
static void wake_relay(void)
{
    free(tu_sql(tu_env("OWNER_DATABASE_URL"), "SELECT pg_notify('" SVC "_outbox', '')", 0, NULL));
}

typedef struct {
    const char *key;
    long attempts;
} refusals_arg;

/* The row has been refused `attempts` times, or is parked; wakes the relay
 * each time it asks, so the refusals come as fast as under load. */
static int refused_or_parked(void *arg)
{
    refusals_arg *a = arg;
    wake_relay();
    return outbox_long(a->key, "attempts") >= a->attempts ||
           outbox_long(a->key, "(parked_at IS NOT NULL)::int") == 1;
}

static int parked(void *arg)
{
    return outbox_long((const char *)arg, "(parked_at IS NOT NULL)::int") == 1;
}

/* A routing gap (a queue being declared again) returns every publish of an
 * event for a moment. Under load the relay meets the row many times a
 * second: counting returns alone parked it within the gap. It is parked only
 * after OUTBOX_PARK_AFTER returns (5) AND OUTBOX_PARK_MIN_AGE_S since the
 * first. */
START_TEST(an_unroutable_row_is_parked_only_after_its_returns_and_its_minimum_age)
{
    char key[64], u[UUID_STR_LEN], *err;
    refusals_arg ra = {key, 6};
    long attempts, is_parked, age_ms;
    int listed = 0;

    stop_worker();
    worker_extra_env = "OUTBOX_PARK_MIN_AGE_S=3";
    start_worker();
    worker_extra_env = NULL;
    uuid_v4(u);
    snprintf(key, sizeof(key), "sale.unbound_%.8s", u);
    outbox_insert(key);
    /* More returns than OUTBOX_PARK_AFTER, well within the minimum age. */
    ck_assert_msg(tu_poll(2500, refused_or_parked, &ra), "the relay did not meet the row 6 times");
    attempts = outbox_long(key, "attempts");
    is_parked = outbox_long(key, "(parked_at IS NOT NULL)::int");
    age_ms = outbox_long(key, "(extract(epoch FROM clock_timestamp() - created_at) * 1000)::int");
    ck_assert_msg(!is_parked, "parked after %ld returns, %ld ms after it was written (minimum 3 s)",
                  attempts, age_ms);
    ck_assert_int_ge(attempts, 6);
    /* Then, the minimum age past, it is parked with the broker's reply. */
    ck_assert_msg(tu_poll(10000, parked, key), "not parked 10 s after the minimum age");
    ck_assert_int_ge(
        outbox_long(key, "(extract(epoch FROM parked_at - refused_since) * 1000)::int"), 3000);
    err = outbox_col(key, "last_error");
    /* The broker's reply code and text, not a text of ours. */
    ck_assert_msg(strcmp(err, "basic.return 312 NO_ROUTE") == 0, "last_error: %s", err);
    free(err);
    /* dlq outbox list shows it with that reason. */
    {
        char *argv[] = {"dlq", "outbox", "list", SVC, NULL}, *out, *save = NULL;
        const char *reason = "reason=basic.return 312 NO_ROUTE";
        const tu_svc_opts o = {.exe = "dlq", .db_env = "OWNER_DATABASE_URL", .argv = argv};
        ck_assert_int_eq(tu_tool(&o, &out), 0);
        for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
            listed |= strstr(l, key) && strlen(l) >= strlen(reason) &&
                      strcmp(l + strlen(l) - strlen(reason), reason) == 0;
        free(out);
    }
    ck_assert_msg(listed, "dlq outbox list does not show %s with the broker's reply", key);
}
END_TEST

/* Declares queue q bound to key on sales.events, with max_len (< 0: no
 * limit) and overflow reject-publish: the broker nacks a publish past it. */
static void declare_limited(const char *q, const char *key, int max_len)
{
    amqp_connection_state_t c = amqp_open();
    amqp_table_entry_t e[2];
    amqp_table_t t = {0, e};
    e[0].key = amqp_cstring_bytes("x-overflow");
    e[0].value.kind = AMQP_FIELD_KIND_UTF8;
    e[0].value.value.bytes = amqp_cstring_bytes("reject-publish");
    e[1].key = amqp_cstring_bytes("x-max-length");
    e[1].value.kind = AMQP_FIELD_KIND_I64;
    e[1].value.value.i64 = max_len;
    t.num_entries = max_len >= 0 ? 2 : 0;
    amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 0, 0, 0, 0, t);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_queue_bind(c, 1, amqp_cstring_bytes(q), amqp_cstring_bytes(MQ_EXCHANGE),
                    amqp_cstring_bytes(key), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_done(c);
}

static int nack_queue_has_one(void *arg)
{
    (void)arg;
    return tu_queue_counts("SPINE_AMQP_URL", "spine_nack_test", NULL) == 1;
}

/* The relay deletes the row after the broker's confirm, which may come a
 * moment after the message is seen in the queue. */
static int outbox_row_gone(void *arg)
{
    return outbox_long((const char *)arg, "count(*)") == 0;
}

/* A nack is the broker refusing for now (a full queue, reject-publish): the
 * relay backs off and tries again; the row is never parked for it, however
 * often it comes, and goes out once the queue takes it. */
START_TEST(a_nacked_row_is_retried_with_backoff_and_never_parked)
{
    char key[64], u[UUID_STR_LEN], *err;
    int64_t end;
    long attempts, is_parked;

    stop_worker();
    worker_extra_env = "OUTBOX_PARK_MIN_AGE_S=0"; /* counted nacks would park at once */
    start_worker();
    worker_extra_env = NULL;
    uuid_v4(u);
    snprintf(key, sizeof(key), "sale.full_%.8s", u);
    declare_limited("spine_nack_test", key, 0);
    outbox_insert(key);
    /* 4 s of wake-ups: counted, the nacks would park it many times over. */
    for (end = util_now_ms() + 4000; util_now_ms() < end;) {
        wake_relay();
        util_sleep_ms(100, NULL);
    }
    attempts = outbox_long(key, "attempts");
    is_parked = outbox_long(key, "(parked_at IS NOT NULL)::int");
    err = outbox_col(key, "coalesce(last_error, '')");
    if (is_parked)
        queue_delete("spine_nack_test");
    ck_assert_msg(!is_parked, "a nacked row was parked (attempts %ld, %s)", attempts, err);
    ck_assert_msg(attempts == 0, "nacks counted as refusals: attempts %ld (%s)", attempts, err);
    /* And the broker really refused it: a relay that never published would
     * pass the two checks above. */
    ck_assert_msg(strstr(err, "basic.nack") != NULL, "no nack was seen: last_error '%s'", err);
    free(err);
    /* The queue takes messages again: it goes out, once. */
    declare_limited("spine_nack_test", key, -1);
    ck_assert_msg(tu_poll(15000, nack_queue_has_one, NULL), "the nacked row never went out");
    ck_assert_msg(tu_poll(5000, outbox_row_gone, key),
                  "the row is still in the outbox 5 s after it went out (count %ld)",
                  outbox_long(key, "count(*)"));
    ck_assert_int_eq(tu_queue_counts("SPINE_AMQP_URL", "spine_nack_test", NULL), 1);
    queue_delete("spine_nack_test");
}
END_TEST

/* mq_event_type, the one rule for a delivery's event type (pure: no
 * broker). Each forged shape is one the broker lets through (see
 * check_privileges for the doors themselves). */
static int type_of(const mq_route *r, char *out)
{
    char why[MQ_ERR_LEN];
    return mq_event_type(r, "order-api", "order-api", out, 128, why, sizeof(why));
}

START_TEST(the_event_type_comes_only_from_what_the_publisher_could_not_forge)
{
    char t[128];
    mq_route r;
    /* sales.events: the routing key; with x-death, a queue dead-lettered it there */
    r = (mq_route){.exchange = MQ_EXCHANGE,
                   .routing_key = RK_INVENTORY_RELEASED,
                   .original_key = RK_ORDER_PLACED};
    ck_assert_int_eq(type_of(&r, t), 0);
    ck_assert_str_eq(t, RK_INVENTORY_RELEASED);
    r.has_death = 1;
    ck_assert_int_eq(type_of(&r, t), -1);
    /* our retry or the administrator's replay, under our key: the header */
    r = (mq_route){.exchange = MQ_RETRY_EXCHANGE,
                   .routing_key = "order-api",
                   .original_key = RK_INVENTORY_RELEASED};
    ck_assert_int_eq(type_of(&r, t), 0);
    ck_assert_str_eq(t, RK_INVENTORY_RELEASED);
    r.original_key = NULL;
    ck_assert_int_eq(type_of(&r, t), -1);
    /* CC/BCC or an exchange binding: another key through sales.retry / sales.dlx */
    r = (mq_route){.exchange = MQ_RETRY_EXCHANGE,
                   .routing_key = "email",
                   .original_key = RK_INVENTORY_RELEASED};
    ck_assert_int_eq(type_of(&r, t), -1);
    r.exchange = MQ_DLX;
    ck_assert_int_eq(type_of(&r, t), -1);
    r.routing_key = RK_BILLING_INVOICED;
    ck_assert_int_eq(type_of(&r, t), -1);
    /* back from our retry tier: x-death, our user-id */
    r = (mq_route){.exchange = MQ_RETRY_EXCHANGE,
                   .routing_key = "order-api",
                   .original_key = RK_INVENTORY_RELEASED,
                   .user_id = "order-api",
                   .has_death = 1,
                   .death_queue = "order-api.retry.1000ms",
                   .death_exchange = MQ_RETRY_EXCHANGE,
                   .death_key = "order-api.retry.1000ms"};
    ck_assert_int_eq(type_of(&r, t), 0);
    ck_assert_str_eq(t, RK_INVENTORY_RELEASED);
    /* the same shape without our user-id: BCC into the tier, or another's
     * queue dead-lettering under our key */
    r.user_id = "email";
    ck_assert_int_eq(type_of(&r, t), -1);
    r.user_id = NULL;
    ck_assert_int_eq(type_of(&r, t), -1);
    /* dead-lettered by the broker from our work queue (delivery limit) after
     * it arrived on sales.events: x-death's key, never the publisher's header */
    r = (mq_route){.exchange = MQ_DLX,
                   .routing_key = "order-api",
                   .original_key = RK_INVENTORY_RELEASED,
                   .user_id = "billing",
                   .has_death = 1,
                   .death_queue = "order-api",
                   .death_exchange = MQ_EXCHANGE,
                   .death_key = RK_BILLING_INVOICED};
    ck_assert_int_eq(type_of(&r, t), 0);
    ck_assert_str_eq(t, RK_BILLING_INVOICED);
    /* ... but another's queue (its name is its own) gets no such trust */
    r.death_queue = "email.retry.7ms";
    ck_assert_int_eq(type_of(&r, t), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("spine");
    TCase *t = tcase_create("worker");

    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, a_confirmed_publish_is_consumed_once_with_its_properties);
    tcase_add_test(t, a_transient_failure_is_retried_through_the_tiers_then_processed_once);
    tcase_add_test(t, a_message_failing_past_the_last_tier_is_dead_lettered);
    tcase_add_test(t, a_permanent_failure_goes_to_the_dlq_with_its_reason);
    tcase_add_test(t, undecodable_bodies_and_unknown_schema_versions_are_dead_lettered_at_once);
    tcase_add_test(t, a_failing_message_in_a_batch_holds_back_nothing);
    tcase_add_test(t, a_batch_is_acked_with_one_multiple_ack_after_its_failures_are_settled);
    tcase_add_test(t, a_crash_after_a_batch_commit_redelivers_the_batch_without_second_effects);
    tcase_add_test(t, a_failing_message_in_a_set_holds_back_nothing);
    tcase_add_test(t, copies_of_a_message_in_one_batch_have_one_effect);
    tcase_add_test(t, copies_of_a_message_in_one_set_have_one_effect);
    tcase_add_test(t, a_set_handler_emits_through_the_outbox);
    tcase_add_test(t, a_message_delivered_twice_has_one_effect);
    tcase_add_test(t, an_unroutable_publish_is_reported);
    tcase_add_test(t, outbox_rows_written_while_the_broker_is_down_are_published_after);
    tcase_add_test(t, the_consumer_survives_a_broker_restart);
    tcase_add_test(t, a_list_of_endpoints_is_tried_in_turn_at_start_and_after_a_loss);
    tcase_add_test(t, a_deleted_queue_is_declared_again_and_consumed);
    tcase_add_test(t, a_changed_delivery_limit_does_not_stop_the_worker_and_is_in_force);
    tcase_add_test(t, a_queue_with_an_older_x_delivery_limit_takes_the_configured_limit);
    tcase_add_test(t, a_route_no_longer_handled_is_unbound);
    tcase_add_test(t, an_unroutable_row_is_parked_only_after_its_returns_and_its_minimum_age);
    tcase_add_test(t, a_nacked_row_is_retried_with_backoff_and_never_parked);
    suite_add_tcase(s, t);
    t = tcase_create("event type");
    tcase_add_test(t, the_event_type_comes_only_from_what_the_publisher_could_not_forge);
    suite_add_tcase(s, t);
    return tu_run(s);
}
