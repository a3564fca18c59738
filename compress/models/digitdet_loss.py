"""Anchor-free detection loss for DigitDet, in the spirit of YOLOv8.

Assignment is task-aligned: an anchor whose centre lies inside a ground-truth box is a
candidate for it, ranked by ``score ** alpha * IoU ** beta`` (how well the current
prediction already does both jobs); the ``topk`` best per box are positives, an anchor
claimed by several boxes keeps the one it overlaps most, and class targets are the
alignment normalised per box (so classification learns to predict localisation quality).
Losses: BCE for classes, CIoU (``torchvision.ops.complete_box_iou_loss``) plus the
distribution focal loss (DFL) for boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, complete_box_iou_loss

from compress.models.digitdet import make_anchors


@dataclass
class Assignment:
    """Per-anchor training targets for a batch (N anchors over all levels)."""

    boxes: torch.Tensor  # (B, N, 4) xyxy, input pixels
    scores: torch.Tensor  # (B, N, nc) soft class targets
    fg: torch.Tensor  # (B, N) bool, positive anchors


def pad_targets(boxes: list[np.ndarray | torch.Tensor], classes: list[np.ndarray | torch.Tensor],
                device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image boxes (xyxy pixels) and classes -> padded ``(B, M, 4)``, ``(B, M)``, mask ``(B, M)``."""
    b = len(boxes)
    m = max([len(x) for x in boxes] + [1])
    gb = torch.zeros(b, m, 4, device=device)
    gc = torch.zeros(b, m, dtype=torch.long, device=device)
    mask = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, (bx, cl) in enumerate(zip(boxes, classes)):
        k = len(bx)
        if k:
            gb[i, :k] = torch.as_tensor(np.asarray(bx, np.float32).reshape(-1, 4), device=device)
            gc[i, :k] = torch.as_tensor(np.asarray(cl, np.int64).reshape(-1), device=device)
            mask[i, :k] = True
    return gb, gc, mask


@torch.no_grad()
def assign(scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor,
           gt_labels: torch.Tensor, gt_mask: torch.Tensor, topk: int = 10, alpha: float = 0.5,
           beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """Task-aligned assignment.

    ``scores`` (B, N, nc) are sigmoid class scores, ``boxes`` (B, N, 4) predicted xyxy and
    ``anchors`` (N, 2) anchor centres, all in input pixels; ``gt_*`` are padded targets.
    """
    b, n, nc = scores.shape
    m = gt_boxes.shape[1]
    # candidates: anchor centre strictly inside a real box
    lt = anchors.view(1, 1, n, 2) - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - anchors.view(1, 1, n, 2)
    cand = (torch.cat([lt, rb], -1).amin(-1) > eps) & gt_mask[:, :, None]  # (B, M, N)
    iou = torch.stack([box_iou(gt_boxes[i], boxes[i]) for i in range(b)]).clamp_(0) * cand
    cls_score = scores.transpose(1, 2).gather(1, gt_labels[:, :, None].expand(b, m, n))  # (B, M, N)
    align = cls_score.pow(alpha) * iou.pow(beta) * cand
    top = align.topk(min(topk, n), dim=-1).indices
    pos = torch.zeros_like(cand).scatter_(-1, top, True) & cand
    # an anchor claimed by several boxes keeps the one it overlaps most
    multi = pos.sum(1, keepdim=True) > 1
    if multi.any():
        best = F.one_hot(iou.argmax(1), m).transpose(1, 2).bool()
        pos = torch.where(multi, best & cand, pos)
    fg = pos.any(1)
    gt_idx = pos.to(torch.uint8).argmax(1)  # (B, N)
    t_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(b, n, 4))
    t_labels = gt_labels.gather(1, gt_idx)
    align, iou = align * pos, iou * pos
    norm = align * iou.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + eps)
    t_scores = F.one_hot(t_labels, nc).float() * (norm.amax(1) * fg)[..., None]
    return Assignment(t_boxes, t_scores, fg)


def dfl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: cross-entropy towards the two bins around each target distance.

    ``logits`` (P, 4, R), ``target`` (P, 4) in bins; returns (P,) averaged over the 4 sides.
    """
    r = logits.shape[-1]
    left = target.long()
    right = (left + 1).clamp(max=r - 1)
    w_left = right.float() - target
    w_right = 1 - w_left
    flat = logits.reshape(-1, r)
    ce_l = F.cross_entropy(flat, left.reshape(-1), reduction="none").view_as(target)
    ce_r = F.cross_entropy(flat, right.reshape(-1), reduction="none").view_as(target)
    return (ce_l * w_left + ce_r * w_right).mean(-1)


class DetectionLoss:
    """Callable: ``loss(maps, gt_boxes, gt_classes) -> (total, parts)``.

    ``maps`` are the raw head outputs ``(B, 4 * reg_max + nc, H, W)`` for strides 8/16/32;
    targets are per-image xyxy boxes in input pixels and integer classes.
    """

    def __init__(self, nc: int, reg_max: int, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5,
                 topk: int = 10):
        self.nc, self.reg_max, self.topk = nc, reg_max, topk
        self.w_box, self.w_cls, self.w_dfl = box, cls, dfl

    def __call__(self, maps: list[torch.Tensor], gt_boxes, gt_classes) -> tuple[torch.Tensor, dict]:
        r, nc = self.reg_max, self.nc
        flat = torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)  # (B, N, 4r + nc)
        if flat.shape[-1] != 4 * r + nc:
            raise ValueError(f"head maps have {flat.shape[-1]} channels, expected {4 * r + nc}")
        b, n, _ = flat.shape
        dist_logits = flat[..., : 4 * r].reshape(b, n, 4, r)
        cls_logits = flat[..., 4 * r:]
        anchors, strides = make_anchors(maps)  # grid units of each level
        proj = torch.arange(r, dtype=flat.dtype, device=flat.device)
        dist = dist_logits.softmax(-1) @ proj  # (B, N, 4) l, t, r, b in grid units
        pred = torch.cat([anchors - dist[..., :2], anchors + dist[..., 2:]], -1)  # xyxy, grid units
        s = strides[:, None]
        gb, gc, gm = pad_targets(gt_boxes, gt_classes, flat.device)
        t = assign(cls_logits.detach().sigmoid(), pred.detach() * s, anchors * s, gb, gc, gm, self.topk)
        norm = t.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, t.scores, reduction="sum") / norm
        if t.fg.any():
            weight = t.scores.sum(-1)[t.fg]
            t_grid = t.boxes / s  # target boxes in grid units
            loss_box = (complete_box_iou_loss(pred[t.fg], t_grid[t.fg], reduction="none") * weight).sum() / norm
            a = anchors.expand(b, n, 2)
            ltrb = torch.cat([a - t_grid[..., :2], t_grid[..., 2:] - a], -1)[t.fg].clamp(0, r - 1 - 0.01)
            loss_dfl = (dfl_loss(dist_logits[t.fg], ltrb) * weight).sum() / norm
        else:
            loss_box = loss_dfl = flat.sum() * 0.0
        total = self.w_box * loss_box + self.w_cls * loss_cls + self.w_dfl * loss_dfl
        parts = {"box": float(loss_box.detach()), "cls": float(loss_cls.detach()),
                 "dfl": float(loss_dfl.detach())}
        return total, parts
