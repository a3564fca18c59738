"""What a structured-pruning pass covered: per layer the requested and the effective ratio,
and every prunable-looking layer (Conv / Linear) left whole, with the reason.

:func:`prunable_layers` is read from the pruner *before* it prunes (the layers whose output
channels some torch-pruning group can remove); :func:`coverage` compares the widths before
and after and explains each layer that kept its width.
"""

from __future__ import annotations

from torch import nn

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def _width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def is_grouped(m: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (depthwise ones follow their input's channels)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups != m.out_channels


def prunable_layers(pruner) -> set[nn.Module]:
    """Layers whose output channels a group of ``pruner`` can remove (ignored layers excluded)."""
    dg = pruner.DG
    out: set[nn.Module] = set()
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                out.add(dep.target.module)
    return out


def _reason(m: nn.Module, width: int, *, protected: set, ignored: set, in_group: set, round_to: int | None,
            ratio: float | None) -> tuple[str, str]:
    """(kind, plain-language reason) for a prunable-looking layer that kept its width."""
    if m in protected:
        return "protected", "protected by the adapter (its outputs are the model's outputs)"
    if m in ignored:
        return "ignored", "ignored (the pass's ignore list)"
    if m not in in_group:
        if is_grouped(m):
            return "grouped", f"grouped convolution (groups={m.groups}) that torch-pruning could not prune"
        return "coupled", "shares its channels with a protected or ignored layer (residual add, concat or output)"
    if round_to and width <= round_to:
        return "too narrow", f"too narrow: {width} channels, and round_to {round_to} is the minimum width"
    if ratio is not None and ratio > 0 and round_to:
        return "rounding", f"ratio {ratio:g} of {width} channels rounds to no channel removed (round_to {round_to})"
    return "importance", "its importance scores kept every channel"


def coverage(model: nn.Module, before: dict[str, int], *, requested: dict[str, float | None],
             protected: set, ignored: set, in_group: set, round_to: int | None,
             grouped_before: dict[str, int] | None = None) -> dict:
    """``{"pruned": [...], "whole": [...], "overshoot": [...]}`` for a pruned ``model``.

    ``before``: layer name -> output width before pruning; ``requested``: layer name -> the
    ratio asked for that layer (None under global scope, where only the total is asked).
    Each pruned row: layer, channels "16->8", requested, effective (removed fraction).
    """
    pruned, whole, over = [], [], []
    for name, m in model.named_modules():
        if not isinstance(m, PRUNABLE) or name not in before:
            continue
        w0, w1 = before[name], _width(m)
        req = requested.get(name)
        if w1 != w0:
            eff = round(1 - w1 / w0, 4)
            row = {"layer": name, "channels": f"{w0}->{w1}", "requested": req, "effective": eff}
            if is_grouped(m):
                row["grouped"] = m.groups
            pruned.append(row)
            if req is not None and eff > req + 0.05:
                over.append(row)
        else:
            kind, why = _reason(m, w0, protected=protected, ignored=ignored, in_group=in_group,
                                round_to=round_to, ratio=req)
            whole.append({"layer": name, "channels": w0, "kind": kind, "reason": why})
    return {"pruned": pruned, "whole": whole, "overshoot": over}
