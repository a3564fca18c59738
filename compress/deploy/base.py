"""The deployment-target interface and the runtime-neutral runner it returns.

A target turns an ONNX artifact into the files its runtime loads (``build``), runs them
(``session``: a :class:`Runner`, callable on an NCHW float32 array and shaped like an
ONNX Runtime session, so :func:`compress.fidelity.check` and
:func:`compress.runtime.latency.compare_latency` use it unchanged) and ships a small
``infer.py`` (``infer_script``) that needs only numpy, Pillow and that runtime.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from compress.errors import CompressError


class DeployError(CompressError):
    """A deployment target cannot be built or run (missing extra, unsupported model)."""


@dataclass
class Artifact:
    """One model to deploy: ``fp32`` (the final torch model's ONNX) or ``int8`` (after ONNX passes)."""

    name: str
    onnx: Path
    torch_model: object = None  # the final torch model (for targets that convert from torch)


@dataclass
class _Value:
    name: str
    shape: list
    type: str = "tensor(float)"


class Runner:
    """A loaded model in some runtime: ``runner(x) -> first output`` (numpy, float32).

    Also answers ``get_inputs() / get_outputs() / run()`` like an ``InferenceSession``.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], input_name: str, input_shape: list,
                 output_name: str = "output0"):
        self._fn = fn
        self._inputs = [_Value(input_name, list(input_shape))]
        self._outputs = [_Value(output_name, [])]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds: dict):
        return [self(feeds[self._inputs[0].name])]


class Target(ABC):
    """Base class of deployment targets (one module each, registered by name)."""

    name: ClassVar[str]
    extra: ClassVar[str | None] = None  # pip extra that installs the runtime
    packages: ClassVar[tuple[str, ...]] = ()  # python modules the target needs
    from_torch: ClassVar[bool] = False  # converts the torch model instead of the ONNX file

    def missing(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(p) is None]

    def available(self) -> bool:
        return not self.missing()

    def require(self) -> None:
        """One-line error naming the extra when the runtime is not installed."""
        miss = self.missing()
        if miss:
            raise DeployError(f"deploy target '{self.name}' needs {', '.join(miss)}: "
                              f"pip install -e '.[{self.extra}]'")

    def notes(self, cpu: str) -> list[str]:
        """Plain-language facts about this target's files for the board ``cpu`` (for the report)."""
        return []

    def skip(self, artifact: Artifact) -> str | None:
        """Why this target does not build ``artifact`` (None: it does)."""
        return None

    @abstractmethod
    def build(self, artifact: Artifact, out_dir: Path, ctx: "BuildContext") -> list[Path]:
        """Write the runtime's files for ``artifact`` into ``out_dir``; return them (model file first)."""

    @abstractmethod
    def session(self, files: list[Path], threads: int) -> Runner:
        """A callable (and ORT-session-shaped) runner of the built files in the target's own runtime."""

    @abstractmethod
    def infer_script(self) -> str:
        """The body of infer.py that loads the model and defines ``run(x) -> output`` (see bundle.py)."""

    def version(self) -> str:
        return ""


@dataclass
class BuildContext:
    """What a target may need beyond the artifact itself."""

    cpu: str  # the deploy.cpu profile
    imgsz: int
    example_input: np.ndarray  # (1, 3, H, W) float32
    adapter: object = None  # the model's adapter (targets that convert the torch model)
