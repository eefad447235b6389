#!/usr/bin/env python3
"""The workloads of `gauntlet-bench` (crates/bench) written in PyTorch, for `make bench-compare`.

Same architectures (pylearn2's Maxout MLP 784-240x5-240x5-10 with its dropout and max-norm,
the paper suite's sigmoid MLP 784-800-800-10, pylearn2's conv Maxout MNIST recipe, the small
CNN), same batch sizes, same steps, same
workload definitions and the same timing loop (interleaved rounds after a warm-up round, the
median per batch), with torch.set_num_threads equal to gauntlet's thread count. Writes the same
JSON-lines records as `gauntlet-bench --json`; bench/compare.py joins the two.

Workloads, per batch (see crates/bench/src/workloads.rs for gauntlet's side):
  forward     eval-mode logits (torch.no_grad, what a PyTorch user would run)
  input-grad  per-example cross-entropy and its input gradient (autograd.grad w.r.t. x only)
  train       train-mode step: dropout, mean cross-entropy, backward, momentum SGD, max-norm,
              loss value and training accuracy read back
  train-fgsm  FGSM adversarial training (eps 0.25, alpha 0.5): the clean backward also yields
              the input gradient, then the adversarial forward/backward, one SGD step
  fgsm        the fast gradient sign attack (eps 0.1, clipped to [0, 1])
  pgd-step    L-inf PGD, 10 steps, random start, no early stop; counts steps x images
  transfer    FGSM crafted on the source, source predictions, target clean and adversarial
              predictions with the target's confidence
  gemm-forward, gemm-train (MLPs only: a profile) the matrix products of the forward pass and
              of the training step alone (x W^T per layer; dY W but for the first layer;
              dY^T x), on fixed operands
"""

import argparse
import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WORKLOADS = ["forward", "input-grad", "train", "train-fgsm", "fgsm", "pgd-step", "transfer",
             "gemm-forward", "gemm-train"]
MODELS = ["maxout-mlp", "mlp", "conv-maxout", "cnn", "smallcnn", "smallcnn-onnx"]
PGD_STEPS = 10
ATTACK_EPS = 0.1
TRAIN_EPS = 0.25


def load_mnist_images(data_dir, n):
    """The first n training images in [0, 1] as (n, 1, 28, 28) float32, and their labels."""
    with gzip.open(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
    images = np.frombuffer(raw, dtype=np.uint8, offset=16)[: n * 784]
    with gzip.open(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    xs = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(n, 1, 28, 28)
    return xs, torch.from_numpy(labels.astype(np.int64))


def dropout(x, include, scale, train):
    """pylearn2's dropout: keep with probability `include`, multiply kept values by `scale`."""
    if not train or (include >= 1.0 and scale == 1.0):
        return x
    return x * (torch.empty_like(x).bernoulli_(include) * scale)


def uniform_(module, r):
    nn.init.uniform_(module.weight, -r, r)
    nn.init.zeros_(module.bias)


class MaxoutMlp(nn.Module):
    """pylearn2 mnist_pi.yaml: 784 -> maxout 240x5 -> maxout 240x5 -> softmax 10."""

    def __init__(self):
        super().__init__()
        self.h0, self.h1, self.out = nn.Linear(784, 1200), nn.Linear(240, 1200), nn.Linear(240, 10)
        for m in (self.h0, self.h1, self.out):
            uniform_(m, 0.005)
        self.max_norms = [(m.weight, 1.9365) for m in (self.h0, self.h1, self.out)]

    def forward(self, x, train):
        h = dropout(x.flatten(1), 0.8, 1.0, train)
        h = self.h0(h).view(-1, 240, 5).amax(2)
        h = dropout(h, 0.5, 2.0, train)
        h = self.h1(h).view(-1, 240, 5).amax(2)
        return self.out(dropout(h, 0.5, 2.0, train))


class Mlp(nn.Module):
    """suites/mnist-paper.toml's sigmoid MLP: 784 -> 800 -> 800 -> 10, no dropout or max-norm."""

    def __init__(self):
        super().__init__()
        self.h0, self.h1, self.out = nn.Linear(784, 800), nn.Linear(800, 800), nn.Linear(800, 10)
        self.max_norms = []

    def forward(self, x, train):
        h = torch.sigmoid(self.h0(x.flatten(1)))
        return self.out(torch.sigmoid(self.h1(h)))


class ConvMaxout(nn.Module):
    """pylearn2 mnist.yaml: 48x2 k8 pool 4/2; 48x2 k8 pad 3 pool 4/2; 24x4 k5 pad 3 pool 2/2;
    softmax 10 on 216 inputs; pooling with cuda-convnet's output size (ceil_mode)."""

    LAYERS = [  # (in, channels, pieces, kernel, pad, pool, stride, max kernel norm)
        (1, 48, 2, 8, 0, 4, 2, 0.9),
        (48, 48, 2, 8, 3, 4, 2, 1.9365),
        (48, 24, 4, 5, 3, 2, 2, 1.9365),
    ]

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, ch * pieces, k, padding=pad) for cin, ch, pieces, k, pad, *_ in self.LAYERS
        )
        self.out = nn.Linear(216, 10)
        for m in list(self.convs) + [self.out]:
            uniform_(m, 0.005)
        self.max_norms = [(c.weight, l[7]) for c, l in zip(self.convs, self.LAYERS)]
        self.max_norms.append((self.out.weight, 1.9365))

    def forward(self, x, train):
        h = x
        for i, (conv, (_, ch, pieces, _, _, pool, stride, _)) in enumerate(zip(self.convs, self.LAYERS)):
            h = dropout(h, 0.8, 1.0, train) if i == 0 else dropout(h, 0.5, 2.0, train)
            z = conv(h)
            b, _, hh, ww = z.shape
            z = z.view(b, ch, pieces, hh, ww).amax(2)
            h = F.max_pool2d(z, pool, stride, ceil_mode=True)
        return self.out(dropout(h.flatten(1), 0.5, 2.0, train))


class Cnn(nn.Module):
    """conv 5x5 32 -> ReLU -> pool 2 -> conv 5x5 64 -> ReLU -> pool 2 -> linear 10; PyTorch init."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.out = nn.Conv2d(1, 32, 5), nn.Conv2d(32, 64, 5), nn.Linear(1024, 10)
        self.max_norms = []

    def forward(self, x, train):
        h = F.max_pool2d(F.relu(self.c0(x)), 2, 2)
        h = F.max_pool2d(F.relu(self.c1(h)), 2, 2)
        return self.out(h.flatten(1))


class SmallCnn(nn.Module):
    """TRADES' SmallCNN (scripts/make_fixtures.py); gauntlet's smallcnn-onnx is its export."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, 32, 3), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)])
        self.fc1, self.fc2, self.out = nn.Linear(1024, 200), nn.Linear(200, 200), nn.Linear(200, 10)
        self.max_norms = []

    def forward(self, x, train):
        h = x
        for i, conv in enumerate(self.convs):
            h = F.relu(conv(h))
            if i % 2 == 1:
                h = F.max_pool2d(h, 2, 2)
        h = dropout(F.relu(self.fc1(h.flatten(1))), 0.5, 2.0, train)
        return self.out(F.relu(self.fc2(h)))


def build(name, seed):
    torch.manual_seed(seed)
    classes = {"maxout-mlp": MaxoutMlp, "mlp": Mlp, "conv-maxout": ConvMaxout, "cnn": Cnn,
               "smallcnn": SmallCnn, "smallcnn-onnx": SmallCnn}
    model = classes[name]()
    return model, (100 if name in ("maxout-mlp", "mlp") else 128)


def forward_flops(model):
    """Multiply-adds x 2 of the linear maps of one example (crates/bench/src/flops.rs)."""
    counts = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            counts.append(2 * module.in_features * module.out_features)
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counts.append(2 * module.out_channels * module.in_channels * k * output.shape[2] * output.shape[3])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28), False)
    for h in handles:
        h.remove()
    return float(sum(counts)), float(counts[0])


def input_grad(model, xs, ys):
    x = xs.detach().clone().requires_grad_(True)
    logits = model(x, False)
    loss = F.cross_entropy(logits, ys, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), logits.detach(), g


def fgsm(model, xs, ys, eps):
    _, _, g = input_grad(model, xs, ys)
    return (xs + eps * g.sign()).clamp(0.0, 1.0)


def constrain(model):
    with torch.no_grad():
        for w, c in model.max_norms:
            w.copy_(torch.renorm(w, 2, 0, c))


def make_workloads(names, model, target, batch, flops):
    f, first = flops
    opt_plain = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    opt_adv = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)

    def forward(xs, ys):
        with torch.no_grad():
            model(xs, False)

    def grad(xs, ys):
        input_grad(model, xs, ys)

    def train(xs, ys):
        logits = model(xs, True)
        loss = F.cross_entropy(logits, ys)
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()
        constrain(model)
        assert np.isfinite(loss.item())
        (logits.detach().argmax(1) == ys).sum().item()

    def train_fgsm(xs, ys, alpha=0.5):
        x = xs.detach().clone().requires_grad_(True)
        logits = model(x, True)
        clean = F.cross_entropy(logits, ys)
        opt_adv.zero_grad(set_to_none=True)
        (alpha * clean).backward()
        x_adv = xs + TRAIN_EPS * x.grad.sign()
        adv = F.cross_entropy(model(x_adv, True), ys)
        ((1.0 - alpha) * adv).backward()
        opt_adv.step()
        constrain(model)
        assert np.isfinite(alpha * clean.item() + (1.0 - alpha) * adv.item())
        (logits.detach().argmax(1) == ys).sum().item()

    def attack(xs, ys):
        fgsm(model, xs, ys, ATTACK_EPS)

    def pgd(xs, ys):
        eps, step = ATTACK_EPS, 2.5 * ATTACK_EPS / PGD_STEPS
        x0 = xs.detach()
        x = (x0 + torch.empty_like(x0).uniform_(-eps, eps)).clamp(0.0, 1.0)
        for _ in range(PGD_STEPS):
            _, logits, g = input_grad(model, x, ys)
            (logits.argmax(1) != ys).tolist()  # per-step success, as gauntlet records it
            x = torch.min(torch.max(x + step * g.sign(), x0 - eps), x0 + eps).clamp(0.0, 1.0)
        with torch.no_grad():
            (model(x, False).argmax(1) != ys).tolist()

    def transfer(xs, ys):
        x_adv = fgsm(model, xs, ys, ATTACK_EPS)
        with torch.no_grad():
            source_preds = model(x_adv, False).argmax(1)
            clean_preds = target(xs, False).argmax(1)
            probs = F.softmax(target(x_adv, False), 1)
            conf, preds = probs.max(1)
            wrong = preds != ys
            (clean_preds == ys).sum().item(), wrong.sum().item(), conf[wrong].sum().item()
            src_wrong = source_preds != ys
            ((preds == source_preds) & src_wrong).sum().item()

    def products(backward):
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        ops = [(torch.rand(batch, m.in_features), m.weight.detach().clone(),
                torch.rand(batch, m.out_features) * 2 - 1) for m in layers]

        def run(xs, ys):
            with torch.no_grad():
                for l, (x, w, dy) in enumerate(ops):
                    x @ w.t()
                    if backward:
                        if l > 0:
                            dy @ w
                        dy.t() @ x
        return run

    table = {
        "forward": ("images/s", batch, f, forward),
        "input-grad": ("images/s", batch, 2 * f, grad),
        "train": ("examples/s", batch, 3 * f - first, train),
        "train-fgsm": ("examples/s", batch, 6 * f - first, train_fgsm),
        "fgsm": ("images/s", batch, 2 * f, attack),
        "pgd-step": ("steps*images/s", batch * PGD_STEPS, 2 * f + f / PGD_STEPS, pgd),
        "transfer": ("images/s", batch, 5 * f, transfer),
    }
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        table["gemm-forward"] = ("images/s", batch, f, products(False))
        table["gemm-train"] = ("examples/s", batch, 3 * f - first, products(True))
    return [(n,) + table[n] for n in names if n in table]


def measure(workloads, batches, rounds, seconds, fixed_batches):
    times = [[] for _ in workloads]
    cursor = 0
    for r in range(rounds + 1):
        for (name, _, _, _, run), t in zip(workloads, times):
            start, n = time.perf_counter(), 0
            while True:
                xs, ys = batches[cursor % len(batches)]
                cursor += 1
                run(xs, ys)
                n += 1
                if (n >= fixed_batches) if fixed_batches else (time.perf_counter() - start >= seconds):
                    break
            if r > 0:
                t.append((time.perf_counter() - start) / n)
    return times


def sgemm_gflops(n=2048, reps=5):
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batches", type=int, help="exactly this many batches per workload and round")
    p.add_argument("--batch-size", type=int, help="examples per batch for every model instead of its own")
    p.add_argument("--distinct-batches", type=int, default=10)
    p.add_argument("--no-peak", action="store_true")
    p.add_argument("--json", help="also write the records as JSON lines to this file")
    p.add_argument("--data-dir", default="data/mnist")
    args = p.parse_args()
    models, names = args.models.split(","), args.workloads.split(",")
    for m in models:
        if m not in MODELS:
            sys.exit(f"error: unknown model {m!r}, expected one of {', '.join(MODELS)}")
    for w in names:
        if w not in WORKLOADS:
            sys.exit(f"error: unknown workload {w!r}, expected one of {', '.join(WORKLOADS)}")
    if args.batch_size is not None and args.batch_size < 1:
        sys.exit("error: --batch-size must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            sys.exit("error: --threads must be at least 1")
        torch.set_num_threads(args.threads)
    # Momentum buffers decay into subnormal floats otherwise (research/candle.md).
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()

    sgemm = None if args.no_peak else sgemm_gflops()
    records = [{
        "record": "machine",
        "suite": "pytorch",
        "version": f"torch {torch.__version__} / numpy {np.__version__}",
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "threads": threads,
        "sgemm_gflops": sgemm,
        "sgemm_size": 2048,
    }]
    print(f"torch {torch.__version__}, {threads} threads; measured 2048^3 sgemm "
          f"{'unknown' if sgemm is None else f'{sgemm:.0f}'} GFLOP/s")
    for name in models:
        model, batch = build(name, 1)
        batch = args.batch_size or batch
        target, _ = build(name, 2)
        xs, ys = load_mnist_images(args.data_dir, batch * args.distinct_batches)
        gen = torch.Generator().manual_seed(1)
        order = torch.randperm(len(xs), generator=gen)
        batches = [(xs[order[i:i + batch]], ys[order[i:i + batch]]) for i in range(0, len(xs), batch)]
        flops = forward_flops(model)
        workloads = make_workloads(names, model, target, batch, flops)
        times = measure(workloads, batches, args.rounds, args.seconds, args.batches)
        print(f"\n{name}, batch {batch}, forward {flops[0] / 1e6:.2f} MFLOP/example; "
              f"median of {args.rounds} rounds")
        print(f"{'workload':<12} {'ms/batch':>10} {'throughput':>12} {'unit':<15} {'GFLOP/s':>9}")
        for (wname, unit, per_batch, per_unit, _), t in zip(workloads, times):
            med = statistics.median_high(t)
            throughput = per_batch / med
            gflops = throughput * per_unit / 1e9
            print(f"{wname:<12} {med * 1e3:>10.2f} {throughput:>12.0f} {unit:<15} {gflops:>9.1f}")
            records.append({
                "record": "workload",
                "suite": "pytorch",
                "model": name,
                "workload": wname,
                "batch": batch,
                "threads": threads,
                "unit": unit,
                "throughput": throughput,
                "ms_per_batch": med * 1e3,
                "ms_per_batch_min": min(t) * 1e3,
                "ms_per_batch_max": max(t) * 1e3,
                "rounds": len(t),
                "flops_per_unit": per_unit,
                "forward_flops_per_example": flops[0],
                "gflops": gflops,
            })
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, args.json)
        print(f"\nrecords written to {args.json}")


if __name__ == "__main__":
    main()
