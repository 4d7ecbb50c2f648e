#!/usr/bin/env python3
"""new_service_check.py — `make new-service` makes a service that builds,
starts, consumes its keys and passes its own test, with no edits.

Runs the generator in a temporary copy of the tree (service "gentest"),
checks it refuses a duplicate name and an unknown key, builds the copy, runs
the copy's compose check, applies the copy's migrations to the real database
(as `make migrate` would), gives it a broker user with the rights
scripts/broker-perms.sh gives every service, and runs the generated Check
suite as that user against the real broker and database; then the copy's
check_privileges, whose registry now holds the generated service, so every
door is tried with it as attacker and as victim. Cleans up the
schema, the migration record, the broker user and the
queues afterwards. Prints a Check-style summary line.
"""
import os
import shutil
import subprocess
import tempfile
import urllib.parse

import checklib
from checklib import ROOT, check

NAME = "gentest"


# The copy is built as a user would: not with the flags of a make that runs
# this test (e.g. `make asan`'s BUILD=build/asan).
CLEAN = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BUILD", "SAN")}


def run(cmd, cwd, env=None, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=env or CLEAN, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def broker_user(cmd, pw="", src=ROOT):
    """Adds (cmd "add") or deletes the generated service's broker user, with
    the permissions scripts/broker-perms.sh gives every service and the
    delivery-limit policy `make migrate` gives its queue, in the
    tests' vhost; what it may read on sales.events comes from the routes of
    its main.c in the tree src (service_keys)."""
    url = urllib.parse.urlsplit(os.environ["TEST_AMQP_URL"])
    vhost = urllib.parse.unquote(url.path[1:]) if len(url.path) > 1 else "/"
    script = ('source scripts/lib.sh; load_env; source scripts/broker-perms.sh; '
              + ('rmqctl -q delete_user "$U" >/dev/null 2>&1;'
                 ' rmqctl -q clear_policy -p "$VH" "ordersuite-$U" >/dev/null 2>&1; true'
                 if cmd == "delete" else
                 'rmqctl -q add_user "$U" <<<"$PW" >/dev/null && broker_grant "$VH" "$U" "$U"'
                 ' && broker_policy "$VH" "$U" 20'))
    return run(["bash", "-c", script], ROOT,
               dict(CLEAN, U=NAME, PW=pw, VH=vhost, ORDERSUITE_SRC=src))


def cleanup():
    broker_user("delete")
    checklib.psql(f"DROP SCHEMA IF EXISTS {NAME} CASCADE;"
         f" DELETE FROM public.schema_migrations WHERE name LIKE '%\\_{NAME}.sql'")
    for q in (NAME, f"{NAME}.dlq", f"{NAME}.retry.1000ms", f"{NAME}.retry.10000ms",
              f"{NAME}.retry.60000ms"):
        run(["bash", "scripts/rmqctl.sh", "-q", "delete_queue", q], ROOT)


def main():
    tmp = tempfile.mkdtemp(prefix="ordersuite-gen-")
    try:
        cleanup()
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        for f in files:
            if f.startswith(("var/", "build/")) or not os.path.isfile(os.path.join(ROOT, f)):
                continue
            os.makedirs(os.path.dirname(os.path.join(tmp, f)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), os.path.join(tmp, f))

        rc, out = run(["make", "-s", "new-service", f"NAME={NAME}",
                       "KEYS=billing.invoiced inventory.reserved"], tmp)
        if not check("generates", rc == 0, out):
            return
        for f in (f"services/{NAME}/main.c", f"tests/check_{NAME}.c"):
            check(f"writes_{f}", os.path.exists(os.path.join(tmp, f)), f"{f} missing")
        rc, out = run(["make", "-s", "new-service", f"NAME={NAME}", "KEYS=billing.invoiced"], tmp)
        check("refuses_a_duplicate", rc != 0 and "exists already" in out, out)
        rc, out = run(["make", "-s", "new-service", "NAME=other", "KEYS=no.such"], tmp)
        check("refuses_an_unknown_key", rc != 0 and "not an event" in out, out)

        rc, out = run(["make", "-s", "-j2", "all", "tests"], tmp, timeout=600)
        if not check("builds", rc == 0, out[-3000:]):
            return
        rc, out = run(["python3", "tests/compose_check.py"], tmp)
        check("compose_check_passes", rc == 0, out[-2000:])

        # What `make migrate` does: the copy's migrations, the role's password.
        pw = os.urandom(12).hex()
        pwfile = os.path.join(tmp, "pw")
        with open(pwfile, "w") as f:
            f.write(f"{NAME} {pw}\n")
        env = dict(CLEAN, MIGRATE_DATABASE_URL=os.environ["OWNER_DATABASE_URL"],
                   DB_ROLE_PASSWORDS_FILE=pwfile)
        rc, out = run(["build/bin/migrate", "--dir", "migrations"], tmp, env)
        if not check("migrates", rc == 0, out):
            return
        db_url = os.environ["OWNER_DATABASE_URL"].replace("ordersuite_owner:", f"{NAME}:", 1)
        db_url = db_url[:db_url.index(":", len("postgresql://") + len(NAME)) + 1] + pw + \
            db_url[db_url.index("@"):]
        # Its own broker user, with the rights every service gets.
        rc, out = broker_user("add", pw, tmp)
        if not check("broker_user", rc == 0, out):
            return
        url = urllib.parse.urlsplit(os.environ["TEST_AMQP_URL"])
        amqp_url = urllib.parse.urlunsplit(
            (url.scheme, f"{NAME}:{pw}@{url.hostname}:{url.port}", url.path, "", ""))
        env = dict(CLEAN, GENTEST_AMQP_URL=amqp_url,
                   GENTEST_DATABASE_URL=db_url, ORDERSUITE_BIN=os.path.join(tmp, "build/bin"))
        rc, out = run([f"build/test/check_{NAME}"], tmp, env, timeout=180)
        check("generated_test_passes", rc == 0 and "100%" in out, out[-3000:])
        # The privilege suite of the copy, whose registry (scripts/suite.sh,
        # BROKER_USERS) has the generated service: it must be tried as an
        # attacker and as a victim, with every door closed.
        plog = os.path.join(os.environ["ORDERSUITE_VAR"], "log", "tests", f"privileges-{NAME}.log")
        if os.path.exists(plog):
            os.unlink(plog)
        rc, out = run(["build/test/check_privileges"], tmp,
                      dict(env, ORDERSUITE_ROOT=tmp), timeout=400)
        check("privileges_pass_with_the_generated_service", rc == 0 and "100%" in out,
              out[-3000:])
        check("privileges_started_the_generated_service", os.path.exists(plog),
              f"check_privileges did not start {NAME} (no {plog})")
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


checklib.run(main)
