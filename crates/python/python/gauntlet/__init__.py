"""gauntlet: adversarial-robustness evaluation from Python, NumPy arrays in and out.

>>> import gauntlet
>>> model = gauntlet.load("smallcnn.onnx")
>>> x, y = gauntlet.load_test_set("mnist", limit=100)
>>> result = gauntlet.attack(model, x, y, attack="pgd", norm="inf", eps=[0.1, 0.3])
>>> result.robust_accuracy      # one fraction per eps

Images are ``float32`` arrays ``[N, C, H, W]`` with values in ``[0, 1]``; labels are integer
arrays ``[N]``. Errors from gauntlet raise :class:`GauntletError` (or ``ValueError`` for a bad
argument), with the message naming the file, field or array at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import GauntletError, Model, __version__

__all__ = [
    "AttackResult",
    "GauntletError",
    "Model",
    "attack",
    "load",
    "load_test_set",
    "run_suite",
    "transfer",
    "__version__",
]


def load(path) -> Model:
    """Loads a model: a gauntlet checkpoint, PyTorch weights with a ``.toml`` spec beside
    them, or an ONNX file."""
    return _native.load(str(path))


def load_test_set(name: str = "mnist", limit: Optional[int] = None, data_dir=None):
    """The test split of ``mnist``, ``fashion-mnist`` or ``cifar10`` as ``(x, y)``, read from
    ``data_dir`` (default ``data/NAME``)."""
    return _native.load_test_set(name, limit, None if data_dir is None else str(data_dir))


def _images(x) -> np.ndarray:
    # No copy when x already is C-contiguous float32.
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"x: expected images [N, C, H, W], got an array of shape {x.shape}")
    return x


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y: expected labels [N], got an array of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y: expected integer class labels, got dtype {y.dtype}")
    return np.ascontiguousarray(y, dtype=np.int64)


def _budgets(eps) -> List[float]:
    if isinstance(eps, (int, float)):
        return [float(eps)]
    return [float(e) for e in eps]


@dataclass(frozen=True)
class AttackResult:
    """One attack at every ε on one model and set of images.

    ``records`` has one robustness record per ε (the fields of a ``robustness.csv`` row:
    ``adversarial_accuracy``, ``ci_low``, ``ci_high``, perturbation sizes, ...);
    ``examples`` the per-example outcomes as arrays, ε-major (``eps``, ``index``, ``label``,
    ``clean_pred``, ``adv_pred``, ``robust``, ``perturbation``, ``linf``, ``l2``, ``l1``);
    ``adversarials`` the attacked images ``[E, N, C, H, W]`` (``None`` when not kept);
    ``config`` the resolved attack, as a suite records it.

    A minimum-norm attack (``fmn``, ``ddn``, ``deepfool``, ``cw``, ``fab``) also gives ``curve`` (its
    security curve: ``points``, each ``eps``, ``robust``, ``robust_accuracy``, ``ci_low``,
    ``ci_high``; ``found``, ``median_distance``, ...), ``distances`` (per example: ``index``,
    ``label``, ``clean_pred``, ``adv_pred``, ``distance`` (0 when misclassified clean, NaN
    when none was found), ``linf``, ``l2``, ``l1``) and ``minimal``, the minimal adversarial
    images ``[N, C, H, W]`` (the clean image where none was found)."""

    name: str
    records: List[Dict[str, Any]]
    examples: Dict[str, np.ndarray]
    adversarials: Optional[np.ndarray]
    config: Dict[str, Any] = field(repr=False)
    curve: Optional[Dict[str, Any]] = field(default=None, repr=False)
    distances: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)
    minimal: Optional[np.ndarray] = field(default=None, repr=False)

    def robust_accuracy_at(self, eps: float) -> float:
        """A minimum-norm attack's robust accuracy at any ``eps``, read off its security
        curve: the share of examples correct clean whose smallest perturbation found is larger
        than ``eps``."""
        if self.curve is None:
            raise ValueError(f"{self.name} is not a minimum-norm attack: it has no security curve")
        points = [p for p in self.curve["points"] if p["eps"] <= eps]
        return points[-1]["robust_accuracy"]

    @property
    def eps(self) -> List[float]:
        return [r["eps"] for r in self.records]

    @property
    def robust_accuracy(self) -> List[float]:
        """Robust accuracy per ε, a fraction: correct both clean and attacked."""
        return [r["adversarial_accuracy"] for r in self.records]

    @property
    def intervals(self) -> List[Tuple[float, float]]:
        """Wilson 95% interval of each robust accuracy."""
        return [(r["ci_low"], r["ci_high"]) for r in self.records]

    @property
    def clean_accuracy(self) -> float:
        if not self.records and self.curve is not None:
            return self.curve["clean_correct"] / max(self.curve["n"], 1)
        return self.records[0]["clean_accuracy"]

    def to_pandas(self):
        """The per-example outcomes as a pandas DataFrame (pandas must be installed)."""
        import pandas as pd

        return pd.DataFrame(self.examples)


def attack(
    model: Model,
    x,
    y,
    attack: str = "pgd",
    norm: Union[str, float] = "inf",
    eps: Union[float, Sequence[float]] = (0.1,),
    *,
    batch_size: int = 500,
    seed: int = 0,
    keep_adversarials: bool = True,
    **options,
) -> AttackResult:
    """Runs ``attack`` (``fgsm``/``fast-gradient``, ``pgd``, ``apgd``, ``square``, ``auto``,
    or a minimum-norm attack: ``fmn``, ``ddn``, ``deepfool``, ``cw``, ``fab``) in ``norm`` (``"inf"``,
    ``2``, ``1`` or any p >= 1) at every ε of ``eps`` (which may be empty for a minimum-norm
    attack: its ``curve`` gives every ε).

    ``options`` are the suite's ``[[attack]]`` keys with ``_`` for ``-``: ``steps=40``,
    ``step_size={"relative-to-eps": 0.25}``, ``restarts=5``, ``loss="dlr"``,
    ``target="least-likely"``, ... (docs/suites.md). The same model, images, options, seed
    and batch size give the per-example outcomes ``gauntlet attack`` gives."""
    x, y = _images(x), _labels(y)
    out = _native.attack(
        model, x, y, attack, norm, _budgets(eps), batch_size, seed, keep_adversarials, options
    )
    return AttackResult(
        name=out["name"],
        records=out["records"],
        examples=out["examples"],
        adversarials=out["adversarials"],
        config=out["config"],
        curve=out["curve"],
        distances=out["distances"],
        minimal=out["minimal"],
    )


def transfer(
    models,
    x,
    y,
    attack: str = "pgd",
    norm: Union[str, float] = "inf",
    eps: float = 0.1,
    *,
    targets=None,
    batch_size: int = 500,
    seed: int = 0,
    **options,
) -> List[Dict[str, Any]]:
    """Crafts examples against each of ``models`` (a dict name → Model, or a list, named
    ``model0``, ...) at one ε and scores them on each of ``targets`` (default: the same
    models); one transfer record per pair (``accuracy``, ``error``, ``ci_low``, ``ci_high``,
    ``agreement``, ...). A pair of equal names is the white-box result."""

    def named(ms):
        if isinstance(ms, dict):
            return list(ms.items())
        return [(f"model{i}", m) for i, m in enumerate(ms)]

    sources = named(models)
    targets = sources if targets is None else named(targets)
    return _native.transfer(
        sources, targets, _images(x), _labels(y), attack, norm, float(eps), batch_size, seed, options
    )


def run_suite(path, results="results", data_dir=None, report=None) -> str:
    """Runs a suite file as ``gauntlet run`` does (cached, resumable) and draws its report
    into ``report`` when given; returns the results folder."""
    return _native.run_suite(
        str(path),
        str(results),
        None if data_dir is None else str(data_dir),
        None if report is None else str(report),
    )
