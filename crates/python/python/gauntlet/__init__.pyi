from dataclasses import dataclass
from os import PathLike
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

class GauntletError(Exception):
    """An error from gauntlet; the message names the file, field or array at fault."""

class Model:
    """A loaded model (gauntlet checkpoint, PyTorch weights with a spec, or ONNX)."""

    @property
    def path(self) -> str: ...
    @property
    def n_classes(self) -> int: ...
    @property
    def input_shape(self) -> Tuple[int, int, int]: ...
    def logits(self, x: npt.NDArray[np.float32], batch_size: int = 500) -> npt.NDArray[np.float32]:
        """Logits ``[N, n_classes]`` of images ``x`` (``float32 [N, C, H, W]`` in ``[0, 1]``)."""
    def predict(self, x: npt.NDArray[np.float32], batch_size: int = 500) -> npt.NDArray[np.int64]:
        """Predicted classes ``[N]``."""
    def input_grad(
        self, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], batch_size: int = 500
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Per-example cross-entropy ``[N]`` and its gradient with respect to ``x``."""

@dataclass(frozen=True)
class AttackResult:
    name: str
    records: List[Dict[str, Any]]
    examples: Dict[str, np.ndarray]
    adversarials: Optional[npt.NDArray[np.float32]]
    config: Dict[str, Any]
    curve: Optional[Dict[str, Any]]
    distances: Optional[Dict[str, np.ndarray]]
    minimal: Optional[npt.NDArray[np.float32]]
    def robust_accuracy_at(self, eps: float) -> float: ...
    @property
    def eps(self) -> List[float]: ...
    @property
    def robust_accuracy(self) -> List[float]: ...
    @property
    def intervals(self) -> List[Tuple[float, float]]: ...
    @property
    def clean_accuracy(self) -> float: ...
    def to_pandas(self) -> Any: ...

_Path = Union[str, PathLike[str]]

def load(path: _Path) -> Model:
    """Loads a model file: ``.safetensors`` (gauntlet, or PyTorch with a ``.toml`` spec beside
    it), ``.pt`` with a spec, or ``.onnx``."""

def load_test_set(
    name: str = "mnist", limit: Optional[int] = None, data_dir: Optional[_Path] = None
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The test split of ``mnist``, ``fashion-mnist`` or ``cifar10``."""

def attack(
    model: Model,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    attack: str = "pgd",
    norm: Union[str, float] = "inf",
    eps: Union[float, Sequence[float]] = (0.1,),
    *,
    batch_size: int = 500,
    seed: int = 0,
    keep_adversarials: bool = True,
    **options: Any,
) -> AttackResult:
    """Runs an attack at every ε; ``options`` are the suite's ``[[attack]]`` keys with ``_``
    for ``-`` (``steps=40``, ``restarts=5``, ``loss="dlr"``, ``target="least-likely"``).
    A minimum-norm attack (``fmn``, ``ddn``, ``deepfool``, ``cw``, ``fab``) may take
    ``eps=[]`` and fills ``curve``, ``distances`` and ``minimal``."""

def transfer(
    models: Union[Mapping[str, Model], Sequence[Model]],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    attack: str = "pgd",
    norm: Union[str, float] = "inf",
    eps: float = 0.1,
    *,
    targets: Optional[Union[Mapping[str, Model], Sequence[Model]]] = None,
    batch_size: int = 500,
    seed: int = 0,
    **options: Any,
) -> List[Dict[str, Any]]:
    """Examples crafted against each model, scored on each target: one record per pair."""

def run_suite(
    path: _Path,
    results: _Path = "results",
    data_dir: Optional[_Path] = None,
    report: Optional[_Path] = None,
) -> str:
    """Runs a suite file (cached, resumable) and draws its report when ``report`` is given;
    returns the results folder."""
