"""Classification metrics on (N, C) class-score arrays: accuracy, agreement, divergence, drift.

Scores are logits (what classifier adapters decode to). A model whose last layer is a
softmax gives probabilities instead: rows that are non-negative and sum to 1 are read as
probabilities (their log is taken), never passed through a second softmax.
"""

from __future__ import annotations

import numpy as np

# the reference is "degenerate" (agreement with it means nothing) when ...
TIE_FRACTION = 0.5  # ... more than this fraction of images have a tied top-1 (margin ~ 0), or
DOMINANT_FRACTION = 0.98  # ... one class wins on at least this fraction of the images
TIE_RTOL = 1e-5  # a margin below TIE_RTOL * max(1, |top logit|) is a tie


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


def is_probabilities(scores) -> bool:
    """True when every row is non-negative and sums to 1 (a softmax output, not logits)."""
    a = _as_2d(scores, "scores")
    return a.size > 0 and bool(a.min() >= 0) and bool(np.allclose(a.sum(1), 1.0, atol=1e-3))


def log_softmax(scores) -> np.ndarray:
    """Row-wise log-probabilities of (N, C) logits (or of probabilities, see module doc)."""
    z = _as_2d(scores, "scores")
    if is_probabilities(z):
        return np.log(np.clip(z, 1e-12, None))
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(scores) -> np.ndarray:
    """Row-wise class probabilities of (N, C) logits (probabilities are returned as they are)."""
    return np.exp(log_softmax(scores))


def top1_agreement(ref_logits, cmp_logits) -> float | None:
    """Fraction of images where both models pick the same top class (None for no image)."""
    r, c = _pair(ref_logits, cmp_logits)
    if len(r) == 0:
        return None
    return float(np.mean(r.argmax(1) == c.argmax(1)))


def topk_agreement(ref_logits, cmp_logits, k: int = 5) -> float | None:
    """Fraction of images where the reference's top class is among the compressed model's top ``k``.

    None for no image, or when there are ``k`` classes or fewer (it would always be 1).
    """
    r, c = _pair(ref_logits, cmp_logits)
    if len(r) == 0 or r.shape[1] <= k:
        return None
    top_c = np.argsort(-c, axis=1, kind="stable")[:, :k]
    return float(np.mean((top_c == r.argmax(1)[:, None]).any(1)))


def kl_divergence(ref_logits, cmp_logits) -> float | None:
    """KL(reference || compressed) of the class distributions in nats, mean over images."""
    r, c = _pair(ref_logits, cmp_logits)
    if len(r) == 0:
        return None
    lr, lc = log_softmax(r), log_softmax(c)
    return float(np.mean((np.exp(lr) * (lr - lc)).sum(1)))


def top1_margins(logits) -> np.ndarray:
    """Per image: top score minus the runner-up's (0 for a single class)."""
    z = _as_2d(logits, "logits")
    if z.shape[1] < 2:
        return np.zeros(len(z))
    part = -np.partition(-z, 1, axis=1)[:, :2]
    return part[:, 0] - part[:, 1]


def degenerate_reason(ref_logits, class_names: list[str] | None = None) -> str | None:
    """Why agreement with this reference would mean nothing, or None when it is fine.

    Degenerate: the top-1 class is tied (margin ~ 0) on most images -- argmax then picks
    the first class whatever the model computes -- or one class wins on (nearly) every
    image, so a broken model that always answers that class would "agree".
    """
    z = _as_2d(ref_logits, "reference")
    n = len(z)
    if n == 0 or z.shape[1] < 2:
        return None
    margins = top1_margins(z)
    tol = TIE_RTOL * np.maximum(1.0, np.abs(z).max(1))
    tied = float(np.mean(margins <= tol))
    if tied > TIE_FRACTION:
        return (f"the original's top-1 class is tied (top-1 margin ~0) on {tied:.0%} of the {n} validation "
                "images: its outputs do not depend on the input (untrained, collapsed or constant model?)")
    winners = z.argmax(1)
    counts = np.bincount(winners, minlength=z.shape[1])
    top = int(counts.argmax())
    share = counts[top] / n
    if n >= 2 and share >= DOMINANT_FRACTION:
        name = class_names[top] if class_names and top < len(class_names) else str(top)
        return (f"the original predicts class '{name}' on {share:.0%} of the {n} validation images: "
                "a model that always answers it would agree too (untrained or collapsed model, or "
                "one-class validation data?)")
    return None


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
    """Mean absolute difference of the class probabilities (softmax of logits, once)."""
    r, c = _pair(ref_logits, cmp_logits)
    return float(np.mean(np.abs(softmax(r) - softmax(c)))) if r.size else None
