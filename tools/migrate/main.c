/*
 * migrate — applies migrations/NNNN_*.sql in order, once each.
 *
 * Connects as the migration owner (MIGRATE_DATABASE_URL); creates the
 * database first when it does not exist yet. Each file runs in its own
 * transaction and is recorded in public.schema_migrations with the SHA-256 of
 * its text; a file whose text changed after it was applied stops the run
 * (migrations are forward-only: write a new one). A session advisory lock
 * keeps two migrate processes from racing.
 *
 * Optionally sets login passwords for the service roles from
 * DB_ROLE_PASSWORDS_FILE (lines "role password"), hashed client-side with
 * SCRAM so that no clear-text password reaches the server's logs.
 *
 * Usage: migrate [--dir DIR] [--status]
 */
#include "cfg.h"
#include "db.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MIGRATIONS 1000
#define MAX_FILE_BYTES (4 * 1024 * 1024)
#define LOCK_KEY       "727171" /* pg_advisory_lock key, arbitrary but fixed */

static int die(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "migrate: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return 1;
}

/* A migration file name: four digits, '_', a name, ".sql". */
static int is_migration(const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < 4; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
    }
    return n > 9 && name[4] == '_' && strcmp(name + n - 4, ".sql") == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (!f) {
        /* The path is cut at 512 characters in the message. */
        snprintf(err, errlen, "%.512s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(MAX_FILE_BYTES + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    if (ferror(f) || n > MAX_FILE_BYTES || memchr(buf, '\0', n)) {
        snprintf(err, errlen, "%.512s: unreadable, too large or binary", path);
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* Creates the database named in url when it does not exist, connecting to the
 * "postgres" maintenance database with the same credentials. */
static int create_database(const char *url, char *err, size_t errlen)
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    const char *dbname = NULL;
    const char *keys[] = {"dbname", "dbname", NULL};
    const char *vals[] = {url, "postgres", NULL};
    PGconn *pg;
    PGresult *r;
    char *ident, sql[512];
    int rc = -1;

    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "dbname") == 0)
            dbname = o->val;
    }
    if (!dbname) {
        snprintf(err, errlen, "MIGRATE_DATABASE_URL names no database");
        PQconninfoFree(opts);
        return -1;
    }
    pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, errlen, "connect to maintenance database: %s", PQerrorMessage(pg));
        goto out;
    }
    ident = PQescapeIdentifier(pg, dbname, strlen(dbname));
    if (!ident) {
        snprintf(err, errlen, "escape: %s", PQerrorMessage(pg));
        goto out;
    }
    /* CREATE DATABASE takes no parameters; the name is escaped by libpq. */
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", ident);
    PQfreemem(ident);
    r = PQexec(pg, sql);
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
        fprintf(stderr, "migrate: created database %s\n", dbname);
        rc = 0;
    } else {
        snprintf(err, errlen, "CREATE DATABASE %s: %s", dbname, PQresultErrorMessage(r));
    }
    PQclear(r);
out:
    PQfinish(pg);
    PQconninfoFree(opts);
    return rc;
}

static int apply_one(db_conn *db, const char *dir, const char *file, int *applied, char *err,
                     size_t errlen)
{
    char path[4096];
    char *text;
    PGresult *r = NULL;
    const char *params[3];
    int rc = -1;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    text = read_file(path, err, errlen);
    if (!text)
        return -1;
    params[0] = file;
    params[1] = text;
    if (db_exec(db,
                "SELECT m.checksum, encode(sha256(convert_to($2::text, 'UTF8')), 'hex') AS sum "
                "FROM (SELECT 1) AS one LEFT JOIN public.schema_migrations m ON m.name = $1",
                2, params, &r, err, errlen) != DB_OK)
        goto out;
    if (db_get(r, 0, "checksum")) {
        if (strcmp(db_get(r, 0, "checksum"), db_get(r, 0, "sum")) != 0) {
            snprintf(err, errlen,
                     "%s was changed after it was applied (checksum %.12s..., now %.12s...); "
                     "migrations are forward-only: restore it and add a new file",
                     file, db_get(r, 0, "checksum"), db_get(r, 0, "sum"));
            goto out;
        }
        rc = 0;
        goto out;
    }
    if (db_begin(db, err, errlen) != DB_OK)
        goto out;
    {
        /* A migration is several statements: the simple query protocol is
         * the only way to run them, and the text is ours, not user input. */
        PGresult *x = PQexec(db_pg(db), text);
        if (PQresultStatus(x) != PGRES_COMMAND_OK && PQresultStatus(x) != PGRES_TUPLES_OK) {
            snprintf(err, errlen, "%s: %s", file, PQresultErrorMessage(x));
            PQclear(x);
            db_rollback(db);
            goto out;
        }
        PQclear(x);
    }
    if (db_exec(db,
                "INSERT INTO public.schema_migrations (name, checksum) "
                "VALUES ($1, encode(sha256(convert_to($2::text, 'UTF8')), 'hex'))",
                2, params, NULL, err, errlen) != DB_OK ||
        db_commit(db, err, errlen) != DB_OK) {
        db_rollback(db);
        goto out;
    }
    fprintf(stderr, "migrate: applied %s\n", file);
    (*applied)++;
    rc = 0;
out:
    PQclear(r);
    free(text);
    return rc;
}

static int set_passwords(db_conn *db, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    int n = 0, lineno = 0;

    if (!f) {
        snprintf(err, errlen, "DB_ROLE_PASSWORDS_FILE: %s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        char role[64], pw[512], sql[1024];
        char *hash, *lit, *ident;
        int rc;

        lineno++;
        if (line[0] == '#' || line[0] == '\n')
            continue;
        if (sscanf(line, "%63s %511s", role, pw) != 2) {
            snprintf(err, errlen, "DB_ROLE_PASSWORDS_FILE line %d: expected \"role password\"",
                     lineno);
            fclose(f);
            return -1;
        }
        hash = PQencryptPasswordConn(db_pg(db), pw, role, "scram-sha-256");
        if (!hash) {
            snprintf(err, errlen, "hash password for %s: %s", role, PQerrorMessage(db_pg(db)));
            fclose(f);
            return -1;
        }
        /* ALTER ROLE takes no parameters: identifier and literal are escaped
         * by libpq, and the literal is a SCRAM verifier, not the password. */
        ident = PQescapeIdentifier(db_pg(db), role, strlen(role));
        lit = PQescapeLiteral(db_pg(db), hash, strlen(hash));
        PQfreemem(hash);
        if (!ident || !lit) {
            PQfreemem(ident);
            PQfreemem(lit);
            snprintf(err, errlen, "escape: %s", PQerrorMessage(db_pg(db)));
            fclose(f);
            return -1;
        }
        snprintf(sql, sizeof(sql), "ALTER ROLE %s PASSWORD %s", ident, lit);
        PQfreemem(ident);
        PQfreemem(lit);
        rc = db_exec(db, sql, 0, NULL, NULL, err, errlen);
        if (rc != DB_OK) {
            fclose(f);
            return -1;
        }
        n++;
    }
    fclose(f);
    fprintf(stderr, "migrate: set passwords of %d roles\n", n);
    return 0;
}

int main(int argc, char **argv)
{
    char err[1024];
    char *url = NULL;
    const char *pwfile;
    const char *dir = "migrations";
    char *files[MAX_MIGRATIONS];
    int nfiles = 0, applied = 0, rc = 1;
    db_conn *db = NULL;
    DIR *d;
    struct dirent *e;
    const cfg_spec specs[] = {{"MIGRATE_DATABASE_URL", CFG_STR, NULL, 0, 0, &url}};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else {
            fprintf(stderr, "usage: migrate [--dir DIR]\n"
                            "env: MIGRATE_DATABASE_URL (owner role), "
                            "DB_ROLE_PASSWORDS_FILE (optional)\n");
            return 2;
        }
    }
    log_init("migrate", LOG_INFO);
    if (cfg_load(specs, 1, err, sizeof(err)) < 0) {
        fprintf(stderr, "migrate: %s\n", err);
        goto out;
    }
    pwfile = getenv("DB_ROLE_PASSWORDS_FILE");

    d = opendir(dir);
    if (!d) {
        rc = die("cannot open %s: %s", dir, strerror(errno));
        goto out;
    }
    while ((e = readdir(d)) != NULL) {
        if (!is_migration(e->d_name))
            continue;
        if (nfiles == MAX_MIGRATIONS || !(files[nfiles] = strdup(e->d_name))) {
            closedir(d);
            rc = die("too many migrations in %s%s", dir, "");
            goto out;
        }
        nfiles++;
    }
    closedir(d);
    qsort(files, (size_t)nfiles, sizeof(files[0]), cmp_str);
    for (int i = 1; i < nfiles; i++) {
        if (strncmp(files[i], files[i - 1], 4) == 0) {
            rc = die("two migrations share a number: %s and %s", files[i - 1], files[i]);
            goto out_files;
        }
    }

    db = db_new(url, "migrate");
    if (!db) {
        rc = die("out of memory%s%s", "", "");
        goto out_files;
    }
    if (db_connect_retry(db, 30000, NULL, err, sizeof(err)) != DB_OK) {
        if (strcmp(db_last_sqlstate(db), "3D000") != 0 ||
            create_database(url, err, sizeof(err)) < 0 ||
            db_connect_retry(db, 10000, NULL, err, sizeof(err)) != DB_OK) {
            rc = die("%s%s", err, "");
            goto out_files;
        }
    }
    if (db_exec(db, "SET client_min_messages = warning", 0, NULL, NULL, err, sizeof(err)) ||
        db_exec(db, "SELECT pg_advisory_lock(" LOCK_KEY ")", 0, NULL, NULL, err, sizeof(err)) ||
        db_exec(db,
                "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                " name text PRIMARY KEY,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
                0, NULL, NULL, err, sizeof(err))) {
        rc = die("%s%s", err, "");
        goto out_files;
    }
    for (int i = 0; i < nfiles; i++) {
        if (apply_one(db, dir, files[i], &applied, err, sizeof(err)) < 0) {
            rc = die("%s%s", err, "");
            goto out_files;
        }
    }
    if (pwfile && set_passwords(db, pwfile, err, sizeof(err)) < 0) {
        rc = die("%s%s", err, "");
        goto out_files;
    }
    fprintf(stderr, "migrate: %d applied, %d already up to date\n", applied, nfiles - applied);
    rc = 0;
out_files:
    for (int i = 0; i < nfiles; i++)
        free(files[i]);
out:
    db_free(db);
    free(url);
    return rc;
}
