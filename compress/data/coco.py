"""COCO detection JSON (an ``instances_*.json`` plus an image folder).

Category ids are mapped to contiguous indices 0..K-1 in increasing id order, with names from
``categories``; when ``class_names`` (e.g. the model's) contains every category name, the
categories map onto those indices by name instead. ``iscrowd`` and zero-area boxes are dropped;
boxes with NaN/inf or negative sizes are skipped and counted in ``Dataset.skipped``.

Each image is looked up on its own in the usual folders beside the JSON (``images/``,
``<split>/``, ...); a ``file_name`` that is absolute or climbs out with ``..`` is refused
(skipped and counted), as is one found nowhere (an error when no image is found at all).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path, PurePosixPath

import numpy as np

from compress.data.images import no_images_error, try_read
from compress.data.yolo import MAX_CLASSES, SPLIT_ALIASES
from compress.errors import DataError
from compress.types import Dataset, Sample


def find_annotation(root: Path, split: str = "val") -> Path:
    """The COCO JSON inside ``root`` (``annotations/*.json`` or ``*.json``), preferring ``split``."""
    files = sorted([*root.glob("annotations/*.json"), *root.glob("*.json")])
    if not files:
        raise DataError(f"{root}: no COCO annotation .json found")
    if len(files) == 1:
        return files[0]
    for alias in SPLIT_ALIASES.get(split, (split,)):
        hits = [f for f in files if alias in f.stem.lower() and "instances" in f.stem.lower()] or \
               [f for f in files if alias in f.stem.lower()]
        if hits:
            return hits[0]
    raise DataError(f"{root}: several annotation files ({', '.join(f.name for f in files)}); pass one")


def _image_dirs(ann: Path, split: str) -> list[Path]:
    stem = ann.stem.split("_", 1)[-1] if "_" in ann.stem else ann.stem  # instances_val2017 -> val2017
    out = []
    for base in (ann.parent, ann.parent.parent):
        out += [base, base / "images", base / stem, base / "images" / stem, base / split, base / "images" / split]
    return list(dict.fromkeys(out))


def _refuse_name(name) -> str | None:
    """Why an image's ``file_name`` is refused: missing, absolute, or climbing out with ``..``."""
    if not isinstance(name, str) or not name.strip():
        return "no file_name"
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in parts.parts:
        return "file_name leaves the data folder (absolute or '..'): refused"
    return None


def _find_image(dirs: list[Path], name: str) -> Path | None:
    """The first candidate folder holding ``name`` (each image is looked up on its own)."""
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError covers JSON and UTF-8 decoding errors
        raise DataError(f"{path}: cannot read COCO JSON ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO instances file (no 'images' list)")
    return data


def load_coco(path: str | Path, split: str = "val", class_names: list[str] | None = None,
              samples: int | None = None, image_dir: str | Path | None = None) -> Dataset:
    """Load a COCO detection set: ``path`` is the JSON file or a folder holding it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data folder not found")
    ann = path if path.is_file() else find_annotation(path, split)
    data = _read_json(ann)
    cats = data.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(c, dict) for c in cats):
        raise DataError(f"{ann}: 'categories' must be a list of {{id, name}} objects")
    if len(cats) > MAX_CLASSES:
        raise DataError(f"{ann}: {len(cats)} categories; at most {MAX_CLASSES} are supported")
    try:
        cats = sorted(cats, key=lambda c: int(c.get("id", 0)))
        cat_names = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{ann}: every category needs an integer 'id'") from None
    if class_names and all(n in class_names for n in cat_names.values()):
        names = list(class_names)
        cat_index = {cid: names.index(n) for cid, n in cat_names.items()}
    else:
        if class_names:
            warnings.warn(f"{ann}: category names differ from the model's class names; "
                          "using the file's categories", stacklevel=2)
        names = list(cat_names.values())
        cat_index = {cid: i for i, cid in enumerate(cat_names)}

    per_image: dict[int, list] = {}
    skipped: list[tuple[str, str]] = []
    for k, a in enumerate(data.get("annotations") or []):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            image_id, cid = a["image_id"], int(a["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{ann}: annotations[{k}]: needs image_id, category_id and bbox [x, y, w, h]") from None
        if cid not in cat_index:
            raise DataError(f"{ann}: annotations[{k}]: category_id {cid} not in categories")
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            skipped.append((f"{ann}: annotations[{k}]", "box skipped: NaN, infinite or negative size"))
            continue
        if a.get("iscrowd", 0) or w == 0 or h == 0:
            continue
        per_image.setdefault(image_id, []).append((x, y, x + w, y + h, cat_index[cid]))

    images = sorted(data["images"], key=lambda im: str(im.get("file_name", "")) if isinstance(im, dict) else "")
    if not images:
        raise no_images_error(ann, 0, [])
    dirs = [Path(image_dir)] if image_dir else _image_dirs(ann, split)
    out, tried, missing = [], 0, []
    for im in images:
        if samples is not None and len(out) >= samples:
            break
        tried += 1
        name = im.get("file_name") if isinstance(im, dict) else None
        refused = _refuse_name(name)
        if refused:
            skipped.append((str(name)[:200], refused))
            continue
        file = _find_image(dirs, name)
        if file is None:
            missing.append(name)
            skipped.append((name, f"image not found (looked in {', '.join(map(str, dirs[:4]))}, ...)"))
            continue
        image = try_read(file, skipped)
        if image is None:
            continue
        rows = per_image.get(im.get("id"), [])
        arr = np.asarray(rows, np.float64).reshape(-1, 5)
        hgt, wid = image.shape[:2]
        boxes = np.clip(arr[:, :4], 0, [wid, hgt, wid, hgt]).astype(np.float32)
        out.append(Sample(str(file), image, boxes=boxes, classes=arr[:, 4].astype(np.int64)))
    if not out:
        if missing and len(missing) == tried:
            raise DataError(f"{ann}: cannot find image '{missing[0]}' (looked in {', '.join(map(str, dirs[:4]))}, ...)")
        raise no_images_error(ann, tried, [item for item in skipped if not item[0].startswith(str(ann))])
    if skipped:
        warnings.warn(f"{ann}: {len(skipped)} image(s)/box(es) skipped (first: {skipped[0][0]}: {skipped[0][1]})",
                      stacklevel=2)
    return Dataset(out, names, str(ann), skipped)
