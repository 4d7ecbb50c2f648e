/*
 * upcast.h — versions of an event's schema, and moving a body between them.
 *
 * The header schema_version says which version of its event's schema a
 * body follows. Each event has versions 1 .. ev_version_latest(t); a reader
 * accepts every one of them and sees the latest (the structs of events.h):
 * an older body is upcast, in one place (upcast.c), before it is decoded. A
 * writer chooses the version it writes (ev_to_json_version), so that during
 * a rollout a new writer keeps writing the version the readers still running
 * know, until every reader knows the new one (README: readers first, then
 * writers). A version outside 1 .. latest is refused with a reason that
 * names it, the event and the versions known.
 *
 * Today: order.placed has version 2, which calls the total amount_minor
 * (version 1: total_minor, the name billing's events use for what they
 * charge is amount_minor). Every other event has version 1 only.
 *
 * A field added as optional needs no new version (the tolerant reader of
 * events.h skips fields it does not know); a rename, a new required field
 * or a changed meaning does.
 */
#ifndef ORDERSUITE_UPCAST_H
#define ORDERSUITE_UPCAST_H

#include "events.h"

#include <stddef.h>

/* The latest schema version of t (1 for most); 0 for an invalid t. */
int ev_version_latest(ev_type t);

/* 0 when version is one of t's (1 .. latest); else -1 with err:
 * "schema_version 3 is not supported for order.placed (want 1 to 2)". */
int ev_version_check(ev_type t, int version, char *err, size_t errlen);

/* ev_to_json writing version (1 .. latest) of ev's schema. NULL with err
 * when ev is not valid (the field named as that version calls it) or the
 * version is not one of ev's. The caller free()s the result. */
char *ev_to_json_version(const ev_event *ev, const char *causation_id, int version, char *err,
                         size_t errlen);

/* ev_from_json for a body that follows version (the header schema_version)
 * of t's schema: an older version is upcast to the latest, then decoded as
 * ev_from_json does; errors name a field as the body's version calls it. An
 * unsupported version is refused as ev_version_check says. */
int ev_from_json_version(ev_type t, int version, const char *body, size_t len, ev_event *out,
                         char causation_id[UUID_STR_LEN], char *err, size_t errlen);

/* Renames the field an error starts with ("amount_minor: ...", from the
 * codec or ev_validate, which speak the latest version) to what version of
 * t's schema calls it ("total_minor: ..."); other errors are left alone. */
void ev_name_as(ev_type t, int version, char *err, size_t errlen);

#endif
