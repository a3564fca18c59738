"""``prune.unstructured``: magnitude pruning of individual weights (or whole filters, zeroed).

Done with ``torch.nn.utils.prune``: ``l1_unstructured`` per layer (scope ``local``: every
layer to its target's amount) or ``global_unstructured`` (scope ``global``: one magnitude
threshold across all layers that share an amount, i.e. across the whole model unless
target entries give different amounts). Later target entries override earlier ones. ``granularity: channel`` zeroes whole
output filters per layer with ``ln_structured`` (n=1 or 2). For single weights the l1 and
l2 norms rank identically (|w| vs w^2), so ``norm`` only matters for ``channel``.
Masks are made permanent (``prune.remove``) before the model is returned.

With ``finetune`` the masks are held during the fine-tune (re-applied after every optimiser
step); ``schedule: gradual`` instead raises every target's amount from ``gradual.initial``
on Zhu & Gupta's cubic curve during the fine-tune (``compress.pruning.gradual``).

Zeros shrink only a compressed (zipped) file; dense kernels still multiply them, so the
report labels this section ``size_only`` and the runner adds the measured latency ratio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register
from compress.passes.finetune import FinetuneConfig
from compress.pruning.gradual import GRADUAL_ERRORS, GradualConfig

if TYPE_CHECKING:  # torch is imported when the pass runs, not when a recipe is validated
    from torch import nn

NOTE = "size only -- dense kernels do not skip zeros"


class Target(BaseModel):
    """Layers to prune (type name, module name or ``re:`` pattern) and their amount."""

    model_config = ConfigDict(extra="forbid")
    match: str = Field(min_length=1)
    amount: float | None = Field(default=None, gt=0, lt=1)  # the pass's ``amount`` when omitted


def _weighted_types(include_bn: bool) -> tuple[type, ...]:
    from torch import nn

    base = (nn.modules.conv._ConvNd, nn.Linear)
    return base + (nn.modules.batchnorm._BatchNorm,) if include_bn else base


@register("prune.unstructured")
class UnstructuredPrune(Pass):
    """Zero the smallest-magnitude weights of the selected layers."""

    class Config(PassConfig):
        amount: float = Field(default=0.5, gt=0, lt=1)  # fraction of weights zeroed
        norm: Literal["l1", "l2"] = "l1"
        scope: Literal["local", "global"] = "local"
        granularity: Literal["element", "channel"] = "element"
        targets: list[Target] | None = None  # default: every Conv / Linear (+ BatchNorm with include_bn)
        include_bn: bool = False  # BatchNorm scales may be pruned too
        prune_protected: bool = False  # also prune the adapter's protected layers (e.g. the head)
        finetune: FinetuneConfig | None = None  # recovery with the masks held after every step
        schedule: Literal["oneshot", "gradual"] = "oneshot"  # gradual: sparsity rises during the finetune
        gradual: GradualConfig | None = None  # begin / end / update_every / initial (schedule: gradual)

        @field_validator("targets", mode="before")
        @classmethod
        def _strings(cls, v):
            if isinstance(v, list):
                return [{"match": t} if isinstance(t, str) else t for t in v]
            return v

        @model_validator(mode="after")
        def _combo(self):
            if self.scope == "global" and self.granularity == "channel":
                raise ValueError("scope 'global' works on single weights; use granularity 'element'")
            if self.schedule == "oneshot" and self.gradual is not None:
                raise ValueError(GRADUAL_ERRORS["stray"])
            if self.schedule == "gradual" and self.finetune is None:
                raise ValueError(GRADUAL_ERRORS["needs_finetune"])
            return self

        def target_list(self) -> list[Target]:
            return self.targets if self.targets is not None else [Target(match="re:.*")]

    def plan(self, model: nn.Module, ctx) -> dict[str, tuple[nn.Module, float]]:
        """``{layer name: (module, amount)}``; later targets override earlier ones."""
        from compress.pruning.targets import select

        cfg = self.config
        protected = set() if cfg.prune_protected else {id(m) for p in ctx.adapter.protected_layers(model)
                                                       for m in p.modules()}
        types = _weighted_types(cfg.include_bn)
        out: dict[str, tuple[nn.Module, float]] = {}
        for t in cfg.target_list():
            hits = select(model, t.match, types)
            if not hits:
                hint = "; set include_bn: true to prune BatchNorm" if not cfg.include_bn else ""
                raise PassError(f"{self.label}: target '{t.match}' matches no prunable layer "
                                f"(Conv/Linear{'/BatchNorm' if cfg.include_bn else ''}){hint}")
            hits = [(n, m) for n, m in hits if id(m) not in protected and getattr(m, "weight", None) is not None]
            if not hits:
                raise PassError(f"{self.label}: target '{t.match}' matches only protected layers "
                                "(set prune_protected: true to prune them anyway)")
            for n, m in hits:
                out[n] = (m, t.amount if t.amount is not None else cfg.amount)
        return out

    def check(self, model, ctx):
        self.plan(model, ctx)
        if self.config.finetune is not None:
            from compress.passes.finetune import check_finetune

            check_finetune(ctx, self.config.finetune, f"{self.label}.finetune")

    def _finetune(self, model, ctx, plan) -> tuple:
        """Prune during (gradual) or before (oneshot) a fine-tune that holds the masks."""
        from compress.passes.finetune import run_finetune
        from compress.pruning.gradual import GradualRun, WeightMasks

        cfg = self.config
        gcfg = (cfg.gradual or GradualConfig()) if cfg.schedule == "gradual" else None
        masks = WeightMasks(plan, scope=cfg.scope, granularity=cfg.granularity, norm=cfg.norm,
                            initial=gcfg.initial if gcfg else 0.0)
        if gcfg is None:
            masks.update(1.0)
        run = GradualRun(model, masks, gcfg)
        ft: dict = {}
        model = run_finetune(model, ctx, cfg.finetune, report=ft, label=f"{self.label} finetune", on_step=run)
        run.finish()
        masks.remove()
        return model, {**run.report(), "finetune": ft}

    def _per_target(self, model, ctx) -> list[dict]:
        """Configured vs reached sparsity per target entry (over the layers it finally owns)."""
        from compress.pruning.targets import select

        cfg = self.config
        plan = self.plan(model, ctx)
        owner: dict[str, int] = {}
        for i, t in enumerate(cfg.target_list()):  # later entries override earlier ones, as in plan()
            for n, _ in select(model, t.match, _weighted_types(cfg.include_bn)):
                if n in plan:
                    owner[n] = i
        rows = []
        for i, t in enumerate(cfg.target_list()):
            mods = [plan[n][0] for n, j in owner.items() if j == i]
            total = sum(m.weight.numel() for m in mods)
            zeros = sum(int((m.weight == 0).sum()) for m in mods)
            rows.append({"match": t.match, "amount": t.amount if t.amount is not None else cfg.amount,
                         "layers": len(mods), "sparsity": round(zeros / total, 4) if total else None})
        return rows

    def apply(self, model, ctx):
        import torch.nn.utils.prune as prune

        from compress.metrics.size import sparsity_report

        cfg = self.config
        plan = self.plan(model, ctx)
        extra = {}
        if cfg.finetune is not None:
            model, extra = self._finetune(model, ctx, plan)
        elif cfg.scope == "global":
            by_amount: dict[float, list[nn.Module]] = {}
            for m, amount in plan.values():
                by_amount.setdefault(amount, []).append(m)
            for amount, mods in by_amount.items():
                prune.global_unstructured([(m, "weight") for m in mods], pruning_method=prune.L1Unstructured,
                                          amount=amount)
        else:
            for m, amount in plan.values():
                if cfg.granularity == "channel":
                    prune.ln_structured(m, "weight", amount=amount, n=1 if cfg.norm == "l1" else 2, dim=0)
                else:
                    prune.l1_unstructured(m, "weight", amount=amount)
        if cfg.finetune is None:
            for m, _ in plan.values():
                prune.remove(m, "weight")

        zeros = sum(int((m.weight == 0).sum()) for m, _ in plan.values())
        total = sum(m.weight.numel() for m, _ in plan.values())
        sp = sparsity_report(model)
        sec = ctx.section(self.label)
        sec.update({
            "size_only": True, "note": NOTE, "scope": cfg.scope, "granularity": cfg.granularity,
            "norm": cfg.norm, "layers": len(plan),
            "targeted_sparsity": round(zeros / total, 4) if total else 0.0,
            "overall_sparsity": round(sp["overall"], 4),
            "conv2d": {k: round(v, 4) for k, v in sp["conv2d"].items()},
            "batchnorm2d": {k: round(v, 4) for k, v in sp["batchnorm2d"].items()},
        })
        if cfg.finetune is not None:
            sec["targets"] = self._per_target(model, ctx)
            sec.update(extra)
        ctx.notes.append(f"{self.label}: {sec['targeted_sparsity']:.0%} of the targeted weights are zero "
                         f"({sec['overall_sparsity']:.0%} of all parameters); this saves size only after "
                         "compression -- dense kernels do not skip zeros, so expect no speed-up.")
        return model
