/*
 * fuzz_http.c — libFuzzer target for order-api's request decoding: the
 * POST /orders body through api_decode_order (JSON parse, field checks, the
 * contract's validation). Every input must be decoded or refused with a 400
 * or 422 naming a reason; nothing may crash, leak or read out of bounds.
 */
#include "api.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ev_event ev;
    api_problem p;
    int rc = api_decode_order((const char *)data, size, &ev, &p);
    if (rc < 0 && ((p.status != 400 && p.status != 422) || !p.detail[0]))
        abort(); /* refused without a documented status or a reason */
    ev_free(&ev);
    return 0;
}
