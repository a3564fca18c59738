"""``compress data``: write the built-in digits-det set as a YOLO data set; keep some classes of one.

Both write a complete YOLO folder (``images/<split>/``, ``labels/<split>/``, ``data.yaml`` with
``path``, one key per split, ``nc`` and ``names``) through :func:`compress.atomic.staged_dir`: a
failure leaves nothing behind, an existing OUT is replaced only with ``force`` and only when a
compress command wrote it. The result loads with compress's own loader and with Ultralytics.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from compress.errors import DataError

SPLITS = ("train", "val", "calib")


# -- make --------------------------------------------------------------------------------------
def make_digits_det(out: str | Path, splits: tuple[str, ...] | list[str] = SPLITS, samples: int | None = None, *,
                    seed: int = 0, imgsz: int = 128, force: bool = False) -> dict:
    """Write digits-det ``splits`` (images ``0..n-1`` of each, as the built-in set) into ``out``.

    ``samples`` caps the images per split (default: train 3,000, val 200, calib 300). Returns
    ``{"root", "data_yaml", "counts": {split: images}}``.
    """
    from compress.atomic import staged_dir
    from compress.data.digits_det import TRAIN_SIZE, DigitsDetGenerator
    from compress.data.digits import CLASS_NAMES
    from compress.data.yolo import data_yaml_text, write_samples

    splits = list(dict.fromkeys(splits))
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise DataError(f"unknown digits-det split '{(unknown or [''])[0]}' (known: {', '.join(SPLITS)}, all)")
    if samples is not None and samples < 1:
        raise DataError(f"samples must be >= 1 (got {samples})")
    defaults = {"train": TRAIN_SIZE, "val": 200, "calib": 300}
    counts = {s: samples or defaults[s] for s in splits}
    gens = {s: DigitsDetGenerator(s, seed=seed, imgsz=imgsz) for s in splits}  # bad imgsz fails before writing
    final = Path(out).resolve()
    with staged_dir(final, force) as tmp:
        for split in splits:
            gen, n = gens[split], counts[split]
            write_samples((gen.sample_at(i) for i in range(n)), tmp / "images" / split, tmp / "labels" / split,
                          [f"{split}_{i:05d}" for i in range(n)])
        note = (f"digits-det (compress data make): seed {seed}, imgsz {imgsz}, "
                + ", ".join(f"{s} {n}" for s, n in counts.items()) + " images")
        (tmp / "data.yaml").write_text(data_yaml_text({s: f"images/{s}" for s in splits}, list(CLASS_NAMES),
                                                      path=str(final), comment=_missing_note(splits, note)))
    return {"root": final, "data_yaml": final / "data.yaml", "counts": counts}


def _missing_note(splits: list[str], note: str) -> str:
    missing = [k for k in ("train", "val") if k not in splits]
    if missing:
        note += f"\n{' and '.join(missing)} not written: the key points at another split (Ultralytics needs both)"
    return note


# -- filter ------------------------------------------------------------------------------------
def source_splits(src: Path) -> tuple[dict[str, tuple[list[Path], str]], Path | None]:
    """The splits of a YOLO data set as ``{name: (image files, output sub-folder)}`` plus its data.yaml.

    Layouts as :mod:`compress.data.yolo` reads them. A data set of one flat folder is one split
    written flat (sub-folder ""); data.yaml keys that list the very same images (``train: images``
    and ``val: images``) are one split, named after the first key.
    """
    from compress.data.yolo import SPLIT_ALIASES, _find_yaml, _read_yaml, find_images

    if src.is_file():
        yaml_file = src
    else:
        images_dir = src / "images"
        if images_dir.is_dir() and not any(p.is_file() for p in images_dir.iterdir()):
            subs = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
            return {n: (find_images(src, n)[0], n) for n in subs}, _find_yaml(src, up=0)
        yaml_file = None if images_dir.is_dir() else _find_yaml(src, up=0)
    data = _read_yaml(yaml_file) if yaml_file else {}
    keys = [k for k in data if k in sum(SPLIT_ALIASES.values(), ()) and data[k]]
    if not keys:
        if src.is_file():
            raise DataError(f"{src}: no split keys (train, val, ...) name any images")
        images, found_yaml = find_images(src)
        return {"val": (images, "")}, found_yaml
    out: dict[str, tuple[list[Path], str]] = {}
    for key in keys:
        images = sorted(find_images(yaml_file, key)[0])
        if images and all(images != seen for seen, _ in out.values()):
            out[key] = (images, key)
    return out, yaml_file


def parse_classes(text: str, names: list[str]) -> list[int]:
    """``"car,person"`` or ``"2,0"`` (names first, then indices) -> source class indices, in that order."""
    picked = []
    for tok in (t.strip() for t in str(text).split(",")):
        if not tok:
            raise DataError(f"--classes: empty class in '{text}'")
        if tok in names:
            idx = names.index(tok)
        elif tok.isdigit() and int(tok) < len(names):
            idx = int(tok)
        else:
            known = ", ".join(f"{i}:{n}" for i, n in enumerate(names[:60])) + (" ..." if len(names) > 60 else "")
            raise DataError(f"unknown class '{tok}' (known: {known})")
        if idx in picked:
            raise DataError(f"--classes: '{tok}' is listed twice")
        picked.append(idx)
    return picked


def _remap_labels(label_file: Path, mapping: dict[int, int]) -> tuple[list[str], int]:
    """The label lines of ``label_file`` whose class is kept, re-indexed; and how many lines were dropped."""
    kept, dropped = [], 0
    if not label_file.is_file():
        return kept, dropped
    for lineno, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = float(parts[0])
        except ValueError:
            raise DataError(f"{label_file}:{lineno}: not a class id in '{line.strip()[:80]}'") from None
        if cls.is_integer() and int(cls) in mapping:
            kept.append(" ".join([str(mapping[int(cls)]), *parts[1:]]))
        else:
            dropped += 1
    return kept, dropped


def _inferred_names(splits: dict[str, tuple[list[Path], str]]) -> list[str]:
    """Class names "0".."K-1" from the largest class id in the label files (no data.yaml)."""
    from compress.data.yolo import label_path

    top = -1
    for images, _ in splits.values():
        for p in images:
            lp = label_path(p)
            if lp.is_file():
                for line in lp.read_text(errors="replace").splitlines():
                    tok = line.split()[:1]
                    if tok and tok[0].replace(".", "", 1).isdigit():
                        top = max(top, int(float(tok[0])))
    return [str(i) for i in range(top + 1)]


def _yolo_source(src: Path):
    """``({split: (sub-folder, [(image, kept-lines function)])}, class names)`` of a YOLO data set."""
    from compress.data.yolo import label_path, read_names

    splits, yaml_file = source_splits(src)
    names = (read_names(yaml_file) if yaml_file is not None else None) or _inferred_names(splits)
    return {split: (sub, [(img, lambda m, lp=label_path(img): _remap_labels(lp, m)[0]) for img in images])
            for split, (images, sub) in splits.items()}, names


def _coco_split(ann: Path) -> str:
    stem = ann.stem.lower()
    return next((k for k in ("train", "val", "test", "calib") if k in stem), ann.stem)


def _coco_source(src: Path):
    """Like :func:`_yolo_source` for COCO JSON: one split per annotation file, boxes from the JSON."""
    from compress.data.coco import load_coco
    from compress.data.yolo import _fmt

    files = [src] if src.is_file() else sorted({*src.glob("annotations/*.json"), *src.glob("*.json")})
    out, names = {}, None
    for ann in files:
        split = _coco_split(ann)
        split = split if split not in out else ann.stem
        ds = load_coco(ann, split)
        if names is not None and ds.class_names != names:
            raise DataError(f"{ann}: its categories differ from {files[0].name}'s; filter one file at a time")
        names = ds.class_names

        def lines(m, s=None):
            h, w = s.image.shape[:2]
            return [" ".join([str(m[int(c)]), *(_fmt(v) for v in ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h,
                                                                  (x2 - x1) / w, (y2 - y1) / h))])
                    for (x1, y1, x2, y2), c in zip(s.boxes, s.classes) if int(c) in m]

        out[split] = (split, [(Path(s.path), lambda m, s=s: lines(m, s)) for s in ds.samples])
    return out, names or []


def filter_classes(src: str | Path, out: str | Path, classes: str | list[str], *, force: bool = False) -> dict:
    """Copy the images of data set ``src`` (YOLO, or COCO JSON) that hold any of ``classes`` into ``out``.

    Labels of other classes are dropped, kept classes are re-indexed 0..k-1 in the given order,
    images left without a label are not copied; the output is a YOLO folder (image files copied
    byte for byte). Returns ``{"root", "data_yaml", "names", "mapping", "splits": {split: {"kept",
    "dropped", "boxes"}}, "notes"}``.
    """
    from compress.atomic import staged_dir
    from compress.data.load import detect_format
    from compress.data.yolo import data_yaml_text

    src, final = Path(src), Path(out).resolve()
    fmt = detect_format(src)
    if fmt not in ("yolo", "coco"):
        raise DataError(f"{src}: compress data filter reads YOLO or COCO JSON data sets (this is a plain "
                        "image folder without labels)")
    root = (src.parent if src.is_file() else src).resolve()
    if final == root or root in final.parents:
        raise DataError(f"{out}: the output must not be inside the source data set {src}")
    splits, names = _yolo_source(src) if fmt == "yolo" else _coco_source(src)
    if not any(recs for _, recs in splits.values()):
        raise DataError(f"{src}: no images found")
    wanted = parse_classes(",".join(classes) if isinstance(classes, (list, tuple)) else classes, names)
    mapping = {old: new for new, old in enumerate(wanted)}
    stats: dict[str, dict] = {}
    with staged_dir(final, force) as tmp:
        for split, (sub, recs) in splits.items():
            if not recs:
                continue
            base = Path(os.path.commonpath([str(img.parent) for img, _ in recs]))
            kept = dropped = boxes = 0
            for img, kept_lines in recs:
                lines = kept_lines(mapping)
                if not lines:
                    dropped += 1
                    continue
                rel = img.relative_to(base)
                dst = tmp / "images" / sub / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(img, dst)
                lab = (tmp / "labels" / sub / rel).with_suffix(".txt")
                lab.parent.mkdir(parents=True, exist_ok=True)
                lab.write_text("".join(line + "\n" for line in lines))
                kept, boxes = kept + 1, boxes + len(lines)
            stats[split] = {"kept": kept, "dropped": dropped, "boxes": boxes}
        if not any(s["kept"] for s in stats.values()):
            raise DataError(f"{src}: no image holds any of the classes {', '.join(names[i] for i in wanted)}; "
                            "nothing written")
        new_names = [names[i] for i in wanted]
        note = f"compress data filter: classes {', '.join(new_names)} of {src.resolve()}"
        kept_splits = [s for s in stats if stats[s]["kept"]]
        folders = {s: f"images/{splits[s][0]}".rstrip("/") for s in kept_splits}
        (tmp / "data.yaml").write_text(data_yaml_text(folders, new_names,
                                                      path=str(final), comment=_missing_note(kept_splits, note)))
    meta = {k: v for k, v in _yaml_keys(final / "data.yaml").items() if k in ("train", "val")}
    notes = [f"no {k} image holds these classes: data.yaml's {k} points at {meta[k]}"
             for k in ("train", "val") if k not in kept_splits and meta.get(k)]
    return {"root": final, "data_yaml": final / "data.yaml", "names": new_names,
            "mapping": {names[o]: n for o, n in mapping.items()}, "splits": stats, "notes": notes}


def _yaml_keys(path: Path) -> dict:
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}
