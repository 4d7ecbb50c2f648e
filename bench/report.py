#!/usr/bin/env python3
"""bench/report.py WORK STAMP OUT SECONDS HTTP_THREADS MSG_BYTES CPUS CONNS PG_BATCHES
                 LOAD_START LOAD_END COMMIT

Reads what scripts/bench.sh left in WORK (loadgen JSON, pgbench, pg_test_fsync,
wrk and mqbench output, bench/counters.py snapshots) and writes OUT/STAMP.json,
OUT/STAMP.md and OUT/STAMP.png (gnuplot): the suite's figures, the machine's
limits, their ratios, and issue #15's targets marked met or not met; and the
receiver-down stage's own report (WORK/otel_down.{json,md},
bench/otel_down.py) when it ran.
"""
import json
import os
import re
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def grep_float(path, pattern):
    with open(path) as f:
        m = re.search(pattern, f.read())
    if not m:
        raise SystemExit(f"report: no {pattern!r} in {path}")
    return float(m.group(1))


def ledger(work, tag):
    """The ledger's RESULT line of one run (scripts/bench.sh ledger_wait) as a
    dict: lost, duplicated, stuck, inconsistent, ok."""
    path = os.path.join(work, f"{tag}.ledger")
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"report: no RESULT line in {path}")
    res = dict(kv.split("=", 1) for kv in lines[-1].split()[1:])
    return {k: int(res.get(k, -1)) for k in ("lost", "duplicated", "stuck", "inconsistent", "ok")}


SERVICE_ROLES = ("orders", "inventory", "billing", "email")


def pg_work(work, tag, orders):
    """PostgreSQL's work per order of one accepted-rate run, from the counters
    scripts/bench.sh read before it (TAG.pg0) and after it drained (TAG.pg1):
    commits of the whole database (the bench's own tools and the services'
    idle sweeps included) and, when pg_stat_statements was loaded, the
    statements of each service's role (BEGIN and COMMIT included)."""
    def read(path):
        with open(path) as f:
            return {k: int(v) for k, v in (l.split() for l in f if l.strip())}
    a, b = read(os.path.join(work, f"{tag}.pg0")), read(os.path.join(work, f"{tag}.pg1"))
    n = max(orders, 1)
    res = {"orders": orders, "commits_per_order": (b["xact_commit"] - a["xact_commit"]) / n,
           "statements_per_order": None, "statements_per_order_by_role": None}
    if any(k.startswith("calls.") for k in b):
        by_role = {r: (b.get(f"calls.{r}", 0) - a.get(f"calls.{r}", 0)) / n for r in SERVICE_ROLES}
        res["statements_per_order_by_role"] = by_role
        res["statements_per_order"] = sum(by_role.values())
    return res


def sustained_cost(work, sus):
    """CPU seconds per 1 000 completed orders for each process, and the
    broker's operations per completed order, over the sustained run (the
    snapshots bench/counters.py took around it)."""
    c0, c1 = load(os.path.join(work, "sus.cpu0")), load(os.path.join(work, "sus.cpu1"))
    a0, a1 = load(os.path.join(work, "sus.amqp0")), load(os.path.join(work, "sus.amqp1"))
    n = max(sus["e2e"]["completed"], 1)
    cpu = {}
    for name, v1 in c1["cpu_s"].items():
        v0 = c0["cpu_s"].get(name)
        if v0 is not None and v1 is not None:
            cpu[name] = (v1 - v0) * 1000.0 / n
    cpu["loadgen"] = sus.get("cpu_s", 0) * 1000.0 / n
    cpu_total = sum(cpu.values())
    ov = {k: (a1["overview"][k] - a0["overview"].get(k, 0)) / n for k in a1["overview"]}
    queues = {}
    for q, st in a1["queues"].items():
        b = a0["queues"].get(q, {})
        d = {k: (st[k] - b.get(k, 0)) / n for k in st}
        if any(d.values()):
            queues[q] = d
    frames = None
    s0, s1 = a0.get("services", {}), a1.get("services", {})
    if s1 and set(s1) == set(s0):
        frames = {svc: {k.replace("ordersuite_", "").replace("_total", ""):
                        (s1[svc][k] - s0[svc][k]) / n for k in s1[svc]} for svc in s1}
    return {"completed": n, "seconds": c1["t"] - c0["t"], "loadavg_end": c1["loadavg"],
            "ack_frames_per_order_by_service": frames,
            "cpu_s_per_1000_orders": cpu, "cpu_s_per_1000_orders_total": cpu_total,
            "amqp_per_order": ov, "amqp_per_order_by_queue": queues}


def baseline(path):
    try:
        return load(path)
    except FileNotFoundError:
        return None


def fdatasync_per_s(path):
    """The first fdatasync line of pg_test_fsync (one 8 kB write): PostgreSQL's
    wal_sync_method on Linux, so the disk's bound on commits/s."""
    return grep_float(path, r"\n\s+fdatasync\s+([0-9.]+) ops/sec")


def main():
    (work, stamp, out, seconds, threads, msg_bytes, cpus, conns, batches, load0, load1,
     commit) = sys.argv[1:13]
    conns = [int(c) for c in conns.split()]
    batches = [int(b) for b in batches.split()]
    runs, limits = [], {"postgres_order_tx_per_s": {}, "http_trivial_per_s": {}}
    for c in conns:
        r = load(os.path.join(work, f"acc{c}-{stamp}.json"))
        pg = grep_float(os.path.join(work, f"pgbench-{c}.out"), r"tps = ([0-9.]+)")
        http = grep_float(os.path.join(work, f"wrk-{c}.out"), r"Requests/sec:\s+([0-9.]+)")
        limits["postgres_order_tx_per_s"][str(c)] = pg
        limits["http_trivial_per_s"][str(c)] = http
        runs.append({
            "connections": c,
            "accepted_per_s": r["accepted_per_s"],
            "post_ms": r["post_ms"],
            "errors": r["http_5xx"] + r["no_answer"] + r["lost"],
            "ratio_postgres": r["accepted_per_s"] / pg if pg else None,
            "ratio_http": r["accepted_per_s"] / http if http else None,
            "postgres": pg_work(work, f"acc{c}-{stamp}", r["accepted"]),
        })
    limits["fdatasync_per_s"] = fdatasync_per_s(os.path.join(work, "pg_test_fsync.out"))
    limits["postgres_batched_orders_per_s_16_clients"] = {
        str(b): b * grep_float(os.path.join(work, f"pgbench-batch{b}.out"), r"tps = ([0-9.]+)")
        for b in batches}
    mq = load(os.path.join(work, "mqbench.json"))
    limits["rabbitmq"] = mq
    # Consumed as the workers consume (multiple-acks), when this run measured
    # it (runs before that measured only one ack per delivery).
    mqb = os.path.join(work, "mqbench-batched.json")
    if os.path.exists(mqb):
        limits["rabbitmq_batched"] = load(mqb)
    mq_bound = limits.get("rabbitmq_batched", mq)
    cap = load(os.path.join(work, f"cap-{stamp}.json"))
    sus = load(os.path.join(work, f"sus-{stamp}.json"))
    half = load(os.path.join(work, f"half-{stamp}.json"))
    cost = sustained_cost(work, sus)
    amqp = cost["amqp_per_order"]
    # The broker alone: an order needs amqp["publish"] confirmed publishes and
    # amqp["deliver_get"] deliveries (each acked); mqbench measured each kind
    # alone on the same broker, which does both on the same cores, so the
    # times add up.
    pub_s = amqp["publish"] / mq_bound["publish_per_s"]
    del_s = amqp["deliver_get"] / mq_bound["consume_per_s"]
    broker_bound = 1.0 / (pub_s + del_s) if pub_s + del_s > 0 else None
    completed = sus["e2e"]["completed_per_s"]
    pg1 = {str(c): limits["postgres_order_tx_per_s"].get(str(c)) for c in (16, 64)}
    e2e = {
        "capacity_probe": cap,
        "sustained": sus,
        "half_rate": half,
        "sustained_cost": cost,
        "broker_bound_orders_per_s": broker_bound,
        "broker_bound_measured_with": {k: mq_bound[k] for k in ("prefetch", "ack_batch")
                                       if k in mq_bound},
        "ratio_broker_bound": completed / broker_bound if broker_bound else None,
        "ratio_postgres_16": completed / pg1["16"] if pg1["16"] else None,
        "ratio_fdatasync": completed / limits["fdatasync_per_s"],
    }
    tags = (["warm"] + [f"acc{c}" for c in conns] + ["cap", "sus", "half"])
    ledgers = {t: ledger(work, f"{t}-{stamp}") for t in tags}
    at64 = next((r for r in runs if r["connections"] == 64), runs[-1])
    base = baseline(os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.json"))
    cpu_limit = base["cpu_s_per_1000_orders_total"] / 3.0 if base else None
    # issue #15's targets, each a ratio to a limit of this same run
    targets = {
        "accepted/s at 64 conns >= 2.0 x pgbench order-tx/s at 64 clients": (
            at64["ratio_postgres"] is not None and at64["ratio_postgres"] >= 2.0,
            f"{at64['ratio_postgres']:.2f} ({at64['accepted_per_s']:.0f}/s)"),
        "POST p99 at 64 conns <= 50 ms": (at64["post_ms"]["p99"] <= 50,
                                          f"{at64['post_ms']['p99']:.0f} ms"),
        "sustained completed/s >= 0.6 x pgbench order-tx/s at 16, backlog trend <= 0": (
            e2e["ratio_postgres_16"] is not None and e2e["ratio_postgres_16"] >= 0.6
            and sus["e2e"]["backlog_trend_per_s"] <= 0,
            f"{e2e['ratio_postgres_16']:.2f} ({completed:.0f}/s), trend "
            f"{sus['e2e']['backlog_trend_per_s']:+.1f}/s"),
        "sustained completed/s >= 0.5 x broker-only bound": (
            e2e["ratio_broker_bound"] is not None and e2e["ratio_broker_bound"] >= 0.5,
            f"{e2e['ratio_broker_bound']:.2f} (bound {broker_bound:.0f}/s)"),
        "POST->CONFIRMED p99 at half rate <= 100 ms": (half["e2e"]["p99_ms"] <= 100,
                                                       f"{half['e2e']['p99_ms']:.0f} ms"),
        "commits per completed order <= 1 (64 conns)": (
            at64["postgres"]["commits_per_order"] <= 1,
            f"{at64['postgres']['commits_per_order']:.2f}"),
        "statements per completed order <= 6 (64 conns)": (
            at64["postgres"]["statements_per_order"] is not None
            and at64["postgres"]["statements_per_order"] <= 6,
            "n/a" if at64["postgres"]["statements_per_order"] is None
            else f"{at64['postgres']['statements_per_order']:.1f}"),
        "CPU s per 1 000 completed orders <= 1/3 of bench/baseline.json": (
            cpu_limit is not None and cost["cpu_s_per_1000_orders_total"] <= cpu_limit,
            f"{cost['cpu_s_per_1000_orders_total']:.1f} s"
            + (f" (limit {cpu_limit:.1f}: a third of {base['cpu_s_per_1000_orders_total']:.1f}"
               f" on {base['commit']})" if base else " (no bench/baseline.json)")),
        "ledger clean after every run": (
            all(l["lost"] == 0 and l["duplicated"] == 0 and l["stuck"] == 0
                for l in ledgers.values()), "lost/duplicated/stuck 0" if all(
                l["lost"] == 0 and l["duplicated"] == 0 and l["stuck"] == 0
                for l in ledgers.values()) else "see ledger"),
    }
    doc = {
        "date": stamp,
        "commit": commit,
        "machine": {"cpus": int(cpus), "uname": os.uname().release,
                    "loadavg_start": load0, "loadavg_end": load1},
        "settings": {"http_threads": int(threads), "message_bytes": int(msg_bytes),
                     "synchronous_commit": "on", "publisher_confirms": True},
        "bench_seconds": int(seconds),
        "accepted": runs,
        "limits": limits,
        "end_to_end": e2e,
        "ledger": ledgers,
        "targets": {k: {"met": v[0], "value": v[1]} for k, v in targets.items()},
    }
    # The receiver-down stage (bench/otel_down.sh), when it ran: its own
    # report, taken as it is.
    otel_down = os.path.join(work, "otel_down")
    if os.path.exists(otel_down + ".json"):
        doc["otel_down"] = load(otel_down + ".json")
    path = os.path.join(out, stamp)
    with open(path + ".json", "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    with open(path + ".md", "w") as f:
        f.write("\n".join(markdown(doc, runs, limits, cap, sus, half, e2e, cost, ledgers,
                                   targets, batches)))
        if "otel_down" in doc:
            with open(otel_down + ".md") as od:
                f.write("\n\n" + od.read())
    plot(path, stamp, runs, conns, limits, sus)


def markdown(doc, runs, limits, cap, sus, half, e2e, cost, ledgers, targets, batches):
    m = doc["machine"]
    mq = limits["rabbitmq"]
    md = [f"### make bench, {doc['date']} on {doc['commit']} ({m['cpus']} CPUs, load average "
          f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end; order-api "
          f"HTTP_THREADS={doc['settings']['http_threads']}; run took {doc['bench_seconds']} s)", "",
          "| conns | accepted/s | POST p50 ms | p95 | p99 | max | PostgreSQL order-tx/s | "
          "ratio | HTTP trivial req/s | ratio |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        c = str(r["connections"])
        p = r["post_ms"]
        md.append(f"| {c} | {r['accepted_per_s']:.0f} | {p['p50']:.1f} | {p['p95']:.1f} | "
                  f"{p['p99']:.1f} | {p['max']:.1f} | "
                  f"{limits['postgres_order_tx_per_s'][c]:.0f} | {r['ratio_postgres']:.2f} | "
                  f"{limits['http_trivial_per_s'][c]:.0f} | {r['ratio_http']:.3f} |")
    md += ["", "The database's commit capacity: the disk "
           f"{limits['fdatasync_per_s']:.0f} fdatasync/s (pg_test_fsync, one 8 kB write); the "
           "order transaction with N orders per commit at 16 clients: " + ", ".join(
               f"N={b} {limits['postgres_batched_orders_per_s_16_clients'][str(b)]:.0f} orders/s"
               for b in batches) + ".", ""]
    md += ["PostgreSQL's work per completed order in these runs (commits: the whole "
           "database, the bench's own queries included; statements: the services' roles, "
           "BEGIN and COMMIT included, from pg_stat_statements):", "",
           "| conns | orders | commits/order | statements/order | order-api | inventory | "
           "billing | email |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        w = r["postgres"]
        by = w["statements_per_order_by_role"] or {}
        cell = (lambda v: "n/a" if v is None else f"{v:.2f}")
        md.append(f"| {r['connections']} | {w['orders']} | {w['commits_per_order']:.2f} | "
                  f"{cell(w['statements_per_order'])} | " +
                  " | ".join(cell(by.get(role)) for role in SERVICE_ROLES) + " |")
    md += ["",
           f"RabbitMQ alone ({mq['bytes']}-byte persistent messages, quorum queue): "
           f"{mq['publish_per_s']:.0f} publishes/s with confirms, "
           f"{mq['consume_per_s']:.0f} consumes/s with manual acks (prefetch 32, one ack each)"
           + (f"; {limits['rabbitmq_batched']['consume_per_s']:.0f} consumes/s as the workers "
              f"consume (prefetch {limits['rabbitmq_batched']['prefetch']}, one multiple-ack "
              f"per up to {limits['rabbitmq_batched']['ack_batch']} that have arrived; "
              f"{limits['rabbitmq_batched']['publish_per_s']:.0f} publishes/s in that run)"
              if "rabbitmq_batched" in limits else "") + ".", "",
           "| end to end | rate asked | accepted/s | completed/s | POST->CONFIRMED p50 ms | "
           "p95 | p99 | max | backlog max | backlog trend /s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in (("capacity probe", cap), (f"sustained {sus['seconds']:.0f} s", sus),
                    ("half rate", half)):
        e = r["e2e"]
        asked = f"{r['rate']:.0f}" if r["rate"] else "max"
        md.append(f"| {name} | {asked} | {r['accepted_per_s']:.0f} | {e['completed_per_s']:.0f} | "
                  f"{e['p50_ms']:.0f} | {e['p95_ms']:.0f} | {e['p99_ms']:.0f} | "
                  f"{e['max_ms']:.0f} | {e['backlog_max']:.0f} | "
                  f"{e['backlog_trend_per_s']:+.1f} |")
    cpu = cost["cpu_s_per_1000_orders"]
    a = cost["amqp_per_order"]
    md += ["", f"The sustained run's cost ({cost['completed']} completed orders, "
           f"{cost['seconds']:.0f} s; load average at its end {cost['loadavg_end']}): "
           "CPU seconds per 1 000 completed orders", "",
           "| " + " | ".join(cpu) + " | all |", "|" + "---:|" * (len(cpu) + 1),
           "| " + " | ".join(f"{v:.2f}" for v in cpu.values())
           + f" | {cost['cpu_s_per_1000_orders_total']:.2f} |", "",
           f"AMQP operations per completed order: {a['publish']:.2f} publishes "
           f"({a['confirm']:.2f} confirms), {a['deliver_get']:.2f} deliveries "
           f"({a['redeliver']:.2f} redelivered), {a['ack']:.2f} acks (deliveries acknowledged: "
           "a multiple-ack counts each one it covers). Per queue (enqueued / delivered / "
           "acked):",
           "", "| queue | enqueued | delivered | acked |", "|---|---:|---:|---:|"]
    for q, d in sorted(cost["amqp_per_order_by_queue"].items()):
        md.append(f"| {q} | {d['publish']:.2f} | {d['deliver_get']:.2f} | {d['ack']:.2f} |")
    if not cost["amqp_per_order_by_queue"]:
        md.append("| (the management API's per-queue counters did not move in this run) | | | |")
    if cost["ack_frames_per_order_by_service"]:
        fr = cost["ack_frames_per_order_by_service"]
        md += ["", "basic.ack frames the services sent per completed order (their /metrics): "
               + ", ".join(f"{svc} {v['ack_frames']:.3f} for {v['deliveries_acked']:.2f} "
                           "deliveries" for svc, v in sorted(fr.items()))
               + f"; in all {sum(v['ack_frames'] for v in fr.values()):.3f}."]
    mqb = limits.get("rabbitmq_batched", mq)
    md += ["", f"Broker-only bound: 1 / ({a['publish']:.2f} / {mqb['publish_per_s']:.0f} + "
           f"{a['deliver_get']:.2f} / {mqb['consume_per_s']:.0f}) = "
           f"{e2e['broker_bound_orders_per_s']:.0f} orders/s; sustained completed/s is "
           f"{e2e['ratio_broker_bound']:.2f} of it, {e2e['ratio_postgres_16']:.2f} of pgbench's "
           f"one-order rate at 16 clients, {e2e['ratio_fdatasync']:.2f} of the disk's "
           "fdatasync/s.", "",
           "Ledger after each run (lost / duplicated / stuck / inconsistent): "
           + ", ".join(f"{t} {l['lost']}/{l['duplicated']}/{l['stuck']}/{l['inconsistent']}"
                       for t, l in ledgers.items()), "",
           "| issue #15 target | value | |", "|---|---|---|"]
    for k, (met, val) in targets.items():
        md.append(f"| {k} | {val} | {'met' if met else '**NOT met**'} |")
    md.append("")
    return md


def plot(path, stamp, runs, conns, limits, sus):
    dat, bl = path + ".dat", path + ".backlog"
    with open(dat, "w") as f:
        for r in runs:
            p = r["post_ms"]
            f.write(f"{r['connections']} {r['accepted_per_s']:.1f} {p['p50']} {p['p95']} "
                    f"{p['p99']} {limits['postgres_order_tx_per_s'][str(r['connections'])]:.1f}\n")
    with open(bl, "w") as f:
        for t, n in sus.get("backlog", []):
            f.write(f"{t} {n}\n")
    gp = f"""
set terminal pngcairo size 1500,450 font ',10'
set output '{path}.png'
set multiplot layout 1,3 title 'ordersuite make bench {stamp}'
set logscale x 2
set xrange [0.8:{max(conns) * 1.25}]
set xlabel 'connections'
set xtics ({', '.join(str(c) for c in conns)})
set key top left
set ylabel 'per second'
set yrange [0:*]
plot '{dat}' using 1:2 with linespoints title 'orders accepted', \\
     '{dat}' using 1:6 with linespoints title 'PostgreSQL order tx (limit)'
set ylabel 'POST /orders latency, ms'
plot '{dat}' using 1:3 with linespoints title 'p50', \\
     '{dat}' using 1:4 with linespoints title 'p95', \\
     '{dat}' using 1:5 with linespoints title 'p99'
unset logscale x
set xrange [0:*]
set xtics autofreq
set xlabel 'seconds into the sustained run ({sus['rate']:.0f} orders/s asked)'
set ylabel 'orders accepted, not yet final'
plot '{bl}' using 1:2 with lines title 'backlog (trend {sus['e2e']['backlog_trend_per_s']:+.1f}/s)'
unset multiplot
"""
    subprocess.run(["gnuplot"], input=gp, text=True, check=True)
    os.unlink(dat)
    os.unlink(bl)


if __name__ == "__main__":
    main()
