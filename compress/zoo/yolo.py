"""Briefly train an Ultralytics-architecture detector (any model yaml) on digits-det.

    python -m compress.zoo.yolo --cfg yolov8n.yaml   # -> compress/zoo/weights/yolov8n-digits.pt
    python -m compress.zoo.yolo --cfg yolo26n.yaml --minutes 12

A plain torch loop (AdamW, linear warm-up then cosine, weight EMA) on fresh online
samples from ``DigitsDetGenerator("train")``, with the loss Ultralytics itself picks
for the model (``DetectionModel.init_criterion``: ``v8DetectionLoss``, or ``E2ELoss``
for the end-to-end heads of YOLOv10/YOLO26, whose one-to-many weight decays over
virtual epochs as in Ultralytics' trainer). No Ultralytics trainer, no download. The
checkpoint is the adapter's ``weights_only`` dict plus how it was produced
(``produced_by``) and its val mAP (``metrics``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

FP16_ABOVE_BYTES = 6_000_000  # store weights in fp16 when the fp32 state_dict is bigger than this
WEIGHTS = Path(__file__).resolve().parent / "weights"
VIRTUAL_EPOCHS = 10  # E2ELoss decays its one-to-many gain per epoch; the online loop has none, so 10 of equal length


def default_out(cfg: str) -> Path:
    """``yolo26n.yaml`` -> ``compress/zoo/weights/yolo26n-digits.pt``."""
    return WEIGHTS / f"{Path(cfg).stem}-digits.pt"


def has_one2one(model) -> bool:
    """True for end-to-end (NMS-free) heads: YOLOv10, YOLO26."""
    return getattr(model.model[-1], "one2one_cv2", None) is not None


def evaluate(adapter, model, samples, batch: int = 32, conf: float = 0.001, one2one: bool = False) -> dict:
    """COCO mAP50 / mAP50-95 of ``model`` on labelled samples (torch, eval mode).

    ``one2one``: score an end-to-end head's one-to-one branch (top-``max_det``, no NMS; the
    adapter's ``export.end2end`` output) instead of its default output.
    """
    from compress.metrics.detection import coco_map
    from compress.types import Detections

    model.eval()
    was = adapter.end2end
    if one2one:
        adapter.set_end2end(model, True)
    preds = []
    try:
        with torch.no_grad():
            for i in range(0, len(samples), batch):
                chunk = samples[i:i + batch]
                x, metas = adapter.preprocess([s.image for s in chunk])
                preds.extend(adapter.decode(adapter.forward(model, x), metas, conf))
    finally:
        adapter.set_end2end(model, was)
    truths = [Detections(np.asarray(s.boxes, np.float32).reshape(-1, 4), np.ones(len(s.boxes), np.float32),
                         np.asarray(s.classes, np.int64)) for s in samples]
    return coco_map(preds, truths, num_classes=len(adapter.class_names))


def ultralytics_criterion(model, epochs: int = VIRTUAL_EPOCHS):
    """The detection loss Ultralytics' ``DetectionModel.init_criterion`` picks for ``model`` (hyp from its defaults)."""
    from compress.models.ultralytics_loss import criterion

    return criterion(model, epochs)


def train_yolo_digits(cfg: str = "yolov8n.yaml", out: str | Path | None = None, imgsz: int = 128,
                      minutes: float = 10.0, *, steps: int | None = None, batch: int = 16, lr: float = 2e-3,
                      warmup: int = 100, ema_decay: float = 0.998, seed: int = 0, val_images: int = 300,
                      threads: int = 1, log=print) -> dict:
    """Train for ``steps`` (or as many as fit in ``minutes``), measure val mAP, write ``out``.

    Returns the checkpoint dict (also written to ``out`` when given).
    """
    from compress.data import builtin_dataset
    from compress.data.digits_det import CLASS_NAMES, DigitsDetGenerator
    from compress.models.ultralytics import UltralyticsAdapter
    from compress.models.ultralytics_loss import targets
    from compress.offline import import_ultralytics
    from compress.recipe import ModelSpec

    log = log or (lambda *_: None)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = DigitsDetGenerator("train", seed=seed, imgsz=imgsz)
    adapter, model = UltralyticsAdapter.load(ModelSpec(builtin=cfg, class_names=list(CLASS_NAMES), imgsz=imgsz),
                                             None, False)
    criterion = ultralytics_criterion(model)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999))
    def ema_avg(avg, cur, n):  # decay ramps up (as in Ultralytics' ModelEMA) so early weights fade out
        d = ema_decay * (1 - math.exp(-float(n) / 100))
        return d * avg + (1 - d) * cur

    ema = torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_avg, use_buffers=True)

    def step_once(i: int, total: int) -> float:
        frac = (i - warmup) / max(1, total - warmup)
        scale = (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.02)
        samples = [gen.sample(rng) for _ in range(batch)]
        x, _ = adapter.preprocess([s.image for s in samples])
        model.train()
        loss = criterion(model(x), targets(x, samples))[0].sum() / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update_parameters(model)
        return float(loss.detach())

    t0 = time.perf_counter()
    i, total, running = 0, steps or 10**9, None
    while i < total:
        loss = step_once(i, total)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        i += 1
        if steps is None and i == 10:  # fix the schedule from the measured speed
            per_step = (time.perf_counter() - t0) / i
            total = max(warmup + 10, int(minutes * 60 / per_step))
            log(f"{per_step:.2f} s/step -> {total} steps for {minutes} min")
        if hasattr(criterion, "update") and i % max(1, total // VIRTUAL_EPOCHS) == 0:
            criterion.update()  # E2ELoss: one-to-many gain 0.8 -> 0.1 over the run
        if i % 100 == 0:
            log(f"step {i}/{total}: loss {running:.3f} ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0

    final = ema.module
    val = builtin_dataset("digits-det", "val", samples=val_images)
    metrics = {k: float(v) for k, v in evaluate(adapter, final, val.samples).items() if k != "reason"}
    if has_one2one(final):
        o2o = evaluate(adapter, final, val.samples, one2one=True)
        metrics.update(one2one_map50=float(o2o["map50"]), one2one_map50_95=float(o2o["map50_95"]))
    metrics.update(val_images=len(val), train_loss=round(running, 4))
    log(f"val mAP50 {metrics['map50']:.3f}  mAP50-95 {metrics['map50_95']:.3f} on {len(val)} images"
        + (f" (one-to-one branch: {metrics['one2one_map50']:.3f} / {metrics['one2one_map50_95']:.3f})"
           if "one2one_map50" in metrics else ""))

    ckpt = adapter.checkpoint(final.eval())
    sd_bytes = sum(v.numel() * v.element_size() for v in ckpt["state_dict"].values())
    if sd_bytes > FP16_ABOVE_BYTES:
        ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    ckpt["metrics"] = metrics
    loss_name = f"ultralytics {type(criterion).__name__}"
    if hasattr(criterion, "update"):
        epoch = max(1, total // VIRTUAL_EPOCHS)
        loss_name += f" (one-to-many gain 0.8 -> 0.1 over {VIRTUAL_EPOCHS} virtual epochs of {epoch} steps)"
    ckpt["produced_by"] = {
        "function": "compress.zoo.yolo.train_yolo_digits", "cfg": cfg, "imgsz": imgsz, "steps": i, "batch": batch,
        "lr": lr, "warmup": warmup, "ema_decay": ema_decay, "seed": seed, "data": "digits-det train (online)",
        "optimizer": "AdamW wd 5e-4, warm-up + cosine", "loss": loss_name,
        "metrics_output": "adapter output (one-to-many branch, NMS)" if has_one2one(final) else "adapter output (NMS)",
        "seconds": round(seconds, 1), "threads": threads, "torch": str(torch.__version__),
        "ultralytics": str(import_ultralytics().__version__),
        "storage": "fp16" if sd_bytes > FP16_ABOVE_BYTES else "fp32",
    }
    if out is not None:
        from compress.atomic import atomic_path

        with atomic_path(out) as tmp:
            torch.save(ckpt, tmp)
        log(f"wrote {out}")
    return ckpt


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="yolov8n.yaml", help="Ultralytics model yaml (yolov8n.yaml, yolo26n.yaml, ...)")
    ap.add_argument("--out", default=None, help="default: compress/zoo/weights/<cfg stem>-digits.pt")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=None, help="exact step count (overrides --minutes)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    train_yolo_digits(a.cfg, a.out or default_out(a.cfg), a.imgsz, a.minutes, steps=a.steps, batch=a.batch,
                      lr=a.lr, seed=a.seed, threads=a.threads)


if __name__ == "__main__":
    main()
