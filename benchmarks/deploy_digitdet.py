"""Deployment targets side by side: recipes/digitdet-deploy.yaml (L2 50% + distill, int8 PTQ)
deployed to ONNX Runtime, ORT mobile (.ort), OpenVINO and ncnn, each artifact checked in its own runtime.

The run is cached under --out; the deployment is then redone at each --threads value with
--runs timed runs per artifact (all runtimes plus the ORT fp32 baselines interleaved in one
process), and one table per thread count is printed.

    python benchmarks/deploy_digitdet.py [--out runs/bench-deploy] [--threads 1,2] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import ROOT, markdown


def table(dep: dict) -> str:
    base = dep["baseline"]["onnxruntime/original"]
    rows = [["onnxruntime", "original fp32", "1.000", f"{base['latency_ms']:.2f}", "1.00x", "-",
             f"{base['bytes'] / 1e6:.2f}", "-"]]
    for target in dep["settings"]["targets"]:
        for name, r in dep[target]["artifacts"].items():
            label = "pruned fp32" if name == "fp32" else "pruned int8"
            label += " *" if dep[target]["selected"] == name else ""
            rows.append([target, label, f"{r['agreement_map50']:.3f}", f"{r['latency_ms']:.2f}",
                         f"{r['speedup_vs_ort_original']:.2f}x", f"{r['speedup_vs_ort_fp32']:.2f}x",
                         f"{r['bytes'] / 1e6:.2f}", "PASS" if r["passed"] else "FAIL"])
    head = ["target", "artifact", "agreement mAP50", "latency ms", "speed-up vs ORT original fp32",
            "vs ORT pruned fp32", "size MB", "check"]
    reasons = "\n".join(f"- {t}: {dep[t]['reason']}" for t in dep["settings"]["targets"])
    sp = dep.get("speedup") or {}
    stages = " x ".join(f"{s['stage'].split(':')[0]} {s['speedup']:.2f}x" for s in sp.get("stages", []))
    return f"{markdown(head, rows)}\n\n{reasons}\n- ONNX Runtime: {sp.get('total', 0):.2f}x = {stages}\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-deploy"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    from compress import api
    from compress.deploy import deploy_run_dir, get_target

    out = Path(args.out)
    if not (out / "report.json").is_file():
        api.run(str(ROOT / "recipes" / "digitdet-deploy.yaml"), out, force=True, quiet=True)
    rep = json.loads((out / "report.json").read_text())
    print(f"run: {out} (agreement of the run's int8 check: {rep['fidelity']['agreement_map50']:.3f})\n")
    from compress import recipe as R

    targets = [t for t in R.load(ROOT / "recipes" / "digitdet-deploy.yaml").deploy.targets
               if get_target(t).available()]
    for t in (int(x) for x in args.threads.split(",")):
        dep = deploy_run_dir(out, targets, threads=t, runs=args.runs)
        print(f"### {t} thread(s), {args.runs} interleaved runs, median\n\n{table(dep)}")
        for n in dep["notes"]:
            if "emulate" in n or "transfer" in n:
                print(f"- {n}")


if __name__ == "__main__":
    main()
