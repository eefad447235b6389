#!/usr/bin/env python3
"""docs/python.md's worked example: a small PyTorch CNN trained in seconds, exported to ONNX,
attacked by gauntlet and by torchattacks side by side (run by hand: `make python-example`).

Both get the same weights, the same test images and the same attack settings (FGSM, and
PGD-L∞ of 40 steps of 0.01 from the clean image, no restarts); the script prints each one's
robust accuracy, their per-example agreement and their wall times.
"""

import argparse
import gzip
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

import gauntlet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MNIST = os.path.join(ROOT, "data", "mnist")


def mnist_train(limit):
    with gzip.open(os.path.join(MNIST, "train-images-idx3-ubyte.gz"), "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:limit]
    with gzip.open(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"), "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:limit]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc1 = nn.Linear(32 * 7 * 7, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=20000, help="training images (one epoch)")
    ap.add_argument("--test", type=int, default=1000, help="test images attacked")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # 1. Train in PyTorch: one epoch of Adam on the first --train images.
    x_train, y_train = mnist_train(args.train)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for i in range(0, len(x_train), 64):
        opt.zero_grad()
        F.cross_entropy(net(x_train[i : i + 64]), y_train[i : i + 64]).backward()
        opt.step()
    net.eval()
    print(f"trained on {len(x_train)} images in {time.perf_counter() - start:.1f} s")

    # 2. Export to ONNX, and load it into gauntlet.
    path = os.path.join(tempfile.mkdtemp(), "net.onnx")
    torch.onnx.export(net, (x_train[:2],), path, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    model = gauntlet.load(path)

    # 3. The same test images for both.
    x, y = gauntlet.load_test_set("mnist", limit=args.test, data_dir=MNIST)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        torch_logits = net(xt).numpy()
    print(f"logits, gauntlet against PyTorch: max |difference| "
          f"{np.abs(model.logits(x) - torch_logits).max():.1e}")
    clean_ok = torch_logits.argmax(1) == y
    print(f"clean accuracy: {clean_ok.mean():.3f}\n")

    def torch_robust(atk):
        start = time.perf_counter()
        adv = atk(xt, yt)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            correct = (net(adv).argmax(1) == yt).numpy()
        # Robust as gauntlet counts it: correct both clean and attacked.
        return correct & clean_ok, seconds

    print(f"{'attack':<22}{'gauntlet':>10}{'torchattacks':>14}{'agree':>8}"
          f"{'gauntlet s':>12}{'torch s':>9}")
    for eps in [0.1, 0.2, 0.3]:
        for name, options, atk in [
            ("FGSM", dict(attack="fgsm"), torchattacks.FGSM(net, eps=eps)),
            ("PGD-40 L∞", dict(attack="pgd", steps=40, step_size={"absolute": 0.01},
                               random_start=False, early_stop=False),
             torchattacks.PGD(net, eps=eps, alpha=0.01, steps=40, random_start=False)),
        ]:
            start = time.perf_counter()
            result = gauntlet.attack(model, x, y, norm="inf", eps=eps, **options)
            g_seconds = time.perf_counter() - start
            g_robust = result.examples["robust"]
            t_robust, t_seconds = torch_robust(atk)
            agree = (g_robust == t_robust).mean()
            print(f"{name + f' ε={eps}':<22}{g_robust.mean():>10.3f}{t_robust.mean():>14.3f}"
                  f"{agree:>8.3f}{g_seconds:>12.2f}{t_seconds:>9.2f}")


if __name__ == "__main__":
    main()
