"""Pruning figures on the built-in detector, original and pruned measured in one process.

Three tables (each point is a full `compress run`: passes, ONNX export, fidelity check,
interleaved ONNX Runtime latency of original.onnx and model.onnx in the same process):

1. structured L2 at 50% + distillation fine-tune: agreement, true mAP, MAC and latency ratios,
   and the time of the pruning surgery itself (fine-tuning excluded);
2. fmap_cluster (K-means++ feature-map clustering) vs L1 at 70/80/90%, same fine-tune budget;
3. unstructured 50%: sparsity and latency ratio (size only: dense kernels do not skip zeros).

    python benchmarks/prune_digitdet.py [--out runs/bench-prune] [--tables 1,2,3] [--ratios 0.7,0.8,0.9]

Results are cached per point under --out, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import finetune_stats, grid_reports, markdown, num, pct, section


def _prune_cost(sec: dict) -> tuple[str, str, str]:
    """(surgery s, pass s without fine-tuning, fine-tune "steps / s") of a prune.structured section."""
    steps, ft_s = finetune_stats(sec)
    without = sec["seconds"] - ft_s if "seconds" in sec else None
    return (num(sec.get("prune_seconds"), 2), num(without, 1),
            f"{steps} / {ft_s:.0f}" if steps else "-")


def structured_table(out: Path) -> str:
    pairs = grid_reports("digitdet-prune50-distill.yaml", {"prune.ratio": [0.5]}, out / "l2-50")
    rows = []
    for _, rep in pairs:
        o, c, r, f = rep["original"], rep["compressed"], rep["ratios"], rep["fidelity"]
        surgery, without, ft = _prune_cost(section(rep, "prune.structured"))
        rows.append(["L2 50% + distill", num(f["agreement_map50"]), num(f["matched_recall"]),
                     num(o.get("map50")), num(c.get("map50")), f"{num(o['params'])} -> {num(c['params'])}",
                     f"{num(o['macs'])} -> {num(c['macs'])} ({r['macs']:.2f}x)",
                     f"{o['latency_ms']:.2f} -> {c['latency_ms']:.2f}", f"{r['latency']:.2f}x",
                     surgery, without, ft, "PASS" if f["passed"] else "FAIL"])
    return markdown(["recipe", "agreement mAP50", "matched recall", "mAP50 orig", "mAP50 pruned", "params",
                     "MACs (ratio)", "latency ms (orig -> pruned)", "latency ratio", "surgery s",
                     "pass s w/o fine-tune", "fine-tune steps / s", "check"], rows)


def criteria_table(out: Path, ratios: list[float]) -> str:
    rows = []
    for crit, recipe in (("fmap_cluster", "digitdet-fmap-cluster-sweep.yaml"), ("l1", "digitdet-l1-sweep.yaml")):
        for point, rep in grid_reports(recipe, {"prune.ratio": ratios}, out / crit):
            o, c, r, f = rep["original"], rep["compressed"], rep["ratios"], rep["fidelity"]
            surgery, without, ft = _prune_cost(section(rep, "prune.structured"))
            rows.append((point["prune.ratio"], crit, [
                point["prune.ratio"], crit, num(f["agreement_map50"]), num(f["matched_recall"]),
                num(c.get("map50")), num(c["params"]), f"{r['macs']:.2f}x", f"{r['latency']:.2f}x",
                num((c.get("map50") or 0) * 1000 / c["latency_ms"], 1), without, ft]))
    rows.sort(key=lambda t: (float(t[0]), t[1]))
    return markdown(["ratio", "criterion", "agreement mAP50", "matched recall", "true mAP50", "params",
                     "MAC ratio", "latency ratio", "mAP50 x FPS", "pass s w/o fine-tune", "fine-tune steps / s"],
                    [r for _, _, r in rows])


def unstructured_table(out: Path) -> str:
    pairs = grid_reports("digitdet-unstructured.yaml", {"prune.amount": [0.5]}, out / "unstructured",
                         overrides=["prune.targets=null"])
    rows = []
    for _, rep in pairs:
        sec, r, f = section(rep, "prune.unstructured"), rep["ratios"], rep["fidelity"]
        label = "size only" if 0.9 <= r["latency"] <= 1.1 else "measured"
        rows.append(["unstructured L1 50%", pct(sec.get("targeted_sparsity")), pct(sec.get("overall_sparsity")),
                     num(f["agreement_map50"]), f"{r['latency']:.2f}x ({label})", "PASS" if f["passed"] else "FAIL"])
    return markdown(["recipe", "sparsity (pruned layers)", "sparsity (all params)", "agreement mAP50",
                     "latency ratio", "check"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-prune"))
    ap.add_argument("--tables", default="1,2,3")
    ap.add_argument("--ratios", default="0.7,0.8,0.9")
    args = ap.parse_args()
    tables = set(args.tables.split(","))
    if "1" in tables:
        print("### digitdet: structured L2 50% + distillation\n\n" + structured_table(args.out) + "\n")
    if "3" in tables:
        print("### digitdet: unstructured 50%\n\n" + unstructured_table(args.out) + "\n")
    if "2" in tables:
        ratios = [float(r) for r in args.ratios.split(",")]
        print("### digitdet: fmap_cluster vs L1 (same fine-tune budget)\n\n" + criteria_table(args.out, ratios) + "\n")


if __name__ == "__main__":
    main()
