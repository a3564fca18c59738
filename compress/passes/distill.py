"""Distillation losses of the fine-tuning loop (a helper of ``finetune``, not a pass).

The student's and the frozen reference's ``adapter.distill_outputs`` are compared:

* ``yolo`` -- for detector heads in the Ultralytics raw layout, one map
  ``(B, 4 * reg_max + nc, H, W)`` per level. Class logits learn the teacher's
  probabilities (binary cross-entropy against ``sigmoid(teacher)`` less the teacher's own
  entropy, i.e. the Bernoulli KL divergence, normalised by the teacher's total score as
  YOLO normalises by its targets); the box distributions learn
  the teacher's (KL divergence of the per-side DFL softmax, or squared error when
  ``reg_max`` is 1) where the teacher sees an object (weighted by its highest class
  score). Plain squared error on raw logits is dominated by the thousands of background
  logits and lets every score shrink: the detector "agrees" in ranking while detecting
  nothing above a threshold.
* ``detect`` -- for decoded detector outputs (the generic adapter's layouts): the
  Ultralytics decoded layout ``(B, 4 + nc, N)`` (rows match by anchor) or end-to-end rows
  ``(B, N, 6)`` (each teacher row matched to the student row of highest IoU). Boxes and
  scores are weighed separately: boxes by L1 normalised by the teacher box's own width and
  height, weighted by the teacher's score (where it sees an object); scores by binary
  cross-entropy to the teacher's scores less the teacher's entropy (0 when they match),
  normalised by the teacher's total score. MSE on such outputs is dominated by pixel-scale
  box errors, next to which [0, 1] scores count for nothing.
* ``mse`` -- mean squared error per output, averaged over outputs (anything else).

``auto`` picks ``yolo`` when the adapter is a detector and every output has that layout,
``detect`` when it is a detector with one decoded output, else ``mse``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.errors import PassError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def yolo_layout(outputs: list["torch.Tensor"], nc: int) -> int | None:
    """``reg_max`` when every output is a ``(B, 4 * reg_max + nc, H, W)`` head map, else None."""
    regs = set()
    for o in outputs:
        extra = o.shape[1] - nc if o.dim() == 4 else -1
        if extra <= 0 or extra % 4:
            return None
        regs.add(extra // 4)
    return regs.pop() if len(regs) == 1 else None


def decoded_layout(outputs: list["torch.Tensor"], nc: int) -> str | None:
    """``anchors`` for one ``(B, 4 + nc, N)`` output, ``rows`` for one ``(B, N, 6)``, else None."""
    if len(outputs) != 1 or outputs[0].dim() != 3:
        return None
    o = outputs[0]
    if o.shape[1] == 4 + nc:
        return "anchors"
    return "rows" if o.shape[2] == 6 else None


def resolve_mode(mode: str, task: str, outputs: list["torch.Tensor"], nc: int, who: str = "finetune") -> str:
    """``yolo``, ``detect`` or ``mse`` for these outputs; PassError when ``yolo`` is asked of another layout."""
    fits = task == "detect" and yolo_layout(outputs, nc) is not None
    if mode == "yolo" and not fits:
        shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
        raise PassError(f"{who}: distill 'yolo' needs detector head maps (B, 4*reg_max+{nc}, H, W); "
                        f"the adapter gives {shapes} (use distill: mse)")
    if mode == "detect" and not (task == "detect" and decoded_layout(outputs, nc)):
        shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
        raise PassError(f"{who}: distill 'detect' needs one decoded detector output (B, 4+{nc}, N) or (B, N, 6); "
                        f"the adapter gives {shapes} (use distill: mse)")
    if mode == "auto":
        if fits:
            return "yolo"
        return "detect" if task == "detect" and decoded_layout(outputs, nc) else "mse"
    return mode


BOX_WEIGHT = 1.0  # weights of the two terms of the ``detect`` loss (each already normalised)
SCORE_WEIGHT = 1.0
ROW_MIN_SCORE = 0.01  # teacher rows (end-to-end layout) below this are padding / background


def _bernoulli_kl(s: "torch.Tensor", t: "torch.Tensor") -> "torch.Tensor":
    """Sum of BCE(student prob, teacher prob) less the teacher's entropy: 0 when equal."""
    import torch.nn.functional as F

    s, t = s.clamp(1e-6, 1 - 1e-6), t.clamp(0.0, 1.0)
    return F.binary_cross_entropy(s, t, reduction="sum") - F.binary_cross_entropy(t.clamp(1e-6, 1 - 1e-6), t,
                                                                                  reduction="sum")


def _anchor_distill(s: "torch.Tensor", t: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(box, score) terms for ``(B, 4 + nc, N)``: cx cy w h + class probabilities, rows aligned."""
    t = t.detach()
    ts, ss = t[:, 4:], s[:, 4:]
    weight = ts.amax(1)  # (B, N): where the teacher sees an object
    scale = t[:, 2:4].clamp(min=1.0).repeat(1, 2, 1)  # (B, 4, N): w h w h
    l1 = ((s[:, :4] - t[:, :4]).abs() / scale).mean(1)  # (B, N)
    box = (l1 * weight).sum() / weight.sum().clamp(min=1.0)
    score = _bernoulli_kl(ss, ts) / ts.sum().clamp(min=1.0)
    return box, score


def _row_distill(s: "torch.Tensor", t: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(box, score) terms for ``(B, N, 6)`` rows: each teacher row's best-IoU student row learns it;
    student rows no teacher row picked learn a score of 0."""
    import torch
    from torchvision.ops import box_iou

    t = t.detach()
    box_sum = s.new_zeros(())
    score_sum = s.new_zeros(())
    weight_sum = score_norm = 0.0
    for sb, tb in zip(s, t):
        keep = tb[:, 4] >= ROW_MIN_SCORE
        tb = tb[keep]
        picked = torch.zeros(len(sb), dtype=torch.bool, device=sb.device)
        if len(tb):
            with torch.no_grad():
                best = box_iou(tb[:, :4], sb[:, :4].detach()).argmax(1)
            picked[best] = True
            m = sb[best]
            wh = (tb[:, 2:4] - tb[:, :2]).clamp(min=1.0).repeat(1, 2)
            l1 = ((m[:, :4] - tb[:, :4]).abs() / wh).mean(1)
            box_sum = box_sum + (l1 * tb[:, 4]).sum()
            weight_sum += float(tb[:, 4].sum())
            score_sum = score_sum + _bernoulli_kl(m[:, 4], tb[:, 4])
            score_norm += float(tb[:, 4].sum())
        rest = sb[~picked, 4]
        if len(rest):
            score_sum = score_sum + _bernoulli_kl(rest, torch.zeros_like(rest))
    return box_sum / max(weight_sum, 1.0), score_sum / max(score_norm, 1.0)


def detect_distill(student: list["torch.Tensor"], teacher: list["torch.Tensor"], nc: int) -> "torch.Tensor":
    """Separately weighed box (normalised L1) and score (Bernoulli KL) terms; see the module doc."""
    layout = decoded_layout(teacher, nc)
    s, t = student[0].float(), teacher[0].float()
    box, score = _anchor_distill(s, t) if layout == "anchors" else _row_distill(s, t)
    return BOX_WEIGHT * box + SCORE_WEIGHT * score


def yolo_distill(student: list["torch.Tensor"], teacher: list["torch.Tensor"], nc: int) -> "torch.Tensor":
    """Class BCE to the teacher's probabilities + score-weighted box-distribution KL (see module doc)."""
    import torch.nn.functional as F

    reg = yolo_layout(teacher, nc)
    cls_sum = box_sum = score_sum = weight_sum = 0.0
    for s, t in zip(student, teacher):
        s, t = s.float(), t.float()
        b, _, h, w = s.shape
        sb, sc = s[:, :4 * reg].reshape(b, 4, reg, h, w), s[:, 4 * reg:]
        tb, tc = t[:, :4 * reg].reshape(b, 4, reg, h, w), t[:, 4 * reg:]
        prob = tc.sigmoid()
        # cross-entropy minus the teacher's own entropy: the Bernoulli KL, 0 when the scores match
        cls_sum = cls_sum + (F.binary_cross_entropy_with_logits(sc, prob, reduction="sum")
                             - F.binary_cross_entropy_with_logits(tc, prob, reduction="sum"))
        score_sum = score_sum + prob.sum()
        if reg > 1:
            tlog = F.log_softmax(tb, 2)
            per_side = (tlog.exp() * (tlog - F.log_softmax(sb, 2))).sum(2)  # (B, 4, H, W)
        else:
            per_side = (sb - tb).squeeze(2).pow(2)
        weight = prob.amax(1)  # (B, H, W): where the teacher sees an object
        box_sum = box_sum + (per_side.mean(1) * weight).sum()
        weight_sum = weight_sum + weight.sum()
    return cls_sum / score_sum.clamp(min=1.0) + box_sum / weight_sum.clamp(min=1.0)


def mse_distill(student: list["torch.Tensor"], teacher: list["torch.Tensor"]) -> "torch.Tensor":
    """Mean squared error of each output, averaged over the outputs."""
    import torch.nn.functional as F

    return sum(F.mse_loss(o.float(), t.float()) for o, t in zip(student, teacher)) / len(student)


def distill_loss(mode: str, student: list["torch.Tensor"], teacher: list["torch.Tensor"], nc: int) -> "torch.Tensor":
    """The ``mode`` (``yolo`` | ``detect`` | ``mse``) loss between matching student and teacher outputs."""
    if len(student) != len(teacher):
        raise PassError("finetune: student and reference give different numbers of distillation outputs")
    rows = mode == "detect" and decoded_layout(teacher, nc) == "rows"  # row counts may differ (matched by IoU)
    for o, t in zip(student, teacher):
        if o.shape != t.shape and not (rows and o.dim() == 3 and o.shape[2] == 6):
            raise PassError(f"finetune: student output {tuple(o.shape)} does not match the reference's "
                            f"{tuple(t.shape)}")
    if mode == "yolo":
        return yolo_distill(student, teacher, nc)
    if mode == "detect":
        if decoded_layout(teacher, nc) is None:
            shapes = ", ".join(str(tuple(o.shape)) for o in teacher)
            raise PassError(f"finetune: distill 'detect' needs one (B, 4+{nc}, N) or (B, N, 6) output; got {shapes}")
        return detect_distill(student, teacher, nc)
    return mse_distill(student, teacher)


CACHE_LIMIT_BYTES = 512 << 20  # teacher outputs kept in memory at most (digitdet, 3000 images: 170 MB)


class TeacherCache:
    """The frozen teacher's distillation outputs per training image, computed once.

    Over several epochs the same images come back, and the teacher (eval mode, no
    dropout) gives the same outputs: keeping them saves its forward pass (a third of a
    pruned digitdet step). Kept only when all images' outputs fit in ``limit_bytes``.
    """

    def __init__(self, adapter, teacher, images: int, limit_bytes: int | None = None):
        self.adapter, self.teacher, self.images = adapter, teacher, images
        self.limit = CACHE_LIMIT_BYTES if limit_bytes is None else limit_bytes
        self.store: dict[int, list] = {}
        self.enabled: bool | None = None  # decided from the first batch's size
        self.hits = 0

    def __call__(self, x: "torch.Tensor", keys=None) -> list["torch.Tensor"]:
        import torch

        if keys is not None and self.enabled and all(int(k) in self.store for k in keys):
            try:
                out = [torch.stack(parts) for parts in zip(*(self.store[int(k)] for k in keys))]
            except RuntimeError:  # per-image outputs of different sizes (padded rows): recompute
                pass
            else:
                self.hits += 1
                return out
        with torch.no_grad():
            out = self.adapter.distill_outputs(self.teacher, x)
        if keys is not None:
            if self.enabled is None:
                per_image = sum(o[0].numel() * o.element_size() for o in out)
                self.enabled = per_image * self.images <= self.limit
            if self.enabled:
                for i, k in enumerate(keys):
                    self.store[int(k)] = [o[i] for o in out]
        return out
