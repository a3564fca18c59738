"""The Python API: what the CLI and notebooks call."""

from __future__ import annotations

from pathlib import Path

from compress import recipe as recipe_mod
from compress.recipe import Recipe


def run(recipe: Recipe | str | Path, out_dir: str | Path, *, force: bool = False, overrides: list[str] | None = None,
        trust_checkpoint: bool = False, quiet: bool = False, threads: int | None = None) -> dict:
    """Run a recipe (object or YAML path) and return its report dict (see runner.run)."""
    from compress.runner import run as _run

    source = "recipe"
    if not isinstance(recipe, Recipe):
        source = str(recipe)
        recipe = recipe_mod.load(recipe, overrides)
    elif overrides:
        recipe = recipe_mod.validate(recipe_mod.apply_overrides(recipe.to_dict(), overrides), source)
    return _run(recipe, out_dir, force=force, trust_checkpoint=trust_checkpoint, quiet=quiet, source=source,
                threads=threads)


def class_names_arg(text: str) -> list[str]:
    """``--names``: "a,b,c", a count "3" (-> 0, 1, 2), or a data.yaml / text file (one name a line)."""
    from compress.errors import CompressError

    text = text.strip()
    p = Path(text)
    if p.suffix.lower() in (".yaml", ".yml", ".txt") and p.is_file():
        if p.suffix.lower() == ".txt":
            names = [line.strip() for line in p.read_text(errors="replace").splitlines() if line.strip()]
        else:
            from compress.data.yolo import read_names

            names = read_names(p) or []
    elif text.isdigit():
        names = [str(i) for i in range(int(text))] if 0 < int(text) <= 100_000 else []
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CompressError(f"--names {text[:80]!r}: expected class names 'a,b,c', a count N, or a data.yaml/.txt file")
    return names


def model_flags(base: dict | None, *, model: str | None = None, adapter: str | None = None, arch: str | None = None,
                task: str | None = None, names: str | None = None, imgsz: int | None = None) -> dict:
    """A recipe ``model`` mapping from the command line's model flags, over the recipe's own ``base``.

    ``--model`` replaces the model source (class names, imgsz, task and output layout of ``base``
    are kept, and its adapter and arch when both are checkpoints); ``--adapter/--arch/--task/--names/--imgsz``
    set their fields.
    """
    from compress.models import BUILTINS

    spec = dict(base or {})
    if model:
        builtin = model in BUILTINS or (model.endswith((".yaml", ".yml")) and not Path(model).is_file())
        # a checkpoint in place of the recipe's checkpoint keeps the recipe's architecture (adapter, arch)
        keep = ("class_names", "imgsz", "task", "output_layout", "decode")
        if not builtin and spec.get("checkpoint") is not None:
            keep += ("adapter", "arch")
        spec = {k: v for k, v in spec.items() if k in keep}
        spec["builtin" if builtin else "checkpoint"] = model
    for key, value in (("adapter", adapter), ("arch", arch), ("task", task), ("imgsz", imgsz)):
        if value:
            spec[key] = value
    if names:
        spec["class_names"] = class_names_arg(names)
    return spec


def fidelity_config(fields: dict):
    """``FidelityConfig`` from flag values; a bad value is a one-line RecipeError naming the flag."""
    from pydantic import ValidationError

    from compress.errors import RecipeError
    from compress.recipe import FidelityConfig

    try:
        return FidelityConfig(**{k: v for k, v in fields.items() if not (k == "samples" and v is None)})
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "fidelity"
        raise RecipeError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None


def check(onnx_path: str | Path, reference, data, *, fidelity=None, trust_checkpoint: bool = False,
          threads: int | None = None):
    """Fidelity check of any ONNX file against a reference model on a data folder.

    ``reference`` is a ``recipe.ModelSpec`` (or a dict of its fields); ``data`` a
    ``recipe.DataSource`` (or a dict). Returns ``(FidelityResult, adapter)``.
    """
    from compress.errors import ModelLoadError
    from compress.fidelity import check as _check
    from compress.models import load_model
    from compress.recipe import DataSource, FidelityConfig, ModelSpec
    from compress.runner import load_data
    from compress.runtime.threads import resolve_threads, torch_threads

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: ONNX file not found")
    threads = resolve_threads(threads)  # torch and ONNX Runtime; default: the physical cores
    from pydantic import ValidationError

    from compress.errors import RecipeError

    try:
        spec = reference if isinstance(reference, ModelSpec) else ModelSpec(**reference)
        source = data if isinstance(data, DataSource) else DataSource(**data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc") or ()) or "reference"
        raise RecipeError(f"check: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    dataset = load_data(source)
    adapter, model = load_model(spec, trust_checkpoint=trust_checkpoint)
    _same_input(onnx_path, adapter, threads)
    _same_output_branch(onnx_path, adapter, model)
    cfg = fidelity or FidelityConfig()
    with torch_threads(threads):
        return _check(adapter, model, onnx_path, dataset, cfg, threads=threads), adapter


def _same_output_branch(onnx_path: Path, adapter, model) -> None:
    """An end-to-end ONNX (metadata ``end2end: True``) is compared with the reference's one-to-one branch."""
    from compress.export import read_metadata

    if hasattr(adapter, "set_end2end") and read_metadata(onnx_path).get("end2end") == "True":
        from compress.runner import select_output

        select_output(adapter, model, True, f"{onnx_path}: end2end")


def _same_input(onnx_path: Path, adapter, threads: int) -> None:
    """Refuse a pair whose input shapes differ (e.g. an ONNX made for another model)."""
    from compress.errors import CompressError
    from compress.export import parse_names, read_metadata
    from compress.runtime.session import input_shape, make_session

    raw = read_metadata(onnx_path).get("names") or ""
    try:  # Ultralytics' dict literal (the old comma-joined list is ambiguous when a name has a comma: not checked)
        names = parse_names(raw) if raw.lstrip().startswith(("{", "[")) else None
    except CompressError:
        names = None  # another tool's format: the input-shape check below still runs
    if names is not None and len(names) != len(adapter.class_names):
        raise CompressError(f"{onnx_path}: its metadata names {len(names)} classes, but the reference model "
                            f"({adapter.name}) has {len(adapter.class_names)}; "
                            "is this ONNX made from a different model?")
    got = input_shape(make_session(onnx_path, threads=threads))
    want = list(adapter.example_input(1).shape)
    fixed = [(g, w) for g, w in zip(got[1:], want[1:]) if isinstance(g, int) and g > 0]
    if len(got) != len(want) or any(g != w for g, w in fixed):
        raise CompressError(f"{onnx_path}: takes input {got}, but the reference model ({adapter.name}) takes {want}; "
                            "is this ONNX made from a different model?")
