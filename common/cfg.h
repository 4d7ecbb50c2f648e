/*
 * cfg.h — configuration from the environment, read once at start.
 *
 * Each variable NAME may instead be given as NAME_FILE, the path of a file
 * holding the value (for secrets: docker secrets, var/ files). Setting both is
 * an error. Every error message names the variable, so main() can print it
 * and exit.
 */
#ifndef ORDERSUITE_CFG_H
#define ORDERSUITE_CFG_H

#include <stddef.h>

#define CFG_ERR_LEN   256
#define CFG_VALUE_MAX 4096 /* longest value accepted, from the environment or a file */
#define CFG_NAME_MAX  120  /* longest variable name (an error past it) */

typedef enum {
    CFG_STR,  /* out: char ** (malloc'd copy; caller frees) */
    CFG_LONG, /* out: long *; integer in [min, max] */
    CFG_BOOL, /* out: int *; 1/0, true/false, yes/no, on/off */
} cfg_kind;

typedef struct {
    const char *name; /* environment variable */
    cfg_kind kind;
    const char *def; /* default as text; NULL = required */
    long min, max;   /* CFG_LONG range, inclusive */
    void *out;
} cfg_spec;

/* Reads the raw value of NAME (or NAME_FILE) into a malloc'd string *out.
 * Returns 1 when set, 0 when neither is set (*out = NULL), -1 on error with a
 * message in err. */
int cfg_raw(const char *name, char **out, char *err, size_t errlen);

/* Parses s as a decimal integer in [min, max] without atoi's silent failures.
 * Returns 0 or -1 with a message naming `name` in err. */
int cfg_parse_long(const char *name, const char *s, long min, long max, long *out, char *err,
                   size_t errlen);

/* Loads every spec in order; stops at the first error. Returns 0 or -1 with a
 * message in err. On error, strings already loaded stay allocated: free them
 * with cfg_free. */
int cfg_load(const cfg_spec *specs, size_t n, char *err, size_t errlen);

/* Frees the CFG_STR outputs of specs and sets them to NULL. */
void cfg_free(const cfg_spec *specs, size_t n);

/* A program with several modes (a worker runs, or only declares its
 * topology) keeps its settings in one table of groups; each group names the
 * modes that read it, so the table says what each mode needs and a mode
 * never asks for a setting it does not use. Modes are the program's own
 * bits. */
typedef struct {
    const cfg_spec *specs;
    size_t n;
    unsigned modes; /* the modes (bits) that read these specs */
} cfg_group;

/* cfg_load on each group whose modes include mode, in order; the outputs of
 * the other groups are not touched. Returns 0 or -1 with a message in err
 * (free what was loaded with cfg_free_groups). */
int cfg_load_mode(const cfg_group *groups, size_t ngroups, unsigned mode, char *err, size_t errlen);

/* cfg_free on every group (loaded or not). */
void cfg_free_groups(const cfg_group *groups, size_t ngroups);

#endif
