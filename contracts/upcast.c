/*
 * upcast.c — the versions of each event and the steps between them (see
 * upcast.h), in one place: the codec's tables (events.c) describe the latest
 * version, and every older one is reached from it here.
 *
 * A step goes from version `from` to from + 1 of one event. The steps today
 * are renames; one of another kind (a field added with a default, an amount
 * split in two) would be a pair of functions on the parsed body beside them,
 * in the same table.
 */
#include "events_int.h"
#include "upcast.h"

#include <cJSON.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    ev_type type;
    int from;             /* this step upcasts from -> from + 1 */
    const char *old_name; /* the field as version `from` calls it */
    const char *new_name; /* and as from + 1 does */
} step;

static const step steps[] = {
    /* order.placed 2: the total has the name billing's amounts have. */
    {EV_ORDER_PLACED, 1, "total_minor", "amount_minor"},
};
#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

int ev_version_latest(ev_type t)
{
    int v = 1;
    if ((unsigned)t >= EV__COUNT)
        return 0;
    for (size_t i = 0; i < NSTEPS; i++) {
        if (steps[i].type == t && steps[i].from + 1 > v)
            v = steps[i].from + 1;
    }
    return v;
}

int ev_version_check(ev_type t, int version, char *err, size_t errlen)
{
    int latest = ev_version_latest(t);
    if (latest == 0) {
        snprintf(err, errlen, "type: unknown event type");
        return -1;
    }
    if (version >= 1 && version <= latest)
        return 0;
    if (latest == 1)
        snprintf(err, errlen, "schema_version %d is not supported for %s (want 1)", version,
                 ev_routing_key(t));
    else
        snprintf(err, errlen, "schema_version %d is not supported for %s (want 1 to %d)", version,
                 ev_routing_key(t), latest);
    return -1;
}

/* Renames body's member from -> to. A body that already has a member `to`
 * (a field its version does not know, which a reader of that version
 * skips) loses it first, so the body means what it meant to that reader. */
static int rename_member(cJSON *body, const char *from, const char *to)
{
    cJSON *it;
    cJSON_DeleteItemFromObjectCaseSensitive(body, to);
    it = cJSON_DetachItemFromObjectCaseSensitive(body, from);
    if (!it)
        return 0; /* missing: the decoder says so, naming it as the body's version does */
    if (!cJSON_AddItemToObject(body, to, it)) {
        cJSON_Delete(it);
        return -1;
    }
    return 0;
}

int ev__upcast(ev_type t, int version, cJSON *body)
{
    /* Oldest step first: version v becomes v + 1 until it is the latest. */
    for (int v = version; v < ev_version_latest(t); v++) {
        for (size_t i = 0; i < NSTEPS; i++) {
            if (steps[i].type == t && steps[i].from == v &&
                rename_member(body, steps[i].old_name, steps[i].new_name) < 0)
                return -1;
        }
    }
    return 0;
}

int ev__downcast(ev_type t, int version, cJSON *body)
{
    /* Newest step first: the latest becomes latest - 1 until it is version. */
    for (int v = ev_version_latest(t) - 1; v >= version; v--) {
        for (size_t i = NSTEPS; i-- > 0;) {
            if (steps[i].type == t && steps[i].from == v &&
                rename_member(body, steps[i].new_name, steps[i].old_name) < 0)
                return -1;
        }
    }
    return 0;
}

void ev_name_as(ev_type t, int version, char *err, size_t errlen)
{
    char tmp[EV_ERR_LEN];
    for (int v = ev_version_latest(t) - 1; v >= version; v--) {
        for (size_t i = NSTEPS; i-- > 0;) {
            const step *s = &steps[i];
            size_t n = strlen(s->new_name);
            if (s->type != t || s->from != v || strncmp(err, s->new_name, n) != 0 ||
                (err[n] != ':' && err[n] != '[' && err[n] != '.'))
                continue;
            snprintf(tmp, sizeof(tmp), "%s%s", s->old_name, err + n);
            snprintf(err, errlen, "%s", tmp);
        }
    }
}
