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


def _data_summary(ds, source: DataSource | None = None, split_note: str | None = None) -> dict | None:
    if ds is None:
        return None
    out = {"root": str(ds.root), "images": len(ds), "labelled": ds.has_labels,
           "skipped": [{"path": p, "reason": r} for p, r in ds.skipped]}
    if source is not None:
        out["split"] = source.split if source.path is not None else f"builtin {source.split}"
        if split_note and not split_note.startswith("calibration: left out"):
            out["split"] = "half of one image set (deterministic split)"
    return out


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
    if recipe.deploy is not None:  # a missing runtime is found now, not after the passes ran
        from compress.deploy import preflight

        preflight(recipe.deploy)
    torch.manual_seed(recipe.seed)

    calibration = load_data(recipe.data.calibration)
    validation = load_data(recipe.data.validation)
    if validation is None:
        raise RecipeError(f"{source}: data.validation: the fidelity check needs validation images")
    from compress.wiring import finetune_data, separate

    calibration, split_note = separate(calibration, validation)  # never calibrate on the scored images
    if split_note and recipe.data.calibration is not None:
        calibration = calibration.head(recipe.data.calibration.samples)
    adapter, model = load_model(recipe.model, trust_checkpoint=trust_checkpoint)
    if recipe.export.end2end is not None:  # every stage (and the check) reads the branch that is exported
        select_output(adapter, model, recipe.export.end2end, f"{source}: export.end2end")
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    from compress.runtime.threads import resolve_threads, torch_threads

    threads = resolve_threads(threads, recipe.benchmark.threads)  # torch and ONNX Runtime alike
    with staged_dir(out_dir, force) as tmp, progress(quiet) as bar, torch_threads(threads):
        work = tmp / "work"
        work.mkdir()
        ctx = Context(adapter=adapter, reference=reference, calibration=calibration, validation=validation,
                      work_dir=work, seed=recipe.seed, progress=bar, model=model)
        for p in passes:  # every pass checks the model before any pass touches it
            if p.needs_calibration:
                ctx.require_calibration(p.type)
            p.check(model, ctx)
        if split_note:
            ctx.notes.append(f"Data: {split_note}.")

        from compress.stages import StageRecorder

        recorder = StageRecorder(adapter, validation, recipe.fidelity, threads=threads or recipe.benchmark.threads)
        recorder.torch("original", reference)  # every stage's predictions, for the per-stage fidelity table
        stages = [Stage("original", 0.0, *_size(reference, adapter))]
        for p in (p for p in passes if p.stage == "torch"):
            t0 = time.perf_counter()
            model = p.apply(model, ctx)
            ctx.model = model
            stages.append(Stage(p.label, time.perf_counter() - t0, *_size(model, adapter)))
            recorder.torch(p.label, model)

        onnx_path, ref_onnx = _export_all(recipe, adapter, reference, model, tmp, stages)
        onnx_stages = [("export", onnx_path)]
        for p in (p for p in passes if p.stage == "onnx"):
            t0 = time.perf_counter()
            onnx_path = p.apply_onnx(onnx_path, ctx)
            stages.append(Stage(p.label, time.perf_counter() - t0, stages[-1].params, stages[-1].macs))
            onnx_stages.append((p.label, onnx_path))
        final = _finalize_onnx(onnx_path, tmp / "model.onnx", adapter, recipe)
        onnx_stages[-1] = (onnx_stages[-1][0], final)  # the last stage is the delivered file itself
        for name, path in onnx_stages:
            recorder.onnx(name, path)

        report = _measure_and_check(recipe, ctx, reference, model, ref_onnx, final, stages, threads, recorder)
        report["data"] = {"calibration": _data_summary(calibration, recipe.data.calibration, split_note),
                          "validation": _data_summary(validation, recipe.data.validation, split_note),
                          **finetune_data(recipe, passes, ctx.report)}
        report["recipe"] = {"name": recipe.name, "digest": recipe.digest(), "source": source}
        from compress.deploy import after_check  # keeps model_fp32.onnx; builds recipe.deploy targets

        after_check(recipe, ctx, tmp, report, threads)
        _save_torch_model(adapter, model, tmp / "model.pt", ctx)
        (tmp / "recipe.yaml").write_text(dump(recipe))
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        report["files"] = {"onnx": "model.onnx", "original_onnx": "original.onnx", "recipe": "recipe.yaml",
                           **({"torch": "model.pt"} if (tmp / "model.pt").exists() else {}),
                           **({"ultralytics": "model.ultralytics.pt"}
                              if (tmp / "model.ultralytics.pt").exists() else {}),
                           **report.get("files", {})}
        from compress.report import write_report

        write_report(tmp, report)
    report["out_dir"] = str(out_dir)
    return report


def select_output(adapter, model, end2end: bool, who: str) -> None:
    """Choose an end-to-end head's exported output (one-to-one ``(B, max_det, 6)`` or raw); one-line error
    when the adapter has no such choice."""
    from compress.errors import CompressError

    choose = getattr(adapter, "set_end2end", None)
    if choose is None:
        raise RecipeError(f"{who}: the {adapter.name} adapter has no end-to-end output")
    try:
        choose(model, bool(end2end))
    except CompressError as e:
        raise RecipeError(f"{who}: {str(e).split(': ', 1)[-1]}") from None


def _export_all(recipe, adapter, reference, model, tmp: Path, stages: list[Stage]):
    from compress.export import export_onnx

    meta = {"recipe": recipe.name, "recipe_hash": recipe.digest()}
    t0 = time.perf_counter()
    opts = {"opset": recipe.export.opset, "simplify": recipe.export.simplify,
            "dynamic_batch": recipe.export.dynamic_batch}
    ref_onnx = export_onnx(reference, adapter, tmp / "original.onnx", metadata={**meta, "variant": "original"}, **opts)
    onnx_path = export_onnx(model, adapter, tmp / "work" / "model_fp32.onnx", metadata=meta, **opts)
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
    from compress.export import restamp_args

    props["args"] = restamp_args(m, props.get("args"))  # Ultralytics' export args: quantize 8 for an int8 graph
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=str(v))
    with atomic_path(dst) as tmp:
        onnx.save(m, str(tmp))
    return dst


def _measure_and_check(recipe, ctx, reference, model, ref_onnx, final, stages, threads, recorder) -> dict:
    from compress.metrics.size import file_bytes
    from compress.stages import judge
    from compress.runtime.latency import compare_latency

    adapter = ctx.adapter
    bench = recipe.benchmark
    n_threads = threads or bench.threads
    t0 = time.perf_counter()
    result, per_stage, lost_at, blamed = judge(recorder, ctx)  # the final check is its last row
    stages.append(Stage("fidelity", time.perf_counter() - t0 + sum(r.seconds for r in recorder.records),
                        stages[-1].params, stages[-1].macs))
    ctx.notes.extend(n for n in result.notes if n not in ctx.notes)

    x = adapter.example_input(1).numpy()
    from compress.runtime.memory import peak_memory_or_note, process_peak_mb

    passes_peak_mb = process_peak_mb()  # this process's peak so far: the passes (fine-tune included), export
    t0 = time.perf_counter()
    lat = compare_latency({"original": ref_onnx, "compressed": final}, x, threads=n_threads,
                          warmup=bench.warmup, runs=bench.runs)
    mem = peak_memory_or_note({"original": ref_onnx, "compressed": final}, ctx.notes, threads=n_threads)
    if lat["original"]["conditions"]["possibly_throttled"]:
        ctx.notes.append(f"Latency possibly throttled: {lat['original']['conditions']['throttle_reason']}.")
    stages.append(Stage("latency", time.perf_counter() - t0, stages[-1].params, stages[-1].macs))

    def side(name, st: Stage, path):
        d = {"params": st.params, "macs": st.macs, "onnx_bytes": file_bytes(path),
             "latency_ms": lat[name]["median_ms"], "latency_p90_ms": lat[name]["p90_ms"],
             "peak_memory_mb": mem.get(name)}
        d.update(getattr(result, f"{name}_metrics", {}) or {})
        return d

    last_torch = [s for s in stages if s.params is not None][-1]
    original, compressed = side("original", stages[0], ref_onnx), side("compressed", last_torch, final)
    ratios = {k: _ratio(original.get(k), compressed.get(k)) for k in ("params", "macs", "onnx_bytes")}
    ratios["latency"] = _ratio(original["latency_ms"], compressed["latency_ms"])  # > 1 means faster
    fidelity = result.to_dict()
    if lost_at:
        fidelity["lost_at"] = lost_at
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
        "stage_fidelity": per_stage,
        "notes": ctx.notes,
        "environment": _environment(n_threads),
        "conditions": lat["original"]["conditions"],  # of the latency figures (one interleaved timing)
        "passes_peak_memory_mb": passes_peak_mb,
    }
    if not fidelity.get("passed") and blamed is not None and blamed.get("quantized"):
        report["int8_drift"] = _drift(ctx, final, n_threads)  # only when the int8 stage lost the agreement
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
        return
    if adapter.name == "ultralytics":  # also as a checkpoint Ultralytics itself loads, validates, exports, trains
        try:
            from compress.models.ultralytics_io import save_ultralytics_checkpoint

            ctx.notes.extend(save_ultralytics_checkpoint(adapter, model, path.with_name("model.ultralytics.pt")))
        except Exception as e:  # model.pt and model.onnx are written; say why this one is not
            ctx.notes.append(f"model.ultralytics.pt was not written ({type(e).__name__}: {e}).")


def _environment(threads: int) -> dict:
    import onnxruntime

    from compress.runtime.threads import physical_cores

    env = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "compress": __version__, "threads": threads, "machine": platform.machine(),
           "torch_threads": torch.get_num_threads(), "onnxruntime_threads": threads, "physical_cores": physical_cores()}
    try:
        from compress.runtime.cpu import cpu_features

        env["cpu"] = cpu_features()
    except Exception as e:  # pragma: no cover - informational only
        env["cpu"] = {"error": str(e)}
    return env
