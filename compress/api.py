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


def check(onnx_path: str | Path, reference, data, *, fidelity=None, trust_checkpoint: bool = False,
          threads: int = 2):
    """Fidelity check of any ONNX file against a reference model on a data folder.

    ``reference`` is a ``recipe.ModelSpec`` (or a dict of its fields); ``data`` a
    ``recipe.DataSource`` (or a dict). Returns ``(FidelityResult, adapter)``.
    """
    from compress.errors import ModelLoadError
    from compress.fidelity import check as _check
    from compress.models import load_model
    from compress.recipe import DataSource, FidelityConfig, ModelSpec
    from compress.runner import load_data

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: ONNX file not found")
    spec = reference if isinstance(reference, ModelSpec) else ModelSpec(**reference)
    source = data if isinstance(data, DataSource) else DataSource(**data)
    dataset = load_data(source)
    adapter, model = load_model(spec, trust_checkpoint=trust_checkpoint)
    _same_input(onnx_path, adapter, threads)
    cfg = fidelity or FidelityConfig()
    return _check(adapter, model, onnx_path, dataset, cfg, threads=threads), adapter


def _same_input(onnx_path: Path, adapter, threads: int) -> None:
    """Refuse a pair whose input shapes differ (e.g. an ONNX made for another model)."""
    from compress.errors import CompressError
    from compress.runtime.session import input_shape, make_session

    got = input_shape(make_session(onnx_path, threads=threads))
    want = list(adapter.example_input(1).shape)
    fixed = [(g, w) for g, w in zip(got[1:], want[1:]) if isinstance(g, int) and g > 0]
    if len(got) != len(want) or any(g != w for g, w in fixed):
        raise CompressError(f"{onnx_path}: takes input {got}, but the reference model ({adapter.name}) takes {want}; "
                            "is this ONNX made from a different model?")
