"""Shared pieces of YOLO-style detectors: letterbox preprocessing and decode + NMS.

The built-in and Ultralytics adapters export the Ultralytics layout ``(B, 4 + nc, N)``
with boxes as ``cx, cy, w, h`` in input pixels and per-class scores already passed
through a sigmoid; the generic adapter may use another layout
(:mod:`compress.models.layouts`), decoded with the same letterbox mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from compress.types import Detections


@dataclass
class Letterbox:
    """How an image was resized and padded, so boxes can be mapped back."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original image size
    height: int


def letterbox(image: np.ndarray, size: int, fill: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to ``size x size`` (centred)."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)) if (nw, nh) != (w, h) else image
    canvas = np.full((size, size, 3), fill, np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas[py:py + nh, px:px + nw] = resized
    return canvas, Letterbox(scale, px, py, w, h)


def preprocess_letterbox(images: list[np.ndarray], size: int) -> tuple[torch.Tensor, list[Letterbox]]:
    """RGB uint8 images -> NCHW float32 in [0, 1], letterboxed, plus their metadata."""
    arrays, metas = [], []
    for im in images:
        arr, meta = letterbox(im, size)
        arrays.append(arr)
        metas.append(meta)
    batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(batch)), metas


def decode_yolo(output: np.ndarray | torch.Tensor, metas: list[Letterbox], conf: float,
                iou: float = 0.7, max_det: int = 300) -> list[Detections]:
    """``(B, 4 + nc, N)`` -> per-image class-aware NMS detections in original pixels."""
    from torchvision.ops import batched_nms

    out = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output)
    out = out.detach().float().cpu()
    results = []
    for b, meta in enumerate(metas):
        pred = out[b].T  # (N, 4 + nc)
        boxes_cxcywh, cls_scores = pred[:, :4], pred[:, 4:]
        scores, classes = cls_scores.max(dim=1)
        keep = scores >= conf
        boxes_cxcywh, scores, classes = boxes_cxcywh[keep], scores[keep], classes[keep]
        if scores.numel() == 0:
            results.append(Detections.empty())
            continue
        cx, cy, w, h = boxes_cxcywh.unbind(1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        idx = batched_nms(boxes, scores, classes, iou)[:max_det]
        boxes, scores, classes = boxes[idx], scores[idx], classes[idx]
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - meta.pad_x) / meta.scale).clamp(0, meta.width)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - meta.pad_y) / meta.scale).clamp(0, meta.height)
        results.append(Detections(boxes.numpy().astype(np.float32), scores.numpy().astype(np.float32),
                                  classes.numpy().astype(np.int64)))
    return results
