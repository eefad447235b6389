#!/usr/bin/env python3
"""Joins `gauntlet-bench --json` and `bench/torch_reference.py --json` records into one table:
throughput of each model and workload in both, the ratio gauntlet / PyTorch (above 1: gauntlet
is faster), and each one's share of the machine's f32 peak.

The practical peak is the better of the two measured 2048^3 sgemm rates (both libraries time
the same product on the same threads); the theoretical one comes from gauntlet's record
(threads x clock x FLOPs per cycle, crates/bench/src/machine.rs).

A file may hold several runs one after the other (`make bench-compare-paired` appends one
run per model and repeat, gauntlet's and PyTorch's back to back): then the i-th record of a
model and workload in one file is paired with the i-th in the other, the ratio is the median of
the pairs' ratios, the throughputs are medians, and the range of the pairs' ratios is shown.
A host whose speed drifts between minutes then moves both sides of a pair alike.

Usage: compare.py GAUNTLET.jsonl TORCH.jsonl [--markdown]
"""

import argparse
import json
import statistics
import sys


def read(path):
    try:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: reading {path}: {e}")
    machines = [r for r in records if r.get("record") == "machine"]
    if not machines:
        sys.exit(f"error: {path} has no machine record: expected the output of --json")
    if len({m["threads"] for m in machines}) > 1:
        sys.exit(f"error: {path} mixes runs on different thread counts")
    machine = dict(machines[0])
    # Runs without the sgemm measurement (--no-peak) leave the peak to the one that made it.
    peaks = [m["sgemm_gflops"] for m in machines if m.get("sgemm_gflops")]
    machine["sgemm_gflops"] = max(peaks) if peaks else None
    workloads = {}
    for r in records:
        if r.get("record") == "workload":
            workloads.setdefault((r["model"], r["workload"]), []).append(r)
    return machine, workloads


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gauntlet")
    p.add_argument("torch")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args()
    g_machine, g = read(args.gauntlet)
    t_machine, t = read(args.torch)
    if g_machine["threads"] != t_machine["threads"]:
        sys.exit(f"error: thread counts differ: gauntlet {g_machine['threads']}, "
                 f"PyTorch {t_machine['threads']}; rerun both with the same --threads")
    peaks = [m.get("sgemm_gflops") for m in (g_machine, t_machine) if m.get("sgemm_gflops")]
    practical = max(peaks) if peaks else None
    theoretical = g_machine.get("theoretical_gflops")

    rows = []
    paired = any(len(v) > 1 for v in list(g.values()) + list(t.values()))
    for key in g:
        if key not in t:
            continue
        a, b = g[key], t[key]
        if len(a) != len(b):
            sys.exit(f"error: {'/'.join(key)}: {len(a)} gauntlet records against {len(b)} "
                     f"PyTorch ones; expected one pair per run")
        for x, y in zip(a, b):
            if abs(x["flops_per_unit"] - y["flops_per_unit"]) > 1e-6 * x["flops_per_unit"]:
                sys.exit(f"error: {key}: FLOP counts differ ({x['flops_per_unit']} vs "
                         f"{y['flops_per_unit']}): the two architectures are not the same")
        median = lambda rs, field: statistics.median(r[field] for r in rs)
        ratios = [x["throughput"] / y["throughput"] for x, y in zip(a, b)]
        share = lambda rs, peak: None if not peak else median(rs, "gflops") / peak
        row = [
            key[0], key[1], a[0]["unit"],
            f"{median(a, 'throughput'):.0f}", f"{median(b, 'throughput'):.0f}",
            f"{statistics.median(ratios):.2f}",
        ]
        if paired:
            row.append(f"{min(ratios):.2f}–{max(ratios):.2f} ({len(ratios)})")
        rows.append(row + [
            pct(share(a, practical)), pct(share(b, practical)),
            pct(share(a, theoretical)), pct(share(b, theoretical)),
        ])
    missing = sorted(set(g) ^ set(t))
    head = ["model", "workload", "unit", "gauntlet", "PyTorch", "ratio g/PT"]
    if paired:
        head.append("pairs' range (n)")
    head += ["g %sgemm", "PT %sgemm", "g %theor", "PT %theor"]
    print(f"{g_machine.get('cpu', '?')}, {g_machine['threads']} threads; "
          f"{g_machine['version']} vs {t_machine['version']}; practical peak (best sgemm) "
          f"{'unknown' if practical is None else f'{practical:.0f}'} GFLOP/s, theoretical "
          f"{'unknown' if theoretical is None else f'{theoretical:.0f}'} GFLOP/s\n")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("| " + " | ".join("---" if i < 3 else "---:" for i in range(len(head))) + " |")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        for r in [head] + rows:
            print("  ".join(str(x).ljust(w) if i < 3 else str(x).rjust(w)
                            for i, (x, w) in enumerate(zip(r, widths))))
    if missing:
        print(f"\nonly in one of the two files: {', '.join('/'.join(k) for k in missing)}")


if __name__ == "__main__":
    main()
