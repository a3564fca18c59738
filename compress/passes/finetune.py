"""Recovery fine-tuning: the ``finetune`` pass and the loop other passes reuse.

:class:`FinetuneConfig` (pydantic, unknown keys rejected) and :func:`run_finetune` are
shared by ``prune.structured`` (a fine-tune after every pruning round) and by
quantization-aware training (``fake_quant=True``). The learning rate is
``base_lr * lr_scale``; the default ``lr_scale`` of 0.1 is the lr/10 that published
prune-and-fine-tune experiments found best.

Losses: ``task`` is the adapter's own loss on labelled images; ``distill`` needs no
labels: the student (train mode) learns the frozen reference's (eval mode)
``adapter.distill_outputs``, with a detection-shaped loss for YOLO-layout heads and mean
squared error otherwise (``compress.passes.distill``). ``auto`` picks ``task`` when the
data is labelled and the adapter has a loss, else ``distill``.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register
from compress.recipe import DataSource

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from compress.context import Context
    from compress.types import Dataset


class FinetuneConfig(BaseModel):
    """How to fine-tune: length, optimiser, loss and data. Embeddable in other passes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    epochs: int | None = Field(default=None, ge=1, le=1000)  # passes over the data (1 when neither is set)
    steps: int | None = Field(default=None, ge=1, le=1_000_000)  # or a fixed number of optimiser steps
    base_lr: float = Field(default=1e-3, gt=0, le=10)
    lr_scale: float = Field(default=0.1, gt=0, le=100)  # lr = base_lr * lr_scale
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(default=1e-4, ge=0, le=10)
    schedule: Literal["cosine", "constant"] = "cosine"
    batch_size: int = Field(default=16, ge=1, le=4096)
    loss: Literal["auto", "task", "distill"] = "auto"
    # distillation loss; auto: yolo for detector head maps, detect for decoded detector outputs, else mse
    distill: Literal["auto", "yolo", "detect", "mse"] = "auto"
    data: DataSource | None = None  # training images; the calibration set when omitted
    samples: int | None = Field(default=None, gt=0, le=1_000_000)  # use only the first N images
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bn_eval: bool = False  # keep BatchNorm statistics frozen (eval mode) while training
    grad_clip: float | None = Field(default=10.0, gt=0, le=1e6)
    eval_batches: int = Field(default=4, ge=1, le=10_000)  # batches measured for loss before/after
    freeze_observers: float = Field(default=0.5, ge=0, le=1)  # QAT: fraction of steps, then freeze

    @model_validator(mode="after")
    def _length(self):
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        return self

    @property
    def lr(self) -> float:
        return self.base_lr * self.lr_scale


def finetune_config(cfg: BaseModel) -> FinetuneConfig:
    """The FinetuneConfig part of a config that embeds its fields (e.g. a pass Config)."""
    if type(cfg) is FinetuneConfig:
        return cfg
    return FinetuneConfig(**cfg.model_dump(include=set(FinetuneConfig.model_fields)))


# -- data and loss ----------------------------------------------------------------------------
def training_data(ctx: "Context", cfg: FinetuneConfig, who: str = "finetune") -> "Dataset":
    """The images to train on: ``cfg.data`` when given, else the calibration set."""
    if cfg.data is not None:
        from compress.data import builtin_dataset, load_dataset

        src = cfg.data
        data = (builtin_dataset(src.builtin, src.split, src.samples) if src.builtin is not None
                else load_dataset(src, class_names=ctx.adapter.class_names))
    else:
        data = ctx.require_calibration(who)
    data = data.head(cfg.samples)
    if len(data) == 0:
        raise PassError(f"{who}: no training images")
    return data


def resolve_loss(ctx: "Context", cfg: FinetuneConfig, labelled: bool, who: str = "finetune") -> str:
    """``task`` or ``distill`` for this adapter and data; PassError when impossible."""
    from compress.models.base import Adapter

    has_loss = type(ctx.adapter).loss is not Adapter.loss
    kind = cfg.loss
    if kind == "auto":
        kind = "task" if (labelled and has_loss) else "distill"
    if kind == "task":
        if not has_loss:
            raise PassError(f"{who}: loss 'task': the {ctx.adapter.name} adapter has no task loss; use loss: distill")
        if not labelled:
            raise PassError(f"{who}: loss 'task' needs labelled images; use loss: distill for unlabelled data")
    elif ctx.reference is None:
        raise PassError(f"{who}: loss 'distill' needs the reference model")
    return kind


def check_finetune(ctx: "Context", cfg: FinetuneConfig, who: str = "finetune") -> str:
    """Validate data, loss and device before any model is touched; returns the loss kind."""
    _device(cfg, who)
    if cfg.data is None:
        data = ctx.require_calibration(who)
        labelled = data.has_labels
    else:
        labelled = True  # a named split is checked for labels when it is loaded
    kind = resolve_loss(ctx, cfg, labelled, who)
    if kind == "distill" and cfg.distill in ("yolo", "detect"):  # one tiny forward tells whether the outputs fit
        import torch

        from compress.passes.distill import resolve_mode

        with torch.no_grad():
            outputs = ctx.adapter.distill_outputs(ctx.reference, ctx.adapter.example_input(1))
        resolve_mode(cfg.distill, ctx.adapter.task, outputs, len(ctx.adapter.class_names), who)
    return kind


def _device(cfg: FinetuneConfig, who: str = "finetune"):
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise PassError(f"{who}: device 'cuda' requested but CUDA is not available (use device: auto)")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _set_train(model: "nn.Module", train: bool, bn_eval: bool) -> None:
    """train()/eval(), also for exported (pt2e) graphs whose .train() is unsupported."""
    from torch import nn

    try:
        model.train(train)
    except NotImplementedError:
        import torch.ao.quantization as tq

        (tq.move_exported_model_to_train if train else tq.move_exported_model_to_eval)(model)
    if train and bn_eval:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class _Batches:
    """Shuffled mini-batches of a dataset, preprocessed by the adapter (seeded)."""

    def __init__(self, data: "Dataset", adapter, batch_size: int, seed: int):
        import numpy as np

        self.data, self.adapter = data, adapter
        self.bs = min(batch_size, len(data))
        self.rng = np.random.default_rng(seed)

    def per_epoch(self) -> int:
        return max(1, len(self.data) // self.bs)  # drop the last partial batch (BatchNorm)

    def batch(self, idx) -> tuple["torch.Tensor", list]:
        samples = [self.data[int(i)] for i in idx]
        x, _ = self.adapter.preprocess([s.image for s in samples])
        return x, samples

    def fixed(self, n: int) -> list[list[int]]:
        order = list(range(len(self.data)))
        return [order[i * self.bs:(i + 1) * self.bs] for i in range(min(n, self.per_epoch()))]

    def forever(self):
        while True:
            order = self.rng.permutation(len(self.data))
            for i in range(self.per_epoch()):
                yield order[i * self.bs:(i + 1) * self.bs]


def _loss_fn(kind: str, adapter, teacher, mode: str = "auto", resolved: dict | None = None, images: int = 0):
    """loss(model, x, samples, idx) for ``kind`` (``idx``: the images' dataset indices, which key
    the teacher's cached outputs); the distillation ``mode`` it resolves goes into ``resolved``."""
    from compress.passes.distill import TeacherCache, distill_loss, resolve_mode

    resolved = {} if resolved is None else resolved
    teacher_outputs = TeacherCache(adapter, teacher, images) if kind == "distill" else None
    resolved["cache"] = teacher_outputs

    def task(model, x, samples, idx=None):
        loss = adapter.loss(model, x, samples)
        if loss is None:
            raise PassError(f"finetune: the {adapter.name} adapter returned no task loss; use loss: distill")
        return loss

    nc = len(adapter.class_names)

    def distill(model, x, samples, idx=None):
        target = teacher_outputs(x, idx)
        if "mode" not in resolved:
            resolved["mode"] = resolve_mode(mode, adapter.task, target, nc)
        return distill_loss(resolved["mode"], adapter.distill_outputs(model, x), target, nc)

    return task if kind == "task" else distill


def _measure(model, fn, batches: _Batches, idxs, device, bn_eval: bool) -> float:
    """Mean training objective on fixed batches, with no effect on the model (buffers restored)."""
    import torch

    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _set_train(model, True, bn_eval)
        for idx in idxs:
            x, samples = batches.batch(idx)
            total += float(fn(model, x.to(device), samples, idx))
    model.load_state_dict(saved)
    return total / max(1, len(idxs))


def _progress(ctx: "Context", total: int, label: str):
    """(advance, close) callables over ctx.progress (rich) or tqdm."""
    if ctx.progress is not None:
        task = ctx.progress.add_task(label, total=total)
        return (lambda: ctx.progress.update(task, advance=1)), (lambda: ctx.progress.remove_task(task))
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, leave=False, disable=None, file=sys.stderr)
    return (lambda: bar.update(1)), bar.close


def run_finetune(model: "nn.Module", ctx: "Context", cfg: BaseModel, *, fake_quant: bool = False,
                 report: dict | None = None, label: str = "finetune",
                 on_step: "Callable[[int, int, int], None] | None" = None) -> "nn.Module":
    """Fine-tune ``model`` in place and return it (on its original device, eval mode).

    ``cfg`` is a :class:`FinetuneConfig` (or a config embedding its fields). With
    ``fake_quant=True`` (QAT) observers are disabled and BatchNorm statistics frozen
    after ``cfg.freeze_observers`` of the steps. Statistics (loss before/after, steps,
    seconds, lr, loss kind) are written into ``report`` when given. ``on_step(step, total,
    steps_per_epoch)`` is called right after every optimiser step (e.g. to re-apply pruning masks).
    """
    import torch

    cfg = finetune_config(cfg)
    data = training_data(ctx, cfg, label)
    kind = resolve_loss(ctx, cfg, data.has_labels, label)
    device = _device(cfg, label)
    try:
        home = next(model.parameters()).device
    except StopIteration:
        raise PassError(f"{label}: the model has no parameters to train") from None
    teacher = ctx.reference
    if kind == "distill":
        teacher = teacher.to(device) if device == torch.device("cpu") else _copy_to(teacher, device)
        _set_train(teacher, False, False)
    model.to(device)

    torch.manual_seed(ctx.seed)
    batches = _Batches(data, ctx.adapter, cfg.batch_size, ctx.seed)
    total = cfg.steps or (cfg.epochs or 1) * batches.per_epoch()
    resolved: dict = {}
    fn = _loss_fn(kind, ctx.adapter, teacher, cfg.distill, resolved, len(data))
    fixed = batches.fixed(cfg.eval_batches)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PassError(f"{label}: the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    t0 = time.perf_counter()
    threads = torch.get_num_threads()  # set by the runner from --threads / benchmark.threads
    before = _measure(model, fn, batches, fixed, device, cfg.bn_eval)
    freeze_at = int(total * cfg.freeze_observers) if fake_quant else None
    bn_eval = cfg.bn_eval
    advance, close = _progress(ctx, total, label)
    losses = []
    try:
        _set_train(model, True, bn_eval)
        for step, idx in zip(range(total), batches.forever()):
            if freeze_at is not None and step == freeze_at:
                _freeze_quant(model)
                bn_eval = True
                _set_train(model, True, bn_eval)
            x, samples = batches.batch(idx)
            loss = fn(model, x.to(device), samples, idx)
            if not torch.isfinite(loss):
                raise PassError(f"{label}: the loss became {float(loss)} at step {step}; lower lr_scale")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if on_step is not None:
                on_step(step, total, batches.per_epoch())
            sched.step()
            losses.append(float(loss.detach()))
            advance()
    finally:
        close()
    after = _measure(model, fn, batches, fixed, device, bn_eval)
    _set_train(model, False, False)
    model.to(home)
    if kind == "distill" and teacher is ctx.reference:
        teacher.to(home)
    if report is not None:
        if "mode" in resolved:
            report["distill"] = resolved["mode"]
            report["teacher_cached"] = bool(resolved["cache"].enabled)
        report.update({"loss": kind, "loss_before": round(before, 6), "loss_after": round(after, 6),
                       "train_loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 6),
                       "steps": total, "images": len(data), "batch_size": batches.bs, "lr": cfg.lr,
                       "optimizer": cfg.optimizer, "device": str(device), "torch_threads": threads,
                       "seconds": round(time.perf_counter() - t0, 2)})
    ctx.log.info("%s: %s loss %.4g -> %.4g in %d steps", label, kind, before, after, total)
    return model


def _copy_to(module, device):
    import copy

    return copy.deepcopy(module).to(device)


def _freeze_quant(model) -> None:
    """QAT: stop observers updating quantization ranges (torch.ao fake-quant modules)."""
    import torch.ao.quantization as tq

    model.apply(tq.disable_observer)


@register("finetune")
class Finetune(Pass):
    """Recovery fine-tuning of the current model (after pruning, typically)."""

    class Config(FinetuneConfig, PassConfig):
        pass

    needs_calibration = False  # the data may come from cfg.data instead

    def check(self, model, ctx):
        check_finetune(ctx, self.config, self.label)

    def apply(self, model, ctx):
        return run_finetune(model, ctx, self.config, report=ctx.section(self.label), label=self.label)
