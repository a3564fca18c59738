"""Static int8 on detectors: this workbench's default PTQ versus the plain library defaults.

For digitdet (and the YOLOv8n-architecture model trained on digits-det, when
``compress/zoo/weights/yolov8n-digits.pt`` exists) and the same 300 calibration images:

* ``compress quantize.ptq``: default settings (ORT QDQ, per-channel, uint8/int8, decode
  tail float, reduce_range on x86 CPUs without VNNI);
* ``ort quantize_static``: ``onnxruntime.quantization.quantize_static`` with its defaults;
* ``nncf.quantize``: ``nncf.quantize`` with its defaults on the ONNX model.

Columns: agreement mAP50 with the fp32 torch model (fidelity check), true mAP50 on the
labelled val split, file size, ONNX Runtime CPU latency (all files of one model in one
process, interleaved, same thread count) and quantization wall time. Prints a markdown
table and writes it to ``<out>/quant_peers.md``.

    python benchmarks/quant_peers.py [--threads 2] [--runs 50] [--val 200] [--out DIR] [--digitdet CKPT]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
YOLO_WEIGHTS = ROOT / "compress" / "zoo" / "weights" / "yolov8n-digits.pt"


def _models(digitdet: str | None) -> list[tuple[str, object]]:
    from compress.recipe import ModelSpec

    dd = ModelSpec(checkpoint=digitdet, adapter="digitdet") if digitdet else ModelSpec(builtin="digitdet")
    specs = [("digitdet", dd)]
    if YOLO_WEIGHTS.is_file():
        specs.append(("yolov8n-digits", ModelSpec(checkpoint=str(YOLO_WEIGHTS), adapter="ultralytics")))
    else:
        print(f"(skipping yolov8n-digits: {YOLO_WEIGHTS.relative_to(ROOT)} not found)")
    return specs


def _workbench(fp32: Path, out_dir: Path, adapter, model, calib) -> Path:
    from compress.context import Context
    from compress.passes import get_pass

    cls = get_pass("quantize.ptq")
    ctx = Context(adapter=adapter, reference=model, calibration=calib, validation=None,
                  work_dir=out_dir / "workbench", model=model)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    p = cls(cls.Config(type="quantize.ptq"))
    p.check(model, ctx)
    return p.apply_onnx(fp32, ctx)


def _plain_ort(fp32: Path, out_dir: Path, batches, input_name: str) -> Path:
    from onnxruntime.quantization import quantize_static

    from compress.quant.calib_reader import calibration_reader

    out = out_dir / "ort_defaults.onnx"
    quantize_static(str(fp32), str(out), calibration_reader(input_name, batches))
    return out


def _plain_nncf(fp32: Path, out_dir: Path, batches, input_name: str) -> Path:
    import nncf
    import onnx

    out = out_dir / "nncf_defaults.onnx"
    q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(batches, lambda x: {input_name: x}))
    onnx.save(q, str(out))
    return out


def bench_model(name: str, spec, out_dir: Path, calib, val, threads: int, runs: int) -> list[dict]:
    import numpy as np

    from compress.export import export_onnx
    from compress.fidelity import check
    from compress.models import load_model
    from compress.quant.calib_reader import preprocess_batches
    from compress.recipe import FidelityConfig
    from compress.runtime.latency import compare_latency

    adapter, model = load_model(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, adapter, out_dir / "fp32.onnx", opset=17)
    images = [s.image for s in calib]
    batches = preprocess_batches(adapter, images)
    files, seconds = {"fp32": fp32}, {"fp32": None}
    methods = (("compress quantize.ptq", lambda: _workbench(fp32, out_dir, adapter, copy.deepcopy(model), calib)),
               ("ort quantize_static defaults", lambda: _plain_ort(fp32, out_dir, batches, "images")),
               ("nncf.quantize defaults", lambda: _plain_nncf(fp32, out_dir, batches, "images")))
    for label, fn in methods:
        t0 = time.perf_counter()
        try:
            files[label] = fn()
        except Exception as e:  # a peer failing is a result too
            print(f"{name}: {label} failed: {e}")
            continue
        seconds[label] = time.perf_counter() - t0
    cfg = FidelityConfig()
    x, _ = adapter.preprocess(images[:1])
    lat = compare_latency(files, np.ascontiguousarray(x.numpy()), threads=threads, warmup=10, runs=runs)
    rows = []
    for label, path in files.items():
        fid = check(adapter, model, path, val, cfg, threads=threads)
        rows.append({"model": name, "method": label, "agreement_map50": fid.metrics.get("agreement_map50"),
                     "map50": (fid.compressed_metrics or {}).get("map50"), "mb": os.path.getsize(path) / 1e6,
                     "ms": lat[label]["median_ms"], "seconds": seconds[label], "collapsed": fid.collapsed})
    base = rows[0]
    for r in rows:
        r["size_x"] = base["mb"] / r["mb"]
        r["latency_x"] = r["ms"] / base["ms"]
    return rows


def table(rows: list[dict], threads: int) -> str:
    head = ["model", "method", "agreement mAP50", "true mAP50", "file (MB)", "size vs fp32",
            f"ORT CPU latency ({threads} threads)", "latency vs fp32 (<1 faster)", "PTQ wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        agree = "-" if r["agreement_map50"] is None else f"{r['agreement_map50']:.3f}"
        if r["collapsed"]:
            agree += " (collapsed)"
        true = "-" if r["map50"] is None else f"{r['map50']:.3f}"
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f} s"
        lines.append(f"| {r['model']} | {r['method']} | {agree} | {true} | {r['mb']:.2f} | {r['size_x']:.2f}x | "
                     f"{r['ms']:.2f} ms | {r['latency_x']:.2f}x | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "quant_peers"))
    ap.add_argument("--digitdet", default=None, help="a digitdet checkpoint instead of the built-in weights")
    args = ap.parse_args(argv)

    import torch

    from compress.data import builtin_dataset

    torch.set_num_threads(args.threads)
    calib = builtin_dataset("digits-det", "calib", args.calib)
    val = builtin_dataset("digits-det", "val", args.val)
    out = Path(args.out)
    rows = []
    for name, spec in _models(args.digitdet):
        rows += bench_model(name, spec, out / name, calib, val, args.threads, args.runs)
    text = table(rows, args.threads)
    text += (f"\n{len(calib)} calibration images (digits-det/calib), {len(val)} validation images (digits-det/val); "
             "latency: median of interleaved runs in one process; the CPU's int8 features decide the ratio.\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quant_peers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
