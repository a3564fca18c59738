"""A plain folder of images (searched recursively): unlabelled, fine for calibration."""

from __future__ import annotations

from pathlib import Path

from compress.data.images import list_images, no_images_error, try_read
from compress.types import Dataset, Sample


def load_folder(root: str | Path, samples: int | None = None,
                class_names: list[str] | None = None) -> Dataset:
    """Every readable image under ``root`` in sorted path order (the first ``samples`` of them)."""
    root = Path(root)
    out, skipped, tried = [], [], 0
    for path in list_images(root, recursive=True):
        if samples is not None and len(out) >= samples:
            break
        tried += 1
        image = try_read(path, skipped)
        if image is not None:
            out.append(Sample(str(path), image))
    if not out:
        raise no_images_error(root, tried, skipped)
    return Dataset(out, list(class_names or []), str(root), skipped)
