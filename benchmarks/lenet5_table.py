"""The classic pruning table on LeNet-5: iterative prune + fine-tune versus pruning alone.

For every ratio (fraction of filters/neurons removed from each layer but the classifier)
and criterion, two sweeps of ``recipes/lenet5-iterative-sweep.yaml`` run:

* iterative: the ratio reached in 5 rounds, each followed by fine-tuning at lr/10;
* one-shot: the same ratio in one step, no fine-tuning (``prune.steps=1``, ``prune.finetune=null``).

Prints a markdown table (accuracy on digits/val, params, MACs, ONNX Runtime latency) and
writes it to ``<out>/table.md``. Points are cached by the sweep, so a rerun is instant.

    python benchmarks/lenet5_table.py [--ratios 0.5,0.6,0.7,0.8,0.9] [--criteria l1,l2] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "lenet5-iterative-sweep.yaml"
ONE_SHOT = ["prune.steps=1", "prune.finetune=null"]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(iterative: list[dict], one_shot: list[dict], baseline: dict | None) -> str:
    """Markdown: one row per (ratio, criterion), accuracy with and without fine-tuning."""
    from compress.report.fmt import fmt

    head = ["ratio", "criterion", "params", "MACs", "latency (ms)", "speed-up",
            "top-1, 5-step prune + fine-tune", "top-1, pruned only"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if baseline:
        lines.append(f"| 0 (original) | - | {fmt(baseline.get('params'))} | {fmt(baseline.get('macs'))} | "
                     f"{baseline['latency_ms']:.4f} | 1.00x | {_pct(baseline.get('accuracy'))} | "
                     f"{_pct(baseline.get('accuracy'))} |")
    shot = {(r["prune.ratio"], r["prune.criterion"]): r for r in one_shot}
    for r in iterative:
        o = shot.get((r["prune.ratio"], r["prune.criterion"]), {})
        lat = f"{r['latency_ms']:.4f}" if r.get("latency_ms") is not None else "-"
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        params = fmt(r.get("params")) + (f" ({_pct(1 / r['params_x'])})" if r.get("params_x") else "")
        macs = fmt(r.get("macs")) + (f" ({_pct(1 / r['macs_x'])})" if r.get("macs_x") else "")
        lines.append(f"| {r['prune.ratio']} | {r['prune.criterion']} | {params} | {macs} | {lat} | {speed} | "
                     f"{_pct(r.get('accuracy'))} | {_pct(o.get('accuracy'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    import torch

    from compress.sweep import sweep

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--criteria", default="l1,l2")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "lenet5-table"))
    ap.add_argument("--force", action="store_true", help="rerun cached points")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # LeNet-5 trains faster on one thread than on two shared cores

    grid = {"prune.ratio": args.ratios.split(","), "prune.criterion": args.criteria.split(",")}
    out = Path(args.out)
    iterative = sweep(RECIPE, grid, out / "iterative", force=args.force)
    one_shot = sweep(RECIPE, grid, out / "one-shot", force=args.force, base_overrides=ONE_SHOT)
    import json

    baseline = json.loads((out / "iterative" / "sweep.json").read_text()).get("baseline")
    text = table(iterative, one_shot, baseline)
    (out / "table.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
