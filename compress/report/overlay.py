"""Side-by-side pictures of what the original and the compressed model see.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global backend
state is touched): the original's output on the left, the compressed model's on
the right. Detections are boxes labelled with class name and score; classifier
outputs (logits, probabilities or a class index) become a top-1 label per side.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from compress.types import Detections


def _label(i: int, class_names: list[str]) -> str:
    return class_names[i] if 0 <= i < len(class_names) else str(i)


def _top1(out: Any, class_names: list[str]) -> str:
    """Classifier output -> 'name (p)'; a bare class index -> 'name'."""
    arr = np.asarray(out, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return _label(int(arr[0]), class_names)
    k = int(arr.argmax())
    is_prob = arr.min() >= 0 and abs(arr.sum() - 1) < 1e-3
    probs = arr if is_prob else np.exp(arr - arr.max()) / np.exp(arr - arr.max()).sum()
    return f"{_label(k, class_names)} ({probs[k]:.2f})"


def _draw(ax, image: np.ndarray, result: Any, title: str, class_names: list[str], colors) -> None:
    ax.imshow(image)
    ax.set_axis_off()
    if isinstance(result, Detections):
        from matplotlib.patches import Rectangle

        for box, score, cls in zip(result.boxes, result.scores, result.classes):
            x1, y1, x2, y2 = (float(v) for v in box)
            color = colors(int(cls) % 20)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
            ax.text(x1, y1, f"{_label(int(cls), class_names)} {float(score):.2f}", fontsize=7, color="white",
                    va="bottom", bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
        ax.set_title(f"{title}: {len(result)} detections", fontsize=9)
    elif result is None:
        ax.set_title(f"{title}: no output", fontsize=9)
    else:
        ax.set_title(f"{title}: {_top1(result, class_names)}", fontsize=9)


def _stem(path: str, i: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem if path else "")[:40]
    return f"{i:02d}_{stem or 'image'}"


def save_overlays(out_dir: str | os.PathLike, samples, ref_dets: list, cmp_dets: list, class_names: list[str],
                  n: int = 4, min_score: float = 0.25) -> list[Path]:
    """Write one PNG per image (at most ``n``) into ``out_dir``; return their paths.

    ``samples`` are ``Sample``s (or RGB uint8 arrays); ``ref_dets`` / ``cmp_dets`` are
    per-image ``Detections`` (boxes with score >= ``min_score`` are drawn) or
    classifier outputs.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from compress.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = colormaps["tab20"]
    paths = []
    count = min(n, len(samples), len(ref_dets), len(cmp_dets))
    for i in range(count):
        sample = samples[i]
        image = np.asarray(getattr(sample, "image", sample))
        h, w = image.shape[:2]
        fig = Figure(figsize=(8, max(2.5, 4 * h / max(w, 1)) + 0.4), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        for ax, res, title in ((axes[0], ref_dets[i], "original"), (axes[1], cmp_dets[i], "compressed")):
            if isinstance(res, Detections):
                res = res.above(min_score)
            _draw(ax, image, res, title, class_names, colors)
        fig.tight_layout()
        path = out / f"{_stem(getattr(sample, 'path', ''), i)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        paths.append(path)
    return paths
