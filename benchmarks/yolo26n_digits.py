"""YOLO26n (the built-in yolo26n-digits): fp32 vs int8 vs pruned 50% + int8, side by side.

Runs recipes/yolo26n-int8.yaml and recipes/yolo26n-prune50-int8.yaml (each a full
`compress run`: passes, ONNX export, fidelity check of the exported file), exports the
pruned torch model (before int8) for reference, then re-measures the original fp32 ONNX and
every compressed file together in this process (ONNX Runtime, interleaved runs, sessions
that do not spin) at 1 and 2 threads. torch is pinned to 1 thread.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/yolo26n_digits.py [--out runs/bench-yolo26n] [--force]

Runs are cached under --out (a folder with a report.json is reused unless --force).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import ROOT, markdown, num, remeasure

RECIPES = {"int8": "yolo26n-int8", "prune50+int8": "yolo26n-prune50-int8"}


def run_recipe(name: str, out: Path, force: bool) -> dict:
    """The report of ``recipes/<name>.yaml`` run into ``out/<name>`` (cached)."""
    from compress.api import run

    where = out / name
    if (where / "report.json").is_file() and not force:
        return json.loads((where / "report.json").read_text())
    return run(ROOT / "recipes" / f"{name}.yaml", where, force=True, quiet=True)


def pruned_fp32(where: Path) -> Path:
    """The run's pruned torch model (model.pt, before int8) exported as fp32 ONNX next to it."""
    from compress.export import export_onnx
    from compress.models import load_model
    from compress.recipe import ModelSpec

    dst = where / "pruned_fp32.onnx"
    if not dst.is_file():
        adapter, model = load_model(ModelSpec(checkpoint=str(where / "model.pt")))
        export_onnx(model, adapter, dst)
    return dst


def table(out: Path, force: bool, runs: int) -> str:
    reports = {label: run_recipe(name, out, force) for label, name in RECIPES.items()}
    first = out / RECIPES["int8"]
    files = {"fp32": first / "original.onnx"}
    files.update({label: out / name / "model.onnx" for label, name in RECIPES.items()})
    files["prune50 fp32 (before int8)"] = pruned_fp32(out / RECIPES["prune50+int8"])
    lat = {t: remeasure(files, runs=runs, threads=t) for t in (1, 2)}
    o = reports["int8"]["original"]
    rows = [["original fp32", "1.000 (itself)", num(o.get("map50")), num(o["params"]),
             f"{o['onnx_bytes'] / 1e6:.2f}", *(f"{lat[t]['fp32']:.2f} (1.00x)" for t in (1, 2)), "-", "-"]]
    for label in ("int8", "prune50 fp32 (before int8)", "prune50+int8"):
        rep = reports.get(label)
        if rep is None:  # the pruned model before int8: no run of its own
            rep = reports["prune50+int8"]
            cells = ["-", "-", num(rep["compressed"]["params"]),
                     f"{files[label].stat().st_size / 1e6:.2f}"]
            own, check = "-", "-"
        else:
            c, f = rep["compressed"], rep["fidelity"]
            cells = [num(f.get("agreement_map50")), num(c.get("map50")), num(c["params"]),
                     f"{c['onnx_bytes'] / 1e6:.2f}"]
            own = f"{rep['ratios']['latency']:.2f}x ({rep['environment']['threads']} thread)"
            check = "PASS" if f.get("passed") else "FAIL"
        rows.append([label, *cells, *(f"{lat[t][label]:.2f} ({lat[t]['fp32'] / lat[t][label]:.2f}x)" for t in (1, 2)),
                     own, check])
    head = ["model", "agreement mAP50", "true mAP50 (val 200)", "params", "ONNX MB",
            "latency ms 1 thread (speed-up)", "latency ms 2 threads (speed-up)", "run's own latency ratio", "check"]
    return markdown(head, rows) + (
        f"\n\nAll files re-measured together in this process ({runs} interleaved runs each, median, "
        "ONNX Runtime CPU, sessions that do not spin).")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-yolo26n"))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--force", action="store_true", help="rerun the recipes even when cached")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("### yolo26n-digits: fp32 vs int8 vs prune 50% + int8\n\n" + table(args.out, args.force, args.runs) + "\n")


if __name__ == "__main__":
    main()
