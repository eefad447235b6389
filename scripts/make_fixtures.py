#!/usr/bin/env python3
"""Builds the PyTorch fixture models that gauntlet's tests load (run by hand: `make fixtures`).

For each model it writes, into crates/models/tests/fixtures/torch/:
  NAME.safetensors   the state_dict as `safetensors.torch.save_file` writes it (PyTorch's names)
  NAME.toml          gauntlet's model spec for it: the same layers, named as PyTorch names them
  NAME.onnx          `torch.onnx.export` of the same weights
  mlp.pt             the MLP's state_dict as `torch.save` writes it (read with mlp.toml)
  {preact,mlp}-dynamo.onnx   the same weights through the torch.export-based exporter
  NAME.expected.safetensors   inputs, labels, and PyTorch's logits and input gradients of the
                     summed cross-entropy (each row its own example's gradient), in float64

Models: `smallcnn` (TRADES' SmallCNN: 4 conv + 3 linear, ReLU, max-pool), trained one epoch on
the embedded MNIST; `preact` (a two-block PreAct-ResNet with batch norm and input
normalisation) and `mlp`, on seeded random weights.

With --torchattacks N it also prints torchattacks' PGD-Linf (eps 0.3, 40 steps of 0.01, no
random start) robust accuracy of the trained SmallCNN on the first N MNIST test images.
"""

import argparse
import gzip
import os
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "models", "tests", "fixtures", "torch")
MNIST = os.path.join(ROOT, "data", "mnist")


def mnist(split):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(MNIST, f"{prefix}-images-idx3-ubyte.gz"), "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(MNIST, f"{prefix}-labels-idx1-ubyte.gz"), "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


class SmallCNN(nn.Module):
    """TRADES' SmallCNN for MNIST (Zhang et al. 2019), drop 0.5."""

    def __init__(self):
        super().__init__()
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()),
            ("drop", nn.Dropout(0.5)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, 10)),
        ]))

    def forward(self, x):
        return self.classifier(self.feature_extractor(x).view(-1, 64 * 4 * 4))


SMALLCNN_TOML = """# TRADES' SmallCNN, with PyTorch's state_dict names (scripts/make_fixtures.py).
input = [1, 28, 28]
n-classes = 10

[arch]
kind = "graph"
layers = [
  { op = "conv2d", name = "feature_extractor.conv1", out-channels = 32, kernel = 3 },
  { op = "relu" },
  { op = "conv2d", name = "feature_extractor.conv2", out-channels = 32, kernel = 3 },
  { op = "relu" },
  { op = "max-pool", kernel = 2 },
  { op = "conv2d", name = "feature_extractor.conv3", out-channels = 64, kernel = 3 },
  { op = "relu" },
  { op = "conv2d", name = "feature_extractor.conv4", out-channels = 64, kernel = 3 },
  { op = "relu" },
  { op = "max-pool", kernel = 2 },
  { op = "flatten" },
  { op = "linear", name = "classifier.fc1", out-features = 200 },
  { op = "relu" },
  { op = "dropout", include = 0.5, scale = 2.0 },
  { op = "linear", name = "classifier.fc2", out-features = 200 },
  { op = "relu" },
  { op = "linear", name = "classifier.fc3", out-features = 10 },
]
"""


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Two pre-activation blocks (He et al. 2016) with RobustBench-style input normalisation."""

    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2471, 0.2435, 0.2616)

    def __init__(self):
        super().__init__()
        # Not in the state_dict: the spec's normalize layer carries them.
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(16, 16, 1)
        self.layer2 = PreActBlock(16, 32, 2)
        self.bn = nn.BatchNorm2d(32)
        self.linear = nn.Linear(32, 10)

    def forward(self, x):
        out = self.conv1((x - self.mean) / self.std)
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


PREACT_TOML = """# A two-block PreAct-ResNet with input normalisation (scripts/make_fixtures.py).
input = [3, 16, 16]
n-classes = 10

[arch]
kind = "graph"
layers = [
  { op = "normalize", mean = [0.4914, 0.4822, 0.4465], std = [0.2471, 0.2435, 0.2616] },
  { op = "conv2d", name = "conv1", out-channels = 16, kernel = 3, padding = 1, bias = false },
  # block 1: identity shortcut
  { op = "batch-norm", name = "layer1.bn1" },
  { op = "relu" },
  { op = "conv2d", name = "layer1.conv1", out-channels = 16, kernel = 3, padding = 1, bias = false },
  { op = "batch-norm", name = "layer1.bn2" },
  { op = "relu" },
  { op = "conv2d", name = "layer1.conv2", out-channels = 16, kernel = 3, padding = 1, bias = false },
  { op = "add", name = "layer1.out", inputs = ["conv1", "layer1.conv2"] },
  # block 2: a strided 1x1 convolution on the pre-activation as shortcut
  { op = "batch-norm", name = "layer2.bn1" },
  { op = "relu", name = "layer2.relu1" },
  { op = "conv2d", name = "layer2.shortcut", out-channels = 32, kernel = 1, stride = 2, bias = false },
  { op = "conv2d", name = "layer2.conv1", inputs = ["layer2.relu1"], out-channels = 32, kernel = 3, stride = 2, padding = 1, bias = false },
  { op = "batch-norm", name = "layer2.bn2" },
  { op = "relu" },
  { op = "conv2d", name = "layer2.conv2", out-channels = 32, kernel = 3, padding = 1, bias = false },
  { op = "add", inputs = ["layer2.shortcut", "layer2.conv2"] },
  { op = "batch-norm", name = "bn" },
  { op = "relu" },
  { op = "global-avg-pool" },
  { op = "flatten" },
  { op = "linear", name = "linear", out-features = 10 },
]
"""


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 48)
        self.fc2 = nn.Linear(48, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(torch.tanh(self.fc2(F.relu(self.fc1(x)))))


MLP_TOML = """# A three-layer MLP (scripts/make_fixtures.py).
input = [1, 28, 28]
n-classes = 10

[arch]
kind = "graph"
layers = [
  { op = "flatten" },
  { op = "linear", name = "fc1", out-features = 48 },
  { op = "relu" },
  { op = "linear", name = "fc2", out-features = 32 },
  { op = "tanh" },
  { op = "linear", name = "fc3", out-features = 10 },
]
"""


def train_one_epoch(model, seed):
    images, labels = mnist("train")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    order = torch.randperm(len(images), generator=g)
    for start in range(0, len(images), 128):
        idx = order[start:start + 128]
        opt.zero_grad()
        F.cross_entropy(model(images[idx]), labels[idx]).backward()
        opt.step()
    model.eval()


def randomize_batch_norm(model, g):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 1.0 + 0.3 * torch.randn(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean = 0.3 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)


def expected(model, x, y):
    """Logits and input gradients of the summed cross-entropy, in float64."""
    m = model.double().eval()
    x = x.double().clone().requires_grad_(True)
    logits = m(x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    model.float()
    return {
        "inputs": x.detach().float().contiguous(),
        "labels": y.to(torch.int64).contiguous(),
        "logits": logits.detach().contiguous(),
        "grad": x.grad.detach().contiguous(),
    }


def export(name, model, example, toml_text):
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(OUT, f"{name}.safetensors"))
    with open(os.path.join(OUT, f"{name}.toml"), "w") as f:
        f.write(toml_text)
    torch.onnx.export(model, (example,), os.path.join(OUT, f"{name}.onnx"),
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)


def export_dynamo(name, model, example):
    """The torch.export-based exporter (PyTorch's default since 2.9), beside the legacy one."""
    model.eval()
    torch.onnx.export(model, (example,), os.path.join(OUT, f"{name}-dynamo.onnx"),
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torchattacks", type=int, default=0, metavar="N")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(OUT, exist_ok=True)
    test_x, test_y = mnist("test")

    torch.manual_seed(1)
    cnn = SmallCNN()
    train_one_epoch(cnn, seed=2)
    export("smallcnn", cnn, test_x[:2], SMALLCNN_TOML)
    save_file(expected(cnn, test_x[:8], test_y[:8]), os.path.join(OUT, "smallcnn.expected.safetensors"))
    with torch.no_grad():
        acc = (cnn(test_x).argmax(1) == test_y).float().mean().item()
    print(f"smallcnn: test accuracy {acc:.4f} after one epoch")

    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    preact = PreActResNet()
    randomize_batch_norm(preact, g)
    x = torch.rand(6, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    export("preact", preact, x[:2], PREACT_TOML)
    export_dynamo("preact", preact, x[:2])
    save_file(expected(preact, x, y), os.path.join(OUT, "preact.expected.safetensors"))

    torch.manual_seed(4)
    mlp = MLP()
    export("mlp", mlp, test_x[:2], MLP_TOML)
    export_dynamo("mlp", mlp, test_x[:2])
    save_file(expected(mlp, test_x[8:16], test_y[8:16]), os.path.join(OUT, "mlp.expected.safetensors"))
    torch.save(mlp.state_dict(), os.path.join(OUT, "mlp.pt"))

    if args.torchattacks:
        import torchattacks
        n = args.torchattacks
        atk = torchattacks.PGD(cnn, eps=0.3, alpha=0.01, steps=40, random_start=False)
        adv = atk(test_x[:n], test_y[:n])
        with torch.no_grad():
            clean = (cnn(test_x[:n]).argmax(1) == test_y[:n]).float().mean().item()
            robust = (cnn(adv).argmax(1) == test_y[:n]).float().mean().item()
        print(f"torchattacks PGD-Linf eps 0.3, 40 x 0.01, no random start, first {n} test images: "
              f"clean {clean:.4f}, robust {robust:.4f}")


if __name__ == "__main__":
    main()
