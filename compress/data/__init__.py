"""Data sets: user folders (YOLO, COCO JSON, plain images) and the built-in generated sets.

``load_dataset(DataSource)`` is what the runner calls; ``builtin_dataset(name, split)`` gives
the built-in sets directly. Heavy dependencies (scikit-learn, scipy) load only when a built-in
set is first used.
"""

from __future__ import annotations

from compress.data.builtin import BUILTIN_DATASETS, builtin_dataset
from compress.data.load import detect_format, load_dataset, load_path

__all__ = ["BUILTIN_DATASETS", "builtin_dataset", "detect_format", "load_dataset", "load_path"]
