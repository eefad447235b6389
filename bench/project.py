#!/usr/bin/env python3
"""Projected wall time of the full PI-MNIST Maxout recipe (pylearn2 mnist_pi.yaml, then
mnist_pi_continued.yaml) and of the paper reproduction, from `gauntlet-bench --json` records
of the Maxout MLP (BENCHMARKS.md, "Projection").

Per epoch, as crates/train/src/trainer.rs runs it:
  plain        N_train / r_train      + N_valid / r_forward
  adversarial  N_train / r_train_fgsm + N_valid / r_forward
               + n_check * (1 / r_fgsm + 1 / r_forward + S / r_pgd_step + 1 / r_forward)
where r_* are the benchmark's throughputs (examples or images per second; r_pgd_step counts
steps x images), n_check the images of the per-epoch adversarial check
(`adversarial-validation`, none in suites/train/maxout-pylearn2.toml) and S = 10 its PGD steps.
Stage 1 trains on 50,000 and validates on 10,000 for E1 epochs (pylearn2's best epoch was
243, research/paper.md section 2.2, plus the patience of 100: E1 = 343); stage 2 trains on all
60,000 without validation for E2 epochs (until the training objective matches stage 1's: not
known in advance). The paper reproduction (suites/mnist-paper.toml's models with the full
recipe) is one plain and five adversarially trained Maxout MLPs (the Lp members cost what FGSM
training costs: r* is closed-form from the same input gradient); its two sigmoid MLPs (the
benchmark's `mlp`) are not trained with the pylearn2 recipe and are not included.

Usage: project.py GAUNTLET.jsonl [--stage1-epochs 343] [--stage2-epochs 0] [--check-images 0]
"""

import argparse
import json
import sys

PGD_CHECK_STEPS = 10


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records")
    p.add_argument("--stage1-epochs", type=int, default=343)
    p.add_argument("--stage2-epochs", type=int, default=0)
    p.add_argument("--check-images", type=int, default=0,
                   help="images of the per-epoch adversarial check (mnist-paper.toml uses 1000)")
    p.add_argument("--adversarial-models", type=int, default=5)
    p.add_argument("--plain-models", type=int, default=1)
    args = p.parse_args()
    try:
        with open(args.records) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: reading {args.records}: {e}")
    rate = {r["workload"]: r["throughput"] for r in records
            if r.get("record") == "workload" and r.get("model") == "maxout-mlp"}
    needed = ["train", "train-fgsm", "forward"] + (["fgsm", "pgd-step"] if args.check_images else [])
    missing = [w for w in needed if w not in rate]
    if missing:
        sys.exit(f"error: {args.records} lacks maxout-mlp records for {', '.join(missing)}: "
                 f"run gauntlet-bench with --models maxout-mlp and those workloads")

    def epoch(train_rate, n_train, n_valid, check):
        t = n_train / train_rate + n_valid / rate["forward"]
        if check:
            t += check * (1 / rate["fgsm"] + 2 / rate["forward"] + PGD_CHECK_STEPS / rate["pgd-step"])
        return t

    e1, e2 = args.stage1_epochs, args.stage2_epochs
    rows = []
    for name, r in [("plain", rate["train"]), ("adversarial (FGSM, alpha 0.5)", rate["train-fgsm"])]:
        s1 = epoch(r, 50_000, 10_000, args.check_images)
        s2 = epoch(r, 60_000, 0, 0)
        rows.append((name, s1, s2, e1 * s1 + e2 * s2))
    threads = next((r["threads"] for r in records if r.get("record") == "machine"), "?")
    print(f"Maxout MLP, {threads} threads; stage 1: {e1} epochs on 50k/10k, stage 2: {e2} "
          f"epochs on 60k; adversarial check on {args.check_images} images\n")
    print(f"{'model':<30} {'stage-1 epoch':>14} {'stage-2 epoch':>14} {'whole recipe':>14}")
    for name, s1, s2, total in rows:
        print(f"{name:<30} {s1:>12.1f} s {s2:>12.1f} s {total / 3600:>12.2f} h")
    total = args.plain_models * rows[0][3] + args.adversarial_models * rows[1][3]
    print(f"\npaper reproduction ({args.plain_models} plain + {args.adversarial_models} adversarial "
          f"Maxout MLPs, one after the other): {total / 3600:.1f} h = {total / 86400:.2f} days")


if __name__ == "__main__":
    main()
