"""Pruning figures on the built-in detector, original and pruned measured in one process.

Three tables (each point is a full `compress run`: passes, ONNX export, fidelity check,
interleaved ONNX Runtime latency of original.onnx and model.onnx in the same process):

1. structured L2 at 50% + distillation fine-tune: agreement, true mAP, MAC and latency ratios,
   and the time of the pruning pass without its fine-tuning;
2. fmap_cluster (K-means++ feature-map clustering) vs L1 at 70/80/90%, same fine-tune budget;
3. unstructured 50% (uniform, and the recipe's per-type amounts): sparsity, zlib-compressed
   size and latency ratio (size only: dense kernels do not skip zeros).

Latency is also re-measured here, every model of a table together in one interleaved series,
at 2 threads (the recipes' setting) and 1 thread, with sessions whose idle threads do not spin
(see ``_common.remeasure``: spinning sessions in one process slow each other down).

    python benchmarks/prune_digitdet.py [--out runs/bench-prune] [--tables 1,2,3] [--ratios 0.7,0.8,0.9]

Results are cached per point under --out, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import finetune_stats, grid_reports, markdown, num, pct, remeasure, section


def _prune_cost(sec: dict) -> tuple[str, str, str]:
    """(surgery s, pass s without fine-tuning, fine-tune "steps / s") of a prune.structured section."""
    steps, ft_s = finetune_stats(sec)
    without = sec["seconds"] - ft_s if "seconds" in sec else None
    return (num(sec.get("prune_seconds"), 2), num(without, 1),
            f"{steps} / {ft_s:.0f}" if steps else "-")


def structured_table(out: Path) -> str:
    pairs = grid_reports("digitdet-prune50-distill.yaml", {"prune.ratio": [0.5]}, out / "l2-50")
    rows = []
    for point, rep in pairs:
        o, c, r, f = rep["original"], rep["compressed"], rep["ratios"], rep["fidelity"]
        surgery, without, ft = _prune_cost(section(rep, "prune.structured"))
        run = out / "l2-50" / point["point"]
        files = {"original": run / "original.onnx", "pruned": run / "model.onnx"}
        again = {t: remeasure(files, threads=t) for t in (2, 1)}
        rows.append(["L2 50% + distill", num(f["agreement_map50"]), num(f["matched_recall"]),
                     num(o.get("map50")), num(c.get("map50")), f"{num(o['params'])} -> {num(c['params'])}",
                     f"{num(o['macs'])} -> {num(c['macs'])} ({r['macs']:.2f}x)",
                     f"{o['latency_ms']:.2f} -> {c['latency_ms']:.2f} ({r['latency']:.2f}x)",
                     *(f"{a['original']:.2f} -> {a['pruned']:.2f} ({a['original'] / a['pruned']:.2f}x)"
                       for a in again.values()),
                     surgery, without, ft, "PASS" if f["passed"] else "FAIL"])
    note = ("\n\n*original and pruned re-measured together in this process (ONNX Runtime, 200 interleaved "
            "runs, sessions that do not spin); the run's own figure comes from spinning sessions.")
    return markdown(["recipe", "agreement mAP50", "matched recall", "mAP50 orig", "mAP50 pruned", "params",
                     "MACs (ratio)", "latency ms, in the run (ratio)", "re-measured*, 2 threads",
                     "re-measured*, 1 thread", "surgery s", "pass s w/o fine-tune", "fine-tune steps / s",
                     "check"], rows) + note


def criteria_table(out: Path, ratios: list[float]) -> str:
    found = []
    for crit, recipe in (("fmap_cluster", "digitdet-fmap-cluster-sweep.yaml"), ("l1", "digitdet-l1-sweep.yaml")):
        for point, rep in grid_reports(recipe, {"prune.ratio": ratios}, out / crit):
            found.append((float(point["prune.ratio"]), crit, out / crit / point["point"], rep))
    if not found:
        return "(no points)"
    files = {"original": found[0][2] / "original.onnx"}
    files.update({f"{crit}@{ratio:g}": where / "model.onnx" for ratio, crit, where, _ in found})
    lat = {t: remeasure(files, threads=t) for t in (2, 1)}
    rows = []
    for ratio, crit, _, rep in sorted(found, key=lambda t: (t[0], t[1])):
        c, r, f = rep["compressed"], rep["ratios"], rep["fidelity"]
        ms = {t: lat[t][f"{crit}@{ratio:g}"] for t in lat}
        _, without, ft = _prune_cost(section(rep, "prune.structured"))
        rows.append([f"{ratio:g}", crit, num(f["agreement_map50"]), num(f["matched_recall"]), num(c.get("map50")),
                     num(c["params"]), f"{r['macs']:.2f}x",
                     " / ".join(f"{lat[t]['original'] / ms[t]:.2f}x" for t in (1, 2)),
                     num((c.get("map50") or 0) * 1000 / ms[1], 1), without, ft])
    return markdown(["ratio", "criterion", "agreement mAP50", "matched recall", "true mAP50", "params",
                     "MAC ratio", "latency ratio* 1 / 2 threads", "mAP50 x FPS* (1 thread)", "pass s w/o fine-tune",
                     "fine-tune steps / s"],
                    rows) + (f"\n\n*all {len(found)} models and the original re-measured together in this process "
                             "(ONNX Runtime, 200 interleaved runs, sessions that do not spin; original "
                             f"{lat[1]['original']:.2f} ms at 1 thread, {lat[2]['original']:.2f} ms at 2).")


def _zipped(path: Path) -> int:
    """Bytes of a file after zlib (level 6): what zeroed weights save on disk or on the wire."""
    import zlib

    return len(zlib.compress(path.read_bytes(), 6))


def unstructured_table(out: Path) -> str:
    variants = [("L1 50% uniform", out / "unstructured", ["prune.targets=null"]),
                ("L1 per type (recipe: Conv2d 50%, C2f 30%, SPPF 10%)", out / "unstructured-per-type", [])]
    rows = []
    for name, where, overrides in variants:
        for point, rep in grid_reports("digitdet-unstructured.yaml", {"prune.amount": [0.5]}, where,
                                       overrides=overrides):
            sec, r, f = section(rep, "prune.unstructured"), rep["ratios"], rep["fidelity"]
            run = where / point["point"]
            zipped = _zipped(run / "original.onnx") / _zipped(run / "model.onnx")
            again = remeasure({"original": run / "original.onnx", "pruned": run / "model.onnx"})
            lat = f"{r['latency']:.2f}x / {again['original'] / again['pruned']:.2f}x (size only)"
            rows.append([name, pct(sec.get("targeted_sparsity")), pct(sec.get("overall_sparsity")),
                         num(f["agreement_map50"]), f"{r['onnx_bytes']:.2f}x", f"{zipped:.2f}x", lat,
                         "PASS" if f["passed"] else "FAIL"])
    return markdown(["unstructured (no fine-tune)", "sparsity (pruned layers)", "sparsity (all params)",
                     "agreement mAP50", "ONNX bytes ratio", "zlib-compressed ratio",
                     "latency ratio, run / re-measured*", "check"], rows)


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
