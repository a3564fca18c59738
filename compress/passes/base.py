"""The pass: a validated config plus one verb.

A pass is registered under its YAML ``type`` with :func:`register`. Its ``Config``
(pydantic, unknown keys rejected) is validated when the recipe is loaded, before any
model exists; :meth:`Pass.check` then runs against the loaded model before the first
pass touches it; :meth:`Pass.apply` does the work.

Two stages exist. ``torch`` passes map an ``nn.Module`` to an ``nn.Module`` (pruning,
fine-tuning, QAT preparation). ``onnx`` passes run after the fp32 export and map an
ONNX file to a new ONNX file (post-training quantization); they also see the final
torch model in ``ctx.model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from compress.registry import registrar

if TYPE_CHECKING:  # pragma: no cover  (torch stays unimported until a pass runs)
    from torch import nn

    from compress.context import Context


class PassConfig(BaseModel):
    """Base of every pass config: strict, so a typo in a recipe fails at load time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    type: str
    name: str | None = None  # optional label, used in reports and `--set NAME.field=...`


class Pass:
    """Base class of passes. Subclasses define ``Config`` and ``apply`` (or ``apply_onnx``)."""

    type: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    stage: ClassVar[Literal["torch", "onnx"]] = "torch"
    needs_calibration: ClassVar[bool] = False

    def __init__(self, config: PassConfig):
        self.config = config

    @property
    def label(self) -> str:
        return self.config.name or self.type

    def check(self, model: nn.Module, ctx: "Context") -> None:
        """Raise ``PassError`` if this pass cannot run on ``model`` (model left untouched)."""

    def apply(self, model: nn.Module, ctx: "Context") -> nn.Module:
        """torch stage: return the transformed model (may modify ``model`` in place)."""
        raise TypeError(f"{self.type} is an {self.stage}-stage pass; call apply_onnx")

    def apply_onnx(self, onnx_path: Path, ctx: "Context") -> Path:
        """onnx stage: read ``onnx_path``, write a new file under ``ctx.work_dir``, return it."""
        raise TypeError(f"{self.type} is a {self.stage}-stage pass; call apply")


_REGISTRY: dict[str, type[Pass]] = {}


register = registrar(_REGISTRY, "pass type", "type")
"""``@register("family.kind")``: make a Pass subclass available to recipes as ``type: family.kind``."""


def registered() -> dict[str, type[Pass]]:
    """All pass types, after importing the built-in pass modules."""
    from compress import passes  # noqa: F401  (imports the built-in pass modules)

    passes.load_builtin()
    return dict(_REGISTRY)


def get_pass(type_name: str) -> type[Pass] | None:
    return registered().get(type_name)
