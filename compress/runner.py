"""Execute a validated recipe: passes, then ONNX export and the fidelity check, always.

Order of a run (each step can fail with a one-line CompressError before the next):
output folder writable -> data loaded -> model loaded -> every pass checked against
the model -> torch passes -> fp32 export -> ONNX passes -> fidelity check on the
exported file -> side-by-side measurements -> report. All files are written into a
temporary folder that is renamed into place at the end, so a crash leaves nothing
half-written.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from compress import __version__
from compress.context import Context
from compress.errors import RecipeError
from compress.passes import get_pass
from compress.recipe import DataSource, Recipe, dump

log = logging.getLogger("compress")


@dataclass
class Stage:
    name: str
    seconds: float
    params: int | None = None
    macs: int | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 3), "params": self.params, "macs": self.macs}


def load_data(source: DataSource | None):
    """A recipe's data source -> Dataset (None when the recipe names none)."""
    if source is None:
        return None
    from compress.data import builtin_dataset, load_dataset

    if source.builtin is not None:
        return builtin_dataset(source.builtin, source.split, source.samples)
    return load_dataset(source)


def _data_summary(ds) -> dict | None:
    if ds is None:
        return None
    return {"root": str(ds.root), "images": len(ds), "labelled": ds.has_labels,
            "skipped": [{"path": p, "reason": r} for p, r in ds.skipped]}


def _size(model, adapter) -> tuple[int, int | None]:
    from compress.metrics.size import count_macs, count_params

    try:
        macs = count_macs(model, adapter.example_input(1))
    except Exception as e:  # a model torch-pruning cannot trace still gets a report
        log.warning("could not count MACs: %s", e)
        macs = None
    return count_params(model), macs


def _passes(recipe: Recipe, source: str):
    instances = [get_pass(cfg.type)(cfg) for cfg in recipe.passes]
    seen_onnx = False
    for i, p in enumerate(instances):
        if p.stage == "onnx":
            seen_onnx = True
        elif seen_onnx:
            raise RecipeError(f"{source}: passes[{i}]: '{p.type}' works on the torch model and cannot follow "
                              "an ONNX-stage pass (quantization); move it earlier")
    return instances


def run(recipe: Recipe, out_dir: str | Path, *, force: bool = False, trust_checkpoint: bool = False,
        quiet: bool = False, source: str = "recipe", threads: int | None = None) -> dict:
    """Run ``recipe`` and write its outputs to ``out_dir``; return the report dict.

    A failed fidelity threshold does not raise: ``report["fidelity"]["passed"]`` is
    False and the report is written (the CLI turns that into exit status 3).
    """
    from compress.atomic import ensure_writable, staged_dir
    from compress.models import load_model
    from compress.progress import progress

    out_dir = Path(out_dir)
    ensure_writable(out_dir, force)
    passes = _passes(recipe, source)
    torch.manual_seed(recipe.seed)

    calibration = load_data(recipe.data.calibration)
    validation = load_data(recipe.data.validation)
    if validation is None:
        raise RecipeError(f"{source}: data.validation: the fidelity check needs validation images")
    adapter, model = load_model(recipe.model, trust_checkpoint=trust_checkpoint)
    reference = copy.deepcopy(model).eval().requires_grad_(False)

    with staged_dir(out_dir, force) as tmp, progress(quiet) as bar:
        work = tmp / "work"
        work.mkdir()
        ctx = Context(adapter=adapter, reference=reference, calibration=calibration, validation=validation,
                      work_dir=work, seed=recipe.seed, progress=bar, model=model)
        for p in passes:  # every pass checks the model before any pass touches it
            if p.needs_calibration:
                ctx.require_calibration(p.type)
            p.check(model, ctx)

        stages = [Stage("original", 0.0, *_size(reference, adapter))]
        for p in (p for p in passes if p.stage == "torch"):
            t0 = time.perf_counter()
            model = p.apply(model, ctx)
            ctx.model = model
            stages.append(Stage(p.label, time.perf_counter() - t0, *_size(model, adapter)))

        onnx_path, ref_onnx = _export_all(recipe, adapter, reference, model, tmp, stages)
        for p in (p for p in passes if p.stage == "onnx"):
            t0 = time.perf_counter()
            onnx_path = p.apply_onnx(onnx_path, ctx)
            stages.append(Stage(p.label, time.perf_counter() - t0, stages[-1].params, stages[-1].macs))
        final = _finalize_onnx(onnx_path, tmp / "model.onnx", adapter, recipe)

        report = _measure_and_check(recipe, ctx, reference, model, ref_onnx, final, stages, threads)
        report["data"] = {"calibration": _data_summary(calibration), "validation": _data_summary(validation)}
        report["recipe"] = {"name": recipe.name, "digest": recipe.digest(), "source": source}
        _save_torch_model(adapter, model, tmp / "model.pt", ctx)
        (tmp / "recipe.yaml").write_text(dump(recipe))
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        report["files"] = {"onnx": "model.onnx", "original_onnx": "original.onnx", "recipe": "recipe.yaml",
                           **({"torch": "model.pt"} if (tmp / "model.pt").exists() else {}),
                           **report.get("files", {})}
        from compress.report import write_report

        write_report(tmp, report)
    report["out_dir"] = str(out_dir)
    return report


def _export_all(recipe, adapter, reference, model, tmp: Path, stages: list[Stage]):
    from compress.export import export_onnx

    meta = {"recipe": recipe.name, "recipe_hash": recipe.digest()}
    t0 = time.perf_counter()
    ref_onnx = export_onnx(reference, adapter, tmp / "original.onnx", opset=recipe.export.opset,
                           simplify=recipe.export.simplify, metadata={**meta, "variant": "original"})
    onnx_path = export_onnx(model, adapter, tmp / "work" / "model_fp32.onnx", opset=recipe.export.opset,
                            simplify=recipe.export.simplify, metadata=meta)
    stages.append(Stage("export", time.perf_counter() - t0, stages[-1].params, stages[-1].macs))
    return onnx_path, ref_onnx


def _finalize_onnx(src: Path, dst: Path, adapter, recipe: Recipe) -> Path:
    """Copy the last pass's ONNX to ``dst`` with the project's metadata stamped in."""
    import onnx

    from compress.atomic import atomic_path

    m = onnx.load(str(src))
    onnx.checker.check_model(m)
    props = {p.key: p.value for p in m.metadata_props}
    props.update(adapter.metadata())
    props.update({"recipe": recipe.name, "recipe_hash": recipe.digest(), "compress_version": __version__})
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=str(v))
    with atomic_path(dst) as tmp:
        onnx.save(m, str(tmp))
    return dst


def _measure_and_check(recipe, ctx, reference, model, ref_onnx, final, stages, threads) -> dict:
    from compress.fidelity import check
    from compress.metrics.size import file_bytes
    from compress.runtime.latency import compare_latency

    adapter = ctx.adapter
    bench = recipe.benchmark
    n_threads = threads or bench.threads
    t0 = time.perf_counter()
    result = check(adapter, reference, final, ctx.validation, recipe.fidelity, threads=n_threads)
    stages.append(Stage("fidelity", time.perf_counter() - t0, stages[-1].params, stages[-1].macs))
    ctx.notes.extend(n for n in result.notes if n not in ctx.notes)

    x = adapter.example_input(1).numpy()
    t0 = time.perf_counter()
    lat = compare_latency({"original": ref_onnx, "compressed": final}, x, threads=n_threads,
                          warmup=bench.warmup, runs=bench.runs)
    stages.append(Stage("latency", time.perf_counter() - t0, stages[-1].params, stages[-1].macs))

    def side(name, st: Stage, path):
        d = {"params": st.params, "macs": st.macs, "onnx_bytes": file_bytes(path),
             "latency_ms": lat[name]["median_ms"], "latency_p90_ms": lat[name]["p90_ms"]}
        d.update(getattr(result, f"{name}_metrics", {}) or {})
        return d

    last_torch = [s for s in stages if s.params is not None][-1]
    original, compressed = side("original", stages[0], ref_onnx), side("compressed", last_torch, final)
    ratios = {k: _ratio(original.get(k), compressed.get(k)) for k in ("params", "macs", "onnx_bytes")}
    ratios["latency"] = _ratio(original["latency_ms"], compressed["latency_ms"])  # > 1 means faster
    fidelity = result.to_dict()
    _latency_notes(ctx, ratios, original)
    report = {
        "model": {"adapter": adapter.name, "task": adapter.task, "class_names": adapter.class_names,
                  "imgsz": adapter.imgsz},
        "stages": [s.as_dict() for s in stages],
        "passes": ctx.report,
        "original": original,
        "compressed": compressed,
        "ratios": ratios,
        "fidelity": fidelity,
        "notes": ctx.notes,
        "environment": _environment(n_threads),
    }
    if not fidelity.get("passed") and any(p.get("quantized") for p in ctx.report.values() if isinstance(p, dict)):
        report["int8_drift"] = _drift(ctx, final, n_threads)
    report["files"] = {"overlays": _overlays(ctx, result, final.parent, recipe.fidelity.overlays)}
    return report


def _ratio(a, b):
    return round(a / b, 4) if a and b else None


def _latency_notes(ctx: Context, ratios: dict, original: dict) -> None:
    lat = ratios.get("latency")
    if lat is None:
        return
    size_only = any(isinstance(s, dict) and s.get("size_only") for s in ctx.report.values())
    if size_only and 0.9 <= lat <= 1.1:
        ctx.notes.append(f"Latency ratio {lat:.2f}x: size only -- dense kernels do not skip zeros, so "
                         "unstructured sparsity shrinks the compressed file, not the run time.")


def _drift(ctx: Context, final: Path, threads: int) -> list[dict]:
    """Layers whose int8 activations drift most from fp32 (only when an int8 model failed the check)."""
    try:
        from compress.quant.drift import diagnose_drift
    except ImportError:
        return []
    fp32 = ctx.work_dir / "model_fp32.onnx"
    data = ctx.calibration if ctx.calibration is not None else ctx.validation
    images = [s.image for s in data.samples[:8]]
    try:
        return diagnose_drift(fp32, final, ctx.adapter, images, k=5)
    except Exception as e:  # diagnosis is best effort; the failed check is already reported
        log.warning("int8 drift diagnosis failed: %s", e)
        return []


def _overlays(ctx: Context, result, out: Path, n: int) -> list[str]:
    if n <= 0:
        return []
    from compress.report.overlay import save_overlays

    ref, cmp = overlay_items(result, ctx.adapter)
    paths = save_overlays(out / "overlays", ctx.validation.samples[:n], ref[:n], cmp[:n], ctx.adapter.class_names, n=n)
    return [str(Path(p).relative_to(out)) for p in paths]


def overlay_items(result, adapter) -> tuple[list, list]:
    """What the overlays draw: detections for detectors, class scores for classifiers."""
    if adapter.task == "classify":
        return list(result.reference_logits), list(result.compressed_logits)
    return result.reference_detections, result.compressed_detections


def _save_torch_model(adapter, model, path: Path, ctx: Context) -> None:
    try:
        from compress.models.serialize import save_model
    except ImportError:
        torch.save(adapter.checkpoint(model), path)
        return
    try:
        save_model(adapter, model, path)
    except Exception as e:  # e.g. a fake-quant model; the ONNX file is the deliverable
        ctx.notes.append(f"The compressed torch model was not saved ({e}); model.onnx is the deliverable.")


def _environment(threads: int) -> dict:
    import onnxruntime

    env = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "compress": __version__, "threads": threads, "machine": platform.machine()}
    try:
        from compress.runtime.cpu import cpu_features

        env["cpu"] = cpu_features()
    except Exception as e:  # pragma: no cover - informational only
        env["cpu"] = {"error": str(e)}
    return env
