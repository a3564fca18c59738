"""Train the built-in LeNet-5 on the "digits" set and write its checkpoint.

    python -m compress.zoo.lenet5 --out compress/zoo/weights/lenet5.pt --epochs 40 --seed 0

Takes seconds on a CPU. The checkpoint is a plain dict (``torch.load(weights_only=True)``)
holding the state_dict plus the accuracy measured on the held-out ``val`` split.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.models.base import Adapter
from compress.types import Sample


def top1(adapter: Adapter, model: nn.Module, samples: list[Sample], batch: int = 256) -> float:
    """Top-1 accuracy of ``model`` on labelled samples (torch, eval mode, no grad)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            x, _ = adapter.preprocess([s.image for s in chunk])
            pred = adapter.forward(model, x).argmax(1).numpy()
            correct += int(np.sum(pred == np.array([s.label for s in chunk])))
    return correct / max(1, len(samples))


def _shift(x: torch.Tensor, gen: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_px`` pixels per image (pad with background, crop)."""
    n, _, h, w = x.shape
    pad = F.pad(x, (max_px,) * 4, value=float(x.min()))
    offsets = torch.randint(0, (2 * max_px + 1) ** 2, (n,), generator=gen)
    out = torch.empty_like(x)
    for k in offsets.unique().tolist():  # one slice per distinct offset, not per image
        dy, dx = divmod(k, 2 * max_px + 1)
        sel = offsets == k
        out[sel] = pad[sel, :, dy:dy + h, dx:dx + w]
    return out


def train_lenet5(out: str | Path, epochs: int = 40, seed: int = 0, *, lr: float = 2e-3,
                 batch: int = 64, log=print) -> dict:
    """Train LeNet-5 on digits/train, measure top-1 on digits/val, write the checkpoint to ``out``.

    Returns the checkpoint's ``metrics`` dict (``val_top1``, ``train_top1``, ``seconds``).
    """
    from compress.data import builtin_dataset
    from compress.models.lenet5 import IMGSZ, LeNet5, LeNet5Adapter

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, val = builtin_dataset("digits", "train"), builtin_dataset("digits", "val")
    adapter = LeNet5Adapter(list(train.class_names), IMGSZ, stride=4)
    model = LeNet5(num_classes=len(train.class_names))
    x_all, _ = adapter.preprocess([s.image for s in train.samples])
    y_all = torch.tensor([s.label for s in train.samples], dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(_shift(x_all[idx], gen)), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if log and (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(y_all):.4f}")
    metrics = {"val_top1": top1(adapter, model, val.samples), "train_top1": top1(adapter, model, train.samples),
               "val_samples": len(val), "seconds": round(time.perf_counter() - t0, 2)}
    ckpt = adapter.checkpoint(model.eval())
    ckpt.update(metrics=metrics, train={"epochs": epochs, "seed": seed, "lr": lr, "batch": batch,
                                        "data": "builtin:digits/train", "eval": "builtin:digits/val"})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out)
    if log:
        log(f"wrote {out}: val top-1 {metrics['val_top1']:.4f} ({metrics['seconds']} s)")
    return metrics


def main(argv: list[str] | None = None) -> None:
    from compress.models.lenet5 import WEIGHTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(WEIGHTS))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)  # faster than 2 for a model this small
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_lenet5(args.out, args.epochs, args.seed)


if __name__ == "__main__":
    main()
