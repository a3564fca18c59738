"""Light replacement blocks for ``swap.module`` and ``compress profile --blocks``.

Every block takes ``(c1, c2, stride, act)``: input and output channels, spatial stride
(1 keeps H x W, 2 halves it) and the activation module to copy into it. To add one,
write a module here with an ``nn.Module`` subclass decorated by ``@register_block("name")``
(optionally a ``why_not(c1, c2, stride)`` staticmethod returning a reason it cannot be
built, else None; optionally a ``prune_hint`` string the pass reports when structured pruning
cannot follow the block) and list the module in ``_BUILTIN``.
"""

from __future__ import annotations

import importlib

from compress.registry import registrar

_BUILTIN = ["compress.blocks.elan2", "compress.blocks.shufflenet", "compress.blocks.dwsep"]
_REGISTRY: dict[str, type] = {}


register_block = registrar(_REGISTRY, "block", "block_name")
"""``@register_block("name")``: make a block available as ``to: <name>``."""


def _load() -> dict[str, type]:
    for module in _BUILTIN:
        importlib.import_module(module)
    return _REGISTRY


def names() -> list[str]:
    """The registered block names (imports the built-in block modules, hence torch)."""
    return sorted(_load())


def why_not(name: str, c1: int, c2: int, stride: int) -> str | None:
    """Why block ``name`` cannot map c1 -> c2 channels at ``stride`` (None when it can)."""
    cls = _load().get(name)
    if cls is None:
        return f"unknown block '{name}' (known: {', '.join(names())})"
    if stride < 1:
        return f"it cannot up-sample (stride {stride})"
    check = getattr(cls, "why_not", None)
    return check(c1, c2, stride) if check is not None else None


def build_block(name: str, c1: int, c2: int, stride: int = 1, act=None):
    """A fresh block (random weights); ValueError with the reason when it cannot be built."""
    reason = why_not(name, c1, c2, stride)
    if reason:
        raise ValueError(reason)
    block = _REGISTRY[name](c1, c2, stride, act)
    # how to build it again: plain values, saved in checkpoints (compress.models.serialize)
    block.block_spec = {"block": name, "c1": int(c1), "c2": int(c2), "stride": int(stride),
                        "act": type(act).__name__ if act is not None else None}
    return block
