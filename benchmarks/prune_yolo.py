"""YOLOv8n (the built-in yolov8n-digits) pruned 50% with structured L2: recovery compared.

Every point is a full `compress run` of recipes/yolov8n-prune50.yaml (C2f rewrite, pruning,
600 recovery steps, ONNX export, fidelity check) with the recovery loss (distillation from the
frozen original, or Ultralytics' task loss on labels) and learning rate (the model's training
rate 2e-3, or lr/10) varied. Original and pruned ONNX files are then re-measured together in
this process (ONNX Runtime, interleaved runs, sessions that do not spin) at 1 and 2 threads.

    python benchmarks/prune_yolo.py [--out runs/bench-yolo] [--steps 600]

Results are cached per point under --out, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import finetune_stats, grid_reports, markdown, num, remeasure, section


def recovery_table(out: Path, steps: int) -> str:
    grid = {"prune.finetune.loss": ["distill", "task"], "prune.finetune.lr_scale": [1.0, 0.1]}
    found = [(point, rep, out / point["point"])
             for point, rep in grid_reports("yolov8n-prune50.yaml", grid, out,
                                            overrides=[f"prune.finetune.steps={steps}"])]
    if not found:
        return "(no points)"
    files = {"original": found[0][2] / "original.onnx"}
    files.update({point["point"]: where / "model.onnx" for point, _, where in found})
    lat = {t: remeasure(files, threads=t) for t in (1, 2)}
    rows = []
    for point, rep, _ in found:
        o, c, r, f = rep["original"], rep["compressed"], rep["ratios"], rep["fidelity"]
        sec = section(rep, "prune.structured")
        ft_steps, ft_s = finetune_stats(sec)
        lr = next(r["finetune"]["lr"] for r in sec["rounds"] if r.get("finetune"))
        rows.append([point["prune.finetune.loss"], f"{lr:g}", f"{ft_steps} / {ft_s:.0f}",
                     num(f["agreement_map50"]), num(f["matched_recall"]), num(o.get("map50")), num(c.get("map50")),
                     f"{num(o['params'])} -> {num(c['params'])}", f"{r['macs']:.2f}x",
                     " / ".join(f"{lat[t]['original'] / lat[t][point['point']]:.2f}x" for t in (1, 2)),
                     "PASS" if f["passed"] else "FAIL"])
    return markdown(["recovery loss", "lr", "fine-tune steps / s", "agreement mAP50", "matched recall",
                     "mAP50 orig", "mAP50 pruned", "params", "MAC ratio", "latency ratio* 1 / 2 threads",
                     "check (>= 0.85 / 0.80)"], rows) + (
        f"\n\n*original and all pruned models re-measured together in this process (200 interleaved runs; "
        f"original {lat[1]['original']:.2f} ms at 1 thread, {lat[2]['original']:.2f} ms at 2).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-yolo"))
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    print("### yolov8n-digits: structured L2 50%, recovery compared\n\n" + recovery_table(args.out, args.steps) + "\n")


if __name__ == "__main__":
    main()
