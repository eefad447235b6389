"""The gauntlet Python package against PyTorch's stored values and the gauntlet CLI."""

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gauntlet

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "crates/models/tests/fixtures/torch"
DATA = REPO / "data/mnist"
CLI = REPO / "target/release/gauntlet"


def read_safetensors(path):
    """The tensors of a safetensors file (the format is an 8-byte length, a JSON header and
    the raw little-endian data)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U32": "<u4"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = raw[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(data, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


@pytest.fixture(scope="session")
def test_set():
    return gauntlet.load_test_set("mnist", limit=200, data_dir=DATA)


@pytest.fixture(scope="session")
def smallcnn():
    return gauntlet.load(FIXTURES / "smallcnn.onnx")


@pytest.fixture(scope="session")
def trained_suite(tmp_path_factory):
    """A tiny suite run from Python: one small MLP trained on 800 images, attacked."""
    root = tmp_path_factory.mktemp("suite")
    suite = root / "tiny.toml"
    suite.write_text(
        textwrap.dedent(
            """
            name = "tiny"
            seed = 5

            [data]
            dataset = "mnist"
            train-limit = 800
            valid-size = 1000
            valid-limit = 100
            test-limit = 200

            [[model]]
            name = "mlp"
            arch = { kind = "mlp", hidden = [32], activation = "relu" }
            train = { epochs = 2, batch-size = 20, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

            [[attack]]
            name = "fgsm"
            kind = "fast-gradient"
            norm = "inf"
            eps = [0.1]
            """
        )
    )
    results = gauntlet.run_suite(
        suite, results=root / "results", data_dir=DATA, report=root / "report"
    )
    return Path(results), root / "report"


@pytest.mark.parametrize(
    "name", ["smallcnn.onnx", "smallcnn.safetensors", "mlp.onnx", "mlp.safetensors"]
)
def test_each_model_format_gives_pytorchs_logits_and_input_gradients(name):
    model = gauntlet.load(FIXTURES / name)
    expected = read_safetensors(FIXTURES / (name.split(".")[0] + ".expected.safetensors"))
    x, y = expected["inputs"], expected["labels"]
    logits = model.logits(x)
    assert logits.shape == expected["logits"].shape
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-4, atol=1e-4)
    assert (model.predict(x) == expected["logits"].argmax(1)).all()
    loss, grad = model.input_grad(x, y)
    assert loss.shape == (len(y),) and grad.shape == x.shape
    scale = np.abs(expected["grad"]).max()
    np.testing.assert_allclose(grad, expected["grad"], atol=1e-4 * scale)


def test_a_gauntlet_checkpoint_from_a_suite_run_loads_and_the_report_is_drawn(trained_suite, test_set):
    results, report = trained_suite
    summary = json.loads((results / "results.json").read_text())
    model = gauntlet.load(results / "models/mlp.safetensors")
    assert model.input_shape == (1, 28, 28) and model.n_classes == 10
    x, y = test_set
    accuracy = float((model.predict(x) == y).mean())
    assert abs(accuracy - (1.0 - summary["models"][0]["test_error"])) < 1e-12
    assert (report / "index.html").is_file() and (report / "report.md").is_file()


def test_per_example_outcomes_equal_the_clis(smallcnn, test_set, tmp_path):
    x, y = test_set
    x, y = x[:64], y[:64]
    out = tmp_path / "cli"
    subprocess.run(
        [
            CLI, "attack", "--model", FIXTURES / "smallcnn.onnx", "--attack", "pgd",
            "--norm", "inf", "--eps", "0.1,0.2", "--steps", "5", "--seed", "3",
            "--test-limit", "64", "--batch-size", "32", "--data-dir", DATA,
            "--out", out, "--no-checks",
        ],
        check=True,
        capture_output=True,
    )
    result = gauntlet.attack(
        smallcnn, x, y, attack="pgd", norm="inf", eps=[0.1, 0.2], steps=5, seed=3, batch_size=32
    )
    [per_example] = list((out / "per-example").glob("*.csv"))
    with per_example.open() as f:
        rows = list(csv.DictReader(f))
    ex = result.examples
    assert len(rows) == len(ex["index"]) == 128
    for i, row in enumerate(rows):
        assert float(row["eps"]) == ex["eps"][i]
        assert int(row["index"]) == ex["index"][i]
        assert int(row["adv_pred"]) == ex["adv_pred"][i]
        assert (row["robust"] == "true") == bool(ex["robust"][i])
        assert float(row["linf"]) == pytest.approx(ex["linf"][i], rel=1e-12)
    cli = json.loads((out / "results.json").read_text())["robustness"]
    assert [r["adversarial_correct"] for r in cli] == [
        r["adversarial_correct"] for r in result.records
    ]
    assert result.config == cli[0]["spec"]


def test_adversarial_images_lie_in_the_ball_and_the_box_and_give_the_recorded_predictions(smallcnn, test_set):
    x, y = test_set
    for norm, eps in [("inf", [0.05, 0.2]), (2, [1.0, 2.0])]:
        result = gauntlet.attack(smallcnn, x, y, attack="pgd", norm=norm, eps=eps, steps=5)
        adv = result.adversarials
        assert adv.shape == (len(eps),) + x.shape and adv.dtype == np.float32
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        for k, e in enumerate(eps):
            delta = (adv[k] - x).reshape(len(x), -1).astype(np.float64)
            size = np.abs(delta).max(1) if norm == "inf" else np.linalg.norm(delta, axis=1)
            assert size.max() <= e * (1 + 1e-5) + 1e-6, (norm, e, size.max())
            rows = slice(k * len(x), (k + 1) * len(x))
            assert (smallcnn.predict(adv[k]) == result.examples["adv_pred"][rows]).all()
        accuracy = [r["adversarial_correct"] / r["n"] for r in result.records]
        assert result.robust_accuracy == accuracy
        assert all(lo <= a <= hi for a, (lo, hi) in zip(accuracy, result.intervals))


def test_transfer_white_box_pairs_equal_the_attack(smallcnn, test_set):
    x, y = test_set
    other = gauntlet.load(FIXTURES / "smallcnn.safetensors")
    records = gauntlet.transfer({"onnx": smallcnn, "torch": other}, x, y, attack="fgsm", eps=0.2)
    assert len(records) == 4
    white = gauntlet.attack(smallcnn, x, y, attack="fgsm", eps=0.2)
    pair = next(r for r in records if r["source"] == r["target"] == "onnx")
    assert pair["adversarial_correct"] == white.records[0]["adversarial_correct"]


def test_errors_are_exceptions_with_gauntlets_messages(smallcnn, test_set, tmp_path):
    x, y = test_set
    with pytest.raises(gauntlet.GauntletError, match="missing.onnx"):
        gauntlet.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"x: expected images of shape \[N, 1, 28, 28\]"):
        smallcnn.logits(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"x: pixel values must lie in \[0, 1\]"):
        smallcnn.logits(x * 255)
    with pytest.raises(ValueError, match="y: labels must be classes 0..10"):
        gauntlet.attack(smallcnn, x, y + 10)
    with pytest.raises(ValueError, match="y: expected one label per image"):
        gauntlet.attack(smallcnn, x, y[:3])
    with pytest.raises(ValueError, match="steps"):
        gauntlet.attack(smallcnn, x, y, attack="pgd", steps=0)
    with pytest.raises(ValueError, match="unknown field `stepz`"):
        gauntlet.attack(smallcnn, x, y, attack="pgd", stepz=3)
    with pytest.raises(ValueError, match=r"eps\[1\]"):
        gauntlet.attack(smallcnn, x, y, eps=[0.1, -0.1])
    with pytest.raises(ValueError, match="batch_size"):
        gauntlet.attack(smallcnn, x, y, batch_size=0)


def test_ctrl_c_interrupts_a_long_attack():
    # A child started from a non-interactive shell's background job inherits SIGINT ignored,
    # and Python then keeps it ignored: the handler is set here, as an interactive shell sets it.
    script = textwrap.dedent(
        f"""
        import signal, sys, numpy as np, gauntlet
        signal.signal(signal.SIGINT, signal.default_int_handler)
        model = gauntlet.load({str(FIXTURES / "smallcnn.onnx")!r})
        x, y = gauntlet.load_test_set("mnist", limit=1000, data_dir={str(DATA)!r})
        print("started", flush=True)
        try:
            gauntlet.attack(model, x, y, attack="pgd", steps=100000, eps=[0.3], early_stop=False)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        waited = time.monotonic() - sent
    finally:
        # A child that missed the signal would attack for hours after the test failed.
        proc.kill()
    assert proc.returncode == 3, (out, err)
    assert "interrupted" in out
    assert waited < 5.0, f"took {waited:.1f} s to stop"


def test_the_readme_example_runs_as_written():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python") :]
    start = section.index("```python") + len("```python")
    code = section[start : section.index("```", start)]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    # `print(result.robust_accuracy, result.intervals)`: the first list is the accuracies.
    accuracies = json.loads(run.stdout[: run.stdout.index("]") + 1])
    assert len(accuracies) == 2 and 0.0 <= accuracies[1] <= accuracies[0] <= 1.0


def test_minimum_norm_attack_gives_distances_curve_and_records(smallcnn, test_set):
    x, y = test_set
    x, y = x[:60], y[:60]
    res = gauntlet.attack(smallcnn, x, y, attack="fmn", norm="inf", eps=[0.1, 0.2], steps=30)
    d = res.distances
    assert res.curve is not None and res.minimal.shape == x.shape
    preds = smallcnn.predict(res.minimal)
    clean_ok = d["clean_pred"] == d["label"]
    broken = clean_ok & ~np.isnan(d["distance"])
    assert broken.sum() > 0
    # Each broken example's minimal image is misclassified, in the box, at its distance.
    assert (preds[broken] != y[broken]).all()
    assert res.minimal.min() >= 0.0 and res.minimal.max() <= 1.0
    linf = np.abs(res.minimal - x).reshape(len(x), -1).max(axis=1)
    np.testing.assert_allclose(linf[broken], d["distance"][broken], rtol=1e-6)
    assert (d["distance"][~clean_ok] == 0).all()
    # The records at the given ε are the curve read there.
    for eps, acc in zip(res.eps, res.robust_accuracy):
        assert res.robust_accuracy_at(eps) == acc
        expected = (clean_ok & ~(d["distance"] <= eps)).sum() / len(x)
        assert acc == expected
    # Without ε: the curve alone.
    only = gauntlet.attack(smallcnn, x, y, attack="deepfool", norm=2, eps=[])
    assert only.records == [] and only.curve["n"] == 60
    assert 0.0 < only.clean_accuracy <= 1.0
    with pytest.raises(ValueError, match="eps"):
        gauntlet.attack(smallcnn, x, y, attack="pgd", norm="inf", eps=[])
