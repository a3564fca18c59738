"""YOLO-format folders: images/ + labels/ (``cls cx cy w h`` normalised) + data.yaml ``names``.

Accepted layouts (``root`` may be any of these):

* ``root/images/*.jpg`` + ``root/labels/*.txt`` (+ ``root/data.yaml``)
* ``root/images/<split>/`` + ``root/labels/<split>/`` (the split is picked by name, see ``SPLIT_ALIASES``)
* a ``data.yaml`` (or a folder holding one) whose ``val``/``train``/... keys name image folders or
  ``.txt`` lists of images, relative to its ``path`` key or to the yaml's folder
* a flat folder of images with ``.txt`` labels beside them

Label files are found as Ultralytics does: the last ``/images/`` in an image's path becomes
``/labels/`` and the suffix ``.txt``. When no label file exists at all the data set is
unlabelled; when some exist, an image without one has no objects.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import yaml

from compress.atomic import MARKER, follow_umask, remove_stale, write_marker
from compress.data.images import IMAGE_EXTENSIONS, is_image, list_images, no_images_error, try_read, write_image
from compress.errors import DataError
from compress.types import Dataset, Sample

# which sub-folder / data.yaml key to use for each requested split, in order of preference
SPLIT_ALIASES = {
    "val": ("val", "valid", "validation", "test"),
    "train": ("train",),
    "calib": ("calib", "calibration", "train", "val", "valid"),
}
_COORD_TOLERANCE = 0.01  # normalised coordinates may overshoot [0, 1] this much (rounding)
MAX_CLASSES = 100_000  # data.yaml nc / names (COCO has 80, LVIS 1203, Objects365 365)


def label_path(image: Path) -> Path:
    """Where the label file of ``image`` lives (Ultralytics' rule)."""
    s = str(image)
    sep = os.sep
    key = f"{sep}images{sep}"
    if key in s:
        head, tail = s.rsplit(key, 1)
        s = f"{head}{sep}labels{sep}{tail}"
    return Path(s).with_suffix(".txt")


def read_names(yaml_file: Path) -> list[str] | None:
    """Class names from a data.yaml (``names`` as a list or an ``{id: name}`` mapping; at most MAX_CLASSES)."""
    data = _read_yaml(yaml_file)
    names = data.get("names")
    nc = data.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or not 0 < nc <= MAX_CLASSES):
        raise DataError(f"{yaml_file}: 'nc' must be an integer 1..{MAX_CLASSES} (got {str(nc)[:40]!r})")
    if isinstance(names, (list, dict)) and len(names) > MAX_CLASSES:
        raise DataError(f"{yaml_file}: 'names' lists {len(names)} classes; at most {MAX_CLASSES} are supported")
    if names is None:
        return [str(i) for i in range(nc)] if nc is not None else None
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{yaml_file}: 'names' keys must be class ids") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{yaml_file}: 'names' ids must be 0..{len(ids) - 1}")
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DataError(f"{yaml_file}: 'names' must be a list or a mapping")


def _read_yaml(path: Path) -> dict:
    from compress.yamlio import load_file  # no aliases / duplicate keys, UTF-8, bounded size and depth

    data = load_file(path, DataError, what="data yaml")
    if not isinstance(data, dict):
        raise DataError(f"{path}: data yaml must be a mapping")
    return data


def _find_yaml(folder: Path, up: int = 2) -> Path | None:
    """data.yaml in ``folder`` or up to ``up`` parents (for the class names)."""
    for d in [folder, *list(folder.parents)[:up]]:
        for name in ("data.yaml", "data.yml", "dataset.yaml"):
            if (d / name).is_file():
                return d / name
    return None


def _pick_split(options: list[str], split: str, where: Path) -> str:
    for cand in SPLIT_ALIASES.get(split, (split,)):
        if cand in options:
            return cand
    raise DataError(f"{where}: no '{split}' split (found: {', '.join(sorted(options)) or 'none'})")


def _images_from_yaml(yaml_file: Path, split: str) -> list[Path]:
    data = _read_yaml(yaml_file)
    base = Path(data.get("path") or ".")
    if not base.is_absolute():
        base = yaml_file.parent / base
    if not base.is_dir() and data.get("path"):  # the folder was moved: its absolute `path` is stale
        base = yaml_file.parent
    key = _pick_split([k for k in data if data[k] and k in sum(SPLIT_ALIASES.values(), ())], split, yaml_file)
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    images: list[Path] = []
    for entry in entries:
        p = Path(str(entry))
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            images += list_images(p, recursive=True)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (p.parent / q))
        else:
            raise DataError(f"{yaml_file}: {key}: {p} not found")
    return sorted(images)


def find_images(root: Path, split: str = "val") -> tuple[list[Path], Path | None]:
    """The image files of a YOLO data set and the data.yaml that names its classes (if any)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if root.is_file():
        if root.suffix.lower() not in (".yaml", ".yml"):
            raise DataError(f"{root}: expected a folder or a data.yaml")
        return _images_from_yaml(root, split), root
    images_dir = root / "images"
    if images_dir.is_dir():
        direct = [p for p in images_dir.iterdir() if is_image(p)]
        if direct:
            return sorted(direct), _find_yaml(root, up=0)
        subs = [p.name for p in images_dir.iterdir() if p.is_dir()]
        if subs:
            return list_images(images_dir / _pick_split(subs, split, images_dir), recursive=True), _find_yaml(root, 0)
        return [], _find_yaml(root, 0)
    yaml_file = _find_yaml(root, up=0)
    if yaml_file is not None and any(k in _read_yaml(yaml_file) for k in sum(SPLIT_ALIASES.values(), ())):
        return _images_from_yaml(yaml_file, split), yaml_file
    return list_images(root), _find_yaml(root)


def parse_labels(path: Path, width: int, height: int, num_classes: int | None,
                 skipped: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One label file -> (boxes xyxy pixels float32, classes int64).

    A line of the wrong shape (column count, text, pixel coordinates) is a DataError naming
    file:line: the file is not YOLO format. A well-formed line with a bad value (NaN/inf,
    width or height <= 0, a class id out of range) is skipped and appended to ``skipped``
    as ``("file:line", reason)``; without a ``skipped`` list it is a DataError too.
    """
    boxes, classes = [], []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        n = len(parts)
        if n != 5 and not (n >= 7 and n % 2 == 1):
            raise DataError(f"{path}:{lineno}: expected 5 columns 'class cx cy w h' (got {n})")
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise DataError(f"{path}:{lineno}: not a number in '{line.strip()[:120]}'") from None
        problem = _bad_value(vals, n, num_classes)
        if problem is not None:
            if skipped is None:
                raise DataError(f"{path}:{lineno}: {problem}")
            skipped.append((f"{path}:{lineno}", f"label line skipped: {problem}"))
            continue
        cls, coords = vals[0], np.asarray(vals[1:])
        if coords.min() < -_COORD_TOLERANCE or coords.max() > 1 + _COORD_TOLERANCE:
            raise DataError(f"{path}:{lineno}: coordinates must be normalised to 0..1 (got '{line.strip()[:120]}')")
        if n == 5:
            cx, cy, w, h = coords
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:  # segment polygon: class x1 y1 x2 y2 ... -> its bounding box
            xs, ys = coords[0::2], coords[1::2]
            box = [xs.min(), ys.min(), xs.max(), ys.max()]
        boxes.append(np.clip(box, 0, 1) * [width, height, width, height])
        classes.append(int(cls))
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64))


def _bad_value(vals: list[float], n: int, num_classes: int | None) -> str | None:
    """Why a well-formed label line cannot be used (None if it can)."""
    if not all(np.isfinite(vals)):
        return "NaN or infinite value"
    cls = vals[0]
    if cls != int(cls) or cls < 0 or (num_classes is not None and cls >= num_classes):
        rng = f"0..{num_classes - 1}" if num_classes else "a non-negative integer"
        return f"class id {cls:g} out of range ({rng})"
    if n == 5 and (vals[3] <= 0 or vals[4] <= 0):
        return "box width and height must be > 0"
    return None


def load_yolo(root: str | Path, split: str = "val", class_names: list[str] | None = None,
              samples: int | None = None) -> Dataset:
    """Load a YOLO-format data set (see the module docstring for the layouts)."""
    root = Path(root)
    images, yaml_file = find_images(root, split)
    names = read_names(yaml_file) if yaml_file is not None else None
    names = names or (list(class_names) if class_names else None)
    labelled = any(label_path(p).is_file() for p in images)
    out, skipped, tried = [], [], 0
    for path in images:
        if samples is not None and len(out) >= samples:
            break
        tried += 1
        image = try_read(path, skipped)
        if image is None:
            continue
        sample = Sample(str(path), image)
        if labelled:
            lp = label_path(path)
            h, w = image.shape[:2]
            sample.boxes, sample.classes = (parse_labels(lp, w, h, len(names) if names else None, skipped)
                                            if lp.is_file() else (np.zeros((0, 4), np.float32),
                                                                  np.zeros(0, np.int64)))
        out.append(sample)
    if not out:
        raise no_images_error(root, tried, skipped)
    bad = [item for item in skipped if item[1].startswith("label line skipped")]
    if bad:
        warnings.warn(f"{root}: {len(bad)} label line(s) skipped (first: {bad[0][0]}: {bad[0][1][20:]})",
                      stacklevel=2)
    if names is None:
        top = max((int(s.classes.max()) for s in out if s.classes is not None and len(s.classes)), default=-1)
        names = [str(i) for i in range(top + 1)]
    return Dataset(out, names, str(root), skipped)


def _fmt(v: float) -> str:
    """8 decimals, trailing zeros dropped: exact for integer boxes in images up to 256 px."""
    return f"{float(v):.8f}".rstrip("0").rstrip(".") or "0"


def write_samples(samples, images_dir: Path, labels_dir: Path, stems: list[str], *, ext: str = ".jpg",
                  quality: int = 90) -> int:
    """Write each sample's image and ``cls cx cy w h`` label file into two folders (made if missing); the count."""
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for stem, s in zip(stems, samples):
        write_image(s.image, images_dir / f"{stem}{ext}", quality)
        h, w = s.image.shape[:2]
        lines = []
        for (x1, y1, x2, y2), c in zip(s.boxes if s.boxes is not None else [], s.classes
                                       if s.classes is not None else []):
            vals = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
            lines.append(" ".join([str(int(c)), *(_fmt(v) for v in vals)]))
        (labels_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
        n += 1
    return n


def data_yaml_text(splits: dict[str, str], class_names: list[str], path: str | None = None,
                   comment: str = "") -> str:
    """A data.yaml: ``path`` (if given), one key per split (``train`` and ``val`` always, as Ultralytics
    requires: a missing one points at another split's folder), ``nc`` and ``names``."""
    if not splits:
        raise DataError("a data.yaml needs at least one split")
    folders = dict(splits)
    first = next(iter(folders.values()))
    folders.setdefault("val", folders.get("test", first))
    folders.setdefault("train", folders.get("calib", folders["val"]))
    order = ["train", "val", *[k for k in folders if k not in ("train", "val")]]
    meta = {"path": path} if path is not None else {}
    meta.update({k: folders[k] for k in order})
    meta.update({"nc": len(class_names), "names": [str(n) for n in class_names]})
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def write_yolo(samples, root: str | Path, class_names: list[str], *, ext: str = ".jpg", quality: int = 90,
               stems: list[str] | None = None, overwrite: bool = False) -> Path:
    """Write samples (with ``boxes``/``classes``) as a YOLO folder, atomically (temp dir + rename).

    Produces ``images/<stem><ext>``, ``labels/<stem>.txt`` and ``data.yaml``: ONE split, so
    ``train``/``val`` both point at ``images`` (Ultralytics requires both keys). A data set with
    separate train/val/calib folders: :func:`compress.data.tools.make_digits_det` (``compress data make``).
    """
    root = Path(root)
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"unsupported image extension '{ext}'")
    if root.exists() and not overwrite:
        raise DataError(f"{root}: already exists")
    samples = list(samples)
    stems = stems or [f"{i:06d}" for i in range(len(samples))]
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(root.parent)  # temp folders of writers that were killed
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write_marker(tmp, "staging")  # records this pid, so a killed writer's folder can be removed
        write_samples(samples, tmp / "images", tmp / "labels", stems, ext=ext, quality=quality)
        (tmp / "data.yaml").write_text(data_yaml_text({"train": "images", "val": "images"}, class_names))
        (tmp / MARKER).unlink()
        follow_umask(tmp)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
