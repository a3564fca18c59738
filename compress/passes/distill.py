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
* ``mse`` -- mean squared error per output, averaged over outputs (anything else).

``auto`` picks ``yolo`` when the adapter is a detector and every output has that layout.
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


def resolve_mode(mode: str, task: str, outputs: list["torch.Tensor"], nc: int, who: str = "finetune") -> str:
    """``yolo`` or ``mse`` for these outputs; PassError when ``yolo`` is asked of another layout."""
    fits = task == "detect" and yolo_layout(outputs, nc) is not None
    if mode == "yolo" and not fits:
        shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
        raise PassError(f"{who}: distill 'yolo' needs detector head maps (B, 4*reg_max+{nc}, H, W); "
                        f"the adapter gives {shapes} (use distill: mse)")
    if mode == "auto":
        return "yolo" if fits else "mse"
    return mode


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
    """The ``mode`` (``yolo`` | ``mse``) loss between matching student and teacher outputs."""
    if len(student) != len(teacher):
        raise PassError("finetune: student and reference give different numbers of distillation outputs")
    for o, t in zip(student, teacher):
        if o.shape != t.shape:
            raise PassError(f"finetune: student output {tuple(o.shape)} does not match the reference's "
                            f"{tuple(t.shape)}")
    return yolo_distill(student, teacher, nc) if mode == "yolo" else mse_distill(student, teacher)


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
            self.hits += 1
            return [torch.stack(parts) for parts in zip(*(self.store[int(k)] for k in keys))]
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
