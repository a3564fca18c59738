"""``--data DIR`` / ``--calib DIR``: fill every data slot of a recipe from the user's folders.

* validation: the split that is scored (``val`` / ``valid`` / ``validation`` / ``test``);
* calibration: ``--calib``, else DIR's ``calib``/``calibration`` split, else its ``train`` split,
  never the validation images;
* fine-tuning (every ``finetune`` config, a pass's or a nested one): DIR's ``train`` split,
  else the calibration set.

Splits are found the way the loaders find them (``images/<split>/``, a data.yaml's keys, COCO
``instances_<split>.json``) or as sub-folders ``DIR/train``, ``DIR/val``, ... When DIR holds a
single set of images, calibration and validation name the same images and the runner splits
them deterministically (:func:`separate`) and says so in the report.
"""

from __future__ import annotations

import copy
from pathlib import Path

from compress.types import Dataset

_SUBDIRS = {"val": ("val", "valid", "validation", "test"), "calib": ("calib", "calibration"), "train": ("train",)}


def _listing(path: Path, split: str) -> list[str] | None:
    """The image files the loaders would read for ``split`` (None when the split does not exist)."""
    from compress.data.load import detect_format
    from compress.errors import DataError

    try:
        fmt = detect_format(path)
        if fmt == "yolo":
            from compress.data.yolo import find_images

            return sorted(str(p.resolve()) for p in find_images(path, split)[0])
        if fmt == "coco":
            from compress.data.coco import find_annotation

            return [str(find_annotation(path, split).resolve())]
    except (DataError, OSError):
        return None
    return [str(path.resolve())]  # a plain folder: one set of images whatever the split


def probe(path: str | Path) -> dict[str, dict | None]:
    """``{"val": source, "calib": source | None, "train": source | None}`` for a user folder.

    A source is a recipe ``DataSource`` mapping; None means the folder has no such split
    distinct from the validation images.
    """
    root = Path(path)
    if root.is_dir():
        subs = {role: next((root / n for n in names if (root / n).is_dir()), None) for role, names in _SUBDIRS.items()}
        if subs["val"] is not None and _listing(root, "val") in (None, [str(root.resolve())]):
            calib = subs["calib"] or subs["train"]
            return {"val": {"path": str(subs["val"])},
                    "calib": {"path": str(calib)} if calib else None,
                    "train": {"path": str(subs["train"])} if subs["train"] else None}
    val = _listing(root, "val")
    out: dict[str, dict | None] = {"val": {"path": str(root), "split": "val"}, "calib": None, "train": None}
    for role in ("train", "calib"):
        got = _listing(root, role)
        if got and got != val and not (val and set(got) <= set(val)):
            out[role] = {"path": str(root), "split": role}
    if out["calib"] is None and out["train"] is not None:
        out["calib"] = {"path": str(root), "split": "train"}
    return out


def _keep_samples(old, new: dict) -> dict:
    if isinstance(old, dict) and old.get("samples") is not None:
        return {**new, "samples": old["samples"]}
    return new


def _finetune_configs(passes: list) -> list[dict]:
    """Every mapping in a raw recipe's passes that configures fine-tuning (has FinetuneConfig fields)."""
    from compress.passes import get_pass
    from compress.passes.finetune import FinetuneConfig

    out = []
    for p in passes if isinstance(passes, list) else []:
        if not isinstance(p, dict):
            continue
        cls = get_pass(str(p.get("type", "")))
        if cls is not None and issubclass(cls.Config, FinetuneConfig):
            out.append(p)
        if isinstance(p.get("finetune"), dict):
            out.append(p["finetune"])
    return out


def apply_data_flags(raw: dict, data: str | None, calib: str | None) -> tuple[dict, list[str]]:
    """A raw recipe mapping with ``--data``/``--calib`` filled into every slot, and what was chosen."""
    if not data and not calib:
        return raw, []
    raw = copy.deepcopy(raw)
    slots = dict(raw.get("data") or {}) if isinstance(raw.get("data"), dict) else {}
    found = probe(data) if data else {"val": None, "calib": None, "train": None}
    said = []
    if data:
        slots["validation"] = _keep_samples(slots.get("validation"), found["val"])
        said.append(f"validation: {_describe(found['val'])}")
    if calib:
        cal = {"path": str(calib), "split": "calib"}
    elif found["calib"] is not None:
        cal = found["calib"]
    else:  # one set of images: the runner splits it (calibration never sees the scored images)
        cal = {"path": str(data), "split": "calib"}
    slots["calibration"] = _keep_samples(slots.get("calibration"), cal)
    said.append(f"calibration: {_describe(cal)}")
    raw["data"] = slots
    train = found["train"] if data else None
    for cfg in _finetune_configs(raw.get("passes")):
        if train is not None:
            cfg["data"] = _keep_samples(cfg.get("data"), train)
        elif calib:
            cfg["data"] = _keep_samples(cfg.get("data"), {"path": str(calib), "split": "train"})
        else:
            cfg.pop("data", None)  # the calibration set (never the validation images)
    if _finetune_configs(raw.get("passes")):
        said.append("finetune: " + (_describe(train) if train else "the calibration set"))
    return raw, said


def _describe(src: dict | None) -> str:
    if not src:
        return "-"
    return src.get("path", "") + (f" (split {src['split']})" if src.get("split") else "")


# -- at run time: calibration never holds a validation image ------------------------------------
def _key(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def separate(calibration: Dataset | None, validation: Dataset | None) -> tuple[Dataset | None, str | None]:
    """Calibration without the validation images; a deterministic half split when they are the same.

    Returns (calibration, note). When every calibration image is also a validation image (one
    folder named for both), the validation images are split by sorted path: every other image
    (odd positions) calibrates, and those images are dropped from validation in place, so the
    two sets never share an image. The note says what was done (None when nothing was).
    """
    if calibration is None or validation is None or not calibration.samples or not validation.samples:
        return calibration, None
    scored = {_key(s.path) for s in validation.samples}
    shared = [s for s in calibration.samples if _key(s.path) in scored]
    if not shared:
        return calibration, None
    rest = [s for s in calibration.samples if _key(s.path) not in scored]
    if rest:
        out = Dataset(rest, calibration.class_names, calibration.root, calibration.skipped)
        return out, (f"calibration: left out {len(shared)} image(s) that are also validation images "
                     f"({len(rest)} remain)")
    pool = sorted({_key(s.path): s for s in [*validation.samples, *calibration.samples]}.items())
    if len(pool) < 2:
        return calibration, None
    val = [s for i, (_, s) in enumerate(pool) if i % 2 == 0]
    cal = [s for i, (_, s) in enumerate(pool) if i % 2 == 1]
    validation.samples[:] = val
    out = Dataset(cal, calibration.class_names, calibration.root, calibration.skipped)
    return out, (f"calibration and validation name the same {len(pool)} images ({validation.root}); split "
                 f"deterministically by sorted path: {len(val)} validate (even positions), {len(cal)} calibrate "
                 "(odd positions)")


# -- the report's data table: fine-tuning rows ------------------------------------------------------
def finetune_data(recipe, passes, sections: dict) -> dict:
    """The data table's fine-tuning rows: which images each fine-tuning pass trained on."""
    from compress.passes.finetune import FinetuneConfig

    out = {}
    for p, cfg in zip(passes, recipe.passes):
        nested = getattr(cfg, "finetune", None)
        ft = nested if isinstance(nested, FinetuneConfig) else (cfg if isinstance(cfg, FinetuneConfig) else None)
        if ft is None:
            continue
        src = getattr(ft, "data", None)
        root = (f"builtin:{src.builtin}" if src is not None and src.builtin else (src.path if src else None))
        out[f"finetune ({p.label})"] = {
            "root": root or "the calibration set", "split": src.split if src is not None else "calibration",
            "images": _find_key(sections.get(p.label), "images"), "labelled": None, "skipped": []}
    return out


def _find_key(d, key: str):
    """The first value of ``key`` in a nested report section (depth first)."""
    if isinstance(d, dict):
        if key in d and isinstance(d[key], int):
            return d[key]
        items = d.values()
    elif isinstance(d, list):
        items = d
    else:
        return None
    for v in items:
        got = _find_key(v, key)
        if got is not None:
            return got
    return None
