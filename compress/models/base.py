"""The model adapter: everything a pass or metric needs to know about a model family.

Passes stay family-agnostic by talking to an :class:`Adapter`, never to a model's
internals. One adapter instance describes one model (class names, input size); the
``nn.Module`` itself is passed around separately because passes replace it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from compress.types import Sample

Task = Literal["detect", "classify"]


class Adapter(ABC):
    """Base class of model-family adapters.

    Subclasses set ``name`` and ``task`` and implement ``preprocess`` and ``decode``;
    the other hooks have safe defaults.
    """

    name: ClassVar[str]
    task: ClassVar[Task]

    def __init__(self, class_names: list[str], imgsz: int, stride: int = 32):
        self.class_names = list(class_names)
        self.imgsz = int(imgsz)
        self.stride = int(stride)

    @classmethod
    @abstractmethod
    def load(cls, spec, ckpt, trust_checkpoint: bool) -> tuple["Adapter", nn.Module]:
        """Build the model from ``spec`` (a ``recipe.ModelSpec``) and an already-read
        checkpoint ``ckpt`` (None for a built-in model); return (adapter, module)."""

    # -- input / output -------------------------------------------------------------
    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A float tensor of the shape the model takes, for tracing and export."""
        return torch.zeros(batch, 3, self.imgsz, self.imgsz)

    @abstractmethod
    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Any]]:
        """RGB uint8 images -> (NCHW float tensor, per-image metadata for ``decode``).

        The same function feeds torch and ONNX Runtime, so both see identical inputs.
        """

    @abstractmethod
    def decode(self, output: np.ndarray | torch.Tensor, metas: list[Any], conf: float,
               iou: float = 0.7, max_det: int = 300) -> list[Any]:
        """First model output -> per-image results (``Detections`` or class logits)."""

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run the torch model in eval mode and return its first output (the one ONNX exports)."""
        out = model(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    # -- hooks for passes -----------------------------------------------------------
    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers pruning must not shrink (e.g. the detection head's output convolutions)."""
        return []

    def loss(self, model: nn.Module, images: torch.Tensor, samples: list[Sample]) -> torch.Tensor | None:
        """Task loss on a labelled batch, or None when this family has none."""
        return None

    def distill_outputs(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head outputs used for distillation (before any decode), train-mode safe."""
        out = self.forward(model, x)
        return [out]

    def rewrite_for_pruning(self, model: nn.Module) -> nn.Module:
        """Return an equivalent model that torch-pruning can trace (default: unchanged)."""
        return model

    def metadata(self) -> dict[str, str]:
        """Key/values written into the exported ONNX model for downstream tools.

        The keys and value formats of Ultralytics' own exporter (``names`` as a dict
        literal, ``imgsz`` as a list, ...; see :func:`compress.export.ultralytics_metadata`),
        so ``YOLO("model.onnx")`` and any tool reading them works, plus ``adapter``.
        """
        from compress.export import ultralytics_metadata

        # (B, N, 6) x1 y1 x2 y2 score class outputs: Ultralytics then skips its NMS ("end2end")
        e2e = bool(getattr(self, "end2end", False)) or getattr(self, "output_layout", None) in ("end2end",
                                                                                              "torchvision")
        return {**ultralytics_metadata(self.class_names, self.imgsz, self.stride, self.task,
                                       description=f"compress {self.name} model", end2end=e2e),
                "adapter": self.name}

    def checkpoint(self, model: nn.Module) -> dict:
        """A ``weights_only``-loadable dict that ``load`` can rebuild the model from."""
        return {"adapter": self.name, "class_names": self.class_names, "imgsz": self.imgsz,
                "state_dict": model.state_dict()}
