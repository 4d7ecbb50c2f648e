#!/usr/bin/env python3
"""bench/cluster_report.py WORK STAMP OUT SECONDS CPUS LOAD_START LOAD_END COMMIT
                         CONNS SECS ORDERS LAT_SECS RATE INSTANCES HTTP_THREADS

Reads what bench/cluster.sh left in WORK (loadgen's JSON and the ledger's
RESULT line of each run, the load average around each set, `rabbitmqctl
list_queues` of the cluster) and writes OUT/STAMP-cluster.json and
OUT/STAMP-cluster.md: accepted/s, completed/s and the POST->CONFIRMED p99 of
the three sets (one node with one instance of each service; the cluster of
three with INSTANCES of each service; one node again), the cluster's as
ratios of each single-node set's, the second single-node set's as a ratio
of the first's (the machine's drift), and each run's ledger. A run whose
ledger is not clean (lost, duplicated, stuck or inconsistent not 0) fails
the report.
"""
import json
import os
import sys

SETS = ("single", "cluster", "again")
RUNS = ("warm", "acc", "cap", "lat")


def load(path):
    with open(path) as f:
        return json.load(f)


def ledger(work, tag):
    path = os.path.join(work, f"{tag}.ledger")
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"cluster_report: no RESULT line in {path}")
    res = dict(kv.split("=", 1) for kv in lines[-1].split()[1:])
    return {k: int(res.get(k, -1)) for k in ("lost", "duplicated", "stuck", "inconsistent", "ok")}


def ratio(a, b):
    return round(b / a, 3) if a else None


def leaders(work):
    """Quorum queue leaders per node, from rabbitmqctl list_queues (JSON)."""
    path = os.path.join(work, "cluster-queues.json")
    count = {}
    try:
        queues = load(path)
    except (OSError, ValueError):
        return None
    for q in queues:
        if q.get("type") == "quorum" and q.get("leader"):
            count[q["leader"]] = count.get(q["leader"], 0) + 1
    return count


def main():
    if len(sys.argv) != 16:
        raise SystemExit(__doc__)
    (work, stamp, out, seconds, cpus, load0, load1, commit, conns, secs, orders, lat_secs,
     rate, instances, http_threads) = sys.argv[1:]
    runs, figures = {}, {}
    for s in SETS:
        for r in RUNS:
            tag = f"{s}-{r}-{stamp}"
            lg = load(os.path.join(work, f"{tag}.json"))
            runs[f"{s}-{r}"] = {"loadgen": lg, "ledger": ledger(work, tag)}
        acc = runs[f"{s}-acc"]["loadgen"]
        cap = runs[f"{s}-cap"]["loadgen"]
        lat = runs[f"{s}-lat"]["loadgen"]
        figures[s] = {
            "accepted_per_s": acc["accepted_per_s"],
            "post_p99_ms": acc["post_ms"]["p99"],
            "completed_per_s": cap["e2e"]["completed_per_s"],
            "confirmed_p99_ms_at_capacity": cap["e2e"]["p99_ms"],
            "confirmed_p50_ms_at_rate": lat["e2e"]["p50_ms"],
            "confirmed_p99_ms_at_rate": lat["e2e"]["p99_ms"],
            "accepted_per_s_at_rate": lat["accepted_per_s"],
        }
    keys = list(figures["single"])
    ratios = {
        "cluster_over_single": {k: ratio(figures["single"][k], figures["cluster"][k]) for k in keys},
        "cluster_over_again": {k: ratio(figures["again"][k], figures["cluster"][k]) for k in keys},
        "again_over_single": {k: ratio(figures["single"][k], figures["again"][k]) for k in keys},
    }
    loadavg = {}
    for s in SETS:
        with open(os.path.join(work, f"{s}.load0")) as f0, open(os.path.join(work, f"{s}.load1")) as f1:
            loadavg[s] = [float(f0.read()), float(f1.read())]
    dirty = [k for k, v in runs.items()
             if any(v["ledger"][f] != 0 for f in ("lost", "duplicated", "stuck", "inconsistent"))
             or v["ledger"]["ok"] != 1]
    doc = {
        "stamp": stamp, "commit": commit, "seconds": int(seconds), "cpus": int(cpus),
        "load_start": load0, "load_end": load1,
        "settings": {"connections": int(conns), "accepted_seconds": int(secs),
                     "capacity_orders": int(orders), "latency_seconds": int(lat_secs),
                     "latency_rate_per_s": int(rate), "instances_per_worker": int(instances),
                     "http_threads": int(http_threads)},
        "sets": figures, "ratios": ratios, "load_average_1m": loadavg, "leaders": leaders(work),
        "runs": {k: {"accepted": v["loadgen"]["accepted"], "ledger": v["ledger"]}
                 for k, v in runs.items()},
        "ledger_clean": not dirty,
    }
    with open(os.path.join(out, f"{stamp}-cluster.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    def row(name, key, fmt):
        cells = [fmt.format(figures[s][key]) for s in SETS]
        cells += [str(ratios[r][key]) if ratios[r][key] is not None else "-"
                  for r in ("cluster_over_single", "cluster_over_again", "again_over_single")]
        return f"| {name} | " + " | ".join(cells) + " |"

    md = [
        f"## make bench, cluster stage, {stamp} (commit {commit})",
        "",
        f"{cpus} CPUs; load average {load0} at the start, {load1} at the end; {seconds} s. "
        f"Three sets on the stage's own pair (bench/cluster.sh), one after the other, with the "
        f"same loadgen settings: {conns} connections; accepted: {secs} s as fast as answered; "
        f"completed: {orders} orders as fast as answered, until all are final; latency: "
        f"{lat_secs} s at {rate} orders/s (half the single node's completed/s). "
        f"HTTP_THREADS={http_threads}. Load average (1 min) at the start and end of each set: "
        + "; ".join(f"{s_} {loadavg[s_][0]:.1f} → {loadavg[s_][1]:.1f}" for s_ in SETS) + ".",
        "",
        f"| figure | A: 1 node, 1 instance each | B: 3 nodes, {instances} instances each "
        "| C: 1 node again | B / A | B / C | C / A (drift) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        row("orders accepted/s", "accepted_per_s", "{:.0f}"),
        row("POST /orders p99 ms (accepted run)", "post_p99_ms", "{:.1f}"),
        row("orders completed/s (capacity probe)", "completed_per_s", "{:.0f}"),
        row("POST→CONFIRMED p99 ms (capacity probe)", "confirmed_p99_ms_at_capacity", "{:.0f}"),
        row(f"POST→CONFIRMED p50 ms at {rate}/s", "confirmed_p50_ms_at_rate", "{:.0f}"),
        row(f"POST→CONFIRMED p99 ms at {rate}/s", "confirmed_p99_ms_at_rate", "{:.0f}"),
        "",
        "| run | orders | lost | duplicated | stuck | inconsistent |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, v in runs.items():
        lg = v["ledger"]
        md.append(f"| {k} | {v['loadgen']['accepted']} | {lg['lost']} | {lg['duplicated']} "
                  f"| {lg['stuck']} | {lg['inconsistent']} |")
    if doc["leaders"]:
        md += ["", "Quorum queue leaders per node: " +
               ", ".join(f"{n} {c}" for n, c in sorted(doc["leaders"].items())) + "."]
    md.append("")
    with open(os.path.join(out, f"{stamp}-cluster.md"), "w") as f:
        f.write("\n".join(md))
    if dirty:
        raise SystemExit(f"cluster_report: the ledger is not clean for {', '.join(dirty)}")


main()
