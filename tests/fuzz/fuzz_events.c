/*
 * fuzz_events.c — libFuzzer target for every event decoder.
 *
 * The first byte picks the event type; the rest is the body. A body that
 * decodes must encode, and decode again to the same JSON.
 */
#include "events.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ev_event ev, again;
    char err[EV_ERR_LEN], cause[UUID_STR_LEN];
    char *json, *json2;
    ev_type t;

    if (size < 1)
        return 0;
    t = (ev_type)(data[0] % EV__COUNT);
    if (ev_from_json(t, (const char *)data + 1, size - 1, &ev, cause, err, sizeof(err)) < 0)
        return 0;
    json = ev_to_json(&ev, cause, err, sizeof(err));
    if (!json)
        abort(); /* decoded but not encodable: the two disagree */
    if (ev_from_json(t, json, strlen(json), &again, NULL, err, sizeof(err)) < 0)
        abort();
    json2 = ev_to_json(&again, cause, err, sizeof(err));
    if (!json2 || strcmp(json, json2) != 0)
        abort();
    free(json);
    free(json2);
    ev_free(&ev);
    ev_free(&again);
    return 0;
}
