"""Compression passes. Each module registers its pass types on import.

To add a pass: write one module here with a ``@register("family.kind")`` class and
list it in ``_BUILTIN`` below; add one test. Heavy backends (nncf, onnxruntime
quantization, torch-pruning) are imported inside ``apply``, not at module import.
"""

from __future__ import annotations

import importlib

from compress.passes.base import Pass, PassConfig, get_pass, register, registered

__all__ = ["Pass", "PassConfig", "register", "registered", "get_pass", "load_builtin"]

_BUILTIN = [
    # filled in as pass modules land, e.g. "compress.passes.prune_structured"
    "compress.passes.finetune",
    "compress.passes.prune_unstructured",
    "compress.passes.prune_structured",
    "compress.passes.quantize_ptq",
    "compress.passes.quantize_dynamic",
    "compress.passes.quantize_qat",
    "compress.passes.swap_activation",
    "compress.passes.swap_module",
]


def load_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)
