"""Ultralytics' own detection loss for the adapter's fine-tuning and the zoo trainer: its gains,
its criterion choice, and Sample boxes turned into its batch dict."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

LOSS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # Ultralytics' default.yaml values (used if unreadable)


def criterion(model, epochs: int | None = None):
    """The loss ``DetectionModel.init_criterion`` picks for ``model`` (``E2ELoss`` for end-to-end heads,
    else ``v8DetectionLoss``); ``epochs`` sets the span of E2ELoss's one-to-many weight decay."""
    hyp = loss_hyp(model)
    if epochs is not None:
        hyp.epochs = epochs
    # init_criterion only reads .args, .model and .parameters(): a view keeps model.args untouched
    view = SimpleNamespace(args=hyp, model=model.model, parameters=model.parameters)
    return type(model).init_criterion(view)


def loss_hyp(model) -> SimpleNamespace:
    """Loss gains (box, cls, dfl): the model's own args, else Ultralytics' defaults."""
    gains = dict(LOSS_GAINS)
    try:
        from ultralytics.cfg import DEFAULT_CFG_DICT

        gains.update({k: float(DEFAULT_CFG_DICT[k]) for k in gains if k in DEFAULT_CFG_DICT})
    except ImportError:
        pass
    args = getattr(model, "args", None)
    get = args.get if isinstance(args, dict) else (lambda k, d: getattr(args, k, d))
    for k in gains:
        v = get(k, None)
        if isinstance(v, (int, float)):
            gains[k] = float(v)
    return SimpleNamespace(**gains)


def letterbox_meta(h: int, w: int, size: int) -> tuple[float, int, int]:
    """(scale, pad_x, pad_y) exactly as ``detect.letterbox`` computes them."""
    scale = min(size / h, size / w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, (size - nw) // 2, (size - nh) // 2


def targets(images: torch.Tensor, samples) -> dict[str, torch.Tensor]:
    """Sample xyxy boxes (original pixels) -> Ultralytics batch dict (normalised xywh on the input)."""
    H, W = images.shape[-2:]
    idx, cls, boxes = [], [], []
    for i, s in enumerate(samples):
        if s.boxes is None or len(s.boxes) == 0:
            continue
        h, w = s.image.shape[:2]
        scale, px, py = letterbox_meta(h, w, int(W))
        b = np.asarray(s.boxes, np.float32) * scale + np.array([px, py, px, py], np.float32)
        xywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / W, (b[:, 1] + b[:, 3]) / 2 / H,
                         (b[:, 2] - b[:, 0]) / W, (b[:, 3] - b[:, 1]) / H], 1)
        boxes.append(xywh)
        cls.append(np.asarray(s.classes, np.float32).reshape(-1))
        idx.append(np.full(len(b), i, np.float32))
    dev = images.device
    if not boxes:
        z = torch.zeros(0, device=dev)
        return {"batch_idx": z, "cls": z.view(0, 1), "bboxes": torch.zeros(0, 4, device=dev)}
    return {"batch_idx": torch.from_numpy(np.concatenate(idx)).to(dev),
            "cls": torch.from_numpy(np.concatenate(cls)).view(-1, 1).to(dev),
            "bboxes": torch.from_numpy(np.concatenate(boxes)).to(dev)}
