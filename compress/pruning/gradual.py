"""Gradual pruning during fine-tuning: Zhu & Gupta's cubic schedule and the masks it drives.

"To prune, or not to prune" (Zhu & Gupta, 2017): over ``n`` mask updates every ``dt``
optimiser steps from step ``t0`` the sparsity rises as

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

and is held at ``s_f`` afterwards. Here ``t0`` is ``begin`` x the fine-tune's steps, the
target is reached at ``end`` x the steps, ``s_i`` is ``initial``. A per-layer target ``r``
(``layer_ratios``, per-target amounts) follows the same curve from ``s_i`` to ``r``.

Masks are re-applied after *every* optimiser step (AdamW's moments would otherwise regrow
zeroed weights). Two kinds of masks:

* :class:`ChannelMasks` (``prune.structured``): the channel choice is torch-pruning's own
  (the pass's pruner, asked for the scheduled ratio but never allowed to prune), so
  ``round_to``, ``layer_ratios``, ``ignore`` and protected layers give the same plan as a
  one-shot round. Every layer of a chosen group is zeroed (a conv's filters and bias, a
  BatchNorm's scale and shift, the consumers' input slices), so removing exactly those
  channels at the end (:meth:`ChannelMasks.remove`) does not change the output.
* :class:`WeightMasks` (``prune.unstructured``): ``torch.nn.utils.prune`` re-parametrisation,
  masks computed with its ``L1Unstructured`` / ``LnStructured`` on the current weights,
  made permanent with ``prune.remove`` at the end.

:class:`GradualRun` is the ``on_step`` callback ``run_finetune`` calls after each step: it
applies due mask updates and logs Conv / BatchNorm sparsity per update and per epoch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # torch is imported when masks are made, not when a recipe is validated
    import torch
    from torch import nn


class GradualConfig(BaseModel):
    """When sparsity rises during the fine-tune (fractions of its optimiser steps)."""

    model_config = ConfigDict(extra="forbid")
    begin: float = Field(default=0.0, ge=0, lt=1)  # first mask update
    end: float = Field(default=0.75, gt=0, le=1)  # target sparsity reached here, then held
    update_every: int | None = Field(default=None, ge=1, le=1_000_000)  # steps; default: ~15 updates
    initial: float = Field(default=0.0, ge=0, lt=1)  # sparsity at the first update

    @model_validator(mode="after")
    def _order(self):
        if self.begin >= self.end:
            raise ValueError(f"gradual.begin ({self.begin:g}) must be before gradual.end ({self.end:g})")
        return self


GRADUAL_ERRORS = {
    "needs_finetune": "schedule 'gradual' raises the sparsity during fine-tuning: give a finetune config",
    "steps": ("steps > 1 cannot be combined with schedule 'gradual' (steps are one-shot prune + fine-tune "
              "rounds; gradual already spreads pruning over the fine-tune's mask updates): use one of them"),
    "stray": "gradual settings given but schedule is 'oneshot': set schedule: gradual or drop them",
}


def cubic(final: float, initial: float, progress: float) -> float:
    """Zhu & Gupta's sparsity at ``progress`` = (t - t0) / (n dt), clipped to [0, 1]."""
    p = min(1.0, max(0.0, progress))
    return final + (initial - final) * (1.0 - p) ** 3


class Schedule:
    """The mask-update steps of one fine-tune of ``total`` optimiser steps.

    ``updates`` holds (steps done, progress) pairs: from ``begin`` every ``dt`` steps, the
    last one exactly at ``end`` (progress 1.0), at least one step into training.
    """

    def __init__(self, cfg: GradualConfig, total: int):
        b = min(total, max(0, round(cfg.begin * total)))
        e = min(total, max(b, 1, round(cfg.end * total)))
        span = e - b
        self.dt = cfg.update_every or max(1, round(span / 15))
        marks = list(range(b, e, self.dt)) + [e]
        due = {max(1, u): (u - b) / span if span else 1.0 for u in marks}  # step 0 is due after step 1
        self.updates = sorted(due.items())
        self.begin, self.end, self.total = b, e, total
        self._next = 0

    def due(self, done: int) -> float | None:
        """Progress of the newest update due after ``done`` steps (None if none is new)."""
        p = None
        while self._next < len(self.updates) and self.updates[self._next][0] <= done:
            p = self.updates[self._next][1]
            self._next += 1
        return p

    def info(self) -> dict:
        return {"total_steps": self.total, "begin_step": self.begin, "end_step": self.end,
                "update_every": self.dt, "updates_planned": len(self.updates)}


def conv_bn_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero Conv weights and BatchNorm scales (effective, masks included)."""
    from torch import nn

    out = {}
    for key, types in (("conv", nn.modules.conv._ConvNd), ("batchnorm", nn.modules.batchnorm._BatchNorm)):
        zeros = total = 0
        for m in model.modules():
            if isinstance(m, types):
                w = _effective_weight(m)
                if w is not None:
                    zeros += int((w == 0).sum())
                    total += w.numel()
        out[key] = round(zeros / total, 4) if total else 0.0
    return out


def _effective_weight(m: nn.Module) -> torch.Tensor | None:
    if hasattr(m, "weight_orig") and hasattr(m, "weight_mask"):
        return (m.weight_orig * m.weight_mask).detach()
    w = getattr(m, "weight", None)
    return None if w is None else w.detach()


# -- structured: channel masks planned by torch-pruning ------------------------------------------
def _keep_masks(module: nn.Module, out: bool, idxs: list[int]) -> dict[str, torch.Tensor]:
    """Per parameter name, a bool keep-mask that zeroes channels ``idxs`` (out or in) of ``module``."""
    import torch
    from torch import nn

    masks = {}
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    if not isinstance(w, torch.Tensor) or not idxs:
        return masks
    idx = torch.as_tensor(idxs, dtype=torch.long)
    keep_w = torch.ones_like(w, dtype=torch.bool)
    keep_b = None
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or w.dim() == 1:  # norms: per-channel scale/shift
        keep_w[idx] = False
        keep_b = keep_w.clone() if b is not None else None
    elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight (in, out/groups, ...)
        if module.groups != 1:
            return masks
        if out:
            keep_w[:, idx] = False
        else:
            keep_w[idx] = False
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):  # weight (out, in/groups, ...)
        groups = getattr(module, "groups", 1)
        if out:
            keep_w[idx] = False
        elif groups == 1:
            keep_w[:, idx] = False
        else:  # grouped: input channel i feeds only its group's outputs, at position i % (in/groups)
            cpg, opg = w.shape[1], w.shape[0] // groups
            for i in idxs:
                g = i // cpg
                keep_w[g * opg:(g + 1) * opg, i % cpg] = False
    else:
        return masks
    if out and keep_b is None and b is not None and b.dim() == 1 and len(b) == w.shape[0]:
        keep_b = torch.ones_like(b, dtype=torch.bool)
        keep_b[idx] = False
    masks["weight"] = keep_w
    if keep_b is not None:
        masks["bias"] = keep_b
    return masks


class ChannelMasks:
    """Channels chosen by a torch-pruning pruner, zeroed in place (never removed until :meth:`remove`).

    ``pruner`` is built once on the (unpruned) model; ``update(progress)`` asks it for the
    groups at the scheduled ratio (every per-layer ratio on the same cubic curve) without
    pruning them, and keeps them as zeroing masks plus the (root, handler, indices) to remove.
    """

    def __init__(self, pruner, initial: float = 0.0, cap: Callable | None = None):
        self.pruner = pruner
        self.initial = initial
        self.cap = cap  # surgery._cap for global scope with max_layer_ratio
        self.final = pruner.per_step_pruning_ratio[-1]
        self.final_layers = {m: r[-1] for m, r in pruner.pruning_ratio_dict.items()}
        self.plan: list[tuple[nn.Module, object, list[int]]] = []
        self.masks: dict[nn.Parameter, torch.Tensor] = {}
        self.ratio = 0.0

    def update(self, progress: float) -> dict:
        from compress.pruning.surgery import _plain

        p = self.pruner
        self.ratio = cubic(self.final, self.initial, progress)
        p.per_step_pruning_ratio = [0.0, self.ratio]
        p.pruning_ratio_dict = {m: [0.0, cubic(r, self.initial, progress)] for m, r in self.final_layers.items()}
        p.current_step = 0
        plan, masks = [], {}
        for group in p.step(interactive=True):  # never group.prune(): the model keeps its shape
            if self.cap is not None:
                group = self.cap(p, group)
            if not len(group[0].idxs):
                continue
            root = group[0].dep
            plan.append((root.target.module, root.handler, _plain(group[0].idxs)))
            for dep, idxs in group:
                module = dep.target.module
                out = p.DG.is_out_channel_pruning_fn(dep.handler)
                for name, keep in _keep_masks(module, out, _plain(idxs)).items():
                    param = getattr(module, name)
                    masks[param] = masks[param] & keep if param in masks else keep
        self.plan, self.masks = plan, masks
        self.apply()
        return {"target_ratio": round(self.ratio, 4), "masked_channels": self.masked_channels()}

    def masked_channels(self) -> int:
        return sum(len(i) for _, _, i in self.plan)

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for param, keep in self.masks.items():
                param.mul_(keep.to(param.device))

    def remove(self) -> int:
        """Torch-pruning surgery removing exactly the masked channels; returns the groups pruned."""
        dg = self.pruner.DG
        for module, handler, idxs in self.plan:  # fresh group per root: indices through concats stay valid
            dg.get_pruning_group(module, handler, idxs).prune()
        n = len(self.plan)
        self.plan, self.masks = [], {}
        return n


# -- unstructured: torch.nn.utils.prune masks ------------------------------------------------------
class WeightMasks:
    """Magnitude masks on ``{name: (module, final amount)}`` via ``torch.nn.utils.prune``."""

    def __init__(self, plan: dict[str, tuple[nn.Module, float]], *, scope: str = "local",
                 granularity: str = "element", norm: str = "l1", initial: float = 0.0):
        import torch.nn.utils.prune as prune

        self.plan, self.scope, self.granularity, self.initial = plan, scope, granularity, initial
        self.n = 1 if norm == "l1" else 2
        for m, _ in plan.values():  # all-ones masks now; updates overwrite weight_mask in place
            prune.identity(m, "weight")
        self.amount = 0.0

    def _mask(self, w: torch.Tensor, amount: float) -> torch.Tensor:
        import torch
        import torch.nn.utils.prune as prune

        ones = torch.ones_like(w)
        if self.granularity == "channel":
            return prune.LnStructured(amount, n=self.n, dim=0).compute_mask(w, ones)
        return prune.L1Unstructured(amount).compute_mask(w, ones)

    def update(self, progress: float) -> dict:
        import torch

        with torch.no_grad():
            self._update(progress)
        self.apply()
        return {"target_amount": round(self.amount, 4), "targeted_sparsity": round(self.sparsity(), 4)}

    def _update(self, progress: float) -> None:
        import torch

        self.amount = cubic(max(a for _, a in self.plan.values()), self.initial, progress)
        if self.scope == "global":  # one magnitude threshold per group of layers sharing a final amount
            groups: dict[float, list[nn.Module]] = {}
            for m, a in self.plan.values():
                groups.setdefault(a, []).append(m)
            for a, mods in groups.items():
                ws = [_effective_weight(m) for m in mods]
                flat = self._mask(torch.cat([w.flatten() for w in ws]), cubic(a, self.initial, progress))
                for m, part in zip(mods, torch.split(flat, [w.numel() for w in ws])):
                    m.weight_mask.copy_(part.view_as(m.weight_mask))
        else:
            for m, a in self.plan.values():
                m.weight_mask.copy_(self._mask(_effective_weight(m), cubic(a, self.initial, progress)))

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for m, _ in self.plan.values():
                m.weight_orig.mul_(m.weight_mask)  # the parameter itself stays zero, not just the product
                m.weight = m.weight_orig * m.weight_mask  # what forward sees until its pre-hook recomputes it

    def sparsity(self) -> float:
        zeros = sum(int((m.weight_mask == 0).sum()) for m, _ in self.plan.values())
        total = sum(m.weight_mask.numel() for m, _ in self.plan.values())
        return zeros / total if total else 0.0

    def remove(self) -> None:
        import torch.nn.utils.prune as prune

        for m, _ in self.plan.values():
            prune.remove(m, "weight")


# -- the per-step callback ------------------------------------------------------------------------
class GradualRun:
    """``on_step`` for ``run_finetune``: due mask updates, masks after every step, sparsity log.

    ``masks`` has ``update(progress) -> dict`` and ``apply()``. With ``cfg=None`` the masks
    are only held (one-shot pruning followed by a masked fine-tune).
    """

    def __init__(self, model: nn.Module, masks, cfg: GradualConfig | None):
        self.model, self.masks, self.cfg = model, masks, cfg
        self.schedule: Schedule | None = None
        self.updates: list[dict] = []
        self.epochs: list[dict] = []
        self.steps_done = 0

    def __call__(self, step: int, total: int, per_epoch: int) -> None:
        done = step + 1
        if self.cfg is not None:
            if self.schedule is None:
                self.schedule = Schedule(self.cfg, total)
            p = self.schedule.due(done)
            if p is not None:
                self.updates.append({"step": done, "progress": round(p, 4), **self.masks.update(p),
                                     **conv_bn_sparsity(self.model)})
        self.masks.apply()
        self.steps_done = done
        if done % per_epoch == 0 or done == total:
            self.epochs.append({"epoch": round(done / per_epoch, 2), "step": done, **conv_bn_sparsity(self.model)})

    def finish(self) -> None:
        """Make sure the final target is in place (e.g. the fine-tune stopped early)."""
        if self.cfg is not None and (not self.updates or self.updates[-1]["progress"] < 1.0):
            self.updates.append({"step": self.steps_done, "progress": 1.0, **self.masks.update(1.0),
                                 **conv_bn_sparsity(self.model)})

    def report(self) -> dict:
        out = {"schedule": "gradual" if self.cfg is not None else "oneshot"}
        if self.cfg is not None:
            out.update(self.cfg.model_dump())
            if self.schedule is not None:
                out.update(self.schedule.info())
            out["updates"] = self.updates
        out["epochs"] = self.epochs
        return out


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two (nested) model outputs."""
    import torch

    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0 if a == b else math.inf
