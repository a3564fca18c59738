"""The search space: a few knobs -> per-layer pruning ratios (``prune.structured``'s ``layer_ratios``).

The prunable layers (convolutions and linear layers that the adapter does not protect and the
recipe does not ignore) are ordered as the model defines them and split into ``stages``:
contiguous runs of the model's top-level blocks (the shallowest name level with at least two
distinct blocks, so ``model.0 ... model.22`` for Ultralytics), cut into at most ``n_stages``
groups of equal block count. A candidate is a global ratio ``g`` and one multiplier per
stage; a layer's ratio is ``clip(g * multiplier, lo, hi)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RATIO_LO, RATIO_HI = 0.05, 0.9  # never below (no-op) or above (a layer is almost gone)
GLOBAL_RANGE = (0.1, 0.85)
MULT_RANGE = (0.5, 1.5)


@dataclass
class Space:
    """Prunable layer names grouped into stages (``stages[i]`` is a list of layer names)."""

    stages: list[list[str]]
    blocks: list[list[str]] = field(default_factory=list)  # the top-level block names of each stage

    @property
    def layers(self) -> list[str]:
        return [n for s in self.stages for n in s]

    def knob_names(self) -> list[str]:
        return ["global"] + [f"stage{i}" for i in range(len(self.stages))]

    def ratios(self, knobs: dict[str, float]) -> dict[str, float]:
        """``{layer name: ratio}`` for ``knobs`` (``global`` and ``stage<i>`` multipliers, default 1)."""
        g = float(knobs["global"])
        out = {}
        for i, names in enumerate(self.stages):
            r = round(min(RATIO_HI, max(RATIO_LO, g * float(knobs.get(f"stage{i}", 1.0)))), 3)
            out.update({n: r for n in names})
        return out

    def extreme(self) -> dict[str, float]:
        """The knobs that prune the most the space allows (for the 'is the target possible' check)."""
        return {"global": GLOBAL_RANGE[1], **{f"stage{i}": MULT_RANGE[1] for i in range(len(self.stages))}}


def _block(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def build_space(model, adapter, ignore: list[str] | None = None, n_stages: int = 4) -> Space:
    """The space of ``model`` (already rewritten for pruning); ``ignore`` as in prune.structured."""
    from torch import nn

    from compress.pruning.targets import select_all

    skip = {id(m) for m in adapter.protected_layers(model)}
    if ignore:
        skip |= {id(m) for _, m in select_all(model, ignore, (nn.Module,), "search", "layer")}
    names = [n for n, m in model.named_modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and id(m) not in skip and n]
    if not names:
        return Space(stages=[])
    depth = 1
    while len({_block(n, depth) for n in names}) < 2 and depth < max(len(n.split(".")) for n in names):
        depth += 1
    blocks: list[str] = []
    for n in names:
        b = _block(n, depth)
        if b not in blocks:
            blocks.append(b)
    k = max(1, min(n_stages, len(blocks)))
    cuts = [round(i * len(blocks) / k) for i in range(k + 1)]
    groups = [blocks[cuts[i]:cuts[i + 1]] for i in range(k)]
    stages = [[n for n in names if _block(n, depth) in set(g)] for g in groups]
    return Space(stages=[s for s in stages if s], blocks=[g for g, s in zip(groups, stages) if s])
