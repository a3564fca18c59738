"""``load_dataset``: a recipe's DataSource -> Dataset, guessing the folder format when asked to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.data.images import is_image
from compress.errors import DataError
from compress.types import Dataset

if TYPE_CHECKING:  # pragma: no cover
    from compress.recipe import DataSource

FORMATS = ("yolo", "coco", "folder")


def detect_format(path: str | Path) -> str:
    """"yolo", "coco" or "folder" for a data path (DataError if it does not exist).

    YOLO: a data.yaml, a ``labels/`` folder, an ``images/`` folder without COCO JSON, or
    ``.txt`` files beside the images. COCO: a ``.json`` file, or a folder with one (also in
    ``annotations/``). Anything else is a plain image folder.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: data folder not found")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        raise DataError(f"{p}: expected a folder, a data.yaml or a COCO .json")
    if (p / "labels").is_dir() or any((p / n).is_file() for n in ("data.yaml", "data.yml", "dataset.yaml")):
        return "yolo"
    if any(p.glob("annotations/*.json")) or any(p.glob("*.json")):
        return "coco"
    if (p / "images").is_dir():
        return "yolo"
    if any(f.suffix == ".txt" and any(is_image(f.with_suffix(e)) for e in (".jpg", ".png", ".jpeg"))
           for f in p.glob("*.txt")):
        return "yolo"
    return "folder"


def load_path(path: str | Path, format: str = "auto", split: str = "val", samples: int | None = None,
              class_names: list[str] | None = None) -> Dataset:
    """Load a data set from a path in the given (or detected) format."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "yolo":
        from compress.data.yolo import load_yolo

        return load_yolo(path, split, class_names=class_names, samples=samples)
    if fmt == "coco":
        from compress.data.coco import load_coco

        return load_coco(path, split, class_names=class_names, samples=samples)
    if fmt == "folder":
        from compress.data.folder import load_folder

        return load_folder(path, samples=samples, class_names=class_names)
    raise DataError(f"unknown data format '{format}' (known: auto, {', '.join(FORMATS)})")


def load_dataset(source: "DataSource", *, class_names: list[str] | None = None) -> Dataset:
    """The data set a recipe's ``data.calibration``/``data.validation`` entry names.

    Missing or empty folders, or folders with no readable image, raise DataError; corrupt
    images are skipped with a warning and listed in ``Dataset.skipped``.
    """
    if source.builtin is not None:
        from compress.data.builtin import builtin_dataset

        return builtin_dataset(source.builtin, source.split, source.samples)
    return load_path(source.path, source.format, source.split, source.samples, class_names)
