"""Static vs gradual pruning of the built-in detector at 50 / 70 / 90% (issue 13).

The Raspberry Pi 4 study's "static vs dynamic" comparison as one recipe pair,
``recipes/digitdet-static-70.yaml`` (prune once, then fine-tune) and
``recipes/digitdet-gradual-70.yaml`` (the same plan and fine-tune budget, the pruned
fraction rising during the fine-tune on Zhu & Gupta's cubic schedule, masked channels
removed at the end), swept over ``prune.ratio``. Each point is a full ``compress run``
(passes, ONNX export, fidelity check of the exported file, peak inference memory).
``--unstructured`` adds the same comparison for ``prune.unstructured`` (magnitude, held
masks; size only: dense kernels do not skip zeros).

Latency is re-measured here: each pruned model interleaved with the fp32 original in one
process (ONNX Runtime, sessions that do not spin, median of ``--runs``). Peak memory is the
run's own: inference (resident memory of a separate process, minus the bare process) and
the peak of the passes (fine-tune included).

    python benchmarks/gradual_vs_static.py [--out runs/bench-gradual] [--ratios 0.5,0.7,0.9]
        [--set prune.finetune.steps=150] [--unstructured] [--threads 1] [--arms static,gradual]

``--set`` applies to both arms (the budget stays the same). Points are cached under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import ROOT, markdown, num, pct, remeasure, section

ARMS = {"static": "digitdet-static-70.yaml", "gradual": "digitdet-gradual-70.yaml"}


def _unstructured_recipe(out: Path, arm: str) -> Path:
    """The structured recipe of ``arm`` with its pass swapped for prune.unstructured (same fine-tune)."""
    import yaml

    from compress import yamlio

    raw = yamlio.load_file(ROOT / "recipes" / ARMS[arm])
    p = raw["passes"][0]
    new = {"type": "prune.unstructured", "amount": p["ratio"], "finetune": p["finetune"]}
    if p.get("schedule") == "gradual":
        new.update(schedule="gradual", gradual=p.get("gradual", {}))
    raw["passes"] = [new]
    raw["name"] = f"digitdet-unstructured-{arm}"
    path = out / f"unstructured-{arm}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _points(recipe: Path, key: str, ratios, out: Path, overrides, threads: int):
    import json

    from compress.sweep import sweep

    rows = sweep(recipe, {key: ratios}, out, base_overrides=[*overrides, f"benchmark.threads={threads}"],
                 quiet=True, plots=False)
    for row in rows:
        path = out / row["point"] / "report.json"
        if row.get("error") or not path.is_file():
            print(f"{recipe.name} {row['point']}: failed: {row.get('error') or 'no report'}")
            continue
        yield row, out / row["point"], json.loads(path.read_text())


def _finetune(sec: dict) -> dict:
    g = sec.get("gradual") or sec
    if "finetune" in g:
        return g["finetune"]
    rounds = sec.get("rounds") or [{}]
    return rounds[0].get("finetune", {})


def table(kind: str, out: Path, ratios, overrides, threads: int, runs: int, arms=tuple(ARMS)) -> str:
    rows = []
    for arm, name in ARMS.items():
        if arm not in arms:
            continue
        if kind == "structured":
            recipe, key, passtype = ROOT / "recipes" / name, "prune.ratio", "prune.structured"
        else:
            recipe, key, passtype = _unstructured_recipe(out, arm), "prune.amount", "prune.unstructured"
        for point, run, rep in _points(recipe, key, ratios, out / f"{kind}-{arm}", overrides, threads):
            o, c, f = rep["original"], rep["compressed"], rep["fidelity"]
            sec = section(rep, passtype)
            ft = _finetune(sec)
            lat = remeasure({"original": run / "original.onnx", "pruned": run / "model.onnx"},
                            runs=runs, threads=threads)
            shape = (f"{num(o['params'])} -> {num(c['params'])}" if kind == "structured"
                     else f"{pct(sec.get('targeted_sparsity'))} / {pct(sec.get('overall_sparsity'))}")
            gsec = sec.get("gradual") or {}
            rows.append([arm, point[key], num(f["agreement_map50"]), num(f["matched_recall"]), shape,
                         f"{c['macs'] / o['macs']:.3f}" if kind == "structured" else "1 (size only)",
                         f"{lat['original']:.2f} -> {lat['pruned']:.2f} ({lat['pruned'] / lat['original']:.2f}x)",
                         f"{num(o.get('peak_memory_mb'), 1)} -> {num(c.get('peak_memory_mb'), 1)}",
                         num(rep.get("passes_peak_memory_mb"), 0),
                         f"{ft.get('steps', '-')} / {ft.get('seconds', 0):.0f}",
                         f"{gsec['surgery_max_abs_diff']:.1e}" if kind == "structured" and gsec else "-",
                         "PASS" if f["passed"] else "FAIL"])
    rows.sort(key=lambda r: (r[1], r[0] != "static"))
    head = ["arm", "ratio" if kind == "structured" else "amount", "agreement mAP50", "matched recall",
            "params" if kind == "structured" else "sparsity (pruned layers / all)", "MACs vs fp32",
            f"latency ms vs fp32 ({threads} thread{'s' if threads > 1 else ''}, interleaved)",
            "peak inference MB (orig -> pruned)", "passes peak MB", "fine-tune steps / s",
            "surgery max diff", "check"]
    return markdown(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-gradual")
    ap.add_argument("--ratios", default="0.5,0.7,0.9")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--unstructured", action="store_true", help="add the prune.unstructured rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200, help="interleaved latency runs per model")
    ap.add_argument("--arms", default="static,gradual", help="run only these arms (e.g. one per process)")
    args = ap.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    kinds = ["structured"] + (["unstructured"] if args.unstructured else [])
    for kind in kinds:
        print(f"\n### {kind}: static vs gradual (same fine-tune budget)"
              + (f", --set {' '.join(args.overrides)}" if args.overrides else "") + "\n")
        print(table(kind, args.out, ratios, args.overrides, args.threads, args.runs, args.arms.split(",")))


if __name__ == "__main__":
    main()
