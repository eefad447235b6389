#!/usr/bin/env python3
"""gauntlet against torchattacks and Foolbox on the same weights and images (`make crosscheck`).

1. Trains the paper's PI-MNIST Maxout MLP in PyTorch (784-240x5-240x5-10, dropout 0.8/0.5,
   max-norm 1.9365, pylearn2's momentum SGD; suites/mnist-paper.toml's `maxout` recipe) or, with
   --checkpoint, loads a gauntlet checkpoint of that architecture into the same PyTorch module.
2. Saves the weights as a safetensors file with a gauntlet spec beside it and loads it into
   gauntlet (Python package), checking that both give the same logits.
3. Runs FGSM, PGD-40 in L-inf and L2 and the AutoAttack-style ensemble in gauntlet, torchattacks
   and Foolbox, and the same FGSM/PGD in float64 PyTorch (the torchattacks algorithm, a float64
   copy of the network), on the first --test test images.
4. Writes, under --out: per-example.csv (every tool's per-example outcome, and the evidence
   columns docs/crosscheck.md uses), agreement.csv and agreement.md (robust accuracy per tool,
   and the share of examples on which two tools agree), and run.json (versions, times).

Robust means "correct both clean and attacked", as gauntlet counts it. Every attack starts from
the clean image (no random start), so any disagreement is a difference in the computation.
"""

import argparse
import csv
import gzip
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import foolbox
import gauntlet
import torchattacks
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(ROOT, "data", "mnist")

# suites/mnist-paper.toml's `maxout` model, as gauntlet's model.json spells it.
SPEC = {
    "arch": {
        "kind": "maxout-mlp", "units": [240, 240], "pieces": 5, "init-range": 0.005,
        "max-norm": 1.9365,
        "input-dropout": {"include": 0.8, "scale": 1.0},
        "hidden-dropout": {"include": 0.5, "scale": 2.0},
    },
    "input": [1, 28, 28],
    "n-classes": 10,
}


def idx(name, offset):
    with gzip.open(os.path.join(MNIST, name), "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def mnist(split):
    x = idx(f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32) / 255.0
    y = idx(f"{split}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return x, y


class MaxoutMLP(nn.Module):
    """gauntlet's maxout-mlp layer for layer: pieces of unit j are rows j*5 .. j*5+4."""

    def __init__(self, pieces=5):
        super().__init__()
        self.pieces = pieces
        self.h0 = nn.Linear(784, 240 * pieces)
        self.h1 = nn.Linear(240, 240 * pieces)
        self.out = nn.Linear(240, 10)
        for layer in (self.h0, self.h1, self.out):
            nn.init.uniform_(layer.weight, -0.005, 0.005)
            nn.init.zeros_(layer.bias)

    def maxout(self, z):
        return z.view(z.shape[0], -1, self.pieces).amax(dim=2)

    def forward(self, x):
        x = x.flatten(1)
        if self.training:
            # pylearn2's input dropout with scale 1: kept pixels are not rescaled.
            x = x * torch.bernoulli(torch.full_like(x, 0.8))
        h = F.dropout(self.maxout(self.h0(x)), 0.5, self.training)
        h = F.dropout(self.maxout(self.h1(h)), 0.5, self.training)
        return self.out(h)


def train(net, x, y, epochs, seed):
    """pylearn2's SGD: v <- mu v - lr g, lr = 0.1 / 1.00007^t (floor 1e-6), mu 0.5 -> 0.7 over
    10 epochs, batch 100, rows of every weight clipped to norm 1.9365 after each step."""
    gen = torch.Generator().manual_seed(seed)
    params = list(net.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    step = 0
    net.train()
    for epoch in range(1, epochs + 1):
        mu = 0.5 + 0.2 * min((epoch - 1) / 9, 1.0)
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 100):
            batch = order[i : i + 100]
            loss = F.cross_entropy(net(x[batch]), y[batch])
            net.zero_grad()
            loss.backward()
            lr = max(0.1 / 1.00007**step, 1e-6)
            with torch.no_grad():
                for p, v in zip(params, velocity):
                    v.mul_(mu).sub_(lr * p.grad)
                    p.add_(v)
                for layer in (net.h0, net.h1, net.out):
                    norms = layer.weight.norm(dim=1, keepdim=True)
                    layer.weight.mul_(norms.clamp(max=1.9365) / norms.clamp(min=1e-7))
            step += 1
            total += loss.item() * len(batch)
        print(f"  epoch {epoch}: train loss {total / len(x):.4f}", flush=True)
    net.eval()


def ce_grad(net, x, y):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(net(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(net, x, y, eps):
    return (x + eps * ce_grad(net, x, y).sign()).clamp(0, 1)


def pgd_linf(net, x, y, eps, alpha, steps):
    adv = x.clone()
    for _ in range(steps):
        adv = adv + alpha * ce_grad(net, adv, y).sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


def pgd_l2(net, x, y, eps, alpha, steps):
    # torchattacks.PGDL2's arithmetic (its 1e-10 guard included).
    adv = x.clone()
    for _ in range(steps):
        g = ce_grad(net, adv, y)
        shape = [-1] + [1] * (x.dim() - 1)
        adv = adv + alpha * g / (g.flatten(1).norm(dim=1).view(shape) + 1e-10)
        delta = adv - x
        factor = (eps / delta.flatten(1).norm(dim=1)).clamp(max=1.0).view(shape)
        adv = (x + delta * factor).clamp(0, 1)
    return adv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=50, help="PyTorch training epochs")
    ap.add_argument("--checkpoint", help="a gauntlet maxout-mlp checkpoint to load instead")
    ap.add_argument("--test", type=int, default=1000, help="test images attacked")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "crosscheck", "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    # Before the network is built: its initial weights come from this seed too.
    torch.manual_seed(args.seed)
    net = MaxoutMLP()
    if args.checkpoint:
        net.load_state_dict(load_file(args.checkpoint))
        net.eval()
        origin = f"gauntlet checkpoint {args.checkpoint}"
    else:
        x_train, y_train = mnist("train")
        print(f"training the Maxout MLP in PyTorch, {args.epochs} epochs on 50,000 images")
        start = time.perf_counter()
        train(net, x_train[:50000], y_train[:50000], args.epochs, args.seed)
        origin = f"trained in PyTorch, {args.epochs} epochs, {time.perf_counter() - start:.0f} s"
    print(origin)

    tmp = tempfile.mkdtemp()
    weights = os.path.join(tmp, "maxout.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    with open(os.path.join(tmp, "maxout.json"), "w") as f:
        json.dump(SPEC, f)
    model = gauntlet.load(weights)

    x_test, y_test = mnist("t10k")
    with torch.no_grad():
        full = net(torch.from_numpy(x_test)).argmax(1).numpy()
    test_error = float((full != y_test).mean())
    x, y = x_test[: args.test].reshape(-1, 1, 28, 28), y_test[: args.test]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net64 = MaxoutMLP().double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    net64.eval()
    with torch.no_grad():
        logits = net(xt)
        logits64 = net64(xt.double())
    logit_diff = float(np.abs(model.logits(x) - logits.numpy()).max())
    clean_ok = (logits.argmax(1) == yt).numpy()
    print(f"test error {test_error:.4f}; logits, gauntlet against PyTorch: max |difference| "
          f"{logit_diff:.1e}")

    # Evidence: is the true class's softmax 1.0 in float32 (its gradient term then rounds to 0),
    # and how far does the float32 gradient's sign pattern agree with float64's?
    g32 = ce_grad(net, xt, yt)
    g64 = ce_grad(net64, xt.double(), yt)
    p_true = F.softmax(logits, 1).gather(1, yt.view(-1, 1)).squeeze(1)
    margin = (logits64.gather(1, yt.view(-1, 1)).squeeze(1)
              - logits64.scatter(1, yt.view(-1, 1), -np.inf).amax(1))
    evidence = {
        "margin": margin.numpy(),
        "p_true_is_one_f32": (p_true == 1.0).numpy().astype(int),
        "sign_match_f32_f64": (g32.sign() == g64.sign()).flatten(1).double().mean(1).numpy(),
        "grad_norm_f32": g32.flatten(1).norm(dim=1).double().numpy(),
        "grad_norm_f64": g64.flatten(1).norm(dim=1).numpy(),
    }

    fmodel = foolbox.PyTorchModel(net, bounds=(0, 1), device="cpu")
    runs = [
        ("fgsm", "inf", 0.1), ("fgsm", "inf", 0.25),
        ("pgd-linf", "inf", 0.1), ("pgd-linf", "inf", 0.2),
        ("pgd-l2", 2, 1.5), ("pgd-l2", 2, 3.0),
        ("auto-linf", "inf", 0.1),
    ]
    columns = {"index": np.arange(len(y)), "label": y, "clean_correct": clean_ok.astype(int)}
    columns.update(evidence)
    rows = []
    for name, norm, eps in runs:
        robust, seconds, adv = {}, {}, {}

        def score(images):
            with torch.no_grad():
                return (net(images.float()).argmax(1) == yt).numpy() & clean_ok

        steps = 40
        alpha = 0.01 if norm == "inf" else 2.5 * eps / steps
        if name == "fgsm":
            options = dict(attack="fgsm")
        elif name.startswith("pgd"):
            options = dict(attack="pgd", steps=steps, step_size={"absolute": alpha},
                           random_start=False, early_stop=False)
        else:
            options = dict(attack="auto")
        start = time.perf_counter()
        result = gauntlet.attack(model, x, y, norm=norm, eps=eps, seed=args.seed,
                                 **options)
        seconds["gauntlet"] = time.perf_counter() - start
        robust["gauntlet"] = result.examples["robust"].astype(bool)
        g_adv = torch.from_numpy(result.adversarials.reshape(x.shape))
        delta = (g_adv - xt).flatten(1)
        size = delta.abs().amax(1) if norm == "inf" else delta.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6, f"{name}: outside the ε-ball"
        assert 0.0 <= float(g_adv.min()) and float(g_adv.max()) <= 1.0, f"{name}: outside [0, 1]"
        robust["gauntlet-scored-by-pytorch"] = score(g_adv)

        if name == "fgsm":
            tools = {
                "torchattacks": lambda: torchattacks.FGSM(net, eps=eps)(xt, yt),
                "foolbox": lambda: foolbox.attacks.FGSM()(fmodel, xt, yt, epsilons=eps)[1],
                "pytorch-float64": lambda: fgsm(net64, xt.double(), yt, eps),
            }
        elif name.startswith("pgd"):
            ta_pgd, fb_pgd, f64_pgd = (
                (torchattacks.PGD, foolbox.attacks.LinfPGD, pgd_linf) if norm == "inf"
                else (torchattacks.PGDL2, foolbox.attacks.L2PGD, pgd_l2)
            )
            tools = {
                "torchattacks": lambda: ta_pgd(
                    net, eps=eps, alpha=alpha, steps=steps, random_start=False)(xt, yt),
                "foolbox": lambda: fb_pgd(
                    abs_stepsize=alpha, steps=steps, random_start=False)(
                        fmodel, xt, yt, epsilons=eps)[1],
                "pytorch-float64": lambda: f64_pgd(net64, xt.double(), yt, eps, alpha, steps),
            }
        else:
            tools = {
                "torchattacks": lambda: torchattacks.AutoAttack(
                    net, norm="Linf", eps=eps, version="standard", n_classes=10,
                    seed=args.seed)(xt, yt),
            }
        for tool, run in tools.items():
            start = time.perf_counter()
            adv[tool] = run()
            seconds[tool] = time.perf_counter() - start
            robust[tool] = score(adv[tool])
        label = f"{name} eps={eps}"
        for tool, r in robust.items():
            columns[f"{label} {tool}"] = r.astype(int)
        base = robust["gauntlet"]
        row = {"attack": name, "norm": norm, "eps": eps, "n": len(y),
               "clean": float(clean_ok.mean())}
        for tool, r in robust.items():
            row[f"robust {tool}"] = float(r.mean())
            row[f"seconds {tool}"] = round(seconds.get(tool, 0.0), 2)
            if tool != "gauntlet":
                row[f"agree gauntlet/{tool}"] = float((r == base).mean())
        if "pytorch-float64" in robust:
            row["agree torchattacks/pytorch-float64"] = float(
                (robust["torchattacks"] == robust["pytorch-float64"]).mean())
            only_gauntlet = base != robust["torchattacks"]
            row["disagreements gauntlet/torchattacks"] = int(only_gauntlet.sum())
            row["of those, p_true is 1.0 in float32"] = int(
                (only_gauntlet & (evidence["p_true_is_one_f32"] == 1)).sum())
        rows.append(row)
        print(f"{label}: " + ", ".join(f"{t} {r.mean():.3f}" for t, r in robust.items()),
              flush=True)

    with open(os.path.join(args.out, "per-example.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns.keys())
        for i in range(len(y)):
            w.writerow([f"{columns[k][i]:.6g}" if isinstance(columns[k][i], float)
                        else columns[k][i] for k in columns])
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(os.path.join(args.out, "agreement.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "agreement.md"), "w") as f:
        tools = ["gauntlet", "gauntlet-scored-by-pytorch", "torchattacks", "foolbox",
                 "pytorch-float64"]
        f.write("| attack | ε | " + " | ".join(tools)
                + " | agree g/ta | agree g/fb | agree g/f64 | agree ta/f64 |\n")
        f.write("|---" * (len(tools) + 6) + "|\n")
        for row in rows:
            cells = [row["attack"], f"{row['eps']:g}"]
            cells += [f"{row[f'robust {t}']:.1%}" if f"robust {t}" in row else "—"
                      for t in tools]
            for k in ["agree gauntlet/torchattacks", "agree gauntlet/foolbox",
                      "agree gauntlet/pytorch-float64", "agree torchattacks/pytorch-float64"]:
                cells.append(f"{row[k]:.1%}" if k in row else "—")
            f.write("| " + " | ".join(cells) + " |\n")
        f.write(f"\nRobust accuracy on the first {len(y)} MNIST test images (clean accuracy "
                f"{clean_ok.mean():.1%}; full test error {test_error:.2%}); g = gauntlet, "
                "ta = torchattacks, fb = Foolbox, f64 = the same algorithm in float64 PyTorch. "
                f"Model: {origin}.\n")
    # The numbers docs/crosscheck.md quotes, per attack: who disagrees, and on which examples.
    p_one = evidence["p_true_is_one_f32"] == 1
    with open(os.path.join(args.out, "agreement.md"), "a") as f:
        f.write(f"\nEvidence (float32 p_y = 1.0 on {int(p_one.sum())} of {len(y)} images; "
                f"smallest float64 margin among them {evidence['margin'][p_one].min(initial=np.inf):.2f}):\n\n")
        f.write("| attack | ε | g ≠ ta | of those p_y = 1.0 | g broken, ta robust | "
                "median sign match f32/f64 (disagreeing / agreeing) | largest f32 ‖∇ₓL‖ of "
                "the disagreeing | g ≠ fb | g ≠ f64 |\n")
        f.write("|---" * 9 + "|\n")
        for name, norm, eps in runs[:-1]:
            label = f"{name} eps={eps}"
            g = columns[f"{label} gauntlet"]
            ta = columns[f"{label} torchattacks"]
            differ = g != ta
            agree = (~differ) & clean_ok
            sign = evidence["sign_match_f32_f64"]
            f.write(f"| {name} | {eps:g} | {int(differ.sum())} | {int((differ & p_one).sum())} | "
                    f"{int((differ & (g == 0)).sum())} | "
                    f"{np.median(sign[differ]) if differ.any() else float('nan'):.3f} / "
                    f"{np.median(sign[agree]) if agree.any() else float('nan'):.3f} | "
                    f"{evidence['grad_norm_f32'][differ].max() if differ.any() else 0:.2g} | "
                    f"{int((g != columns[f'{label} foolbox']).sum())} | "
                    f"{int((g != columns[f'{label} pytorch-float64']).sum())} |\n")
        f64_differ = [
            (label, i) for label in [f"{n} eps={e}" for n, _, e in runs[:-1]]
            for i in np.nonzero(columns[f"{label} gauntlet"]
                                != columns[f"{label} pytorch-float64"])[0]
        ]
        f.write("\nFloat64 against gauntlet: "
                + ("; ".join(f"{label} #{i} (margin {evidence['margin'][i]:.1f}, float64 "
                             f"‖∇ₓL‖ {evidence['grad_norm_f64'][i]:.2g})"
                             for label, i in f64_differ) or "no disagreement")
                + f". Float64 gradients with ‖∇ₓL‖ < 1e-10: "
                f"{int((evidence['grad_norm_f64'] < 1e-10).sum())}.\n")
    meta = {
        "model": origin, "test_error": test_error, "logit_max_abs_diff": logit_diff,
        "images": len(y), "seed": args.seed, "threads": args.threads,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "torchattacks": torchattacks.__version__,
                     "foolbox": foolbox.__version__},
        "cpu": platform.processor() or platform.machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "p_true_is_one_f32": int(evidence["p_true_is_one_f32"].sum()),
    }
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(open(os.path.join(args.out, "agreement.md")).read())


if __name__ == "__main__":
    main()
