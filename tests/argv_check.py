#!/usr/bin/env python3
"""argv_check.py — no secret reaches any process's command line.

Every user of the machine can read every process's argv (ps, /proc/PID/cmdline),
so passwords and tokens must travel in the environment, stdin or a file. This
puts recording stand-ins for env, setsid, psql and curl first on PATH (each
writes its argv to a log, then runs the real program) and runs the project's
own paths that handle secrets: `make up` (scripts/up.sh: broker users and
their passwords, again, as it is idempotent), scripts/services.sh start/stop
(order-api, as make demo starts it), lib.sh's restock (psql as the owner,
used by bench, chaos and soak), scripts/psql.sh (the README's way to run
SQL as the owner), lib.sh's mgmt_curl (the management API as the admin),
lib.sh's api_curl (the order API as the demo client, as make demo and chaos
call it) and the README's curl -H @var/api-auth.header (make up writes it).
Then no password of var/ordersuite.env, and not the demo API token, may be in
any recorded argv. A scan of the scripts, tests and docs that tell a shell
what to run catches what the run does not reach: a token expanded into a
header argument ("Bearer $TOKEN"), a curl -u USER:PASSWORD, or a docker
-e NAME=VALUE whose value holds a password or token.
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
    for prog in ("env", "setsid", "psql", "curl"):
        real = shutil.which(prog)
        check(f"{prog}_found", real is not None)
        path = os.path.join(tmp, prog)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nprintf "%s " "$0" "$@" >>"{log}"\necho >>"{log}"\nexec {real} "$@"\n')
        os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    env = dict(os.environ, PATH=tmp + ":" + os.environ["PATH"],
               BUILD=os.path.relpath(os.path.dirname(BIN), ROOT))

    def run(name, argv):
        r = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        check(f"{name}_runs", r.returncode == 0, (r.stderr or r.stdout)[-300:])

    run("make_up", ["bash", "scripts/up.sh"])
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
    run("psql_script", ["bash", "scripts/psql.sh", "-qAtX", "-c", "SELECT 1"])
    run("mgmt_curl", ["bash", "-c", 'source scripts/lib.sh; load_env; '
                      'mgmt_curl -fsS -m 10 -o /dev/null "http://127.0.0.1:$MGMT_PORT/api/whoami"'])

    with open(log) as f:
        lines = f.read().splitlines()
    check("commands_recorded", any("/setsid " in line for line in lines)
          and any("/psql " in line for line in lines), f"{len(lines)} lines recorded")
    for k, v in sorted(secrets().items()):
        leaks = [line.split(" ")[0].rsplit("/", 1)[-1] for line in lines if v in line]
        check(f"{k}_not_in_argv", not leaks, f"on the command line of {', '.join(sorted(set(leaks)))}")
    shutil.rmtree(tmp, ignore_errors=True)
    scan_sources()


# A secret-bearing shell variable or a literal USER:PASSWORD on a command line
# in the files that tell a shell what to run. The run above covers the helpers;
# this covers the call sites no test runs (the demo's hints, docs, compose).
ARGV_PATTERNS = (
    ("bearer_token_in_argv", re.compile(r"Bearer \\?\$")),
    ("curl_u_password_in_argv", re.compile(r"\bcurl\b.*\s-u\s*\S*:")),
    ("docker_e_secret_in_argv",
     re.compile(r"\s-e\s+[A-Z_]+=\S*\$\{?[A-Z_]*(PASSWORD|TOKEN)")),
)


def scan_sources():
    files = sorted(set(glob.glob(os.path.join(ROOT, "scripts", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "tests", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "docker", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "docs", "*.md"))
                       + [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")]))
    for name, pat in ARGV_PATTERNS:
        hits = []
        for path in files:
            with open(path, errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if pat.search(line):
                        hits.append(f"{os.path.relpath(path, ROOT)}:{n}")
        check(name, not hits, " ".join(hits))


if __name__ == "__main__":
    checklib.run(main)
