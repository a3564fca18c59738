"""Classification metrics on (N, C) score arrays: accuracy, top-1 agreement, drift."""

from __future__ import annotations

import numpy as np


def _as_2d(scores, name: str) -> np.ndarray:
    a = np.asarray(scores, np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected (N, C) class scores, got shape {a.shape}")
    return a


def _pair(ref, cmp) -> tuple[np.ndarray, np.ndarray]:
    r, c = _as_2d(ref, "reference"), _as_2d(cmp, "compressed")
    if r.shape != c.shape:
        raise ValueError(f"reference scores {r.shape} and compressed scores {c.shape} differ in shape")
    return r, c


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of (N, C) logits."""
    z = _as_2d(logits, "logits")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top1_agreement(ref_logits, cmp_logits) -> float | None:
    """Fraction of images where both models pick the same top class (None for no image)."""
    r, c = _pair(ref_logits, cmp_logits)
    if len(r) == 0:
        return None
    return float(np.mean(r.argmax(1) == c.argmax(1)))


def accuracy(logits, labels) -> float | None:
    """Top-1 accuracy against integer labels (None for no image)."""
    z = _as_2d(logits, "logits")
    y = np.asarray(labels, np.int64).reshape(-1)
    if len(z) != len(y):
        raise ValueError(f"accuracy: {len(z)} score rows for {len(y)} labels")
    if len(y) == 0:
        return None
    return float(np.mean(z.argmax(1) == y))


def logit_drift(ref_logits, cmp_logits) -> float | None:
    """Mean absolute difference of the raw scores."""
    r, c = _pair(ref_logits, cmp_logits)
    return float(np.mean(np.abs(r - c))) if r.size else None


def prob_drift(ref_logits, cmp_logits) -> float | None:
    """Mean absolute difference of the softmax probabilities."""
    r, c = _pair(ref_logits, cmp_logits)
    return float(np.mean(np.abs(softmax(r) - softmax(c)))) if r.size else None
