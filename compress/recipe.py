"""Recipes: YAML -> a fully validated, immutable description of one run.

Everything is checked before a model is loaded: unknown keys, wrong types,
out-of-range values and unknown pass types all raise :class:`RecipeError` with
the file, the pass index and the field, e.g.
``recipe.yaml: passes[1].ratio: Input should be less than 1 (got 1.5)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.errors import RecipeError
from compress.deploy.config import DeployConfig
from compress.yamlio import clip

# Upper bounds on counts: far above any real use, low enough that a typo cannot hang a run.
MAX_SAMPLES = 1_000_000  # images taken from a data set
MAX_PASSES = 100
MAX_CLASSES = 100_000
MAX_IMGSZ = 8192
NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]{0,99}")  # becomes the folder runs/<name>


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """Which model to compress: a built-in one, or a checkpoint plus how to read it."""

    builtin: str | None = None  # digitdet | lenet5 | an Ultralytics model yaml, e.g. yolov8n.yaml
    checkpoint: str | None = None  # path to a .pt file
    adapter: str | None = None  # digitdet | lenet5 | ultralytics | generic (guessed when omitted)
    arch: str | None = None  # "module:factory" that builds the architecture for a plain state_dict
    task: Literal["detect", "classify"] | None = None  # for the generic adapter
    class_names: list[str] | None = Field(default=None, max_length=MAX_CLASSES)
    imgsz: int | None = Field(default=None, gt=0, le=MAX_IMGSZ)
    output_layout: str | None = None  # generic detectors: ultralytics | end2end | torchvision
    decode: str | None = None  # generic detectors: "module:fn" turning the output into (B, N, 6)

    @model_validator(mode="after")
    def _layout(self):
        if self.output_layout is not None:
            from compress.models.layouts import LAYOUTS

            if self.output_layout not in LAYOUTS:
                raise ValueError(f"output_layout: unknown layout '{self.output_layout}' "
                                 f"(known: {', '.join(sorted(LAYOUTS))})")
        if self.output_layout is not None and self.decode is not None:
            raise ValueError("give model.output_layout or model.decode, not both")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        if (self.builtin is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of model.builtin or model.checkpoint")
        return self


class DataSource(_Strict):
    """A data set: built-in (generated) or a folder (YOLO, COCO JSON or plain images)."""

    builtin: str | None = None  # digits-det | digits (classification)
    split: Literal["train", "val", "calib"] = "val"
    path: str | None = None
    format: Literal["auto", "yolo", "coco", "folder"] = "auto"
    samples: int | None = Field(default=None, gt=0, le=MAX_SAMPLES)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of builtin or path")
        return self


class DataSpec(_Strict):
    calibration: DataSource | None = None
    validation: DataSource | None = None


class ExportConfig(_Strict):
    opset: int = Field(default=17, ge=17, le=23)
    simplify: bool = True
    # end-to-end heads (YOLOv10, YOLO26): true = NMS-free (B, max_det, 6), false/None = raw (B, 4+nc, N)
    end2end: bool | None = None
    dynamic_batch: bool = False  # a free batch axis (input and output); default: fixed batch 1


class FidelityConfig(_Strict):
    """How the exported model is compared with the original, and what counts as a pass."""

    conf: float = Field(default=0.25, gt=0, lt=1)  # original's detections above this = pseudo ground truth
    eval_conf: float = Field(default=0.001, gt=0, lt=1)  # compressed model's scoring threshold
    iou: float = Field(default=0.7, gt=0, lt=1)  # NMS IoU
    samples: int | None = Field(default=None, gt=0, le=MAX_SAMPLES)  # validation images used (all when omitted)
    min_agreement_map50: float | None = Field(default=0.9, ge=0, le=1)
    min_agreement_map50_95: float | None = Field(default=None, ge=0, le=1)
    min_matched_recall: float | None = Field(default=0.8, ge=0, le=1)  # catches shrunken scores mAP cannot see
    max_score_drift: float | None = Field(default=None, ge=0, le=1)
    min_top1_agreement: float | None = Field(default=0.9, ge=0, le=1)  # classifiers
    min_top5_agreement: float | None = Field(default=None, ge=0, le=1)  # classifiers, > 5 classes
    max_kl: float | None = Field(default=None, ge=0)  # classifiers: KL(original || compressed), nats
    overlays: int = Field(default=4, ge=0, le=100)


class BenchmarkConfig(_Strict):
    # torch (fine-tuning, calibration) and ONNX Runtime intra-op threads; None: the physical cores of the
    # machine that runs it (resolved at run time, so the recipe and its hash stay machine-independent)
    threads: int | None = Field(default=None, ge=1, le=256)
    warmup: int = Field(default=10, ge=0, le=10_000)
    runs: int = Field(default=50, ge=1, le=100_000)


class Recipe(_Strict):
    name: str
    model: ModelSpec
    data: DataSpec = DataSpec()
    passes: list[Any] = []  # each a PassConfig subclass instance after validation
    export: ExportConfig = ExportConfig()
    fidelity: FidelityConfig = FidelityConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    deploy: DeployConfig | None = None  # compress/deploy: targets, select, cpu
    seed: int = Field(default=0, ge=0, lt=2**32)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        """The name becomes the output folder runs/<name>: one plain path component."""
        if not v:
            raise ValueError("must not be empty")
        if "/" in v or "\\" in v:
            raise ValueError("must not contain a path separator (it names the folder runs/<name>)")
        if ".." in v:
            raise ValueError("must not contain '..'")
        if not NAME_CHARS.fullmatch(v):
            raise ValueError("use 1-100 letters, digits and . _ + = , - starting with a letter or digit")
        return v

    @model_validator(mode="before")
    @classmethod
    def _passes(cls, values):
        from compress.passes import get_pass

        if not isinstance(values, dict):
            return values
        raw = values.get("passes") or []
        if not isinstance(raw, list):
            raise _FieldError(("passes",), "must be a list of passes")
        if len(raw) > MAX_PASSES:
            raise _FieldError(("passes",), f"at most {MAX_PASSES} passes (got {len(raw)})")
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise _FieldError(("passes", i), "must be a mapping with a 'type' field")
            if "type" not in item:
                raise _FieldError(("passes", i, "type"), "missing")
            pass_cls = get_pass(str(item["type"]))
            if pass_cls is None:
                from compress.passes import registered

                known = ", ".join(sorted(registered()))
                raise _FieldError(("passes", i, "type"),
                                  f"unknown pass type '{clip(item['type'], 80)}' (known: {known})")
            try:
                out.append(pass_cls.Config.model_validate(item))
            except ValidationError as e:
                raise _FieldError(("passes", i), e) from None
        values = dict(values)
        values["passes"] = out
        return values

    def to_dict(self) -> dict:
        """The resolved recipe as plain data (what gets written beside the outputs)."""
        d = self.model_dump(mode="json", exclude={"passes"})
        d["passes"] = [p.model_dump(mode="json") for p in self.passes]
        if d.get("deploy", 0) is None:  # absent, so recipes without deploy keep their digest
            del d["deploy"]
        return d

    def digest(self) -> str:
        """Short hash of the resolved recipe (written into the ONNX metadata)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


class _FieldError(ValueError):
    """Raised inside validation; carries the location so the message can name the field."""

    def __init__(self, loc: tuple, problem):
        super().__init__(str(problem))
        self.loc = loc
        self.problem = problem


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        part = part if isinstance(part, int) else clip(str(part), 60)
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "recipe"


def _format_errors(source: str, err: Exception) -> str:
    if isinstance(err, _FieldError):
        if isinstance(err.problem, ValidationError):
            return _format_errors(source, _Prefixed(err.loc, err.problem))
        return f"{source}: {_loc_str(err.loc)}: {clip(str(err.problem), 400)}"
    if isinstance(err, _Prefixed):
        prefix, verr = err.loc, err.error
    else:
        prefix, verr = (), err
    lines = []
    for e in verr.errors():
        loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = clip(e["msg"].removeprefix("Value error, "), 300)
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
            msg += f" (got {clip(repr(e['input']))})"
        lines.append(f"{source}: {_loc_str(loc)}: {msg}")
    return "; ".join(lines[:3]) + (f" (+{len(lines) - 3} more)" if len(lines) > 3 else "")


class _Prefixed(Exception):
    def __init__(self, loc, error):
        self.loc, self.error = loc, error


def _unwrap_field_error(e: ValidationError) -> _FieldError | None:
    for item in e.errors():
        ctx = item.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, _FieldError):
            return inner
    return None


def validate(data: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; raise RecipeError naming ``source`` and the field."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping")
    try:
        return Recipe.model_validate(data)
    except _FieldError as e:
        raise RecipeError(_format_errors(source, e)) from None
    except ValidationError as e:
        inner = _unwrap_field_error(e)
        raise RecipeError(_format_errors(source, inner if inner else e)) from None


def read_yaml(path: str | Path) -> dict:
    """The raw mapping of a recipe file (see :mod:`compress.yamlio` for what is refused)."""
    from compress import yamlio

    data = yamlio.load_file(path, RecipeError, what="recipe")
    return data if data is not None else {}


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``key=value``) and validate a recipe file."""
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides, source=str(path))
    return validate(data, source=str(path))


def describe(recipe: Recipe) -> str:
    """One line for ``compress validate``: ``ok: <name> (N passes)``."""
    n = len(recipe.passes)
    return f"ok: {recipe.name} ({n} pass{'' if n == 1 else 'es'})"


def apply_overrides(data: dict, overrides: list[str], source: str = "recipe") -> dict:
    """Apply ``--set`` overrides to a raw recipe mapping (returns a copy).

    Keys are dotted paths. The first part may be a top-level field (``fidelity``,
    ``export``...), ``passes.N`` (index), or a pass's ``name``/``type``/type prefix,
    so ``prune.ratio=0.6`` sets ``ratio`` of the only pass whose type starts with
    ``prune``. Values are parsed as YAML (``0.5``, ``true``, ``[a, b]``).
    """
    from compress import yamlio

    data = copy.deepcopy(data) if isinstance(data, dict) else {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {clip(item, 120)}: expected key=value")
        full, raw = item.split("=", 1)
        key = clip(full, 120)  # as shown in messages
        try:
            value = yamlio.loads(raw, "--set", RecipeError)
        except RecipeError:
            value = raw
        parts = full.strip().split(".")
        target, rest = _resolve_target(data, parts, source, key)
        if not rest:
            raise RecipeError(f"--set {key}: names a whole section; set one of its fields")
        node = target
        for p in rest[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise RecipeError(f"--set {key}: '{clip(p, 60)}' is not a mapping")
        if not isinstance(node, dict):
            raise RecipeError(f"--set {key}: the target in {source} is not a mapping")
        node[rest[-1]] = value
    return data


def _resolve_target(data: dict, parts: list[str], source: str, key: str) -> tuple[dict, list[str]]:
    top_fields = set(Recipe.model_fields) - {"passes"}
    if parts[0] in top_fields:
        return data, parts
    passes = data.get("passes") or []
    if not isinstance(passes, list):
        raise RecipeError(f"--set {key}: 'passes' in {source} is not a list")
    if parts[0] == "passes":
        if len(parts) < 2 or not re.fullmatch(r"[0-9]{1,6}", parts[1]) or int(parts[1]) >= len(passes):
            raise RecipeError(f"--set {key}: no pass with that index in {source} ({len(passes)} passes)")
        return passes[int(parts[1])], parts[2:]
    # longest prefix of parts that names a pass (by name, type, or type prefix)
    for n in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:n])
        hits = [p for p in passes if isinstance(p, dict) and p.get("name") == head]
        if not hits:
            hits = [p for p in passes if isinstance(p, dict) and str(p.get("type", "")) == head]
        if not hits:
            hits = [p for p in passes if isinstance(p, dict) and str(p.get("type", "")).startswith(head + ".")]
        if len(hits) == 1:
            return hits[0], parts[n:]
        if len(hits) > 1:
            rest = clip(".".join(parts[n:]), 60)
            raise RecipeError(f"--set {key}: '{head}' matches {len(hits)} passes; use passes.N.{rest}")
    raise RecipeError(f"--set {key}: '{clip(parts[0], 60)}' is neither a recipe field nor a pass in {source}")


def dump(recipe: Recipe) -> str:
    """YAML text of the resolved recipe."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
