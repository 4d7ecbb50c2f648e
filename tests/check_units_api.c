/*
 * check_units_api.c — order-api's decisions without servers: decoding a
 * POST /orders body (the edges the contract suite does not reach: the
 * request's own shape), pricing up to the contract's maxima and past them,
 * Idempotency-Key, bearer tokens, problem+json building (common/http.c),
 * and the price cache's logic (pricing.c, without its listener thread).
 * (Over 600 lines: order-api's pure logic in the one binary that links its
 * objects; a second would link them all again.)
 */
#include "api.h"
#include "testutil.h"

#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ decoding */

#define ORDER(items)                                                                               \
    "{\"customer_id\":\"c-1\",\"customer_email\":\"a@example.com\",\"currency\":\"EUR\","          \
    "\"items\":" items "}"

typedef struct {
    const char *body;
    int status; /* 0 = accepted */
    const char *field;
} decode_case;

static const decode_case decode_cases[] = {
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":2}]"), 0, ""},
    {"[]", 400, ""},
    {"{\"customer_id\":\"c\",\"customer_id\":\"d\"}", 400, "customer_id"},
    {"{", 400, ""},
    {"{\"customer_id\":\"\xff\"}", 400, ""},
    {"{\"a\":[[[[[[1]]]]]]}", 400, ""},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]") "x", 400, ""},
    {"{\"customer_id\":\"c-1\",\"customer_email\":\"a@example.com\",\"currency\":\"EUR\","
     "\"total_minor\":1,\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}",
     422, "total_minor"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":1,\"unit_price_minor\":1}]"), 422,
     "items[0].unit_price_minor"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":1,\"sku\":\"X\"}]"), 400, "items[0].sku"},
    {ORDER("[]"), 422, "items"},
    {ORDER("{}"), 422, "items"},
    {ORDER("[1]"), 422, "items[0]"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":\"1\"}]"), 422, "items[0].quantity"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":1.5}]"), 422, "items[0].quantity"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":0}]"), 422, "items[0].quantity"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":10000}]"), 0, ""},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":10001}]"), 422, "items[0].quantity"},
    {ORDER("[{\"sku\":\"MUG-WHITE\",\"quantity\":1e300}]"), 422, "items[0].quantity"},
    {ORDER("[{\"sku\":\"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456\",\"quantity\":1}]"), 422,
     "items[0].sku"},
    {ORDER("[{\"sku\":7,\"quantity\":1}]"), 422, "items[0].sku"},
    {ORDER("[{\"quantity\":1}]"), 422, "items[0].sku"},
    {"{\"customer_id\":\"c-1\",\"currency\":\"EUR\",\"items\":[]}", 422, "customer_email"},
    {"{\"customer_id\":7,\"customer_email\":\"a@example.com\",\"currency\":\"EUR\","
     "\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}",
     422, "customer_id"},
    {"{\"customer_id\":\"c-1\",\"customer_email\":\"a@example.com\",\"currency\":null,"
     "\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":1}]}",
     422, "currency"},
};

START_TEST(a_request_body_is_decoded_or_refused_naming_the_field)
{
    const decode_case *c = &decode_cases[_i];
    ev_event ev;
    api_problem p;
    int rc = api_decode_order(c->body, strlen(c->body), &ev, &p);
    if (c->status == 0) {
        ck_assert_msg(rc == 0, "case %d refused: %d %s (%s)", _i, p.status, p.field, p.detail);
    } else {
        ck_assert_msg(rc == -1, "case %d accepted", _i);
        ck_assert_msg(p.status == c->status, "case %d: status %d, want %d (%s)", _i, p.status,
                      c->status, p.detail);
        ck_assert_msg(strcmp(p.field, c->field) == 0, "case %d: field '%s', want '%s' (%s)", _i,
                      p.field, c->field, p.detail);
        ck_assert_msg(p.detail[0] != '\0', "case %d: no detail", _i);
    }
    ev_free(&ev);
}
END_TEST

/* n lines "SKU-<i>" of quantity q, as a request body (malloc'd). */
static char *order_of(int n, long q)
{
    size_t cap = 256 + (size_t)n * 64, len;
    char *b = malloc(cap);
    ck_assert_ptr_nonnull(b);
    len = (size_t)snprintf(b, cap,
                           "{\"customer_id\":\"c-1\",\"customer_email\":\"a@example.com\","
                           "\"currency\":\"EUR\",\"items\":[");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(b + len, cap - len, "%s{\"sku\":\"SKU-%03d\",\"quantity\":%ld}",
                                i ? "," : "", i, q);
    snprintf(b + len, cap - len, "]}");
    return b;
}

START_TEST(the_line_count_limit_is_the_contracts)
{
    ev_event ev;
    api_problem p;
    char *at = order_of(EV_LINES_MAX, 1), *over = order_of(EV_LINES_MAX + 1, 1);
    ck_assert_int_eq(api_decode_order(at, strlen(at), &ev, &p), 0);
    ck_assert_uint_eq(ev.u.order_placed.lines.n, EV_LINES_MAX);
    ev_free(&ev);
    ck_assert_int_eq(api_decode_order(over, strlen(over), &ev, &p), -1);
    ck_assert_int_eq(p.status, 422);
    ck_assert_str_eq(p.field, "items");
    ev_free(&ev);
    free(at);
    free(over);
}
END_TEST

START_TEST(only_application_json_is_a_json_content_type)
{
    ck_assert(api_json_content_type("application/json"));
    ck_assert(api_json_content_type("application/json; charset=utf-8"));
    ck_assert(api_json_content_type("Application/JSON"));
    ck_assert(!api_json_content_type("application/jsonx"));
    ck_assert(!api_json_content_type("text/plain"));
    ck_assert(!api_json_content_type(""));
    ck_assert(!api_json_content_type(NULL));
}
END_TEST

/* ------------------------------------------------------------- pricing */

/* An order of n lines "SKU-<i>" of quantity q, decoded, in ev. */
static void decoded(ev_event *ev, int n, long q)
{
    api_problem p;
    char *b = order_of(n, q);
    ck_assert_msg(api_decode_order(b, strlen(b), ev, &p) == 0, "%s", p.detail);
    free(b);
}

/* A catalog of n products "SKU-<i>" at price, in EUR. */
static api_price *catalog_of(int n, int64_t price)
{
    static char skus[EV_LINES_MAX + 1][16];
    api_price *c = calloc((size_t)n, sizeof(*c));
    ck_assert_ptr_nonnull(c);
    for (int i = 0; i < n; i++) {
        snprintf(skus[i], sizeof(skus[i]), "SKU-%03d", i);
        c[i] = (api_price){skus[i], price, "EUR"};
    }
    return c;
}

START_TEST(an_order_at_every_maximum_of_the_contract_is_priced_exactly)
{
    ev_event ev;
    api_problem p = {0};
    api_price *cat = catalog_of(EV_LINES_MAX, EV_PRICE_MAX);
    decoded(&ev, EV_LINES_MAX, EV_QTY_MAX);
    ck_assert_int_eq(api_price_lines(&ev.u.order_placed, cat, EV_LINES_MAX, &p), 0);
    ck_assert_int_eq(ev.u.order_placed.total, EV_TOTAL_MAX);
    ck_assert_int_eq(ev.u.order_placed.lines.items[99].unit_price, EV_PRICE_MAX);
    ck_assert_int_eq(api_validate(&ev, &p), 0);
    ev_free(&ev);
    free(cat);
}
END_TEST

/* The text of field k of the JSON object o ("" when not a string). */
static const char *str_of(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* An order at every maximum reaches the batch write exactly: integers as
 * text (never through a double), every line, the key and the SHA-256 of the
 * body as api_idem_find computes it in SQL; without a key, neither. */
START_TEST(an_order_at_every_maximum_travels_to_the_write_exactly)
{
    ev_event ev;
    api_problem p = {0};
    api_price *cat = catalog_of(EV_LINES_MAX, EV_PRICE_MAX);
    char err[256], want[24];
    cJSON *row, *lines;

    decoded(&ev, EV_LINES_MAX, EV_QTY_MAX);
    ck_assert_int_eq(uuid_v4(ev.u.order_placed.order_id), 0);
    ck_assert_int_eq(api_price_lines(&ev.u.order_placed, cat, EV_LINES_MAX, &p), 0);
    row = api_store_row(&ev, 1, "client-1", "key-1", "{}", err, sizeof(err));
    ck_assert_msg(row != NULL, "%s", err);
    ck_assert_str_eq(str_of(row, "id"), ev.u.order_placed.order_id);
    snprintf(want, sizeof(want), "%lld", (long long)EV_TOTAL_MAX);
    ck_assert_str_eq(str_of(row, "total_minor"), want);
    ck_assert_str_eq(str_of(row, "client_id"), "client-1");
    ck_assert_str_eq(str_of(row, "idempotency_key"), "key-1");
    ck_assert_str_eq(str_of(row, "request_hash"),
                     "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    ck_assert_str_eq(str_of(row, "routing_key"), "order.placed");
    ck_assert_ptr_nonnull(strstr(str_of(row, "event"), ev.u.order_placed.order_id));
    lines = cJSON_GetObjectItemCaseSensitive(row, "lines");
    ck_assert_int_eq(cJSON_GetArraySize(lines), EV_LINES_MAX);
    snprintf(want, sizeof(want), "%lld", (long long)EV_PRICE_MAX);
    ck_assert_str_eq(str_of(cJSON_GetArrayItem(lines, 99), "unit_price_minor"), want);
    snprintf(want, sizeof(want), "%ld", (long)EV_QTY_MAX);
    ck_assert_str_eq(str_of(cJSON_GetArrayItem(lines, 99), "quantity"), want);
    cJSON_Delete(row);

    row = api_store_row(&ev, 2, "client-1", NULL, "{}", err, sizeof(err));
    ck_assert_msg(row != NULL, "%s", err);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(row, "idempotency_key")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(row, "request_hash")));
    cJSON_Delete(row);
    ev_free(&ev);
    free(cat);
}
END_TEST

typedef struct {
    int64_t price;
    int64_t quantity; /* set after decoding: past the contract when it must be */
    int lines;
} price_case;

/* A catalog price past the contract, or a product that would overflow
 * int64, is the server's data: a 500, never a wrapped total. */
static const price_case bad_prices[] = {
    {EV_PRICE_MAX + 1, 1, 1}, {-1, 1, 1},
    {INT64_MAX, 1, 1},        {INT64_MIN, 1, 1},
    {3, INT64_MAX / 2, 1},    {EV_PRICE_MAX, INT64_MAX / EV_PRICE_MAX, 2},
};

START_TEST(a_price_past_the_contract_or_an_overflow_is_a_server_error)
{
    const price_case *c = &bad_prices[_i];
    ev_event ev;
    api_problem p = {0};
    api_price *cat = catalog_of(c->lines, c->price);
    decoded(&ev, c->lines, 1);
    for (int i = 0; i < c->lines; i++)
        ev.u.order_placed.lines.items[i].quantity = c->quantity;
    ck_assert_int_eq(api_price_lines(&ev.u.order_placed, cat, (size_t)c->lines, &p), -1);
    ck_assert_int_eq(p.status, 500);
    ck_assert_ptr_nonnull(strstr(p.detail, "out of range"));
    ev_free(&ev);
    free(cat);
}
END_TEST

START_TEST(an_unknown_sku_or_another_currency_is_the_clients_error)
{
    ev_event ev;
    api_problem p = {0};
    api_price *cat = catalog_of(2, 100);
    decoded(&ev, 3, 1);
    ck_assert_int_eq(api_price_lines(&ev.u.order_placed, cat, 2, &p), -1);
    ck_assert_int_eq(p.status, 422);
    ck_assert_str_eq(p.field, "items[2].sku");
    ck_assert_ptr_nonnull(strstr(p.detail, "SKU-002"));
    ev_free(&ev);
    decoded(&ev, 2, 1);
    cat[1].currency = "NPR";
    ck_assert_int_eq(api_price_lines(&ev.u.order_placed, cat, 2, &p), -1);
    ck_assert_int_eq(p.status, 422);
    ck_assert_str_eq(p.field, "currency");
    ck_assert_str_eq(p.detail, "the catalog sells in NPR");
    ev_free(&ev);
    free(cat);
}
END_TEST

/* --------------------------------------------------------- idempotency */

START_TEST(an_idempotency_key_is_1_to_200_printable_ascii_characters)
{
    char k[API_IDEM_KEY_MAX + 2];
    memset(k, 'k', sizeof(k));
    k[API_IDEM_KEY_MAX] = '\0';
    ck_assert(api_idem_key_valid(k));
    k[API_IDEM_KEY_MAX] = 'k';
    k[API_IDEM_KEY_MAX + 1] = '\0';
    ck_assert(!api_idem_key_valid(k));
    ck_assert(!api_idem_key_valid(""));
    ck_assert(api_idem_key_valid("!~"));
    ck_assert(!api_idem_key_valid("a b"));
    ck_assert(!api_idem_key_valid("a\x7f"));
    ck_assert(!api_idem_key_valid("caf\xc3\xa9"));
    ck_assert(!api_idem_key_valid("a\tb"));
}
END_TEST

START_TEST(an_earlier_order_with_the_key_is_replayed_or_a_conflict)
{
    ck_assert_int_eq(api_idem_decide(0, 0), API_IDEM_NEW);
    ck_assert_int_eq(api_idem_decide(0, 1), API_IDEM_NEW);
    ck_assert_int_eq(api_idem_decide(1, 1), API_IDEM_REPLAY);
    ck_assert_int_eq(api_idem_decide(1, 0), API_IDEM_CONFLICT);
}
END_TEST

/* -------------------------------------------------------------- tokens */

START_TEST(api_tokens_are_parsed_and_a_bearer_token_finds_its_client)
{
    char buf[512], err[256];
    api_ctx ctx = {0};
    snprintf(buf, sizeof(buf), "# clients\n\n  %s\r\nother %064d\n",
             TU_API_TOKENS + strlen("API_TOKENS="), 0);
    ck_assert_msg(api_tokens_parse(buf, &ctx.tokens, &ctx.ntokens, err, sizeof(err)) == 0, "%s",
                  err);
    ck_assert_uint_eq(ctx.ntokens, 2);
    ck_assert_str_eq(ctx.tokens[0].client, "tests");
    ck_assert_str_eq(ctx.tokens[1].client, "other");
    ck_assert_str_eq(api_authenticate(&ctx, "Bearer " TU_API_TOKEN), "tests");
    ck_assert_str_eq(api_authenticate(&ctx, "bearer  " TU_API_TOKEN), "tests");
    ck_assert_ptr_null(api_authenticate(&ctx, "Bearer " TU_API_TOKEN "x"));
    ck_assert_ptr_null(api_authenticate(&ctx, "Bearer " TU_API_TOKEN " "));
    ck_assert_ptr_null(api_authenticate(&ctx, "Basic " TU_API_TOKEN));
    ck_assert_ptr_null(api_authenticate(&ctx, "Bearer "));
    ck_assert_ptr_null(api_authenticate(&ctx, NULL));
    free(ctx.tokens);
}
END_TEST

START_TEST(a_malformed_api_tokens_line_is_named)
{
    char err[256];
    api_token *t = NULL;
    size_t n = 0;
    ck_assert_int_eq(
        api_tokens_parse("ok 0000000000000000000000000000000000000000000000000000000000000000\n"
                         "bad line\n",
                         &t, &n, err, sizeof(err)),
        -1);
    ck_assert_ptr_nonnull(strstr(err, "line 2"));
    ck_assert_ptr_null(t);
    ck_assert_int_eq(api_tokens_parse("# only a comment\n", &t, &n, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "no tokens"));
    ck_assert_int_eq(
        api_tokens_parse("a/b 0000000000000000000000000000000000000000000000000000000000000000\n",
                         &t, &n, err, sizeof(err)),
        -1);
}
END_TEST

/* ------------------------------------------------------- problem+json */

START_TEST(a_problem_is_rfc_9457_json_with_the_field)
{
    http_resp out = {0};
    cJSON *j;
    http_problem(&out, 422, "Unprocessable Content", "a \"quoted\" detail\n", "items[0].sku");
    ck_assert_int_eq(out.status, 422);
    ck_assert_str_eq(out.content_type, "application/problem+json");
    j = cJSON_Parse(out.body);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "type")->valuestring, "about:blank");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "title")->valuestring, "Unprocessable Content");
    ck_assert_int_eq(cJSON_GetObjectItem(j, "status")->valueint, 422);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "detail")->valuestring, "a \"quoted\" detail\n");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "field")->valuestring, "items[0].sku");
    cJSON_Delete(j);
    free(out.body);
}
END_TEST

START_TEST(a_problem_without_detail_or_field_leaves_them_out)
{
    http_resp out = {0};
    cJSON *j;
    http_problem(&out, 503, "Service Unavailable", NULL, NULL);
    j = cJSON_Parse(out.body);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(cJSON_GetArraySize(j), 3);
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "detail"));
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "field"));
    cJSON_Delete(j);
    free(out.body);
}
END_TEST

/* The writer's batch fallback: only a batch of several orders that failed
 * for a reason that may be one order's own (a permanent error, or a wait for
 * a lock, 55P03 / 40P01, e.g. on its Idempotency-Key) is written again one
 * by one. */
START_TEST(only_a_batch_of_several_failed_by_one_order_falls_back_to_one_by_one)
{
    ck_assert_int_eq(api_batch_falls_back(DB_ERR, "23505", 2), 1);
    ck_assert_int_eq(api_batch_falls_back(DB_ERR, "", API_BATCH_MAX_DEFAULT), 1);
    /* A lock wait may be one order's: a same-key INSERT held by another
     * session (55P03 lock_not_available, 40P01 deadlock_detected). */
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "55P03", 2), 1);
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "40P01", API_BATCH_MAX_DEFAULT), 1);
    /* A lone order's failure is already its own. */
    ck_assert_int_eq(api_batch_falls_back(DB_ERR, "23505", 1), 0);
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "55P03", 1), 0);
    /* Written: nothing to do again. */
    ck_assert_int_eq(api_batch_falls_back(DB_OK, "", 1), 0);
    ck_assert_int_eq(api_batch_falls_back(DB_OK, "", API_BATCH_MAX_DEFAULT), 0);
    /* The database is away or slow: one by one would fail the same; all get
     * it. */
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "", 1), 0);
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "", API_BATCH_MAX_DEFAULT), 0);
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "57014", API_BATCH_MAX_DEFAULT), 0);
    ck_assert_int_eq(api_batch_falls_back(DB_ERR_TRANSIENT, "08006", API_BATCH_MAX_DEFAULT), 0);
}
END_TEST

/* The writer's wait must outlast its statement and its connect, or a 503
 * could not say whether the order was stored. */
START_TEST(a_write_wait_not_longer_than_statement_and_connect_is_refused)
{
    char err[256];
    /* The old defaults: 10 s wait, 15 s statement, 5 s connect. */
    ck_assert_int_eq(api_write_wait_check(10000, 15000, 5000, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "ORDER_WRITE_TIMEOUT_MS=10000"));
    ck_assert_int_eq(api_write_wait_check(20000, 15000, 5000, err, sizeof(err)), -1);
    ck_assert_int_eq(api_write_wait_check(20001, 15000, 5000, err, sizeof(err)), 0);
    ck_assert_int_eq(api_write_wait_check(API_WRITE_WAIT_DEFAULT, 15000, 5000, err, sizeof(err)),
                     0);
    /* No statement timeout, or no connect timeout: no wait is long enough. */
    ck_assert_int_eq(api_write_wait_check(600000, 0, 5000, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "DB_STATEMENT_TIMEOUT_MS"));
    ck_assert_int_eq(api_write_wait_check(600000, 15000, -1, err, sizeof(err)), -1);
    /* A DATABASE_URL libpq cannot parse is named as that, not as a 0 timeout. */
    ck_assert_int_eq(
        api_write_wait_check(600000, 15000, db_connect_timeout_ms("host='x"), err, sizeof(err)),
        -1);
    ck_assert_msg(strstr(err, "DATABASE_URL: not a connection string") != NULL, "%s", err);
}
END_TEST

/* The reason an expired order carries fits the contract for every
 * ORDER_TIMEOUT_S order-api accepts (up to 30 days), so the sweep can always
 * emit its order.expired. */
START_TEST(an_expired_orders_reason_fits_the_contract_for_every_timeout)
{
    char r[EV_TEXT_MAX + 1], small[8];
    ck_assert_int_eq(api_saga_reason(2592000, r, sizeof(r)), 0);
    ck_assert_str_eq(r, "no final status within ORDER_TIMEOUT_S (2592000 s)");
    ck_assert_int_eq(api_saga_reason(API_ORDER_TIMEOUT_DEFAULT, r, sizeof(r)), 0);
    ck_assert_str_eq(r, "no final status within ORDER_TIMEOUT_S (900 s)");
    ck_assert_int_eq(api_saga_reason(1, small, sizeof(small)), -1);
}
END_TEST

/* ------------------------------------------------ event streams (sse.c) */

/* A stream ends after a status the order never leaves, and only then. */
START_TEST(a_stream_ends_only_after_a_final_status)
{
    ck_assert_int_eq(api_status_final("CONFIRMED"), 1);
    ck_assert_int_eq(api_status_final("REJECTED"), 1);
    ck_assert_int_eq(api_status_final("CANCELLED"), 1);
    ck_assert_int_eq(api_status_final("EXPIRED"), 1);
    /* PAYMENT_FAILED moves on to CANCELLED once the stock is released. */
    ck_assert_int_eq(api_status_final("PAYMENT_FAILED"), 0);
    ck_assert_int_eq(api_status_final("PENDING"), 0);
    ck_assert_int_eq(api_status_final("RESERVED"), 0);
    ck_assert_int_eq(api_status_final("confirmed"), 0);
    ck_assert_int_eq(api_status_final(""), 0);
    ck_assert_int_eq(api_status_final(NULL), 0);
}
END_TEST

/* Last-Event-ID: absent is from the start; 1-18 digits; anything else is
 * refused (400), never read as 0 (which would send the entries again). */
START_TEST(a_last_event_id_is_1_to_18_digits_or_absent)
{
    static const char *const bad[] = {
        "", "-1", "+1", " 1", "1 ", "1a", "0x10", "1.5", "1234567890123456789"};
    long long v = -1;
    ck_assert_int_eq(api_last_event_id(NULL, &v), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(api_last_event_id("0", &v), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(api_last_event_id("42", &v), 0);
    ck_assert_int_eq(v, 42);
    ck_assert_int_eq(api_last_event_id("999999999999999999", &v), 0);
    ck_assert(v == 999999999999999999LL);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(api_last_event_id(bad[i], &v) == -1, "'%s' was accepted", bad[i]);
}
END_TEST

/* The client's limit is a 429 (its own doing), the server's a 503; the
 * client's is looked at first, so a client at its limit is told so even
 * when the server is full too. */
START_TEST(a_stream_past_the_clients_limit_is_429_past_the_servers_503)
{
    ck_assert_int_eq(api_sse_admit(0, 0, 1, 1), API_SSE_ADMIT);
    ck_assert_int_eq(api_sse_admit(10, 9, 11, 10), API_SSE_ADMIT);
    ck_assert_int_eq(api_sse_admit(10, 10, 11, 10), API_SSE_CLIENT_FULL);
    ck_assert_int_eq(api_sse_admit(11, 1, 11, 10), API_SSE_FULL);
    ck_assert_int_eq(api_sse_admit(11, 10, 11, 10), API_SSE_CLIENT_FULL);
    ck_assert_int_eq(api_sse_admit(API_SSE_MAX_DEFAULT - 1, API_SSE_CLIENT_MAX_DEFAULT - 1,
                                   API_SSE_MAX_DEFAULT, API_SSE_CLIENT_MAX_DEFAULT),
                     API_SSE_ADMIT);
}
END_TEST

/* ------------------------------------------------------ the price cache */

/* An order of one line of sku, with pricing's result: 1 from the cache, 0
 * not there. */
static int cached(api_prices *c, const char *sku)
{
    ev_event ev;
    api_problem p = {0};
    int r;
    static const char body[] = "{\"customer_id\":\"c\",\"customer_email\":\"a@b.c\","
                               "\"currency\":\"EUR\",\"items\":[{\"sku\":\"X\","
                               "\"quantity\":1}]}";
    ev_init(&ev, EV_ORDER_PLACED);
    ck_assert_int_eq(api_decode_request(body, strlen(body), &ev.u.order_placed, &p), 0);
    snprintf(ev.u.order_placed.lines.items[0].sku, sizeof(ev.u.order_placed.lines.items[0].sku),
             "%s", sku);
    r = api_price_cached(c, &ev.u.order_placed, &p);
    ev_free(&ev);
    return r;
}

/* A read of sku's row, begun now, that ends after `between` ran. */
static void read_row(api_prices *c, const char *sku, void (*between)(api_prices *))
{
    api_price row = {sku, 100, "EUR"};
    uint64_t gen;
    int64_t at;
    ck_assert_int_eq(api_price_read_begins(c, &gen, &at), 1);
    if (between)
        between(c);
    api_price_read_ends(c, gen, at, &row, 1);
}

/* A read that began before a drop (a notification, a lost connection) does
 * not fill the cache: its row may be the one the change replaced. */
START_TEST(a_read_begun_before_a_drop_does_not_fill_the_cache)
{
    api_prices *c = api_prices_new(3600000);
    api_prices_stats s;
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(cached(c, "A"), 0); /* not listening: serves nothing */
    api_prices_set_listening(c, 1);
    read_row(c, "A", NULL);
    ck_assert_int_eq(cached(c, "A"), 1);
    read_row(c, "B", api_prices_changed);
    ck_assert_int_eq(cached(c, "B"), 0);
    ck_assert_int_eq(cached(c, "A"), 0); /* the drop took it too */
    api_prices_get_stats(c, &s);
    ck_assert_int_eq(s.drops, 1);
    ck_assert_int_eq(s.hits, 1);
    api_prices_free(c);
}
END_TEST

/* A row serves until max_age_ms after its read began, not after. */
START_TEST(a_row_serves_no_longer_than_the_max_age_after_its_read_began)
{
    api_prices *c = api_prices_new(60000);
    api_price row = {"A", 100, "EUR"};
    uint64_t gen;
    int64_t at;
    ck_assert_ptr_nonnull(c);
    api_prices_set_listening(c, 1);
    ck_assert_int_eq(api_price_read_begins(c, &gen, &at), 1);
    api_price_read_ends(c, gen, at - 59000, &row, 1); /* read began 59 s ago */
    ck_assert_int_eq(cached(c, "A"), 1);
    api_price_read_ends(c, gen, at - 60000, &row, 1); /* ...60 s ago: too old */
    ck_assert_int_eq(cached(c, "A"), 0);
    api_prices_free(c);
}
END_TEST

/* At PRICE_FILL (768) SKUs, the next SKU read drops the cache whole (counted
 * as full) and is kept; the others are read again when asked for. */
START_TEST(a_full_cache_is_dropped_whole_and_counted)
{
    api_prices *c = api_prices_new(3600000);
    api_prices_stats s;
    char sku[16];
    ck_assert_ptr_nonnull(c);
    api_prices_set_listening(c, 1);
    for (int i = 0; i < 768; i++) {
        snprintf(sku, sizeof(sku), "S-%d", i);
        read_row(c, sku, NULL);
    }
    ck_assert_int_eq(cached(c, "S-0"), 1);
    ck_assert_int_eq(cached(c, "S-767"), 1);
    api_prices_get_stats(c, &s);
    ck_assert_int_eq(s.fulls, 0);
    read_row(c, "S-768", NULL);
    api_prices_get_stats(c, &s);
    ck_assert_int_eq(s.fulls, 1);
    ck_assert_int_eq(cached(c, "S-768"), 1);
    ck_assert_int_eq(cached(c, "S-0"), 0);
    api_prices_free(c);
}
END_TEST

/* BOARD_CLIENTS: the clients that may read the queue depths. */
START_TEST(board_clients_are_a_checked_list_matched_whole)
{
    char err[128];
    ck_assert_int_eq(api_board_clients_check("", err, sizeof(err)), 0);
    ck_assert_int_eq(api_board_clients_check("demo", err, sizeof(err)), 0);
    ck_assert_int_eq(api_board_clients_check("demo,ops.team_1", err, sizeof(err)), 0);
    ck_assert_int_eq(api_board_clients_check("demo,", err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "BOARD_CLIENTS"));
    ck_assert_int_eq(api_board_clients_check(",demo", err, sizeof(err)), -1);
    ck_assert_int_eq(api_board_clients_check("de mo", err, sizeof(err)), -1);
    ck_assert_int_eq(api_board_clients_check("demo;x", err, sizeof(err)), -1);
    {
        char longer[API_CLIENT_MAX + 2];
        memset(longer, 'a', sizeof(longer) - 1);
        longer[sizeof(longer) - 1] = '\0';
        ck_assert_int_eq(api_board_clients_check(longer, err, sizeof(err)), -1);
    }
    ck_assert(api_board_allows("demo,ops", "demo"));
    ck_assert(api_board_allows("demo,ops", "ops"));
    ck_assert(!api_board_allows("demo,ops", "dem"));
    ck_assert(!api_board_allows("demo,ops", "demo,ops"));
    ck_assert(!api_board_allows("demo,ops", "op"));
    ck_assert(!api_board_allows("demo,ops", "ops2"));
    ck_assert(!api_board_allows("", "demo"));
    ck_assert(!api_board_allows("demo", ""));
    ck_assert(!api_board_allows("demo", NULL));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_api");
    TCase *d = tcase_create("decode"), *pr = tcase_create("pricing");
    TCase *i = tcase_create("idempotency"), *a = tcase_create("tokens");
    TCase *h = tcase_create("problem+json"), *ev = tcase_create("event streams");
    tcase_add_loop_test(d, a_request_body_is_decoded_or_refused_naming_the_field, 0,
                        (int)(sizeof(decode_cases) / sizeof(decode_cases[0])));
    tcase_add_test(d, the_line_count_limit_is_the_contracts);
    tcase_add_test(d, only_application_json_is_a_json_content_type);
    tcase_add_test(pr, an_order_at_every_maximum_of_the_contract_is_priced_exactly);
    tcase_add_loop_test(pr, a_price_past_the_contract_or_an_overflow_is_a_server_error, 0,
                        (int)(sizeof(bad_prices) / sizeof(bad_prices[0])));
    tcase_add_test(pr, an_unknown_sku_or_another_currency_is_the_clients_error);
    tcase_add_test(pr, a_read_begun_before_a_drop_does_not_fill_the_cache);
    tcase_add_test(pr, a_row_serves_no_longer_than_the_max_age_after_its_read_began);
    tcase_add_test(pr, a_full_cache_is_dropped_whole_and_counted);
    tcase_add_test(pr, an_order_at_every_maximum_travels_to_the_write_exactly);
    tcase_add_test(pr, only_a_batch_of_several_failed_by_one_order_falls_back_to_one_by_one);
    tcase_add_test(pr, a_write_wait_not_longer_than_statement_and_connect_is_refused);
    tcase_add_test(i, an_idempotency_key_is_1_to_200_printable_ascii_characters);
    tcase_add_test(i, an_earlier_order_with_the_key_is_replayed_or_a_conflict);
    tcase_add_test(a, api_tokens_are_parsed_and_a_bearer_token_finds_its_client);
    tcase_add_test(a, a_malformed_api_tokens_line_is_named);
    tcase_add_test(a, board_clients_are_a_checked_list_matched_whole);
    tcase_add_test(h, a_problem_is_rfc_9457_json_with_the_field);
    tcase_add_test(h, a_problem_without_detail_or_field_leaves_them_out);
    tcase_add_test(h, an_expired_orders_reason_fits_the_contract_for_every_timeout);
    suite_add_tcase(s, d);
    suite_add_tcase(s, pr);
    suite_add_tcase(s, i);
    suite_add_tcase(s, a);
    tcase_add_test(ev, a_stream_ends_only_after_a_final_status);
    tcase_add_test(ev, a_last_event_id_is_1_to_18_digits_or_absent);
    tcase_add_test(ev, a_stream_past_the_clients_limit_is_429_past_the_servers_503);
    suite_add_tcase(s, h);
    suite_add_tcase(s, ev);
    return tu_run(s);
}
