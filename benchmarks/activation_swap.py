"""Activation swap: SiLU -> ReLU / ReLU6 / LeakyReLU(0.01) / Hardswish, recovered, fp32 and int8.

For digitdet (and ``yolov8n-digits`` with ``--yolo``), one ``compress run`` per activation:
``swap.activation`` with a distillation recovery of ``--steps`` steps on the train split, then
``quantize.ptq`` (the SiLU row is the original, int8 only). Columns: agreement mAP50 with the
original torch model of the fp32 export and of the int8 file (the run's per-stage fidelity),
the ONNX Runtime ops the int8 activation runs as after graph optimisation, and latency of every
file of one model re-measured together in one process (interleaved, sessions that do not spin;
minimum and median of ``--runs``), with speed-ups (of the minima) against the SiLU original. Prints a markdown table and writes
``<out>/activation_swap.md``; finished runs are reused (delete ``<out>`` to start over).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/activation_swap.py [--threads 1] [--steps 150] [--val 200] [--yolo]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from _common import ROOT, markdown, quiet_session

CHOICES = ["silu", "relu", "relu6", "leaky_relu", "hardswish"]
YOLO_WEIGHTS = ROOT / "compress" / "zoo" / "weights" / "yolov8n-digits.pt"
LR = {"digitdet": 0.003, "yolov8n-digits": 0.002}  # each model's training lr (recovery at lr_scale 1)
ACT_OPS = ("QLinearLeakyRelu", "QLinearSigmoid", "QLinearMul", "LeakyRelu", "Relu", "Clip", "HardSwish", "HardSigmoid",
           "DequantizeLinear", "Sigmoid",
           "Mul")


def _recipe(model: dict, choice: str, steps: int, val: int, lr: float, threads: int) -> dict:
    passes = []
    if choice != "silu":
        passes.append({"type": "swap.activation", "replace": ["SiLU"], "to": choice,
                       "finetune": {"steps": steps, "loss": "distill", "base_lr": lr, "lr_scale": 1.0,
                                    "data": {"builtin": "digits-det", "split": "train"}}})
    passes.append({"type": "quantize.ptq", "backend": "onnxruntime", "calibrate": "minmax"})
    return {"name": f"activation-{choice}", "model": model,
            "data": {"calibration": {"builtin": "digits-det", "split": "calib"},
                     "validation": {"builtin": "digits-det", "split": "val", "samples": val}},
            "passes": passes, "export": {"opset": 17, "simplify": True},
            "fidelity": {"min_agreement_map50": 0.0, "min_matched_recall": 0.0},
            "benchmark": {"threads": threads}}


def _run(recipe: dict, out: Path, threads: int) -> dict:
    from compress import api
    from compress.recipe import validate

    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    return api.run(validate(recipe, recipe["name"]), out, quiet=True, threads=threads)


def _stage(report: dict, stage: str) -> dict:
    for s in report.get("stage_fidelity") or []:
        if s.get("stage") == stage:
            return s.get("vs_original") or {}
    return {}


def _int8_ops(path: Path) -> str:
    """Activation-related ops of ONNX Runtime's optimized int8 graph (what actually runs)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    shown = [f"{ops[k]} {k}" for k in ACT_OPS if ops[k]]
    return f"{ops['QLinearConv']} QLinearConv" + (" + " + ", ".join(shown) if shown else "")


def bench(name: str, model: dict, args) -> list[list]:
    reports = {}
    for choice in CHOICES:
        out = args.out / name / choice
        print(f"{name} {choice}: running", flush=True)
        reports[choice] = _run(_recipe(model, choice, args.steps, args.val, LR[name], args.threads), out, args.threads)
    paths = {"silu fp32": args.out / name / "silu" / "original.onnx", "silu int8": args.out / name / "silu" / "model.onnx"}
    for choice in CHOICES[1:]:
        paths[f"{choice} fp32"] = args.out / name / choice / "model_fp32.onnx"
        paths[f"{choice} int8"] = args.out / name / choice / "model.onnx"
    from compress.runtime.latency import compare_latency

    sessions = {k: quiet_session(v, args.threads) for k, v in paths.items()}
    stats = compare_latency(sessions, None, threads=args.threads, warmup=20, runs=args.runs)
    # the minimum is the figure to read on a shared machine: a median there also counts the time
    # slices other processes took (medians of int8 files moved 2-11 ms between series, minima < 5%)
    ms = {k: v["min_ms"] for k, v in stats.items()}
    med = {k: v["median_ms"] for k, v in stats.items()}
    base, base8 = ms["silu fp32"], ms["silu int8"]
    rows = []
    for choice in CHOICES:
        r = reports[choice]
        fp32_agree = 1.0 if choice == "silu" else _stage(r, "export").get("agreement_map50")
        int8_agree = _stage(r, "quantize.ptq").get("agreement_map50")
        sec = (r.get("passes") or {}).get("swap.activation") or {}
        ft = sec.get("finetune") or {}
        label = "SiLU (original)" if choice == "silu" else sec.get("to", choice)
        f32, i8 = ms[f"{choice} fp32"], ms[f"{choice} int8"]
        rows.append([name, label, f"{fp32_agree:.3f}" if fp32_agree is not None else "-",
                     f"{int8_agree:.3f}" if int8_agree is not None else "-",
                     f"{f32:.2f} ({base / f32:.2f}x), median {med[f'{choice} fp32']:.2f}",
                     f"{i8:.2f} ({base / i8:.2f}x), median {med[f'{choice} int8']:.2f}", f"{base8 / i8:.2f}x",
                     _int8_ops(paths[f"{choice} int8"]),
                     f"{ft.get('steps', '-')} / {ft.get('seconds', '-')} s" if ft else "-"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=150, help="distillation steps after each swap")
    ap.add_argument("--val", type=int, default=200, help="validation images for agreement")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per file (interleaved)")
    ap.add_argument("--yolo", action="store_true", help="also yolov8n-digits (slower)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-activation")
    args = ap.parse_args()
    models = [("digitdet", {"builtin": "digitdet"})]
    if args.yolo and YOLO_WEIGHTS.is_file():
        models.append(("yolov8n-digits", {"builtin": "yolov8n-digits", "adapter": "ultralytics"}))
    head = ["model", "activation", "agreement mAP50 fp32", "agreement mAP50 int8",
            f"fp32 min ms ({args.threads} thr; vs SiLU fp32)", "int8 min ms (vs SiLU fp32)", "int8 vs SiLU int8",
            "int8 graph after ORT optimisation", "recovery steps / s"]
    rows = [row for name, spec in models for row in bench(name, spec, args)]
    table = markdown(head, rows)
    print(table)
    (args.out / "activation_swap.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
