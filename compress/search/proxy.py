"""Cheap scores of a candidate without training: dry-run pruning, output distortion, MACs.

:func:`dry_run` prunes a copy with ``prune.structured``'s own planning and surgery (its pass
class, ``layer_ratios`` by layer name, the recipe's ``round_to``/``rounding``), so ``compress run``
on the written recipe reaches the same widths. :func:`distortion` is the relative squared error
of the un-recovered copy's raw head outputs (``adapter.distill_outputs``) against the
original's on a few calibration images, after re-estimating the copy's BatchNorm statistics on
them (adaptive BN, as in EagleEye): lower means less to recover.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch


def prune_config(base: dict, ratios: dict[str, float], global_ratio: float) -> dict:
    """The recipe's prune.structured mapping with ``layer_ratios`` set (local scope, one step)."""
    cfg = {k: v for k, v in base.items() if k not in ("layer_ratios", "scope", "steps")}
    cfg.update(ratio=round(float(global_ratio), 3), layer_ratios=dict(ratios))
    return cfg


def dry_run(model, adapter, cfg: dict, seed: int = 0):
    """A pruned copy of ``model`` (rewritten for pruning) under the prune.structured mapping ``cfg``."""
    from compress.passes.prune_structured import StructuredPrune
    from compress.pruning.surgery import prune_round

    fields = {k: v for k, v in cfg.items() if k != "finetune"}
    pas = StructuredPrune(StructuredPrune.Config(**fields))
    trial = adapter.rewrite_for_pruning(copy.deepcopy(model)).eval()
    criterion = "l2" if pas.config.criterion == "fmap_cluster" else pas.config.criterion  # widths do not depend on it
    torch.manual_seed(seed)
    pruner = pas._pruner(trial, SimpleNamespace(adapter=adapter, seed=seed), criterion, steps=1)
    prune_round(pruner, "search", "")
    return trial.eval()


def widths(model) -> dict[str, int]:
    """Output channels of every conv / linear layer (what two prunings must agree on)."""
    from compress.pruning.surgery import out_channels

    return out_channels(model)


class Distortion:
    """Relative squared error of a model's raw outputs against the reference on fixed images."""

    def __init__(self, reference, adapter, images):
        self.adapter = adapter
        self.x = adapter.preprocess(list(images))[0]
        with torch.no_grad():
            self.ref = [t.detach().float() for t in adapter.distill_outputs(reference.eval(), self.x)]
        self.norm = sum(float((t ** 2).sum()) for t in self.ref) or 1.0

    def __call__(self, model) -> float:
        """Distortion of ``model`` (a throw-away pruned copy: its BatchNorm statistics are re-estimated
        on the images first, as EagleEye's adaptive-BN evaluation does. Without that, stale statistics
        make every heavily pruned copy look equally broken: on yolov8n-digits the raw distortion fell
        from 0.214 to 0.174 as the uniform ratio rose from 0.3 to 0.7; re-estimated it rises 0.041 to 0.185)."""
        from compress.models.batchnorm import reestimate_bn

        reestimate_bn(model, self.x)
        with torch.no_grad():
            out = self.adapter.distill_outputs(model.eval(), self.x)
        err = sum(float(((o.float() - r) ** 2).sum()) for o, r in zip(out, self.ref))
        return err / self.norm
