#!/usr/bin/env python3
"""bench/report.py WORK STAMP OUT SECONDS HTTP_THREADS MSG_BYTES CPUS CONNS

Reads what scripts/bench.sh left in WORK (loadgen JSON, pgbench, wrk and
mqbench output) and writes OUT/STAMP.json, OUT/STAMP.md and OUT/STAMP.png
(gnuplot): the suite's figures, the machine's limits, and their ratios.
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


def main():
    work, stamp, out, seconds, threads, msg_bytes, cpus, conns = sys.argv[1:9]
    conns = [int(c) for c in conns.split()]
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
    mq = load(os.path.join(work, "mqbench.json"))
    limits["rabbitmq"] = mq
    cap = load(os.path.join(work, f"cap-{stamp}.json"))
    sus = load(os.path.join(work, f"sus-{stamp}.json"))
    half = load(os.path.join(work, f"half-{stamp}.json"))
    # Each completed order is 5 deliveries (inventory, billing, order-api x2,
    # email) and 3 publishes: compare with the broker's consume rate / 5.
    e2e = {
        "capacity_probe": cap,
        "sustained": sus,
        "half_rate": half,
        "ratio_rabbitmq_consume": sus["e2e"]["completed_per_s"] / (mq["consume_per_s"] / 5.0),
    }
    tags = (["warm"] + [f"acc{c}" for c in conns] + ["cap", "sus", "half"])
    ledgers = {t: ledger(work, f"{t}-{stamp}") for t in tags}
    last = runs[-1]
    targets = {
        "accepted_3000_at_64": last["accepted_per_s"] >= 3000,
        "post_p99_25ms_at_64": last["post_ms"]["p99"] <= 25,
        "completed_1500_sustained": sus["e2e"]["completed_per_s"] >= 1500
        and sus["e2e"]["backlog_trend_per_s"] <= 1,
        "e2e_p99_250ms_at_half": half["e2e"]["p99_ms"] <= 250,
        "accepted_half_of_postgres": last["ratio_postgres"] >= 0.5,
        "commits_per_order_le_1_at_64": last["postgres"]["commits_per_order"] <= 1,
    }
    if last["postgres"]["statements_per_order"] is not None:
        targets["statements_per_order_le_6_at_64"] = last["postgres"]["statements_per_order"] <= 6
    doc = {
        "date": stamp,
        "machine": {"cpus": int(cpus), "uname": os.uname().release},
        "settings": {"http_threads": int(threads), "message_bytes": int(msg_bytes),
                     "synchronous_commit": "on", "publisher_confirms": True},
        "bench_seconds": int(seconds),
        "accepted": runs,
        "limits": limits,
        "end_to_end": e2e,
        "ledger": ledgers,
        "targets_met": targets,
    }
    base = os.path.join(out, stamp)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    md = [f"### make bench, {stamp} ({cpus} CPUs, order-api HTTP_THREADS={threads}, "
          f"run took {seconds} s)", "",
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
    md += ["", "PostgreSQL's work per completed order in these runs (commits: the whole "
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
           f"{mq['consume_per_s']:.0f} consumes/s with manual acks.", "",
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
    md += ["", "Completed/s ÷ (RabbitMQ consumes/s ÷ 5 deliveries per order): "
           f"{e2e['ratio_rabbitmq_consume']:.2f}", "",
           "Ledger after each run (lost / duplicated / stuck / inconsistent): "
           + ", ".join(f"{t} {l['lost']}/{l['duplicated']}/{l['stuck']}/{l['inconsistent']}"
                       for t, l in ledgers.items()), "",
           "Targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                   for k, v in targets.items()), ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md))

    dat = base + ".dat"
    with open(dat, "w") as f:
        for r in runs:
            p = r["post_ms"]
            f.write(f"{r['connections']} {r['accepted_per_s']:.1f} {p['p50']} {p['p95']} "
                    f"{p['p99']} {limits['postgres_order_tx_per_s'][str(r['connections'])]:.1f}\n")
    plot = f"""
set terminal pngcairo size 1000,450 font ',10'
set output '{base}.png'
set multiplot layout 1,2 title 'ordersuite make bench {stamp}'
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
unset multiplot
"""
    subprocess.run(["gnuplot"], input=plot, text=True, check=True)
    os.unlink(dat)


if __name__ == "__main__":
    main()
