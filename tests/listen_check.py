#!/usr/bin/env python3
"""listen_check.py — loopback really means loopback, for every socket the
project's processes listen on.

Which processes are the project's is read from what the project writes, not
from a list of ports: every pid file under var/ (PostgreSQL's postmaster.pid,
RabbitMQ's rabbitmq.pid, scripts/services.sh's var/run/*.pid and the tests'
var/tests/run/*.pid, the mail catcher's, and the same under a second
instance such as check_tls's var/tls-check/), every descendant of those
processes, and epmd (the Erlang port mapper the node starts, which leaves
its parent). Each process's sockets (/proc/PID/fd) are matched with the
kernel's table of listening TCP sockets (/proc/net/tcp, /proc/net/tcp6), as
`ss -ltnp` does; a listener of theirs on 0.0.0.0, :: or any other address
that is not loopback fails.

    listen_check.py               (run by run-tests.sh after make up)
      1. after make up: PostgreSQL, RabbitMQ (AMQP, management, Erlang
         distribution) and epmd must listen, on loopback only;
      2. as `make demo` starts them: the mail catcher (scripts/services.sh
         mailcatcher, SMTP and web UI) and every service of scripts/suite.sh
         (scripts/services.sh start, SMTP_URL to the catcher), with two
         instances of billing and of order-api (INSTANCES_billing=2,
         INSTANCES_order_api=2), in the tests' environment; each instance
         must listen on its own ports (HTTP or metrics, and order-api's
         operations port; the second + 100), and every listener of every
         project process on loopback only; then stops them;
      3. controls: a process of a pid file under a folder of its own that
         listens on 0.0.0.0 must be caught (the check can fail); an epmd
         started by another checkout's node is not this one's, one of this
         checkout's is.
    listen_check.py --under DIR   only: every listener of the processes of
                                  the pid files under DIR (check_tls runs it
                                  on its TLS pair), none on a wide address.

Prints one line per check and a Check-style summary line.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import checklib
from checklib import BIN, ROOT, VAR, check


# ------------------------------------------------------------ the kernel's view

def listening_inodes():
    """{socket inode: (address, port)} of every listening TCP socket in this
    network namespace."""
    out = {}
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # The kernel prints the address as 32-bit words in host order.
            b = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            if v6:
                if b[:12] == b"\0" * 10 + b"\xff\xff":  # ::ffff:a.b.c.d
                    addr = ".".join(str(x) for x in b[12:])
                else:
                    addr = socket.inet_ntop(socket.AF_INET6, b)
            else:
                addr = ".".join(str(x) for x in b)
            out[int(fields[9])] = (addr, int(port_hex, 16))
    return out


def is_loopback(addr):
    return addr.startswith("127.") or addr == "::1"


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def children():
    """{pid: [child pids]} of every process."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def pidfile_pids(under):
    """{pid: pid file} of every live process named by a pid file under
    `under` (*.pid; PostgreSQL's postmaster.pid has the pid on its first
    line)."""
    out = {}
    for dirpath, _, files in os.walk(under):
        for name in files:
            if not name.endswith(".pid"):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path) as f:
                    pid = int(f.readline().strip())
            except (OSError, ValueError):
                continue
            if os.path.exists(f"/proc/{pid}"):
                out[pid] = os.path.relpath(path, VAR)
    return out


def project_processes(under, with_epmd=True):
    """{pid: what} of the processes of the pid files under `under`, their
    descendants, and epmd."""
    roots = pidfile_pids(under)
    kids = children()
    procs = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in procs:
            continue
        procs[pid] = f"{comm(pid)} (pid {pid}, {roots.get(pid, 'a child')})"
        todo.extend(kids.get(pid, []))
    if with_epmd:
        for d in os.listdir("/proc"):
            if d.isdigit() and comm(d) == "epmd" and epmd_is_ours(d):
                procs.setdefault(int(d), f"epmd (pid {d})")
    return procs


def epmd_is_ours(pid, var=VAR):
    """True when epmd was started by one of this checkout's RabbitMQ nodes or
    their tools: scripts/lib.sh rmq_env sets RABBITMQ_NODENAME ordersuite...
    and RABBITMQ_MNESIA_BASE under this checkout's var/ (a second instance
    such as check_tls's too), and the epmd the node forks inherits both. A
    system epmd (Debian's rabbitmq-server or rabbitmqctl run by hand) and
    one left by another checkout's node are not this checkout's listeners."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return False
    base = os.path.realpath(os.fsdecode(env.get(b"RABBITMQ_MNESIA_BASE", b"")) or "/nonexistent")
    under = os.path.join(os.path.realpath(var), "")  # with one trailing /
    return env.get(b"RABBITMQ_NODENAME", b"").startswith(b"ordersuite") and base.startswith(under)


def sockets_of(procs):
    """{pid: [(address, port)]}: the listening sockets each process holds."""
    table = listening_inodes()
    out = {}
    for pid in procs:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in table:
                    out.setdefault(pid, set()).add(table[inode])
    return {p: sorted(s) for p, s in out.items()}


def wide_listeners(procs, socks):
    return [f"{procs[p]} on {a} port {port}" for p, s in socks.items() for a, port in s
            if not is_loopback(a)]


def check_all_loopback(phase, procs, socks):
    n = sum(len(s) for s in socks.values())
    wide = wide_listeners(procs, socks)
    check(f"{phase}_every_listener_on_loopback ({n} sockets of {len(socks)} processes)",
          n > 0 and not wide, "; ".join(wide) or "no listener found")
    for p, s in sorted(socks.items()):
        print(f"     {procs[p]}: {', '.join(f'{a}:{port}' for a, port in s)}")


def ports_of(procs, socks, name):
    """The ports the processes whose comm is `name` listen on."""
    return {port for p, s in socks.items() if comm(p) == name for _, port in s}


# ------------------------------------------------------------------ the phases

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


def after_up():
    procs = project_processes(VAR)
    socks = sockets_of(procs)
    amqp = int(os.environ.get("AMQP_PORT", "5672"))
    want = {
        "PostgreSQL": ("postgres", int(os.environ.get("PG_PORT", "5432"))),
        "AMQP": ("beam.smp", amqp),
        "management": ("beam.smp", int(os.environ.get("MGMT_PORT", "15672"))),
        "Erlang distribution": ("beam.smp", amqp + 20000),
        "epmd": ("epmd", int(os.environ.get("ERL_EPMD_PORT", "4369"))),
    }
    for what, (name, port) in want.items():
        ok = port in ports_of(procs, socks, name)
        if not ok and name == "epmd":
            # The node registers with the epmd already on the port: one left
            # by another checkout's node serves ours. Not this checkout's
            # listener, but it must be on loopback too.
            others = {int(d): f"epmd (pid {d}, another checkout's)" for d in os.listdir("/proc")
                      if d.isdigit() and comm(d) == "epmd"
                      and epmd_is_ours(d, var="/") and not epmd_is_ours(d)}
            osocks = sockets_of(others)
            ok = port in ports_of(others, osocks, name) and not wide_listeners(others, osocks)
            if ok:
                print(f"     epmd on {port} is another checkout's, on loopback: {sorted(others)}")
        check(f"up_{what.replace(' ', '_')}_listens_on_{port}", ok,
              f"no {name} process of the project listens on {port}")
    check_all_loopback("up", procs, socks)


def after_demo():
    """The services and the mail catcher, as scripts/demo.sh starts them."""
    offset = int(os.environ.get("ORDERSUITE_PORT_OFFSET", "0"))
    smtp, web = 1025 + offset, 1080 + offset
    # Two instances of billing and of order-api (README "Several instances
    # of a service"): the second, NAME@2, on each of the first's ports + 100.
    svcs = services()
    svcs += [(f"{n}@2", p + 100, o + 100 if o else None) for n, p, o in svcs
             if n in ("billing", "order-api")]
    env = dict(os.environ, BUILD=os.path.relpath(os.path.dirname(BIN), ROOT),
               SMTP_URL=f"smtp://127.0.0.1:{smtp}", INSTANCES_billing="2",
               INSTANCES_order_api="2")
    svc_sh = os.path.join(ROOT, "scripts", "services.sh")
    run = os.environ.get("ORDERSUITE_RUN_DIR", os.path.join(VAR, "run"))
    try:
        r = subprocess.run(["bash", svc_sh, "mailcatcher", str(smtp), str(web)], env=env,
                           capture_output=True, text=True)
        check("demo_mailcatcher_starts", r.returncode == 0, r.stdout + r.stderr)
        subprocess.run(["bash", svc_sh, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        pending = {n: p for n, p, _ in svcs}
        pending.update({f"{n} (operations)": o for n, _, o in svcs if o})

        def all_ready():
            for n in [n for n, p in pending.items() if checklib.ready(p)]:
                del pending[n]
            return not pending

        checklib.wait_until(all_ready, 60, 0.2)
        check("demo_services_ready", not pending, f"not ready within 60 s: {', '.join(pending)}")

        procs = project_processes(VAR)
        socks = sockets_of(procs)
        # Each started process, found by its pid file, holds its own ports.
        pids = pidfile_pids(run)
        by_file = {os.path.basename(f)[:-4]: p for p, f in pids.items()}
        want = {n: {p} | ({o} if o else set()) for n, p, o in svcs}
        want["mailcatcher"] = {smtp, web}
        for name, ports in want.items():
            got = {port for _, port in socks.get(by_file.get(name, -1), [])}
            check(f"demo_{name}_listens_on_{'_'.join(str(p) for p in sorted(ports))}",
                  ports <= got, f"{name} (pid {by_file.get(name, 'none')}) listens on "
                  f"{sorted(got) or 'nothing'}")
        check_all_loopback("demo", procs, socks)
    finally:
        subprocess.run(["bash", svc_sh, "stop"], env=env, stdout=subprocess.DEVNULL)


def control():
    """A listener on 0.0.0.0 of a process named by a pid file is caught."""
    with tempfile.TemporaryDirectory(prefix="listen-check-") as tmp:
        p = subprocess.Popen([sys.executable, "-c",
                              "import socket, sys, time\n"
                              "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
                              "print(s.getsockname()[1], flush=True); time.sleep(60)\n"],
                             stdout=subprocess.PIPE, text=True)
        try:
            port = int(p.stdout.readline())
            with open(os.path.join(tmp, "wide.pid"), "w") as f:
                f.write(f"{p.pid}\n")
            procs = project_processes(tmp, with_epmd=False)
            wide = wide_listeners(procs, sockets_of(procs))
            check("control_a_wildcard_listener_is_caught",
                  any(f"0.0.0.0 port {port}" in w for w in wide), f"not caught: {wide}")
        finally:
            p.kill()
            p.wait()


def control_epmd():
    """An epmd whose node's data is another checkout's is not this one's;
    one whose node's data is under this checkout's var/ is. (A copy of
    sleep named epmd, with a node's environment.)"""
    with tempfile.TemporaryDirectory(prefix="listen-check-") as tmp:
        fake = os.path.join(tmp, "epmd")
        shutil.copy("/bin/sleep", fake)
        for name, base, want in (
                ("another_checkouts_epmd_is_not_ours",
                 os.path.join(tmp, "other-checkout", "var", "rabbitmq", "mnesia"), False),
                ("this_checkouts_epmd_is_ours", os.path.join(VAR, "rabbitmq", "mnesia"), True)):
            env = dict(os.environ, RABBITMQ_NODENAME="ordersuite@localhost",
                       RABBITMQ_MNESIA_BASE=base)
            p = subprocess.Popen([fake, "60"], env=env)
            try:
                checklib.wait_until(lambda: comm(p.pid) == "epmd", 5)
                got = p.pid in project_processes(tmp)
                check(f"control_{name}", got == want,
                      f"epmd (RABBITMQ_MNESIA_BASE={base}) counted as this checkout's: {got}")
            finally:
                p.kill()
                p.wait()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--under":
        procs = project_processes(sys.argv[2])
        socks = sockets_of(procs)
        check_all_loopback("instance", procs, socks)
        check("instance_has_its_servers", len(socks) >= 3,
              f"only {len(socks)} processes listen under {sys.argv[2]}")
        return
    after_up()
    after_demo()
    control()
    control_epmd()


if __name__ == "__main__":
    checklib.run(main)
