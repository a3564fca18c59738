"""Selecting layers by pattern: a module type name, a module name, or ``re:<regex>``.

* ``Conv2d`` / ``nn.Conv2d`` / ``torch.nn.Conv2d``: every module whose class (or a base
  class) has that name; also works for block classes such as ``C2f``.
* ``model.22`` / ``heads.0.cls``: the module with exactly that name.
* ``re:.*c2f.*``: every module whose full dotted name matches the regular expression
  (``re.fullmatch``, so anchor-free patterns need ``.*`` on either side).

A pattern selects the matched modules and everything inside them; :func:`select`
then keeps only the leaf layers of the wanted types.
"""

from __future__ import annotations

import re

from torch import nn

from compress.errors import PassError


def _type_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def _normalise_type(pattern: str) -> str:
    for prefix in ("torch.nn.", "nn."):
        if pattern.startswith(prefix):
            return pattern[len(prefix):]
    return pattern


def matches(name: str, module: nn.Module, pattern: str) -> bool:
    """Does ``pattern`` name this module itself (not counting its parents)?"""
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], name) is not None
        except re.error as e:
            raise PassError(f"bad regular expression '{pattern}': {e}") from None
    if name == pattern:
        return True
    return _normalise_type(pattern) in _type_names(module)


def matched_names(model: nn.Module, pattern: str) -> list[str]:
    """Names of the modules ``pattern`` matches directly."""
    return [n for n, m in model.named_modules() if matches(n, m, pattern)]


def _inside(name: str, roots: list[str]) -> bool:
    return any(r == "" or name == r or name.startswith(r + ".") for r in roots)


def select(model: nn.Module, pattern: str, types: tuple[type, ...] = (nn.Module,)) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of ``types`` matched by ``pattern`` or inside a match."""
    roots = matched_names(model, pattern)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types) and _inside(n, roots)]


def select_all(model: nn.Module, patterns: list[str], types: tuple[type, ...] = (nn.Module,),
               who: str = "pass", what: str = "layer") -> list[tuple[str, nn.Module]]:
    """Union of :func:`select` over ``patterns``; PassError naming a pattern that selects nothing."""
    out: dict[str, nn.Module] = {}
    for p in patterns:
        hits = select(model, p, types)
        if not hits:
            kinds = "/".join(t.__name__ for t in types)
            raise PassError(f"{who}: pattern '{p}' matches no {what} ({kinds}) of the model")
        out.update(hits)
    return list(out.items())


def check_patterns(model: nn.Module, patterns: list[str], who: str) -> None:
    """PassError naming the first pattern that matches no module at all."""
    for p in patterns:
        if not matched_names(model, p):
            raise PassError(f"{who}: pattern '{p}' matches no layer of the model")
