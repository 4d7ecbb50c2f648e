#!/usr/bin/env python3
"""listen_check.py — loopback really means loopback.

After `make up` (run-tests.sh runs after it) and again after the suite's
services have started, reads the kernel's table of listening TCP sockets
(/proc/net/tcp and /proc/net/tcp6) and checks that none of the project's
listeners is on a wildcard address (0.0.0.0 or ::) or any other non-loopback
address: AMQP (and AMQPS under `make up TLS=1`), the management UI, Erlang distribution (AMQP_PORT + 20000),
epmd (4369), PostgreSQL and every service's HTTP/metrics port, and
order-api's operations port (OPS_PORT), from scripts/suite.sh.

Starts the services with scripts/services.sh (the same path `make demo` uses;
in the tests' environment when run by run-tests.sh),
waits (bounded) until each answers /readyz, checks, then stops them.
Prints one line per check and a Check-style summary line.
"""
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.environ.get("ORDERSUITE_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("ORDERSUITE_BIN", os.path.join(ROOT, "build", "bin"))
checks = []


def check(name, ok, detail=""):
    checks.append(bool(ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))


def listeners():
    """(address, port) of every listening TCP socket in this network namespace."""
    out = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # The kernel prints the address as 32-bit words in host order.
            words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
            b = b"".join(words)
            if v6:
                if b[:12] == b"\0" * 10 + b"\xff\xff":  # ::ffff:a.b.c.d
                    addr = ".".join(str(x) for x in b[12:])
                else:
                    addr = ":".join(b[i:i + 2].hex() for i in range(0, 16, 2))
            else:
                addr = ".".join(str(x) for x in b)
            out.append((addr, int(port_hex, 16)))
    return out


def is_loopback(addr):
    return addr.startswith("127.") or addr == "0000:0000:0000:0000:0000:0000:0000:0001"


def services():
    """(name, port, operations port or None) of every service in
    scripts/suite.sh, in this environment (run-tests.sh moves the tests'
    services by ORDERSUITE_PORT_OFFSET)."""
    offset = int(os.environ.get("ORDERSUITE_PORT_OFFSET", "0"))
    out = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/suite.sh"; '
                          'for n in $(suite_names); do echo "$n $(suite_field "$n" 5) $(suite_field "$n" 7)"; done'],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [(r[0], int(r[1]) + offset, int(r[2]) + offset if len(r) > 2 else None) for r in rows]


def server_ports():
    amqp = int(os.environ.get("AMQP_PORT", "5672"))
    return {
        "AMQP": amqp,
        # make up TLS=1: the amqps listener instead of the plain one.
        "AMQPS": int(os.environ.get("AMQPS_PORT", "5671")),
        "management": int(os.environ.get("MGMT_PORT", "15672")),
        "Erlang distribution": amqp + 20000,
        "epmd": int(os.environ.get("ERL_EPMD_PORT", "4369")),
        "PostgreSQL": int(os.environ.get("PG_PORT", "5432")),
    }


def check_ports(phase, ports):
    socks = listeners()
    for what, port in ports.items():
        on = sorted({a for a, p in socks if p == port})
        if not on:
            # Not every server need listen (epmd may be elsewhere); a port
            # nobody listens on cannot be open to the world.
            continue
        wide = [a for a in on if not is_loopback(a)]
        check(f"{phase}_{what.replace(' ', '_')}_{port}_on_loopback_only", not wide,
              f"{what} listens on {', '.join(wide)} port {port}")


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def main():
    ports = server_ports()
    # Every server must be listening after make up, on loopback.
    socks = listeners()
    for what in ("AMQP", "management", "Erlang distribution", "PostgreSQL"):
        check(f"up_{what.replace(' ', '_')}_listens", any(p == ports[what] for _, p in socks),
              f"nothing listens on port {ports[what]}")
    check_ports("up", ports)

    svcs = services()
    build = os.path.relpath(os.path.dirname(BIN), ROOT)
    env = dict(os.environ, BUILD=build)
    svc_sh = os.path.join(ROOT, "scripts", "services.sh")
    subprocess.run(["bash", svc_sh, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        pending = {n: p for n, p, _ in svcs}
        pending.update({f"{n} (operations)": o for n, _, o in svcs if o})
        while pending and time.monotonic() < deadline:
            pending = {n: p for n, p in pending.items() if not ready(p)}
            if pending:
                time.sleep(0.2)
        check("services_ready", not pending, f"not ready within 60 s: {', '.join(pending)}")
        ports.update({f"service {n}": p for n, p, _ in svcs})
        ports.update({f"operations {n}": o for n, _, o in svcs if o})
        for n, _, o in svcs:
            if o:  # it must listen there (and on loopback, checked below)
                check(f"services_{n}_operations_port_{o}_listens",
                      any(p == o for _, p in listeners()), f"nothing listens on {o}")
        check_ports("services", ports)
    finally:
        subprocess.run(["bash", svc_sh, "stop"], env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # an error is a failed check, not a crash of the runner
        checks.append(False)
        print(f"ERROR {type(e).__name__}: {e}")
    failed = checks.count(False)
    print(f"{100 * (len(checks) - failed) // max(1, len(checks))}%: Checks: {len(checks)}, "
          f"Failures: {failed}, Errors: 0")
    sys.exit(1 if failed else 0)
