"""Build, check, time, select and bundle every deployment target of a run.

Each target's artifacts (``fp32``: the final torch model's ONNX; ``int8``: after the ONNX
passes) are converted, loaded in the target's own runtime and checked with the same
fidelity check as the run. All runtimes plus the ONNX Runtime fp32 baselines are timed in
one interleaved measurement (same process, same input).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path


from compress.deploy.base import Artifact, BuildContext, DeployError

log = logging.getLogger("compress")

FP32_FILE = "model_fp32.onnx"  # the final torch model's ONNX, kept beside model.onnx
ORT_ORIGINAL = "onnxruntime/original"


def onnx_stage_passes(recipe) -> list:
    from compress.passes import get_pass

    return [p for p in recipe.passes if get_pass(p.type).stage == "onnx"]


def after_check(recipe, ctx, out_dir: Path, report: dict, threads: int | None = None) -> None:
    """Runner hook: keep model_fp32.onnx when ONNX passes changed the model; deploy when asked."""
    out_dir = Path(out_dir)
    fp32 = Path(ctx.work_dir) / FP32_FILE
    artifacts = {}
    if onnx_stage_passes(recipe) and fp32.is_file():
        shutil.copyfile(fp32, out_dir / FP32_FILE)
        report.setdefault("files", {})["fp32_onnx"] = FP32_FILE
        artifacts["fp32"] = out_dir / FP32_FILE
        artifacts["int8"] = out_dir / "model.onnx"
    else:
        artifacts["fp32"] = out_dir / "model.onnx"
    cfg = getattr(recipe, "deploy", None)
    if cfg is None:
        return
    report["deploy"] = deploy(cfg, recipe, ctx.adapter, ctx.reference, ctx.validation, ctx.calibration, out_dir,
                              artifacts, out_dir / "original.onnx", threads=threads or recipe.benchmark.threads,
                              passes=report.get("passes") or {}, model=ctx.model)
    report.setdefault("notes", []).extend(report["deploy"].get("notes", []))


def _requantize(fp32: Path, out: Path, recipe, adapter, calibration, settings: dict, passes: dict) -> dict | None:
    """Re-quantize ``fp32`` for the board when the recipe's ORT int8 pass chose another reduce_range."""
    ptq = [p for p in recipe.passes if p.type == "quantize.ptq"]
    if len(ptq) != 1 or ptq[0].backend != "onnxruntime" or ptq[0].reduce_range != "auto":
        return None
    section = passes.get(ptq[0].name or ptq[0].type) or {}
    if section.get("reduce_range") == settings["reduce_range"]:
        return None
    if calibration is None:
        raise DeployError("deploy.cpu: re-quantizing for the board needs the calibration images")
    import tempfile

    from compress.quant import qdq
    from compress.quant.backends import ort
    from compress.quant.calib_reader import pick_images, preprocess_batches

    cfg = ptq[0]
    images, _ = pick_images(calibration, cfg.samples, "deploy")
    with tempfile.TemporaryDirectory() as tmp:
        input_name, _ = qdq.image_input(qdq.load(fp32), "deploy")
        ort.quantize(fp32, out, input_name, preprocess_batches(adapter, images), work_dir=Path(tmp),
                     per_channel=settings["per_channel"], calibrate=cfg.calibrate or "minmax",
                     percentile=cfg.percentile, activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                     reduce_range=settings["reduce_range"], protect_head=cfg.protect_head, ignore=cfg.ignore,
                     task=adapter.task, who="deploy")
    return {"file": out.name, "reduce_range": settings["reduce_range"],
            "was": section.get("reduce_range"), "calibration_images": len(images)}


def _fid_row(result) -> dict:
    d = result.to_dict()
    keys = ("agreement_map50", "agreement_map50_95", "matched_recall", "matched_precision", "score_drift",
            "top1_agreement", "collapsed", "passed", "failures")
    return {k: d[k] for k in keys if k in d}


def _select(rows: dict[str, dict], policy: str, fp32_label: str = "fp32") -> tuple[str | None, str]:
    """(selected artifact or None, the reason in words)."""
    if policy == "all":
        return None, "select: all (every artifact kept, none chosen)"
    passing = {a: r for a, r in rows.items() if r.get("passed")}
    if not passing:
        return None, "no artifact passed the fidelity thresholds: nothing selected"
    best = min(passing, key=lambda a: passing[a]["latency_ms"])
    failed = [a for a in rows if a not in passing]
    if best == "fp32" and "int8" in passing:
        f, i = rows["fp32"]["latency_ms"], rows["int8"]["latency_ms"]
        return best, f"int8 not faster than {fp32_label} on this CPU ({i:.2f} vs {f:.2f} ms): kept fp32"
    if best == "fp32" and "int8" in failed:
        why = "; ".join(rows["int8"].get("failures") or []) or "failed"
        return best, f"int8 failed the fidelity check ({why}): kept fp32"
    if best == "int8" and "fp32" in rows:
        f, i = rows["fp32"]["latency_ms"], rows["int8"]["latency_ms"]
        return best, f"int8 passes and is {f / i:.2f}x faster than {fp32_label} ({i:.2f} vs {f:.2f} ms): kept int8"
    if len(rows) == 1:
        return best, f"{best}: the only artifact built for this target"
    return best, f"{best}: the only artifact that passes"


def _share(total: float, part: float) -> float | None:
    if not total or not part or total <= 0 or part <= 0 or abs(math.log(total)) < 1e-9:
        return None
    return round(math.log(part) / math.log(total), 3)


def _speedup(lat: dict, recipe) -> dict | None:
    """Which stage produced how much of the ONNX Runtime speed-up (ratios > 1 are faster)."""
    o = lat.get(ORT_ORIGINAL, {}).get("median_ms")
    f = lat.get("onnxruntime/fp32", {}).get("median_ms")
    q = lat.get("onnxruntime/int8", {}).get("median_ms")
    if not o or not f:
        return None
    onnx_cfgs = onnx_stage_passes(recipe)
    torch_passes = [p.name or p.type for p in recipe.passes if not any(p is q_ for q_ in onnx_cfgs)]
    onnx_passes = [p.name or p.type for p in onnx_cfgs]
    total = o / (q or f)
    stages = [{"stage": "torch passes: " + (", ".join(torch_passes) or "none (export only)"), "from": "original",
               "to": "fp32", "speedup": round(o / f, 3), "share_of_total": _share(total, o / f)}]
    if q:
        stages.append({"stage": "onnx passes: " + ", ".join(onnx_passes), "from": "fp32", "to": "int8",
                       "speedup": round(f / q, 3), "share_of_total": _share(total, f / q)})
    return {"runtime": "onnxruntime", "total": round(total, 3), "stages": stages,
            "note": "share_of_total: log(stage speed-up) / log(total speed-up)"}


def _speedup_note(sp: dict | None) -> str | None:
    if not sp:
        return None
    parts = [f"{s['stage'].split(':')[0]} {s['speedup']:.2f}x" for s in sp["stages"]]
    return f"ONNX Runtime speed-up over the original: {sp['total']:.2f}x = " + " x ".join(parts)


def deploy(cfg, recipe, adapter, reference, validation, calibration, run_dir: Path, artifacts: dict[str, Path],
           original_onnx: Path, *, threads: int | None, passes: dict | None = None, model=None) -> dict:
    """Build every target in ``cfg.targets`` under ``run_dir/deploy/<target>/``; return the report section.

    ``artifacts`` maps ``fp32`` / ``int8`` to ONNX files (anywhere); everything this writes goes
    under ``run_dir`` and is named relative to it in the section.
    """
    from compress.deploy import get_target
    from compress.deploy.bundle import detections_json, supports_bundle, write_bundle
    from compress.deploy.cpu import emulation_note, int8_settings
    from compress.fidelity import check
    from compress.runtime.latency import compare_latency

    targets = [get_target(n) for n in cfg.targets]
    for t in targets:
        t.require()
    from compress.runtime.threads import resolve_threads

    threads = resolve_threads(cfg.threads, threads)  # default: the run's threads, else the physical cores
    run_dir = Path(run_dir)
    notes: list[str] = []
    settings = int8_settings(cfg.cpu)
    section: dict = {"settings": {"targets": list(cfg.targets), "select": cfg.select, "cpu": cfg.cpu,
                                  "threads": threads, "int8": settings}}
    emu = emulation_note(cfg.cpu)
    if emu:
        notes.append(emu)
    artifacts = dict(artifacts)
    if "int8" in artifacts and "fp32" in artifacts and cfg.cpu != "host":
        redo = _requantize(artifacts["fp32"], run_dir / f"model_int8_{cfg.cpu}.onnx", recipe, adapter, calibration,
                           settings, passes or {})
        if redo:
            artifacts["int8"] = run_dir / redo["file"]
            section["settings"]["requantized"] = redo
            notes.append(f"deploy: re-quantized int8 for {cfg.cpu} (reduce_range {redo['was']} -> "
                         f"{redo['reduce_range']}): {redo['file']}")

    ctx = BuildContext(cpu=cfg.cpu, imgsz=adapter.imgsz, example_input=adapter.example_input(1).numpy(),
                       adapter=adapter)
    root = run_dir / "deploy"
    from compress.runtime.session import make_session

    runners = {ORT_ORIGINAL: make_session(original_onnx, threads=threads)}
    built: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    for t in targets:
        folder = root / t.name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        built[t.name] = {}
        for name, path in artifacts.items():
            art = Artifact(name, Path(path), model)
            why = t.skip(art)
            if why:
                skipped.setdefault(t.name, {})[name] = why
                continue
            t0 = time.perf_counter()
            files = t.build(art, folder, ctx)
            build_s = time.perf_counter() - t0
            runner = t.session(files, threads)
            result = check(adapter, reference, runner, validation, recipe.fidelity, threads=threads)
            runners[f"{t.name}/{name}"] = runner
            built[t.name][name] = {"files": files, "result": result, "build_s": build_s}
    if "onnxruntime" not in cfg.targets:  # the fp32 baseline every target is compared with
        from compress.deploy.onnxruntime import ort_runner

        for name, path in artifacts.items():
            runners[f"onnxruntime/{name}"] = ort_runner(Path(path), threads)

    runs = cfg.runs or recipe.benchmark.runs
    lat = compare_latency(runners, ctx.example_input, threads=threads, warmup=recipe.benchmark.warmup, runs=runs)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # one interleaved series: compare within it
    base = lat[ORT_ORIGINAL]["median_ms"]
    base_fp32 = lat.get("onnxruntime/fp32", {}).get("median_ms")
    section["baseline"] = {"onnxruntime/original": {"latency_ms": round(base, 4),
                                                    "bytes": original_onnx.stat().st_size},
                           **({"onnxruntime/fp32": {"latency_ms": round(base_fp32, 4)}} if base_fp32 else {})}

    fp32_label = "pruned fp32" if any(p.type.startswith("prune") for p in recipe.passes) else "fp32"
    bundle_why = supports_bundle(adapter)
    if cfg.bundle and bundle_why:
        notes.append(f"deploy: no infer.py: {bundle_why}")
    for t in targets:
        rows = {}
        for name, b in built[t.name].items():
            m = lat[f"{t.name}/{name}"]
            files = b["files"]
            rows[name] = {"source_onnx": Path(artifacts[name]).name,
                          "files": [f"deploy/{t.name}/{f.name}" for f in files],
                          "bytes": sum(f.stat().st_size for f in files),
                          "latency_ms": round(m["median_ms"], 4), "latency_p90_ms": round(m["p90_ms"], 4),
                          "speedup_vs_ort_original": round(base / m["median_ms"], 3),
                          "speedup_vs_ort_fp32": round(base_fp32 / m["median_ms"], 3) if base_fp32 else None,
                          "build_s": round(b["build_s"], 2), **_fid_row(b["result"])}
        selected, reason = _select(rows, cfg.select, fp32_label)
        entry = {"artifacts": rows, "selected": selected, "reason": reason, "folder": f"deploy/{t.name}",
                 "runtime_version": t.version(), "measured_at": stamp}
        notes.extend(t.notes(cfg.cpu))
        if skipped.get(t.name):
            entry["skipped"] = skipped[t.name]
            notes.extend(f"deploy {t.name}: {a} not built: {why}" for a, why in skipped[t.name].items())
        if cfg.bundle and not bundle_why and rows:
            first = validation.samples[0] if len(validation) else None
            arts = {}
            for name, b in built[t.name].items():
                det = b["result"].compressed_detections[0] if b["result"].compressed_detections else None
                arts[name] = {"file": b["files"][0].name, "files": [f.name for f in b["files"]],
                              "passed": rows[name].get("passed"), "latency_ms": rows[name]["latency_ms"],
                              "example_detections": detections_json(det, adapter.class_names) if det else None}
            example = {"source": first.path} if first is not None else None
            entry["bundle"] = write_bundle(root / t.name, t, adapter, recipe, arts, selected, threads,
                                           first.image if first is not None else None, example, cfg.cpu)
        section[t.name] = entry
        notes.append(f"deploy {t.name}: {reason}")
    sp = _speedup(lat, recipe)
    if sp:
        section["speedup"] = sp
        notes.append(_speedup_note(sp))
    section["notes"] = notes
    _summary(run_dir / "deploy", section)
    return section


def _summary(folder: Path, section: dict) -> None:
    from compress.atomic import atomic_write_text
    from compress.deploy.report import markdown

    lines = [markdown(section), *[f"- {n}" for n in section.get("notes", [])]]
    atomic_write_text(Path(folder) / "summary.md", "# Deployment targets\n\n" + "\n".join(lines) + "\n")


def _load_report(run_dir: Path) -> dict:
    import json

    from compress.errors import CompressError

    path = run_dir / "report.json"
    if not path.is_file() or not (run_dir / "recipe.yaml").is_file() or not (run_dir / "model.onnx").is_file():
        raise CompressError(f"{run_dir}: not a run folder (needs report.json, recipe.yaml and model.onnx)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CompressError(f"{path}: not valid JSON ({e})") from None


def _load_resolved(path: Path):
    """The run's resolved recipe (it validates again as written: tests/test_recipe.py checks every shipped one)."""
    from compress import recipe as R

    return R.load(path)


def deploy_run_dir(run_dir, targets: list[str] | None = None, *, cpu: str | None = None, select: str | None = None,
                   threads: int | None = None, runs: int | None = None, trust_checkpoint: bool = False) -> dict:
    """Deploy an existing run folder: rebuild the given targets, update report.json; return its deploy section."""
    import os
    import tempfile

    from pydantic import ValidationError

    from compress.deploy.config import DeployConfig
    from compress.errors import RecipeError
    from compress.models import load_model
    from compress.report import write_report
    from compress.runner import load_data

    run_dir = Path(run_dir)
    report = _load_report(run_dir)
    recipe = _load_resolved(run_dir / "recipe.yaml")
    base = recipe.deploy.model_dump() if recipe.deploy else {}
    base.update({k: v for k, v in {"targets": targets, "cpu": cpu, "select": select, "threads": threads,
                                      "runs": runs}.items()
                 if v is not None})
    try:
        cfg = DeployConfig.model_validate(base)
    except ValidationError as e:
        err = e.errors()[0]
        raise RecipeError(f"deploy: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    from compress.deploy import get_target

    for name in cfg.targets:  # a missing extra fails before any model is loaded
        get_target(name).require()
    quantized = any(isinstance(p, dict) and p.get("quantized") for p in (report.get("passes") or {}).values())
    if (run_dir / FP32_FILE).is_file():
        artifacts = {"fp32": run_dir / FP32_FILE, "int8": run_dir / "model.onnx"}
    elif quantized:
        artifacts = {"int8": run_dir / "model.onnx"}
    else:
        artifacts = {"fp32": run_dir / "model.onnx"}
    adapter, reference = load_model(recipe.model, trust_checkpoint=trust_checkpoint)
    reference = reference.eval().requires_grad_(False)
    validation, calibration = load_data(recipe.data.validation), load_data(recipe.data.calibration)
    model = None
    if any(get_target(n).from_torch for n in cfg.targets) and (run_dir / "model.pt").is_file():
        from compress.recipe import ModelSpec

        _, model = load_model(ModelSpec(checkpoint=str(run_dir / "model.pt"), adapter=adapter.name),
                              trust_checkpoint=trust_checkpoint)
        model.eval()
    staging = Path(tempfile.mkdtemp(prefix=".deploy-", dir=run_dir))
    try:
        section = deploy(cfg, recipe, adapter, reference, validation, calibration, staging, artifacts,
                         run_dir / "original.onnx", threads=cfg.threads or recipe.benchmark.threads,
                         passes=report.get("passes") or {}, model=model)
        if "fp32" not in artifacts:
            section["notes"].append("deploy: this run kept no fp32 ONNX (made before model_fp32.onnx was kept): "
                                    "only the int8 model was deployed")
        (run_dir / "deploy").mkdir(exist_ok=True)
        for t in cfg.targets:
            dst = run_dir / "deploy" / t
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(staging / "deploy" / t, dst)
        for f in staging.glob("model_int8_*.onnx"):
            os.replace(f, run_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    old = report.get("deploy") or {}
    merged = {k: v for k, v in old.items() if k not in ("settings", "baseline", "speedup", "notes")}
    merged.update(section)
    report["deploy"] = merged
    _summary(run_dir / "deploy", merged)
    write_report(run_dir, report)
    return merged
