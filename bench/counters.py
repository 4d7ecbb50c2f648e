#!/usr/bin/env python3
"""bench/counters.py cpu VAR OUT | amqp MGMT_URL OUT

make bench's before/after snapshots around a run (scripts/bench.sh), as JSON
in OUT; bench/report.py subtracts two of them.

cpu: CPU seconds (user + system, from /proc/<pid>/stat) used so far by
  - postgres: the postmaster, every live child of it, and the children it has
    already reaped (its cutime + cstime): a backend that exits between the two
    snapshots still counts;
  - rabbitmq: beam.smp and its children, likewise;
  - each service in VAR/run/<name>.pid.
  loadgen reports its own (getrusage) in its JSON.

amqp: the broker's cumulative message counters from the management API
  (/api/overview and each queue's) and each service's basic.ack frames from
  its /metrics (BENCH_METRICS), with the admin credentials from the
  environment (RABBITMQ_ADMIN_USER / RABBITMQ_ADMIN_PASSWORD). The management
  database refreshes them every 5 s, so the snapshot is taken once two reads
  6 s apart agree (at most 60 s).
"""
import base64
import json
import os
import sys
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    """(ppid, own seconds, reaped children's seconds) of one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    own = (int(rest[11]) + int(rest[12])) / TICK
    reaped = (int(rest[13]) + int(rest[14])) / TICK
    return int(rest[1]), own, reaped


def tree_seconds(root):
    """CPU seconds of root, its live children and the children it reaped."""
    top = stat(root)
    if top is None:
        return None
    total = top[1] + top[2]
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != root:
            s = stat(int(d))
            if s and s[0] == root:
                total += s[1]
    return total


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.readline().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu(var, out):
    procs = {}
    pg = read_pid(os.path.join(var, "postgres", "data", "postmaster.pid"))
    mq = read_pid(os.path.join(var, "rabbitmq", "rabbitmq.pid"))
    for name, pid in (("postgres", pg), ("rabbitmq", mq)):
        procs[name] = tree_seconds(pid) if pid else None
    run = os.path.join(var, "run")
    for f in sorted(os.listdir(run)) if os.path.isdir(run) else []:
        if f.endswith(".pid") and f != "mailcatcher.pid":
            pid = read_pid(os.path.join(run, f))
            s = stat(pid) if pid else None
            procs[f[:-4]] = s[1] if s else None
    with open(out, "w") as f:
        with open("/proc/loadavg") as la:
            load = " ".join(la.read().split()[:3])
        json.dump({"t": time.time(), "loadavg": load, "cpu_s": procs}, f)


def get(url):
    req = urllib.request.Request(url)
    cred = f"{os.environ['RABBITMQ_ADMIN_USER']}:{os.environ['RABBITMQ_ADMIN_PASSWORD']}"
    req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


FIELDS = ("publish", "confirm", "deliver_get", "deliver", "ack", "redeliver", "return_unroutable",
          "drop_unroutable")


def ack_frames():
    """Each service's basic.ack frames and acked deliveries from its /metrics
    (BENCH_METRICS: "name=http://host:port ..."); a service whose page has no
    such counters (before they existed) is left out."""
    out = {}
    for item in os.environ.get("BENCH_METRICS", "").split():
        name, url = item.split("=", 1)
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                page = r.read().decode()
        except OSError:
            continue
        got = {}
        for line in page.splitlines():
            for series in ("ordersuite_ack_frames_total", "ordersuite_deliveries_acked_total"):
                if line.startswith(series + "{"):
                    got[series] = float(line.rsplit(" ", 1)[1])
        if len(got) == 2:
            out[name] = got
    return out


def amqp_once(base):
    ov = get(base + "/api/overview").get("message_stats", {})
    qs = get(base + "/api/queues?columns=name,message_stats")
    return {"overview": {k: ov.get(k, 0) for k in FIELDS}, "services": ack_frames(),
            "queues": {q["name"]: {k: q.get("message_stats", {}).get(k, 0)
                                   for k in ("publish", "deliver_get", "ack", "redeliver")}
                       for q in qs}}


def amqp(base, out):
    prev = amqp_once(base)
    for _ in range(10):
        time.sleep(6)
        cur = amqp_once(base)
        if cur == prev:
            break
        prev = cur
    else:
        print("counters: the broker's counters did not settle in 60 s", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(prev, f)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("cpu", "amqp"):
        raise SystemExit(__doc__)
    (cpu if sys.argv[1] == "cpu" else amqp)(sys.argv[2], sys.argv[3])
