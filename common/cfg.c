/*
 * cfg.c — configuration from the environment (see cfg.h).
 */
#include "cfg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int read_secret_file(const char *var, const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char *buf;
    size_t n;

    if (!f) {
        snprintf(err, errlen, "%s: cannot open %s: %s", var, path, strerror(errno));
        return -1;
    }
    buf = malloc(CFG_VALUE_MAX + 2);
    if (!buf) {
        fclose(f);
        snprintf(err, errlen, "%s: out of memory", var);
        return -1;
    }
    n = fread(buf, 1, CFG_VALUE_MAX + 1, f);
    if (ferror(f) || n > CFG_VALUE_MAX) {
        snprintf(err, errlen, "%s: %s is unreadable or longer than %d bytes", var, path,
                 CFG_VALUE_MAX);
        fclose(f);
        free(buf);
        return -1;
    }
    fclose(f);
    buf[n] = '\0';
    /* A file written by echo or an editor ends in a newline; it is not part
     * of the secret. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (memchr(buf, '\0', n)) {
        snprintf(err, errlen, "%s: %s contains a NUL byte", var, path);
        free(buf);
        return -1;
    }
    *out = buf;
    return 1;
}

int cfg_raw(const char *name, char **out, char *err, size_t errlen)
{
    char filevar[CFG_NAME_MAX + sizeof("_FILE")];
    const char *v;
    const char *f;

    *out = NULL;
    if (strlen(name) > CFG_NAME_MAX) {
        snprintf(err, errlen, "%.64s...: the name is too long (at most %d bytes)", name,
                 CFG_NAME_MAX);
        return -1;
    }
    v = getenv(name);
    snprintf(filevar, sizeof(filevar), "%s_FILE", name);
    f = getenv(filevar);
    if (v && f) {
        snprintf(err, errlen, "%s and %s are both set; set only one", name, filevar);
        return -1;
    }
    if (f)
        return read_secret_file(filevar, f, out, err, errlen);
    if (!v)
        return 0;
    if (strlen(v) > CFG_VALUE_MAX) {
        snprintf(err, errlen, "%s is longer than %d bytes", name, CFG_VALUE_MAX);
        return -1;
    }
    *out = strdup(v);
    if (!*out) {
        snprintf(err, errlen, "%s: out of memory", name);
        return -1;
    }
    return 1;
}

int cfg_parse_long(const char *name, const char *s, long min, long max, long *out, char *err,
                   size_t errlen)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE || s[0] == ' ' || s[0] == '\t') {
        snprintf(err, errlen, "%s=\"%.64s\" is not an integer", name, s);
        return -1;
    }
    if (v < min || v > max) {
        snprintf(err, errlen, "%s=%ld is out of range [%ld, %ld]", name, v, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_bool(const char *name, const char *s, int *out, char *err, size_t errlen)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    snprintf(err, errlen, "%s=\"%.64s\" is not a boolean (true/false, 1/0, yes/no, on/off)", name,
             s);
    return -1;
}

static int load_one(const cfg_spec *s, char *err, size_t errlen)
{
    char *raw;
    const char *val;
    int rc = cfg_raw(s->name, &raw, err, errlen);

    if (rc < 0)
        return -1;
    val = rc ? raw : s->def;
    if (!val) {
        snprintf(err, errlen, "%s is required but not set (nor %s_FILE)", s->name, s->name);
        return -1;
    }
    switch (s->kind) {
    case CFG_STR:
        if (val[0] == '\0') {
            snprintf(err, errlen, "%s is set but empty", s->name);
            rc = -1;
            break;
        }
        *(char **)s->out = raw ? raw : strdup(val);
        if (!*(char **)s->out) {
            snprintf(err, errlen, "%s: out of memory", s->name);
            return -1;
        }
        return 0;
    case CFG_LONG:
        rc = cfg_parse_long(s->name, val, s->min, s->max, (long *)s->out, err, errlen);
        break;
    case CFG_BOOL:
        rc = parse_bool(s->name, val, (int *)s->out, err, errlen);
        break;
    }
    free(raw);
    return rc < 0 ? -1 : 0;
}

int cfg_load(const cfg_spec *specs, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (load_one(&specs[i], err, errlen) < 0)
            return -1;
    }
    return 0;
}

void cfg_free(const cfg_spec *specs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (specs[i].kind == CFG_STR && specs[i].out) {
            free(*(char **)specs[i].out);
            *(char **)specs[i].out = NULL;
        }
    }
}

int cfg_load_mode(const cfg_group *groups, size_t ngroups, unsigned mode, char *err, size_t errlen)
{
    for (size_t i = 0; i < ngroups; i++) {
        if ((groups[i].modes & mode) && cfg_load(groups[i].specs, groups[i].n, err, errlen) < 0)
            return -1;
    }
    return 0;
}

void cfg_free_groups(const cfg_group *groups, size_t ngroups)
{
    for (size_t i = 0; i < ngroups; i++)
        cfg_free(groups[i].specs, groups[i].n);
}
