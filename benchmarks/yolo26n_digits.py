"""YOLO26n (the built-in yolo26n-digits): fp32 vs int8 vs pruned 50% + int8, SiLU and ReLU, side by side.

Runs recipes/yolo26n-int8.yaml, recipes/yolo26n-prune50-int8.yaml (SiLU kept),
recipes/yolo26n-prune50-relu-int8.yaml (SiLU -> ReLU, then the same pruning) and
recipes/yolo26n-prune40-relu-int8.yaml (SiLU -> ReLU, 40% pruned), each a full
`compress run` (passes, ONNX export, fidelity check of the exported file); exports each pruned
torch model (before int8) for reference; then re-measures the original fp32 ONNX and every other
file together in this process: ONNX Runtime sessions that do not spin, all files interleaved in
every round, several rounds. A speed-up is original / model per round; the table gives its median
over the rounds and the min-max spread, so the noise of a shared machine is visible.
torch is pinned to 1 thread.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/yolo26n_digits.py [--out runs/bench-yolo26n] [--force]
        [--rounds 7] [--runs 100] [--threads 1 2]

Runs are cached under --out (a folder with a report.json is reused unless --force).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import ROOT, markdown, num, quiet_session

RECIPES = {"int8": "yolo26n-int8", "prune50+int8": "yolo26n-prune50-int8",
           "prune50 relu+int8": "yolo26n-prune50-relu-int8", "prune40 relu+int8": "yolo26n-prune40-relu-int8"}
# table rows: (label, recipe label whose run it comes from, fp32 before int8?)
ROWS = [("int8", "int8", False),
        ("prune 50% fp32, SiLU (before int8)", "prune50+int8", True),
        ("prune 50% + int8, SiLU", "prune50+int8", False),
        ("SiLU->ReLU + prune 50% fp32 (before int8)", "prune50 relu+int8", True),
        ("**SiLU->ReLU + prune 50% + int8**", "prune50 relu+int8", False),
        ("SiLU->ReLU + prune 40% fp32 (before int8)", "prune40 relu+int8", True),
        ("SiLU->ReLU + prune 40% + int8", "prune40 relu+int8", False)]


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


def timed_rounds(files: dict[str, Path], threads: int, rounds: int, runs: int) -> dict[str, list[float]]:
    """Per-round median latency (ms) of every file; all files interleaved in each round, one set of
    sessions for all rounds."""
    from compress.runtime.latency import compare_latency

    sessions = {k: quiet_session(v, threads) for k, v in files.items()}
    out: dict[str, list[float]] = {k: [] for k in files}
    for r in range(rounds):
        stats = compare_latency(sessions, None, threads=threads, warmup=20 if r == 0 else 5, runs=runs)
        for k, v in stats.items():
            out[k].append(v["median_ms"])
    return out


def cell(rounds: dict[str, list[float]], label: str) -> str:
    """'median ms (speed-up median, min-max over rounds)'."""
    ms, base = rounds[label], rounds["fp32"]
    ups = [b / m for b, m in zip(base, ms)]
    if label == "fp32":
        return f"{statistics.median(ms):.2f} (1.00x)"
    return f"{statistics.median(ms):.2f} (**{statistics.median(ups):.2f}x**, {min(ups):.2f}-{max(ups):.2f})"


def table(out: Path, force: bool, rounds: int, runs: int, threads: list[int]) -> str:
    reports = {label: run_recipe(name, out, force) for label, name in RECIPES.items()}
    files = {"fp32": out / RECIPES["int8"] / "original.onnx"}
    for label, src, before_int8 in ROWS:
        where = out / RECIPES[src]
        files[label] = pruned_fp32(where) if before_int8 else where / "model.onnx"
    lat = {t: timed_rounds(files, t, rounds, runs) for t in threads}
    o = reports["int8"]["original"]
    rows = [["original fp32 (SiLU)", "1.000 (itself)", num(o.get("map50")), num(o["params"]),
             f"{o['onnx_bytes'] / 1e6:.2f}", *(cell(lat[t], "fp32") for t in threads), "-", "-"]]
    for label, src, before_int8 in ROWS:
        rep = reports[src]
        if before_int8:  # no run of its own: params from the run, size from the exported file
            cells = ["-", "-", num(rep["compressed"]["params"]), f"{files[label].stat().st_size / 1e6:.2f}"]
            own, check = "-", "-"
        else:
            c, f = rep["compressed"], rep["fidelity"]
            cells = [num(f.get("agreement_map50")), num(c.get("map50")), num(c["params"]),
                     f"{c['onnx_bytes'] / 1e6:.2f}"]
            own = f"{rep['ratios']['latency']:.2f}x"
            check = (f"{'PASS' if f.get('passed') else 'FAIL'} (recall {f.get('matched_recall', 0):.3f})")
        rows.append([label, *cells, *(cell(lat[t], label) for t in threads), own, check])
    head = ["model", "agreement mAP50", "true mAP50 (val 200)", "params", "ONNX MB",
            *(f"latency ms {t} thread{'s' if t > 1 else ''} (speed-up, min-max)" for t in threads),
            "run's own latency ratio (1 thread)", "check"]
    cpu = reports["int8"].get("environment", {}).get("cpu", {})
    return markdown(head, rows) + (
        f"\n\nAll files re-measured together in this process: {rounds} rounds x {runs} interleaved runs of "
        "every file (ONNX Runtime CPU, sessions that do not spin); latency = median of the round medians; "
        "speed-up = original / model per round, median and min-max over the rounds. "
        f"CPU: {cpu.get('model', '?')}, VNNI: {cpu.get('has_vnni', '?')}. \"run's own latency ratio\" is the one "
        "timing inside each run, under whatever load the machine had then; read the re-measured columns.")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-yolo26n"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=100, help="interleaved runs of every file per round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--force", action="store_true", help="rerun the recipes even when cached")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("### yolo26n-digits: fp32 vs int8 vs prune 50% + int8 (SiLU and ReLU)\n\n"
          + table(args.out, args.force, args.rounds, args.runs, args.threads) + "\n")


if __name__ == "__main__":
    main()
