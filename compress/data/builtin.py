"""Built-in data sets by name: "digits-det" (detection) and "digits" (classification)."""

from __future__ import annotations

from compress.errors import DataError
from compress.types import Dataset

BUILTIN_DATASETS = ("digits-det", "digits")


def builtin_dataset(name: str, split: str, samples: int | None = None) -> Dataset:
    """A built-in data set split (train / val / calib); ``samples`` keeps the first N.

    "digits-det" val/calib are the YOLO folders shipped in ``calibration/digits-det`` and are
    read with the same loader as user data; its train split is generated into the cache on
    first use. "digits" is 32x32 RGB classification (see :mod:`compress.data.digits`).
    """
    if name == "digits-det":
        from compress.data.digits_det import CLASS_NAMES, split_folder
        from compress.data.yolo import load_yolo

        data = load_yolo(split_folder(split), split, class_names=CLASS_NAMES, samples=samples)
        data.root = f"builtin:digits-det/{split} ({data.root})"
        return data
    if name == "digits":
        from compress.data.digits import digits_dataset

        return digits_dataset(split, samples)
    raise DataError(f"unknown built-in data set '{name}' (known: {', '.join(BUILTIN_DATASETS)})")
