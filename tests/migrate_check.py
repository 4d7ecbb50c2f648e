#!/usr/bin/env python3
"""migrate_check.py — tools/migrate against the real database.

Applied migrations are applied once: a second run applies nothing. Editing
an applied file makes migrate refuse (forward-only), naming the file. Two
files with one number are refused. Prints a Check-style summary line.
"""
import os
import shutil
import subprocess
import tempfile

import checklib
from checklib import BIN, ROOT, check


def migrate(folder):
    env = dict(os.environ, MIGRATE_DATABASE_URL=os.environ["OWNER_DATABASE_URL"])
    env.pop("DB_ROLE_PASSWORDS_FILE", None)
    p = subprocess.run([os.path.join(BIN, "migrate"), "--dir", folder],
                       env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def main():
    tmp = tempfile.mkdtemp(prefix="ordersuite-migrate-")
    try:
        copy = os.path.join(tmp, "migrations")
        shutil.copytree(os.path.join(ROOT, "migrations"), copy)
        n = len([f for f in os.listdir(copy) if f.endswith(".sql")])

        rc, out = migrate(copy)
        check("applies_nothing_twice", rc == 0 and f"0 applied, {n} already up to date" in out, out)

        with open(os.path.join(copy, "0003_catalog_seed.sql"), "a") as f:
            f.write("\n-- an edit after the fact\n")
        rc, out = migrate(copy)
        check("refuses_an_edited_migration",
              rc != 0 and "0003_catalog_seed.sql was changed after it was applied" in out, out)

        shutil.copy(os.path.join(ROOT, "migrations", "0003_catalog_seed.sql"), copy)
        with open(os.path.join(copy, "0001_another.sql"), "w") as f:
            f.write("SELECT 1;\n")
        rc, out = migrate(copy)
        check("refuses_two_files_with_one_number", rc != 0 and "share a number" in out, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


checklib.run(main)
