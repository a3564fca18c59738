"""Channel surgery through torch-pruning's dependency graph, with this project's guard rails.

torch-pruning does the surgery; this module adds three things around its pruner:

* ``round_to`` rounds a layer's kept width to the *nearest* multiple (or, with
  ``rounding="down"``, removes the next lower multiple so no layer loses more than asked)
  and never below ``round_to`` (torch-pruning rounds down, which can leave a narrow layer
  with 0 channels); grouped convolutions are pruned per group (torch-pruning removes the
  same channels in every group) with no ``round_to``, which would otherwise round their
  per-group count away;
* a group that would lose every channel of a layer raises :class:`PassError` naming the
  layer, where torch-pruning would silently skip it;
* ``max_layer_ratio`` also holds within one global round (torch-pruning checks it only
  between rounds): a group asked to lose more keeps its most important channels.

The pass runs a round on a copy in ``check`` first, so a refusal leaves the model untouched.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import PassError
from compress.pruning.schedule import linear, rounded_keep


class Pruner(tp.pruner.BasePruner):
    """torch-pruning's BasePruner with this project's rounding (see :func:`rounded_keep`)."""

    rounding = "nearest"
    _ch_groups = 1  # channel groups of the group being pruned (set just before its rounding)

    def _is_atten_group(self, group):
        # torch-pruning 1.6 calls this for each group right before it rounds that group's count
        self._ch_groups = self._get_channel_groups(group)
        return super()._is_atten_group(group)

    def _round_to(self, n_pruned, current_channels, round_to):
        if self._ch_groups > 1:  # n_pruned counts channels per group: widths stay multiples of the groups
            return n_pruned
        keep = rounded_keep(current_channels, current_channels - n_pruned, round_to, self.rounding)
        return max(0, current_channels - keep)


def build_pruner(model: nn.Module, example: torch.Tensor, importance, *, ratio: float, global_scope: bool,
                 steps: int, layer_ratios: dict[nn.Module, float], max_layer_ratio: float,
                 round_to: int | None, ignored: list[nn.Module], rounding: str = "nearest") -> Pruner:
    """Trace ``model`` (eval mode, no weights change) and return a ready pruner."""
    model.eval()
    pruner = Pruner(model, example, importance=importance, global_pruning=global_scope, pruning_ratio=ratio,
                    pruning_ratio_dict=layer_ratios or None, max_pruning_ratio=max_layer_ratio,
                    iterative_steps=steps, iterative_pruning_ratio_scheduler=linear,
                    ignored_layers=ignored, round_to=round_to)
    pruner.rounding = rounding
    return pruner


def _name(pruner: Pruner, module) -> str:
    return pruner.DG._module2name.get(module, type(module).__name__)


def _plain(idxs) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


def prune_round(pruner: Pruner, who: str, ratio_hint: str = "") -> int:
    """Run the pruner's next round; returns how many groups were pruned.

    Groups are pruned one by one as torch-pruning yields them (a group's indices through a
    concat are only valid once the groups before it are pruned). A group that would lose
    every channel of a layer raises PassError (torch-pruning would skip it silently); the
    pass's ``check`` runs the same round on a copy first, so the real model is not touched.
    """
    dg = pruner.DG
    original = dg.check_pruning_group

    def check(group):
        if not original(group):
            dep, idxs = group[0]
            layer = (f"{_name(pruner, dep.target.module)} ({dg.get_out_channels(dep.target.module)} channels, "
                     f"{len(idxs)} to remove)")
            raise PassError(f"{who}: pruning would remove every channel of layer {layer}{ratio_hint}; "
                            "lower the ratio, set round_to, max_layer_ratio or layer_ratios for it, or ignore it")
        return True

    dg.check_pruning_group = check
    n = 0
    try:
        for group in pruner.step(interactive=True):
            if pruner.global_pruning and pruner.max_pruning_ratio < 1:
                group = _cap(pruner, group)
            if len(group[0].idxs) > 0:
                group.prune()
                n += 1
    finally:
        del dg.check_pruning_group  # back to the class method
    return n


def _cap(pruner: Pruner, group):
    """Trim a global-round group so its root keeps at least (1 - max_layer_ratio) of its initial width."""
    dep, idxs = group[0]
    root = dep.target.module
    current = pruner.DG.get_out_channels(root)
    initial = pruner.layer_init_out_ch.get(root, current)
    floor_keep = math.ceil(initial * (1 - pruner.max_pruning_ratio))
    if pruner.round_to:
        floor_keep = min(current, math.ceil(floor_keep / pruner.round_to) * pruner.round_to)
    allowed = max(0, current - floor_keep)
    plain = _plain(idxs)
    if len(plain) <= allowed:
        return group
    full = pruner.DG.get_pruning_group(root, dep.handler, list(range(current)))
    scores = pruner.estimate_importance(full).cpu()[plain]  # scores of the channels about to go
    order = torch.argsort(scores).tolist()
    keep_pruning = sorted(plain[i] for i in order[:allowed])
    return pruner.DG.get_pruning_group(root, dep.handler, keep_pruning)


def out_channels(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv / Linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def channel_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, str]:
    """Compact ``{layer: "64->32"}`` for layers whose width changed."""
    return {k: f"{v}->{after[k]}" for k, v in before.items() if k in after and after[k] != v}
