"""Does the per-layer latency table predict non-uniformly pruned models? (compress.search.latency_table)

Builds the fp32 and int8 tables of a built-in model at 1 thread, prunes copies with random
per-layer ratios (``prune.structured`` ``layer_ratios``), exports (and for int8 quantizes)
each, and compares the table's prediction with the latency measured side by side in one
process (:func:`compress.runtime.latency.compare_latency`). Prints mean / max abs % error.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency_table_check.py [digitdet|yolov8n-digits] [N] [ROUND_TO]
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def load(name: str):
    from compress.models import load_model
    from compress.recipe import ModelSpec

    return load_model(ModelSpec(builtin=name))  # digitdet, or yolov8n-digits (needs ultralytics)


def random_configs(model, adapter, n: int, seed: int = 0) -> list[dict[str, float]]:
    from torch import nn

    base = adapter.rewrite_for_pruning(copy.deepcopy(model))
    protected = set(map(id, adapter.protected_layers(base)))
    names = [n_ for n_, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in protected]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lo, hi = sorted(rng.uniform(0.0, 0.85, size=2))
        out.append({k: round(float(rng.uniform(max(lo, 0.05), max(hi, lo + 0.1))), 3) for k in names})
    return out


def prune_with(model, adapter, ratios: dict[str, float], tmp: Path, round_to: int = 8):
    from compress.context import Context
    from compress.passes import get_pass

    cls = get_pass("prune.structured")
    p = cls(cls.Config(type="prune.structured", ratio=0.5, layer_ratios=ratios, round_to=round_to))
    m = copy.deepcopy(model)
    ctx = Context(adapter=adapter, reference=model, calibration=None, validation=None, work_dir=tmp, model=m)
    return p.apply(m, ctx).eval()


def main(name: str = "digitdet", n: int = 6, threads: int = 1, runs: int = 30, round_to: int = 8) -> dict:
    from compress.export import export_onnx
    from compress.runtime.latency import compare_latency
    from compress.runtime.profile import onnx_node_times_many
    from compress.search.latency_table import _default_calibration, _quantize, build_table, format_table

    torch.set_num_threads(1)
    adapter, model = load(name)
    configs = random_configs(model, adapter, n)
    result = {"model": name, "threads": threads, "round_to": round_to}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pruned = [prune_with(model, adapter, c, tmp, round_to) for c in configs]
        calib = _default_calibration(adapter, 32)
        for fmt in ("fp32", "int8"):
            t0 = time.perf_counter()
            table = build_table(model, adapter, threads=threads, fmt=fmt, runs=runs, progress=print, round_to=round_to)
            build_s = time.perf_counter() - t0
            paths = {}
            for i, m in enumerate(pruned):
                p = export_onnx(m, adapter, tmp / f"{fmt}{i}.onnx")
                if fmt == "int8":
                    p = _quantize(p, m, adapter, calib, None, tmp / f"q{i}")
                paths[str(i)] = p
            meas = compare_latency(paths, threads=threads, runs=runs * 2)
            nodes = onnx_node_times_many(paths, threads=threads, runs=runs)
            rows = []
            for i, m in enumerate(pruned):
                row = {"config": i, "params": sum(q.numel() for q in m.parameters())}
                pred, got = sum(table.node_ms(m).values()), sum(v["ms"] for v in nodes[str(i)].values())
                row.update({"pred_nodes": pred, "meas_nodes": got, "err_nodes": 100 * (pred - got) / got})
                for st in ("median", "min"):
                    pred, got = table.predict_ms(m, stat=st), meas[str(i)][f"{st}_ms"]
                    row.update({f"pred_{st}": pred, f"meas_{st}": got, f"err_{st}": 100 * (pred - got) / got})
                rows.append(row)
            result[fmt] = {"build_s": build_s, "rows": rows, "uniform": table.measured,
                           "calibration": table.calibration, "notes": table.notes,
                           "conditions": meas["0"].get("conditions")}
            print(format_table(table, top=12))
            for st in ("nodes", "median", "min"):
                errs = [abs(r[f"err_{st}"]) for r in rows]
                result[fmt][f"mean_abs_pct_{st}"], result[fmt][f"max_abs_pct_{st}"] = np.mean(errs), np.max(errs)
                print(f"{fmt} ({st}): build {build_s:.0f} s; mean |err| {np.mean(errs):.1f}%, max {np.max(errs):.1f}%")
            for r in rows:
                print(f"  config {r['config']} ({r['params']} params): predicted / measured kernel sum "
                      f"{r['pred_nodes']:.3f} / {r['meas_nodes']:.3f} ms ({r['err_nodes']:+.1f}%), median "
                      f"{r['pred_median']:.3f} / {r['meas_median']:.3f} ms ({r['err_median']:+.1f}%), min "
                      f"{r['pred_min']:.3f} / {r['meas_min']:.3f} ms ({r['err_min']:+.1f}%)")
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    res = main(args[0] if args else "digitdet", int(args[1]) if len(args) > 1 else 6,
               round_to=int(args[2]) if len(args) > 2 else 8)
    print(json.dumps(res, indent=1, default=str))
