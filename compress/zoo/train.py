"""Train the built-in detector DigitDet on freshly generated "digits-det" images.

    python -m compress.zoo.train --out compress/zoo/weights/digitdet.pt --minutes 10

Every step draws new images from ``DigitsDetGenerator("train")`` (in a background worker),
so there are no epochs in the usual sense: ``epochs * epoch_images`` images are seen unless
the ``minutes`` budget ends training first. The learning rate follows a linear warm-up and a
cosine decay over the *progress*, the larger of the step fraction and the time fraction, so
a time-limited run still ends on a fully decayed schedule. The saved weights are an
exponential moving average of the trained ones, evaluated on the shipped ``val`` split
(mAP50 / mAP50-95 through :func:`compress.metrics.detection.coco_map`) and stored with
those metrics in a ``weights_only``-loadable checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path

if __name__ == "__main__":  # before torch loads OpenMP: idle threads sleep instead of spinning (shared CPUs)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn

from compress.models.digitdet import WEIGHTS, DigitDetAdapter, DigitDetConfig, build_digitdet


def default_weights() -> Path:
    """Where the packaged DigitDet weights live (``compress/zoo/weights/digitdet.pt``)."""
    return WEIGHTS


class _OnlineImages(torch.utils.data.IterableDataset):
    """Endless batches of fresh images: (letterboxed tensor, boxes list, classes list)."""

    def __init__(self, seed: int, imgsz: int, batch: int):
        self.seed, self.imgsz, self.batch = seed, imgsz, batch

    def __iter__(self):
        from compress.data.digits_det import DigitsDetGenerator

        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        gen = DigitsDetGenerator("train", imgsz=self.imgsz)
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        while True:
            samples = [gen.sample(rng) for _ in range(self.batch)]
            x = np.stack([s.image for s in samples]).transpose(0, 3, 1, 2)
            yield torch.from_numpy(np.ascontiguousarray(x)), [s.boxes for s in samples], [s.classes for s in samples]


class _EMA:
    """Exponential moving average of weights and buffers, with a decay that ramps up."""

    def __init__(self, model: nn.Module, decay: float, tau: float):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                v.lerp_(src[k].detach(), 1 - d)
            else:
                v.copy_(src[k])


def evaluate(adapter, model: nn.Module, data, conf: float = 0.001, iou: float = 0.7, batch: int = 50) -> dict:
    """mAP50 / mAP50-95 of ``model`` (torch, eval mode) on a labelled detection data set."""
    from compress.metrics.detection import coco_map
    from compress.types import Detections

    model.eval()
    preds, truths = [], []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            chunk = data.samples[i:i + batch]
            x, metas = adapter.preprocess([s.image for s in chunk])
            preds += adapter.decode(adapter.forward(model, x), metas, conf, iou)
            truths += [Detections(np.asarray(s.boxes, np.float32).reshape(-1, 4), np.ones(len(s.boxes), np.float32),
                                  np.asarray(s.classes, np.int64)) for s in chunk]
    out = coco_map(preds, truths, len(adapter.class_names))
    return {"map50": out["map50"], "map50_95": out["map50_95"]}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv weights only (not on BatchNorm or biases)."""
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            (decay if name == "weight" and isinstance(m, nn.Conv2d) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_digitdet(out_path: str | Path, *, minutes: float | None = None, epochs: int = 8,
                   epoch_images: int = 3000, batch: int = 16, lr: float = 3e-3, weight_decay: float = 0.05,
                   warmup: float = 0.03, seed: int = 0, imgsz: int = 128, config: DigitDetConfig | None = None,
                   threads: int = 2, workers: int = 1, val_samples: int | None = None, half: bool = True,
                   eval_every: int | None = None, log=print) -> dict:
    """Train DigitDet, evaluate it on digits-det/val and write the checkpoint to ``out_path``.

    ``half`` stores the weights as float16 (half the file size; the adapter restores float32),
    and the recorded metrics are measured on those rounded weights. ``eval_every`` steps the
    averaged model is also evaluated (the curve is kept in the checkpoint's ``history``).

    Returns the metrics stored in the checkpoint: ``val_map50``, ``val_map50_95``, ``steps``,
    ``images``, ``seed``, ``wall_s`` (training loop, evaluations included) and ``train_cpu_s``
    (CPU time of the training process, the data worker not included).
    """
    from tqdm import tqdm

    from compress.atomic import atomic_path
    from compress.data import builtin_dataset
    from compress.data.digits_det import CLASS_NAMES
    from compress.models.digitdet_loss import DetectionLoss

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    cfg = config or DigitDetConfig(nc=len(CLASS_NAMES), imgsz=imgsz)
    adapter = DigitDetAdapter(list(CLASS_NAMES), imgsz, 32, cfg)
    model = build_digitdet(cfg).train()
    criterion = DetectionLoss(cfg.nc, cfg.reg_max)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.99))
    total_steps = max(1, epochs * epoch_images // batch)
    ema = _EMA(model, decay=0.999, tau=max(20.0, total_steps / 20))
    loader = torch.utils.data.DataLoader(_OnlineImages(seed, imgsz, batch), batch_size=None,
                                         num_workers=workers, persistent_workers=workers > 0)
    budget = None if minutes is None else minutes * 60.0
    t0, cpu0, step, progress = time.perf_counter(), time.process_time(), 0, 0.0
    bar = tqdm(total=total_steps, desc="digitdet", unit="step", dynamic_ncols=True)
    val, history = None, []
    for images, boxes, classes in loader:
        progress = max(step / total_steps, 0.0 if budget is None else (time.perf_counter() - t0) / budget)
        if progress >= 1.0:
            break
        scale = progress / warmup if progress < warmup else 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr * (0.01 + 0.99 * scale) if progress >= warmup else lr * scale
        loss, parts = criterion(model(images.float() / 255.0), boxes, classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **{k: f"{v:.3f}" for k, v in parts.items()})
        if eval_every and step % eval_every == 0:
            if val is None:
                val = builtin_dataset("digits-det", "val", samples=val_samples)
            scores = evaluate(adapter, ema.model, val)
            history.append({"step": step, **scores})
            bar.write(f"step {step}: val mAP50 {scores['map50']:.4f}, mAP50-95 {scores['map50_95']:.4f}")
    bar.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    final = ema.model
    if half:  # the metrics below are those of the weights as stored
        for v in final.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
    if val is None:
        val = builtin_dataset("digits-det", "val", samples=val_samples)
    scores = evaluate(adapter, final, val)
    metrics = {"val_map50": scores["map50"], "val_map50_95": scores["map50_95"], "val_images": len(val),
               "steps": step, "images": step * batch, "batch": batch, "seed": seed, "wall_s": round(wall, 1),
               "train_cpu_s": round(cpu, 1), "threads": threads}
    ckpt = adapter.checkpoint(final)
    if half:
        ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    ckpt["metrics"] = metrics
    if history:
        ckpt["history"] = history
    with atomic_path(out_path) as tmp:
        torch.save(ckpt, tmp)
    log(f"digitdet: {step} steps ({step * batch} images) in {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU; "
        f"val mAP50 {scores['map50']:.4f}, mAP50-95 {scores['map50_95']:.4f} on {len(val)} images -> {out_path}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m compress.zoo.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (the schedule fits into it)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of --epoch-images fresh images")
    p.add_argument("--epoch-images", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate on val every N steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads (plus one data worker process)")
    a = p.parse_args(argv)
    return train_digitdet(a.out, minutes=a.minutes, epochs=a.epochs, epoch_images=a.epoch_images, batch=a.batch,
                          lr=a.lr, seed=a.seed, imgsz=a.imgsz, threads=a.threads, eval_every=a.eval_every)


if __name__ == "__main__":
    main()
