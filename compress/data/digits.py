"""The built-in classification set "digits", and the fixed split of scikit-learn's handwritten digits.

``load_digits`` (1,797 8x8 images, 10 classes, bundled with scikit-learn: no download) is
split once, stratified by class, with a fixed seed (:data:`SPLIT_SEED`):

* ``train`` 70 % (1,257 digits), ``val`` 15 % (270), ``calib`` 15 % (270).

``val`` and ``calib`` are the two halves of the 30 % held out from training, so neither ever
shares a digit instance with ``train`` or with each other. The same split is used by the
detection set ``digits-det``: validation is always on unseen handwriting.

Classification samples are upscaled smoothly (bicubic) to 32x32, white ink on black, 3-channel
uint8, with ``Sample.label`` set.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from compress.errors import DataError
from compress.types import Dataset, Sample

CLASS_NAMES = [str(i) for i in range(10)]
SPLITS = ("train", "val", "calib")
SPLIT_SEED = 0  # fixed forever: changing it would mix train and validation handwriting
IMGSZ = 32


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float32 in [0, 1], targets (1797,) int64); read-only."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    targets = d.target.astype(np.int64)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images (N, 8, 8) float32 in [0, 1], classes (N,) int64)."""
    return _digits()


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, y = _digits()
    idx = np.arange(len(y))
    train, held = train_test_split(idx, test_size=0.30, stratify=y, random_state=SPLIT_SEED)
    val, calib = train_test_split(held, test_size=0.50, stratify=y[held], random_state=SPLIT_SEED)
    out = {"train": np.sort(train), "val": np.sort(val), "calib": np.sort(calib)}
    for v in out.values():
        v.setflags(write=False)
    return out


def split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits`` that belong to ``split`` (train/val/calib, disjoint)."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    return _split_indices()[split]


def upscale(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 float digit in [0, 1] -> (size, size) float32 in [0, 1], bicubic."""
    im = Image.fromarray(np.asarray(digit, np.float32)).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(im, np.float32), 0.0, 1.0)


def digits_dataset(split: str, samples: int | None = None) -> Dataset:
    """The classification set: 32x32 RGB uint8 digits of ``split`` with ``Sample.label``.

    Samples are in increasing ``load_digits`` index order; ``samples`` keeps the first N.
    """
    images, targets = _digits()
    idx = split_indices(split)
    if samples is not None:
        idx = idx[:samples]
    out = []
    for i in idx:
        gray = (upscale(images[i], IMGSZ) * 255.0 + 0.5).astype(np.uint8)
        out.append(Sample(f"digits/{split}/{int(i):04d}", np.repeat(gray[:, :, None], 3, axis=2),
                          label=int(targets[i])))
    return Dataset(out, list(CLASS_NAMES), f"builtin:digits/{split}")
