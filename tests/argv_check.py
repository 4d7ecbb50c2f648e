#!/usr/bin/env python3
"""argv_check.py — no secret reaches any process's command line.

Every user of the machine can read every process's argv (ps, /proc/PID/cmdline),
so passwords and tokens must travel in the environment, stdin or a file. This
puts recording stand-ins (each writes its argv to a log, then runs the real
program) first on PATH for env, setsid, runuser, psql, pgbench and curl, and
in PG_BIN for every PostgreSQL program (psql, pg_ctl, ... that the scripts
run by absolute path, also as the postgres user through runuser), and runs
the project's own paths that handle secrets: `make up` (scripts/up.sh: the
owner role's password, broker users and their passwords, again, as it is
idempotent), `make migrate` (scripts/migrate.sh), scripts/services.sh
start/stop (order-api, as make demo starts it), lib.sh's restock (psql as the
owner, used by bench, chaos and soak), lib.sh's pg_limit (make bench's
pgbench stage, 1 s with 1 client), scripts/psql.sh (the README's way to run
SQL as the owner), lib.sh's mgmt_curl (the management API as the admin),
lib.sh's api_curl (the order API as the demo client, as make demo and chaos
call it) and the README's curl -H @var/api-auth.header (make up writes it).
Then no password of var/ordersuite.env, and not the demo API token, may be in
any recorded argv. A scan of the scripts, tests and docs that tell a shell
what to run catches what the run does not reach: a token expanded into a
header argument ("Bearer $TOKEN"), a curl -u USER:PASSWORD, a docker
-e NAME=VALUE whose value holds a password or token, a psql -v NAME=$..PASSWORD,
a URL with a password variable in it as a command's argument (not an
assignment), and a C test's command line with a URL or secret put in by %s.
Prints one line per check and a Check-style summary line.
"""
import glob
import os
import re
import shutil
import stat
import subprocess
import tempfile

import checklib
from checklib import BIN, ROOT, VAR, check


def secrets():
    out = {}
    with open(os.path.join(VAR, "ordersuite.env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if v and (k.endswith("_PASSWORD") or k == "API_DEMO_TOKEN"):
                out[k] = v
    return out


def main():
    tmp = tempfile.mkdtemp(prefix="ordersuite-argv-")
    os.chmod(tmp, 0o755)  # the shims also run as the rabbitmq and postgres users
    log = os.path.join(tmp, "argv.log")
    open(log, "w").close()
    os.chmod(log, 0o666)
    def stand_in(path, real):
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nprintf "%s " "$0" "$@" >>"{log}"\necho >>"{log}"\nexec {real} "$@"\n')
        os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)

    for prog in ("env", "setsid", "runuser", "psql", "pgbench", "curl"):
        real = shutil.which(prog)
        check(f"{prog}_found", real is not None)
        stand_in(os.path.join(tmp, prog), real)
    # The PostgreSQL programs the scripts run by absolute path ($PG_BIN/psql
    # as the postgres user in pg_super, pg_ctl): a stand-in for each.
    pg_bin = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
    shim_bin = os.path.join(tmp, "pgbin")
    os.mkdir(shim_bin)
    os.chmod(shim_bin, 0o755)
    for prog in sorted(os.listdir(pg_bin)):
        real = os.path.join(pg_bin, prog)
        if os.access(real, os.X_OK) and not os.path.isdir(real):
            stand_in(os.path.join(shim_bin, prog), real)
    env = dict(os.environ, PATH=tmp + ":" + os.environ["PATH"], PG_BIN=shim_bin,
               BUILD=os.path.relpath(os.path.dirname(BIN), ROOT))

    def run(name, argv):
        r = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        check(f"{name}_runs", r.returncode == 0, (r.stderr or r.stdout)[-300:])

    run("make_up", ["bash", "scripts/up.sh"])
    run("make_migrate", ["bash", "scripts/migrate.sh", os.path.join(os.path.dirname(BIN), "bin", "migrate")])
    run("services_start", ["bash", "scripts/services.sh", "start", "order-api"])
    run("api_curl", ["bash", "-c", 'source scripts/lib.sh; load_env; api="http://127.0.0.1:$(svc_port order-api)"; '
                     'wait_for 30 "order-api" curl -sf -o /dev/null "$api/readyz" && '
                     'api_curl -fsS -m 10 -o /dev/null "$api/orders?limit=1"'])
    hdr = os.path.join(VAR, "api-auth.header")  # the README's curl -H @var/api-auth.header
    check("api_auth_header_mode_600", os.path.exists(hdr) and stat.S_IMODE(os.stat(hdr).st_mode) == 0o600,
          "missing" if not os.path.exists(hdr) else oct(os.stat(hdr).st_mode))
    run("api_auth_header_file", ["bash", "-c", 'source scripts/lib.sh; load_env; '
                                 f'curl -fsS -m 10 -o /dev/null -H @{hdr} '
                                 '"http://127.0.0.1:$(svc_port order-api)/orders?limit=1"'])
    run("services_stop", ["bash", "scripts/services.sh", "stop", "order-api"])
    run("restock", ["bash", "-c", 'source scripts/lib.sh; load_env; export_suite_urls; '
                    'restock 0 "tests/argv_check: nothing to add"'])
    run("bench_pg_limit", ["bash", "-c", 'source scripts/lib.sh; load_env; export_suite_urls; '
                           f'pg_limit 1 1 {tmp} >/dev/null'])
    run("psql_script", ["bash", "scripts/psql.sh", "-qAtX", "-c", "SELECT 1"])
    run("mgmt_curl", ["bash", "-c", 'source scripts/lib.sh; load_env; '
                      'mgmt_curl -fsS -m 10 -o /dev/null "http://127.0.0.1:$MGMT_PORT/api/whoami"'])

    with open(log) as f:
        lines = f.read().splitlines()
    recorded = {line.split(" ")[0] for line in lines}
    check("commands_recorded", all(os.path.join(d, p) in recorded for d, p in (
        (tmp, "setsid"), (tmp, "runuser"), (tmp, "psql"), (tmp, "pgbench"), (tmp, "curl"),
        (shim_bin, "psql"), (shim_bin, "pg_ctl"))),
          f"{len(lines)} lines recorded, by {' '.join(sorted(recorded))}")
    for k, v in sorted(secrets().items()):
        leaks = [line.split(" ")[0].rsplit("/", 1)[-1] for line in lines if v in line]
        check(f"{k}_not_in_argv", not leaks, f"on the command line of {', '.join(sorted(set(leaks)))}")
    shutil.rmtree(tmp, ignore_errors=True)
    scan_sources()


# A secret-bearing shell variable or a literal USER:PASSWORD on a command line
# in the files that tell a shell what to run. The run above covers the helpers;
# this covers the call sites no test runs (the demo's hints, docs, compose,
# the C tests' system() and popen() lines).
SECRET = r"\$\{?[A-Za-z_]*(PASSWORD|TOKEN|SECRET|_pw\b|\bpw\b)"
ARGV_PATTERNS = (
    ("bearer_token_in_argv", re.compile(r"Bearer \\?\$"), None),
    ("curl_u_password_in_argv", re.compile(r"\bcurl\b.*\s-u\s*\S*:"), None),
    ("docker_e_secret_in_argv", re.compile(r"\s-e\s+[A-Z_]+=\S*" + SECRET), None),
    # psql -v pw="$PG_OWNER_PASSWORD" (psql's variables are on its argv).
    ("psql_v_secret_in_argv", re.compile(r"\s(-v\s*|--set[= ])\w+=\S*" + SECRET), None),
    # scheme://user:$PASSWORD@ as an argument; an assignment (NAME=..., export,
    # local), echo / printf (builtins) and a compose file's environment: are not.
    ("url_password_in_argv", re.compile(r"://[^\s\"'/@:]*:(\$|%s|\{)[^@\s]*@"),
     re.compile(r"^\s*((export|local|readonly)\s+)?[A-Za-z_][A-Za-z0-9_]*=\S|^\s*(echo|printf)\b"
                r"|^\s*(- )?[A-Z_]+: ")),
    # A C test's shell line (system, popen) with a URL or a secret quoted in
    # by %s, NAME='%s': the shell's own argv (sh -c "...") holds it. (An
    # environment entry "NAME=%s" for execve is not a command line.)
    ("c_command_line_secret", re.compile(r"\b[A-Z_]*(URL|PASSWORD|TOKEN)=\\?['\"]%s"), None),
)


def scan_sources():
    files = sorted(set(glob.glob(os.path.join(ROOT, "scripts", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "bench", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "tests", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "tests", "*.c"))
                       + glob.glob(os.path.join(ROOT, "docker", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "docs", "*.md"))
                       + [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")]))
    for name, pat, allowed in ARGV_PATTERNS:
        hits = []
        for path in files:
            with open(path, errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if pat.search(line) and not (allowed and allowed.search(line)):
                        hits.append(f"{os.path.relpath(path, ROOT)}:{n}")
        check(name, not hits, " ".join(hits))


if __name__ == "__main__":
    checklib.run(main)
