"""Shared helpers of the benchmark scripts: run a recipe grid (cached) and format tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def grid_reports(recipe: str, grid: dict[str, list], out: Path, overrides=()) -> list[tuple[dict, dict]]:
    """Run ``recipe`` over ``grid`` with the cached sweep; return (point, full report) pairs."""
    from compress.sweep import sweep

    rows = sweep(ROOT / "recipes" / recipe, grid, out, base_overrides=list(overrides), quiet=True, plots=False)
    pairs = []
    for row in rows:
        path = out / row["point"] / "report.json"
        if row.get("error") or not path.is_file():
            print(f"{recipe} {row['point']}: failed: {row.get('error') or 'no report'}", file=sys.stderr)
            continue
        pairs.append((row, json.loads(path.read_text())))
    return pairs


def quiet_session(path: Path, threads: int):
    """An ONNX Runtime CPU session like ``compress.runtime.session.make_session``'s, but whose idle
    intra-op threads sleep instead of spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def remeasure(paths: dict[str, Path], runs: int = 200, threads: int = 2) -> dict[str, float]:
    """Median ONNX Runtime latency (ms) of several files measured together, interleaved, in this process.

    The sessions do not spin: with several sessions in one process, the spinning threads of the
    one that just ran take cores from the next (on 2 cores digitdet's original measured 7.5 ms
    beside the pruned model, 3.5-3.8 ms alone or with spinning off), which inflates ratios.
    Every model of a table in one series makes their ratios comparable.
    """
    from compress.runtime.latency import compare_latency

    sessions = {k: quiet_session(v, threads) for k, v in paths.items()}
    stats = compare_latency(sessions, None, threads=threads, warmup=20, runs=runs)
    return {k: v["median_ms"] for k, v in stats.items()}


def finetune_stats(sec: dict) -> tuple[int, float]:
    """(steps, seconds) of all fine-tuning rounds recorded in a prune.structured section."""
    fts = [r["finetune"] for r in sec.get("rounds", []) if r.get("finetune")]
    return sum(f.get("steps", 0) for f in fts), sum(f.get("seconds", 0.0) for f in fts)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def num(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v >= 1e4):
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"
    return f"{v:.{digits}f}"


def markdown(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def section(report: dict, kind: str) -> dict:
    """The first pass section whose type starts with ``kind`` (e.g. 'prune.structured')."""
    for label, sec in (report.get("passes") or {}).items():
        if isinstance(sec, dict) and (sec.get("type", label)).startswith(kind):
            return sec
    return {}
