"""`compress search` against uniform pruning, at the same recovery budget.

For each model: the uniform recipe (digitdet: recipes/digitdet-prune50-int8.yaml, prune 50% + int8;
yolov8n-digits: recipes/yolov8n-prune50.yaml) run as-is, and `compress search` on the same recipe
at --target-speedup (its winner gets the recipe's full recovery). The fp32 ONNX original, the
uniform model and the searched model are then re-measured together in this process (ONNX
Runtime, 1 thread, interleaved runs, sessions that do not spin). efficiency = speed-up / MACs
ratio (1.0 would mean the latency falls as fast as the arithmetic).

    python benchmarks/search.py [--out runs/bench-search] [--target 2.5] [--yolo]
        [--search-dir digitdet=runs/search-digitdet-2.5x]     # reuse a search folder

Everything is cached under --out (runs and search candidates), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import ROOT, grid_reports, markdown, num, quiet_session

MODELS = {"digitdet": "digitdet-prune50-int8.yaml", "yolov8n-digits": "yolov8n-prune50.yaml"}


def searched(recipe: str, folder: Path, target: float, seed: int) -> dict:
    """The search's result (search.json), running (or resuming) it in ``folder``."""
    from compress.errors import CompressError
    from compress.search.config import make_config
    from compress.search.search import search

    done = folder / "search.json"
    if not done.is_file():
        cfg = make_config(target_speedup=target, min_agreement=0.90, seed=seed, threads=1)
        try:
            search(ROOT / "recipes" / recipe, folder, cfg, say=lambda m: print(m, file=sys.stderr))
        except CompressError as e:  # exit-3 outcomes still write search.json
            print(f"{recipe}: search: {e}", file=sys.stderr)
    return json.loads(done.read_text())


def timings(paths: dict[str, Path], runs: int = 300) -> dict[str, dict]:
    """Median and min ms of the files timed together, interleaved, 1 thread, sessions that do not spin."""
    from compress.runtime.latency import compare_latency

    sessions = {k: quiet_session(v, 1) for k, v in paths.items()}
    return compare_latency(sessions, None, threads=1, warmup=20, runs=runs)


def rows_for(model: str, out: Path, target: float, seed: int, search_dir: Path | None) -> list[list]:
    recipe = MODELS[model]
    pairs = grid_reports(recipe, {"benchmark.threads": [1]}, out / f"{model}-uniform")
    if not pairs:
        return []
    uni_dir = out / f"{model}-uniform" / pairs[0][0]["point"]
    uni = pairs[0][1]
    folder = search_dir or out / f"{model}-search"
    res = searched(recipe, folder, target, seed)
    win_dir = next(p for p in (folder / res["winner_dir"], ROOT / res["winner_dir"], folder / "winner")
                   if (p / "report.json").is_file())  # winner_dir is relative to the search folder
    win = json.loads((win_dir / "report.json").read_text())
    lat = timings({"original": uni_dir / "original.onnx", "uniform": uni_dir / "model.onnx",
                   "searched": win_dir / "model.onnx"})
    rows = []
    for name, rep, where in (("uniform 50%", uni, "uniform"), (f"searched {target:g}x", win, "searched")):
        sp = lat["original"]["median_ms"] / lat[where]["median_ms"]
        sp_min = lat["original"]["min_ms"] / lat[where]["min_ms"]
        macs = rep["ratios"]["macs"]
        f = rep["fidelity"]
        rows.append([model, name, f"{lat['original']['median_ms']:.2f} -> {lat[where]['median_ms']:.2f} ms",
                     f"**{sp:.2f}x** / {sp_min:.2f}x", f"{rep['ratios']['latency']:.2f}x",
                     num(f.get("agreement_map50")), num(f.get("matched_recall")),
                     f"{macs:.2f}x", f"{sp / macs:.2f}", f"{num(rep['original']['params'])} -> "
                     f"{num(rep['compressed']['params'])}", "PASS" if f.get("passed") else "FAIL"])
    rows[-1][1] += f" (pred. {res['winner'].get('predicted_speedup') or 0:.2f}x)"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-search"))
    ap.add_argument("--target", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--yolo", action="store_true", help="also the yolov8n-digits row (slow)")
    ap.add_argument("--search-dir", action="append", default=[], metavar="MODEL=DIR")
    args = ap.parse_args()
    dirs = {k: Path(v) for k, v in (s.split("=", 1) for s in args.search_dir)}
    rows = []
    for model in ["digitdet", *(["yolov8n-digits"] if args.yolo else [])]:
        rows += rows_for(model, args.out, args.target, args.seed, dirs.get(model))
    print(markdown(["model", "variant", "latency 1 thread (re-measured)", "speed-up vs fp32 original (median / min)",
                    "run's own ratio", "agreement mAP50", "matched recall", "MACs ratio", "efficiency", "params",
                    "check"], rows))


if __name__ == "__main__":
    main()
