/*
 * events_int.h — the codec's own description of the events, shared by its
 * three files (not for use outside contracts/): events.c holds the tables,
 * events_valid.c the value rules, events_json.c the JSON form.
 */
#ifndef ORDERSUITE_EVENTS_INT_H
#define ORDERSUITE_EVENTS_INT_H

#include "events.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    K_UUID,     /* char[37], canonical UUID */
    K_ID,       /* char[], 1-64 of [A-Za-z0-9._:-] */
    K_EMAIL,    /* char[], a plausible address */
    K_CURRENCY, /* char[4], three capital letters */
    K_SKU,      /* char[], [A-Z0-9][A-Z0-9-]* */
    K_TEXT,     /* char[], printable text */
    K_TIME,     /* char[], RFC 3339 UTC */
    K_INT,      /* int64_t in [min, max] */
    K_LINES,    /* ev_lines */
    K_SKUS,     /* ev_skus */
} fkind;

typedef struct {
    const char *json; /* JSON name */
    fkind kind;
    int optional; /* strings only: absent/null/"" mean unset */
    size_t off;   /* offset in the event struct */
    size_t size;  /* sizeof the member (strings: buffer size) */
    int64_t min, max;
} field;

typedef int (*check_fn)(const void *ev, char *err, size_t errlen);

typedef struct {
    const char *key;
    const field *fields;
    size_t nfields;
    check_fn check; /* cross-field rules, or NULL */
} event_desc;

/* Every event's description, indexed by ev_type (events.c). */
extern const event_desc ev__events[EV__COUNT];

/* upcast.c: the tables describe each event's latest version; these turn a
 * parsed body of an older version (1 .. latest, checked by the caller) into
 * the latest one (ev__upcast), and the latest into an older one
 * (ev__downcast). 0, or -1 when out of memory. */
struct cJSON;
int ev__upcast(ev_type t, int version, struct cJSON *body);
int ev__downcast(ev_type t, int version, struct cJSON *body);

#endif
