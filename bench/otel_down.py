#!/usr/bin/env python3
"""bench/otel_down.py run PREFIX | report WORK | markdown JSON — bench/otel_down.sh's
figures.

run PREFIX: one run's line (PREFIX.json from loadgen, PREFIX.spans from the
  services' /metrics): accepted/s, completed/s, spans exported and dropped.
report WORK: reads WORK/otel_down/runs ("round mode tag endpoint" per run)
  and each run's files, writes WORK/otel_down.json and WORK/otel_down.md
  (bench/report.py adds both to the bench's report) and prints the summary:
  per mode the runs' accepted/s and completed/s, their mean, its ratio to the
  mean without export, and whether it lies in the noise band: the lowest to
  the highest figure of the no-export runs of the same stage. That band is
  wide on a loaded machine, so the report also pairs each run with the
  no-export run of its own round (the modes of a round run back to back):
  each round's ratio mode / no export, their median, their spread (lowest
  to highest, and the median absolute deviation, MAD) and the smallest cost
  the rounds can show: a median ratio below 1 - 2 x 1.4826 x MAD (the MAD
  scaled to a standard deviation, twice). A smaller cost is not told from
  the machine's noise.
markdown JSON: prints the report of a stored WORK/otel_down.json again
  (bench/results/<date>-otel_down.json), with the paired ratios.
"""
import json
import os
import statistics
import sys

MODES = ("none", "refused", "silent")
WHAT = {"none": "no export",
        "refused": "endpoint where nothing listens",
        "silent": "receiver that never answers"}
FIGURES = (("accepted_per_s", "accepted/s"), ("completed_per_s", "completed/s"))


def one(prefix):
    with open(prefix + ".json") as f:
        j = json.load(f)
    spans = {}
    with open(prefix + ".spans") as f:
        for line in f:
            name, exported, dropped = line.split()
            spans[name] = {"exported": int(exported), "dropped": int(dropped)}
    e2e = j.get("e2e", {})
    return {"accepted_per_s": j["accepted_per_s"], "completed_per_s": e2e.get("completed_per_s", 0.0),
            "accepted": j["accepted"], "completed": e2e.get("completed", 0),
            "not_final": e2e.get("not_final", 0), "confirmed": e2e.get("confirmed", 0),
            "post_p99_ms": j["post_ms"]["p99"],
            "spans": spans,
            "spans_dropped": sum(s["dropped"] for s in spans.values()),
            "spans_exported": sum(s["exported"] for s in spans.values())}


def run_line(prefix):
    r = one(prefix)
    print(f"accepted {r['accepted_per_s']:.0f}/s, completed {r['completed_per_s']:.0f}/s; "
          f"spans exported {r['spans_exported']}, dropped {r['spans_dropped']}")


def verdict(mean, lo, hi):
    if mean < lo:
        return "below"
    return "within" if mean <= hi else "above"


def paired(runs, mode, key):
    """mode's figure over the no-export figure of the same round, per round
    that has both; their median, spread and the smallest cost they show."""
    base = {r["round"]: r[key] for r in runs if r["mode"] == "none" and r[key]}
    ratios = [r[key] / base[r["round"]] for r in runs
              if r["mode"] == mode and r["round"] in base]
    if not ratios:
        return None
    med = statistics.median(ratios)
    mad = statistics.median(abs(x - med) for x in ratios)
    return {"ratios": ratios, "median": med, "min": min(ratios), "max": max(ratios),
            "mad": mad, "smallest_cost_shown": 2 * 1.4826 * mad,
            "cost_shown": med < 1 - 2 * 1.4826 * mad}


def report(work):
    d = os.path.join(work, "otel_down")
    runs = []
    with open(os.path.join(d, "runs")) as f:
        for line in f:
            rnd, mode, tag, endpoint = line.split()
            r = one(os.path.join(d, tag))
            r.update({"round": int(rnd), "mode": mode, "tag": tag,
                      "endpoint": None if endpoint == "-" else endpoint})
            runs.append(r)
    base = [r for r in runs if r["mode"] == "none"]
    if not base:
        raise SystemExit("otel_down: no run without export")
    summary = {}
    for mode in MODES:
        rs = [r for r in runs if r["mode"] == mode]
        if not rs:
            continue
        m = {"runs": len(rs), "spans_dropped": sum(r["spans_dropped"] for r in rs),
             "spans_exported": sum(r["spans_exported"] for r in rs)}
        for key, _ in FIGURES:
            vals = [r[key] for r in rs]
            bvals = [r[key] for r in base]
            bmean = statistics.mean(bvals)
            mean = statistics.mean(vals)
            lo, hi = min(bvals), max(bvals)
            m[key] = {"values": vals, "mean": mean,
                      "ratio": mean / bmean if bmean else None,
                      "noise_band_ratio": [lo / bmean, hi / bmean] if bmean else None,
                      "vs_noise_band": verdict(mean, lo, hi),
                      "within_noise": lo <= mean <= hi,
                      "paired": paired(runs, mode, key) if mode != "none" else None}
        summary[mode] = m
    with open(os.path.join(d, "meta")) as f:
        meta = dict(line.rstrip("\n").split(" ", 1) for line in f if " " in line)
    doc = {"date": meta.get("date"), "commit": meta.get("commit"), "cpus": meta.get("cpus"),
           "loadavg_start": meta.get("loadavg_start"), "loadavg_end": meta.get("loadavg_end"),
           "rounds": max(r["round"] for r in runs), "runs": runs, "modes": summary}
    with open(os.path.join(work, "otel_down.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    md = markdown(doc)
    with open(os.path.join(work, "otel_down.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


def paired_lines(doc):
    md = ["", "Paired by round (each run over the no-export run of its own round; a cost "
          "shows only when the median is below 1 - 2 x 1.4826 x MAD):", "",
          "| export | figure | ratios by round | median | lowest–highest | MAD | "
          "smallest cost shown | a cost shown |",
          "|---|---|---|---:|---|---:|---:|---|"]
    for mode in MODES[1:]:
        for key, label in FIGURES:
            p = paired(doc["runs"], mode, key)
            if not p:
                continue
            md.append(f"| {WHAT[mode]} | {label} | " + " ".join(f"{x:.2f}" for x in p["ratios"])
                      + f" | {p['median']:.2f} | {p['min']:.2f}–{p['max']:.2f} | {p['mad']:.2f} "
                      f"| {100 * p['smallest_cost_shown']:.0f} % | "
                      + ("yes" if p["cost_shown"] else "no") + " |")
    return md


def markdown(doc):
    md = [f"Export to an OTLP receiver that is down (bench/otel_down.sh, {doc['date']} on "
          f"{doc['commit']}, {doc['cpus']} CPUs, load average {doc['loadavg_start']} at its start, "
          f"{doc['loadavg_end']} at its end): {doc['rounds']} rounds, the modes interleaved, the "
          "services restarted for each run; the noise band is the lowest to the highest figure "
          "of the no-export runs, as a ratio to their mean.", "",
          "| export | runs | accepted/s | ratio | band | | completed/s | ratio | band | | "
          "spans dropped | exported |",
          "|---|---:|---|---:|---|---|---|---:|---|---|---:|---:|"]
    for mode, m in doc["modes"].items():
        cells = []
        for key, _ in FIGURES:
            f = m[key]
            band = f["noise_band_ratio"]
            cells += [" ".join(f"{v:.0f}" for v in f["values"]) + f" (mean {f['mean']:.0f})",
                      f"{f['ratio']:.2f}" if f["ratio"] is not None else "n/a",
                      f"{band[0]:.2f}–{band[1]:.2f}" if band else "n/a",
                      f["vs_noise_band"] if mode != "none" else ""]
        md.append(f"| {WHAT[mode]} | {m['runs']} | " + " | ".join(cells)
                  + f" | {m['spans_dropped']} | {m['spans_exported']} |")
    md += ["", "Runs in order (round, mode: accepted/s, completed/s): " + "; ".join(
        f"{r['round']} {r['mode']}: {r['accepted_per_s']:.0f}, {r['completed_per_s']:.0f}"
        for r in doc["runs"]) + ".",
           "Orders not CONFIRMED (rejected, cancelled or not final), which make the figures "
           "incomparable: " + str(sum(r["accepted"] - r["confirmed"] for r in doc["runs"])) + "."]
    return md + paired_lines(doc)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run_line(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "markdown":
        with open(sys.argv[2]) as f:
            print("\n".join(markdown(json.load(f))))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
