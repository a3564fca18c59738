"""``prune.structured``: remove whole channels (filters), so the model gets smaller and faster.

The surgery is torch-pruning's dependency graph (``compress.pruning.surgery``); this pass
chooses what to remove. Criteria: ``l1`` / ``l2`` filter norms, ``fmap_cluster``
(K-means++ clustering of feature-map statistics, see ``compress.pruning.importance``) and
``random`` (a control). ``scope: global`` ranks channels of all layers together.

``steps: N`` reaches ``ratio`` over N rounds on a linear schedule, each round followed by
the ``finetune`` config (if given); ``steps: 1`` without ``finetune`` is one-shot pruning.
``schedule: gradual`` (with ``finetune``) is gradual soft filter pruning: during the one
fine-tune the channels the one-shot plan would remove at a rising (cubic, Zhu & Gupta)
ratio are zeroed, masks held after every step, and exactly those channels are removed at
the end (``compress.pruning.gradual``).
The adapter's ``rewrite_for_pruning`` runs first and its ``protected_layers`` (detection
head outputs, a classifier's last layer) always keep their channels.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import Field, model_validator

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register
from compress.passes.finetune import FinetuneConfig
from compress.pruning.gradual import GRADUAL_ERRORS, GradualConfig

Ratio = Annotated[float, Field(gt=0, lt=1)]


@register("prune.structured")
class StructuredPrune(Pass):
    """Channel pruning with torch-pruning; optional iterative schedule with fine-tuning."""

    class Config(PassConfig):
        criterion: Literal["l1", "l2", "fmap_cluster", "random"] = "l2"
        ratio: Ratio  # fraction of channels removed from every prunable layer (or overall, for global)
        scope: Literal["local", "global"] = "local"
        layer_ratios: dict[str, Ratio] = {}  # name | re:pattern | type -> ratio, overriding ``ratio``
        max_layer_ratio: float = Field(default=1.0, gt=0, le=1)  # no layer loses more than this
        round_to: int | None = Field(default=8, ge=1, le=1024)  # kept widths are multiples (and at least this)
        # how a width is rounded to round_to: "nearest" multiple, or "down" (remove the next lower
        # multiple: a layer never loses more than its ratio; 0.3 of 16 channels removes none)
        rounding: Literal["nearest", "down"] = "nearest"
        ignore: list[str] = []  # names, re: patterns or module type names never pruned
        steps: int = Field(default=1, ge=1, le=100)  # rounds of prune (+ finetune) to reach ``ratio``
        finetune: FinetuneConfig | None = None  # run after every round
        calib_samples: int = Field(default=64, ge=1, le=100_000)  # images for fmap_cluster statistics
        conf: float = Field(default=0.25, gt=0, lt=1)  # fmap_cluster without labels: detection threshold
        n_init: int = Field(default=5, ge=1, le=100)  # fmap_cluster: KMeans restarts (best inertia kept)
        schedule: Literal["oneshot", "gradual"] = "oneshot"  # gradual: ratio rises during the finetune
        gradual: GradualConfig | None = None  # begin / end / update_every / initial (schedule: gradual)

        @model_validator(mode="after")
        def _gradual(self):
            if self.schedule == "oneshot":
                if self.gradual is not None:
                    raise ValueError(GRADUAL_ERRORS["stray"])
                return self
            if self.finetune is None:
                raise ValueError(GRADUAL_ERRORS["needs_finetune"])
            if self.steps > 1:
                raise ValueError(GRADUAL_ERRORS["steps"])
            if self.criterion not in ("l1", "l2"):
                raise ValueError(f"schedule 'gradual' ranks channels by l1 or l2 (got criterion '{self.criterion}')")
            return self

    def __init__(self, config):
        super().__init__(config)
        self._boxes = None  # fmap_cluster boxes found during check (reused by apply)

    # -- checks ---------------------------------------------------------------------------
    def _resolve(self, model, ctx):
        """(ignored modules, {module: ratio}) from the config; PassError for unmatched patterns."""
        from torch import nn

        from compress.pruning.targets import select_all

        prunable = (nn.modules.conv._ConvNd, nn.Linear)
        ignored = [m for _, m in select_all(model, self.config.ignore, (nn.Module,), self.label, "layer")]
        ignored += list(ctx.adapter.protected_layers(model))
        ratios = {}
        for pattern, r in self.config.layer_ratios.items():
            for _, m in select_all(model, [pattern], prunable, f"{self.label}: layer_ratios", "prunable layer"):
                ratios[m] = r
        return ignored, ratios

    def _fmap_data(self, ctx):
        from compress.pruning.fmap import find_boxes

        data = ctx.require_calibration(f"{self.label} (criterion fmap_cluster)").head(self.config.calib_samples)
        images = [s.image for s in data]
        labelled = None
        if ctx.adapter.task == "detect" and data.has_labels and all(s.boxes is not None for s in data):
            labelled = [s.boxes for s in data]
        return images, find_boxes(ctx, images, labelled, self.label, conf=self.config.conf)

    def check(self, model, ctx):
        import copy

        cfg = self.config
        if cfg.finetune is not None:
            from compress.passes.finetune import check_finetune

            check_finetune(ctx, cfg.finetune, f"{self.label}.finetune")
        if cfg.criterion == "fmap_cluster":
            self._boxes = self._fmap_data(ctx)
        # dry run on a copy: traces the graph, resolves patterns, and refuses a ratio that would
        # empty a layer (exact for one-shot l1/l2/random; fmap_cluster is tried with l2 here)
        from compress.errors import CompressError
        from compress.pruning.surgery import prune_round

        trial = ctx.adapter.rewrite_for_pruning(copy.deepcopy(model))
        criterion = "l2" if cfg.criterion == "fmap_cluster" else cfg.criterion
        try:
            pruner = self._pruner(trial, ctx, criterion, steps=1)
            pruned = prune_round(pruner, self.label, f" at ratio {cfg.ratio}")
        except CompressError:
            raise
        except Exception as e:  # torch-pruning could not follow the graph: refuse before the model is touched
            raise PassError(f"{self.label}: torch-pruning cannot prune this model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); list the blocks it cannot follow "
                            "under ignore") from None
        if not pruned:
            raise PassError(f"{self.label}: nothing to prune at ratio {cfg.ratio} (every layer is ignored, "
                            f"protected or too narrow for round_to {cfg.round_to})")

    # -- work -----------------------------------------------------------------------------
    def _pruner(self, model, ctx, criterion, steps):
        from compress.pruning.importance import make_importance
        from compress.pruning.surgery import build_pruner

        cfg = self.config
        ignored, ratios = self._resolve(model, ctx)
        holder = {}
        imp = make_importance(criterion, plan=lambda m: holder["plan"](m), seed=ctx.seed, n_init=cfg.n_init)
        pruner = build_pruner(model, ctx.adapter.example_input(1), imp, ratio=cfg.ratio,
                              global_scope=cfg.scope == "global", steps=steps, layer_ratios=ratios,
                              max_layer_ratio=cfg.max_layer_ratio, round_to=cfg.round_to, ignored=ignored,
                              rounding=cfg.rounding)
        holder["plan"] = lambda m: (pruner.layer_init_out_ch.get(m, 0), pruner.get_target_pruning_ratio(m))
        return pruner

    def _refresh_stats(self, pruner, model, ctx):
        from compress.pruning.fmap import collect_stats, feature_map_candidates

        images, source = self._boxes
        roots = [g[0].dep.target.module for g in
                 pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types)]
        layers = feature_map_candidates(model, pruner.DG, roots)
        pruner.importance.stats = collect_stats(model, layers, images, source, ctx.adapter)

    def _plan(self, model, ctx, pruner) -> dict:
        """What the pruner was asked to do per layer, read before it prunes (for the coverage)."""
        from compress.pruning.coverage import PRUNABLE, prunable_layers

        cfg = self.config
        ignored, ratios = self._resolve(model, ctx)
        protected = set(ctx.adapter.protected_layers(model))
        requested = {}
        for name, m in model.named_modules():
            if isinstance(m, PRUNABLE):
                r = ratios.get(m, None if cfg.scope == "global" else cfg.ratio)
                requested[name] = None if r is None else round(min(float(r), cfg.max_layer_ratio), 4)
        return {"in_group": prunable_layers(pruner), "protected": protected,
                "ignored": {m for m in ignored if m not in protected}, "requested": requested}

    def _coverage(self, model, ctx, before: dict, plan: dict) -> dict:
        from compress.pruning.coverage import coverage

        cfg = self.config
        cov = coverage(model, before, requested=plan["requested"], protected=plan["protected"],
                       ignored=plan["ignored"], in_group=plan["in_group"], round_to=cfg.round_to)
        if cov["overshoot"]:
            ex = cov["overshoot"][0]
            ctx.notes.append(
                f"{self.label}: round_to {cfg.round_to} removed more than asked from {len(cov['overshoot'])} "
                f"layer(s) (e.g. {ex['layer']}: asked {ex['requested']:g}, removed {ex['effective']:g}); "
                "rounding: down never exceeds the ratio, a smaller round_to comes closer.")
        if cov["whole"]:
            reasons: dict[str, int] = {}
            for row in cov["whole"]:
                reasons[row["kind"]] = reasons.get(row["kind"], 0) + 1
            ctx.notes.append(f"{self.label}: {len(cov['whole'])} prunable-looking layer(s) left whole: "
                             + ", ".join(f"{n} {k}" for k, n in reasons.items()) + " (see the coverage table).")
        return cov

    def _gradual(self, model, ctx, pruner):
        """Soft filter pruning during one fine-tune, then surgery removing exactly the masked channels."""
        import torch

        from compress.passes.finetune import run_finetune
        from compress.pruning.gradual import ChannelMasks, GradualRun, max_abs_diff
        from compress.pruning.surgery import _cap

        cfg = self.config
        gcfg = cfg.gradual or GradualConfig()
        cap = _cap if cfg.scope == "global" and cfg.max_layer_ratio < 1 else None
        masks = ChannelMasks(pruner, initial=gcfg.initial, cap=cap)
        run = GradualRun(model, masks, gcfg)
        ft: dict = {}
        model = run_finetune(model, ctx, cfg.finetune, report=ft, label=f"{self.label} finetune (gradual)",
                             on_step=run)
        run.finish()
        model.eval()
        example = ctx.adapter.example_input(1)
        ts = time.perf_counter()
        with torch.no_grad():
            masked = model(example)
            groups = masks.remove()
            diff = max_abs_diff(masked, model(example))
        out = run.report()
        out.update({"groups_removed": groups, "surgery_max_abs_diff": diff, "finetune": ft,
                    "prune_seconds": round(time.perf_counter() - ts, 2)})
        if not diff <= 1e-4:
            ctx.notes.append(f"{self.label}: removing the masked channels changed the output by {diff:.3g} "
                             "(expected 0): a masked channel was not removed or a removed one was live.")
        return model, out

    def apply(self, model, ctx):
        import torch

        from compress.metrics.size import count_macs, count_params
        from compress.passes.finetune import run_finetune
        from compress.pruning.surgery import channel_changes, out_channels, prune_round

        cfg = self.config
        t0 = time.perf_counter()
        model = ctx.adapter.rewrite_for_pruning(model).eval()
        example = ctx.adapter.example_input(1)
        params0, macs0, ch0 = count_params(model), count_macs(model, example), out_channels(model)
        if cfg.criterion == "fmap_cluster" and self._boxes is None:
            self._boxes = self._fmap_data(ctx)
        torch.manual_seed(ctx.seed)
        pruner = self._pruner(model, ctx, cfg.criterion, steps=cfg.steps)
        plan = self._plan(model, ctx, pruner)
        rounds, prune_s = [], 0.0
        if cfg.schedule == "gradual":
            model, gradual = self._gradual(model, ctx, pruner)
            prune_s = gradual.pop("prune_seconds")
        for step in range(cfg.steps if cfg.schedule == "oneshot" else 0):
            ts = time.perf_counter()
            if cfg.criterion == "fmap_cluster":
                self._refresh_stats(pruner, model, ctx)
            prune_round(pruner, self.label, f" at round {step + 1}")
            prune_s += time.perf_counter() - ts
            rnd = {"round": step + 1, "target_ratio": round(pruner.per_step_pruning_ratio[step + 1], 4),
                   "params": count_params(model), "prune_seconds": round(time.perf_counter() - ts, 2)}
            if cfg.finetune is not None:
                rnd["finetune"] = {}
                model = run_finetune(model, ctx, cfg.finetune, report=rnd["finetune"],
                                     label=f"{self.label} finetune {step + 1}/{cfg.steps}")
            rounds.append(rnd)
        model.eval()
        params1, macs1, ch1 = count_params(model), count_macs(model, example), out_channels(model)
        sec = ctx.section(self.label)
        sec.update({
            "criterion": cfg.criterion, "ratio": cfg.ratio, "scope": cfg.scope, "steps": cfg.steps,
            "round_to": cfg.round_to, "params_before": params0, "params_after": params1,
            "macs_before": macs0, "macs_after": macs1,
            "params_ratio": round(params1 / params0, 4) if params0 else None,
            "macs_ratio": round(macs1 / macs0, 4) if macs0 else None,
            "channels": channel_changes(ch0, ch1),
            "unchanged_layers": sum(1 for k in ch0 if ch1.get(k) == ch0[k]),
            "coverage": self._coverage(model, ctx, ch0, plan),
            "prune_seconds": round(prune_s, 2), "seconds": round(time.perf_counter() - t0, 2),
        })
        if cfg.schedule == "gradual":
            sec["schedule"] = "gradual"
            sec["gradual"] = gradual
        elif cfg.steps > 1 or cfg.finetune is not None:
            sec["rounds"] = rounds
        if cfg.criterion == "fmap_cluster":
            sec["fmap_boxes"] = self._boxes[1].origin
            sec["fmap_images"] = len(self._boxes[0])
            if self._boxes[1].origin.startswith("reference"):
                ctx.notes.append(f"{self.label}: no labels, so fmap_cluster used the original model's own "
                                 f"detections (conf {cfg.conf:g}) as boxes.")
        ctx.notes.append(f"{self.label}: {cfg.criterion} removed {1 - params1 / params0:.0%} of the parameters "
                         f"and {1 - macs1 / macs0:.0%} of the MACs.")
        return model
