"""Model adapters, looked up by name and imported lazily.

An adapter module registers itself with :func:`register_adapter`; the table below
only names where each built-in adapter lives, so ``import compress`` never imports
ultralytics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from compress.errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from compress.models.base import Adapter
    from compress.recipe import ModelSpec

# adapter name -> module that defines it (imported on first use)
_ADAPTER_MODULES = {
    "digitdet": "compress.models.digitdet",
    "lenet5": "compress.models.lenet5",
    "ultralytics": "compress.models.ultralytics",
    "generic": "compress.models.generic",
}
# builtin model name -> adapter name
BUILTINS = {"digitdet": "digitdet", "lenet5": "lenet5"}

_REGISTRY: dict[str, type] = {}


def register_adapter(name: str):
    """Class decorator: make an Adapter subclass loadable under ``name``."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def adapter_class(name: str) -> type["Adapter"]:
    """The adapter class registered under ``name`` (imports its module on demand)."""
    if name not in _REGISTRY:
        module = _ADAPTER_MODULES.get(name)
        if module is None:
            known = ", ".join(sorted(_ADAPTER_MODULES))
            raise ModelLoadError(f"unknown adapter '{name}' (known: {known})")
        importlib.import_module(module)
    return _REGISTRY[name]


def load_model(spec: "ModelSpec", trust_checkpoint: bool = False) -> tuple["Adapter", "nn.Module"]:
    """Build or load the model a recipe names; returns its adapter and the module (eval mode)."""
    from compress.models.checkpoint import read_checkpoint

    if spec.builtin is not None:
        name = BUILTINS.get(spec.builtin, spec.adapter or "ultralytics")
        adapter, model = adapter_class(name).load(spec, None, trust_checkpoint)
    else:
        ckpt = read_checkpoint(spec.checkpoint, trust_checkpoint)
        name = spec.adapter or _guess_adapter(ckpt, spec)
        from compress.models import serialize

        if isinstance(ckpt, dict) and serialize.KEY in ckpt:  # a pruned model: base, then pruned shapes
            adapter, model = serialize.load_pruned(adapter_class(name), spec, ckpt, trust_checkpoint)
        else:
            adapter, model = adapter_class(name).load(spec, ckpt, trust_checkpoint)
    return adapter, model.eval()


def _guess_adapter(ckpt, spec) -> str:
    if spec.arch:
        return "generic"
    if isinstance(ckpt, dict) and isinstance(ckpt.get("adapter"), str):
        return ckpt["adapter"]
    if isinstance(ckpt, dict) and ("model" in ckpt or "ema" in ckpt):
        return "ultralytics"
    raise ModelLoadError(
        f"{spec.checkpoint}: cannot tell which model family this checkpoint is; "
        "pass --adapter (digitdet, lenet5, ultralytics) or --arch module:factory for a plain state_dict")
