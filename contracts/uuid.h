/*
 * uuid.h — RFC 4122 version-4 UUIDs as 36-character lowercase strings.
 */
#ifndef ORDERSUITE_UUID_H
#define ORDERSUITE_UUID_H

#define UUID_STR_LEN 37 /* 36 characters and the NUL */

/* Writes a random (v4) UUID to out. Returns 0, or -1 when the kernel's
 * random source fails. */
int uuid_v4(char out[UUID_STR_LEN]);

/* 1 when s is a UUID in canonical 8-4-4-4-12 hex form (either case), else 0. */
int uuid_valid(const char *s);

#endif
