"""checklib.py — what the scripted checks (tests/*_check.py) share.

The project's paths; check(), which records and prints one result; run(),
which runs a check's main and prints the summary line scripts/run-tests.sh
reads (Check's own format); an HTTP call; psql as the owner with the
password off the command line; and starting and stopping one of the
project's executables. A check imports it from its own folder:

    import checklib
    from checklib import check
    ...
    checklib.run(main)
"""
import os
import subprocess
import sys
import time
import urllib.parse
from http.client import HTTPConnection

# The tree this file is in (a copy made by new_service_check is its own
# tree); the build and var/ as scripts/run-tests.sh says (make asan builds
# elsewhere), else the tree's own.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ORDERSUITE_BIN", os.path.join(ROOT, "build", "bin"))
VAR = os.path.realpath(os.environ.get("ORDERSUITE_VAR", os.path.join(ROOT, "var")))
LOG_DIR = os.path.join(VAR, "log", "tests")

checks = []


def check(name, ok, detail=""):
    """Records one result and prints it ('ok  name', or 'FAIL name: detail');
    returns whether it passed."""
    ok = bool(ok)
    checks.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
    return ok


def run(main):
    """Runs main() (an exception is a failed check, not a crash of the
    runner), then summary()."""
    try:
        main()
    except Exception as e:
        checks.append(False)
        print(f"ERROR {type(e).__name__}: {e}")
    summary()


def summary():
    """Prints the summary line and exits: 0 only when at least one check ran
    and every one passed."""
    failed = checks.count(False)
    total = len(checks)
    print(f"{100 * (total - failed) // max(1, total)}%: Checks: {total}, "
          f"Failures: {failed}, Errors: 0")
    sys.exit(1 if failed or total == 0 else 0)


def wait_until(cond, timeout_s, step_s=0.1):
    """Polls cond() until it is true or timeout_s passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step_s)


def http(method, port, path, body=None, headers=None, timeout=10):
    """One request to 127.0.0.1:port: (status, headers as a dict with
    lower-case names, body bytes); (0, {}, why) when no answer came."""
    c = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=dict(headers or {}))
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except OSError as e:
        return 0, {}, str(e).encode()
    finally:
        c.close()


def ready(port):
    """The service on port answers /readyz with 200."""
    return http("GET", port, "/readyz", timeout=2)[0] == 200


def psql(sql, url_var="OWNER_DATABASE_URL", timeout=60, **params):
    """Runs sql with psql as the URL in url_var, its password in PGPASSWORD
    (never on the command line); each keyword is a psql variable, used in
    sql as :'name' (quoted by psql). Returns (exit code, stdout + stderr)."""
    u = urllib.parse.urlsplit(os.environ[url_var])
    bare = u._replace(netloc=f"{u.username}@{u.hostname}:{u.port}").geturl()
    env = dict(os.environ, PGPASSWORD=urllib.parse.unquote(u.password or ""))
    cmd = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
    for k, v in params.items():
        cmd += ["-v", f"{k}={v}"]
    # On stdin, not -c: psql interpolates variables only there.
    p = subprocess.run(cmd + [bare], input=sql, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def api_token(client, path):
    """A new API token for client, its hash added to the tokens file at path
    (scripts/api-token.sh); "" when that failed."""
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "api-token.sh"), client, path],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def start(exe, env, log_name):
    """Starts BIN/exe with the environment env (all of it), its output in
    LOG_DIR/log_name (made afresh); returns the Popen. Stop it with stop()."""
    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, log_name), "w") as log:
        return subprocess.Popen([os.path.join(BIN, exe)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def stop(proc, timeout_s=20):
    """SIGTERM, up to timeout_s for it to exit, then SIGKILL; returns its
    exit code (negative: the signal that ended it)."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
