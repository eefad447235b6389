"""Throughput of one attack from Python against the CLI's, same model, images and options.

Run by hand (`make python-bench`) on an idle machine. The CLI's time is the attack's own
wall time as it prints it (crafting and scoring); Python's is the whole `gauntlet.attack`
call, array conversions included. The two alternate, REPEATS times each (the machine's
speed drifts), and the best of each is compared.
"""

import argparse
import re
import subprocess
import time
from pathlib import Path

import gauntlet

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "crates/models/tests/fixtures/torch/smallcnn.onnx"
DATA = REPO / "data/mnist"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args()
    model = gauntlet.load(MODEL)
    x, y = gauntlet.load_test_set("mnist", limit=args.n, data_dir=DATA)
    cli_times, py_times = [], []
    for _ in range(args.repeats):
        out = subprocess.run(
            [
                REPO / "target/release/gauntlet", "attack", "--model", MODEL, "--attack", "pgd",
                "--eps", "0.1", "--steps", str(args.steps), "--test-limit", str(args.n),
                "--batch-size", str(args.batch_size), "--data-dir", DATA, "--no-checks",
                "--out", "/tmp/gauntlet-python-bench",
            ],
            check=True, capture_output=True, text=True,
        ).stdout
        # The table row: eps, clean, robust, interval, max |d|, seconds.
        row = next(l for l in out.splitlines() if re.match(r"\s+0\.1\s", l))
        cli_times.append(float(row.split()[-1]))
        start = time.perf_counter()
        gauntlet.attack(
            model, x, y, attack="pgd", eps=[0.1], steps=args.steps, batch_size=args.batch_size
        )
        py_times.append(time.perf_counter() - start)
    cli, py = min(cli_times), min(py_times)
    print(f"SmallCNN (ONNX), PGD-{args.steps} L-inf, {args.n} MNIST test images, batch {args.batch_size}")
    print(f"CLI    {cli:7.2f} s  {args.n / cli:8.1f} examples/s   (runs: {', '.join(f'{t:.2f}' for t in cli_times)})")
    print(f"Python {py:7.2f} s  {args.n / py:8.1f} examples/s   (runs: {', '.join(f'{t:.2f}' for t in py_times)})")
    print(f"Python / CLI throughput: {cli / py:.3f}")


if __name__ == "__main__":
    main()
