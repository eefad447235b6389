#!/usr/bin/env python3
"""Compares two results folders of one suite; exits 1 naming every difference.

Usage: compare-results.py SINGLE SHARDED (scripts/slurm-test.sh compares a single-process run
with the merged Slurm run).

Dropped before comparing, because they differ between any two runs or machines:
- `seconds`, `train_seconds` (JSON keys) and the `seconds`, `examples_per_second` CSV
  columns: wall times and throughput derived from them;
- in suite.resolved.json, `path` (the suite file as named on the command line) and
  `data.dir` (where the data folder was found from the working directory): paths.
Everything else must be equal: every other number as written, checkpoints byte for byte.
"""
import csv, json, pathlib, sys

if len(sys.argv) != 3:
    sys.exit("usage: compare-results.py SINGLE SHARDED")
single, sharded = map(pathlib.Path, sys.argv[1:3])
TIMES = {"seconds", "train_seconds", "examples_per_second"}
problems = []

def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in TIMES}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

def first_difference(a, b, where="$"):
    if type(a) is not type(b):
        return f"{where}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}.{k}: only in {'sharded' if k not in a else 'single'}"
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"

def files(root):
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.parts[len(root.parts)] != "jobs"}

a_files, b_files = files(single), files(sharded)
if a_files != b_files:
    problems.append(f"file sets differ: only single {sorted(map(str, a_files - b_files))}, only sharded {sorted(map(str, b_files - a_files))}")
jobs = lambda root: sorted(p.name for p in (root / "jobs").iterdir())
if jobs(single) != jobs(sharded):
    problems.append("job folders (kind-key) differ")

results = json.loads((sharded / "results.json").read_text())
if results.get("missing"):
    problems.append(f"results.json lists missing jobs: {results['missing']}")

compared = 0
for rel in sorted(a_files & b_files):
    a, b = single / rel, sharded / rel
    if rel.suffix == ".json" and rel.parts[0] != "models":
        x, y = strip(json.loads(a.read_text())), strip(json.loads(b.read_text()))
        if rel == pathlib.Path("suite.resolved.json"):
            for v in (x, y):
                v.pop("path", None)
                v.get("data", {}).pop("dir", None)
        d = first_difference(x, y)
    elif rel.suffix == ".csv":
        def rows(p):
            with p.open(newline="") as f:
                return [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(f)]
        d = first_difference(rows(a), rows(b))
    else:
        d = None if a.read_bytes() == b.read_bytes() else "bytes differ"
    compared += 1
    if d:
        problems.append(f"{rel}: {d}")

if problems:
    print(f"{sharded} differs from {single}:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"{sharded} equals {single} ({compared} files compared)")
