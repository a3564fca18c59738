"""``swap.module``: replace every instance of a block type by a lighter block of the same shapes.

``target`` selects the blocks (a class name such as ``C2f``, or ``re:<regex>`` over module
names; a match inside another match is left to its parent). Each instance's input/output
shapes and spatial stride come from one forward pass of the adapter's example input; a
block with several inputs or outputs (``Concat``, a head) or one no light block can match
is refused before anything changes. ``to`` names a block of :mod:`compress.blocks`
(``elan2``, ``shufflenet``, ``dwsep``), built with the old block's activation.

Each new block is first distilled alone (block-wise): the old block's inputs and outputs
are recorded with forward hooks on ``calib_samples`` calibration images, and the new block
is trained with MSE to reproduce them (``block_steps`` AdamW steps at ``block_lr``). Then
the optional ``finetune`` (a :class:`~compress.passes.finetune.FinetuneConfig`) recovers
the whole model.
"""

from __future__ import annotations

import time

from pydantic import Field, field_validator

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register
from compress.passes.finetune import FinetuneConfig


@register("swap.module")
class SwapModule(Pass):
    """Swap heavy blocks for light ones, distil each block, optionally fine-tune the model."""

    class Config(PassConfig):
        target: str = Field(min_length=1)  # class name, or re:pattern over module names
        to: str = "elan2"  # a block of compress.blocks: elan2 | shufflenet | dwsep
        block_steps: int = Field(default=300, ge=0, le=1_000_000)  # block-wise distillation steps per instance
        block_lr: float = Field(default=1e-3, gt=0, le=10)
        block_batch: int = Field(default=16, ge=1, le=4096)
        calib_samples: int = Field(default=64, ge=1, le=100_000)  # images whose block inputs/outputs are recorded
        finetune: FinetuneConfig | None = None  # whole-model recovery after the swap

        @field_validator("to")
        @classmethod
        def _known(cls, v: str) -> str:
            from compress.blocks import names

            if v not in names():
                raise ValueError(f"unknown block '{v}' (known: {', '.join(names())})")
            return v

    needs_calibration = True

    def _plan(self, model, ctx):
        """[(instance, new block)] for every match; PassError naming the first that cannot be swapped."""
        from compress.blocks.instances import find_instances, plan_replacement, probe

        cfg = self.config
        instances = find_instances(model, cfg.target)
        if not instances:
            raise PassError(f"{self.label}: target '{cfg.target}' matches no module of the model")
        probe(model, ctx.adapter, instances)
        plan = []
        for k, inst in enumerate(instances):
            new = plan_replacement(inst, cfg.to, seed=ctx.seed + k)
            if isinstance(new, str):
                raise PassError(f"{self.label}: cannot replace {inst.name} ({type(inst.module).__name__}) "
                                f"with {cfg.to}: {new}")
            plan.append((inst, new))
        return plan

    def check(self, model, ctx):
        cfg = self.config
        self._plan(model, ctx)
        if cfg.block_steps > 0:
            ctx.require_calibration(self.label)
        if cfg.finetune is not None:
            from compress.passes.finetune import check_finetune

            check_finetune(ctx, cfg.finetune, f"{self.label}.finetune")

    # -- work -----------------------------------------------------------------------------
    def _record(self, model, ctx, plan):
        """{instance name: (inputs, outputs)} on the calibration images (CPU tensors)."""
        import torch

        data = ctx.require_calibration(self.label).head(self.config.calib_samples)
        rec = {inst.name: ([], []) for inst, _ in plan}
        hooks = []
        for inst, _ in plan:
            def hook(module, args, kwargs, output, name=inst.name):
                x = args[0] if args else next(v for v in kwargs.values() if v is not None)  # probe: one tensor
                rec[name][0].append(x.detach().cpu())
                rec[name][1].append(output.detach().cpu())
            hooks.append(inst.module.register_forward_hook(hook, with_kwargs=True))
        device = next(model.parameters()).device
        images = [s.image for s in data]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(images), 16):
                    x, _ = ctx.adapter.preprocess(images[i:i + 16])
                    ctx.adapter.forward(model, x.to(device))
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        return {k: (torch.cat(a), torch.cat(b)) for k, (a, b) in rec.items()}

    @staticmethod
    def _mse(block, xs, ys, bs: int = 32) -> float:
        import torch

        block.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(xs), bs):
                total += float(torch.nn.functional.mse_loss(block(xs[i:i + bs]), ys[i:i + bs], reduction="sum"))
        return total / ys.numel()

    def _distill(self, new, xs, ys, seed: int) -> dict:
        """Train ``new`` alone to map ``xs`` to ``ys`` (MSE); its MSE before and after."""
        import torch

        cfg = self.config
        before = self._mse(new, xs, ys)
        t0 = time.perf_counter()
        if cfg.block_steps:
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(new.parameters(), lr=cfg.block_lr, weight_decay=0.0)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.block_steps)
            bs = min(cfg.block_batch, len(xs))
            new.train()
            for step in range(cfg.block_steps):
                idx = torch.randperm(len(xs), generator=gen)[:bs]
                loss = torch.nn.functional.mse_loss(new(xs[idx]), ys[idx])
                if not torch.isfinite(loss):
                    raise PassError(f"{self.label}: block distillation loss became {float(loss)}; lower block_lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        after = self._mse(new, xs, ys)
        var = float(ys.var()) or 1.0
        return {"mse_before": round(before, 6), "mse_after": round(after, 6),
                "relative_mse_after": round(after / var, 4), "seconds": round(time.perf_counter() - t0, 2)}

    def apply(self, model, ctx):
        import torch

        from compress.blocks.instances import n_params, replace

        cfg = self.config
        t0 = time.perf_counter()
        model.eval()
        params0 = n_params(model)
        plan = self._plan(model, ctx)
        recorded = self._record(model, ctx, plan) if cfg.block_steps else {}
        rows = []
        for k, (inst, new) in enumerate(plan):
            device = next(inst.module.parameters(), torch.empty(0)).device
            row = {"name": inst.name, "old_type": type(inst.module).__name__, "new_type": type(new).__name__,
                   "block": cfg.to, "in_shape": list(inst.in_shape), "out_shape": list(inst.out_shape),
                   "stride": inst.stride, "params_old": n_params(inst.module), "params_new": n_params(new)}
            if inst.name in recorded:
                xs, ys = recorded.pop(inst.name)
                torch.manual_seed(ctx.seed + k)
                row.update(self._distill(new, xs, ys, ctx.seed + k))
            new.to(device).eval()
            replace(model, inst, new)
            rows.append(row)
            ctx.log.info("%s: %s %s -> %s, params %d -> %d", self.label, inst.name, row["old_type"], cfg.to,
                         row["params_old"], row["params_new"])
        sec = ctx.section(self.label)
        sec.update({"target": cfg.target, "to": cfg.to, "instances": rows, "params_before": params0})
        if cfg.finetune is not None:
            from compress.passes.finetune import run_finetune

            sec["finetune"] = {}
            model = run_finetune(model, ctx, cfg.finetune, report=sec["finetune"], label=f"{self.label} finetune")
        hint = getattr(plan[0][1], "prune_hint", None)
        if hint:
            ctx.notes.append(f"{self.label}: {hint}.")
        model.eval()
        params1 = n_params(model)
        sec.update({"params_after": params1, "seconds": round(time.perf_counter() - t0, 2)})
        ctx.notes.append(f"{self.label}: {len(rows)} {rows[0]['old_type']} block(s) -> {cfg.to}; params "
                         f"{params0:,} -> {params1:,}. model.pt records each new block (compress.blocks) and "
                         "reloads with it; Ultralytics needs compress installed to unpickle model.ultralytics.pt.")
        return model
