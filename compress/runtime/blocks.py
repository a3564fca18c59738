"""Per-block latency of a model's blocks against a light replacement (``compress profile --blocks``).

The table of the YOLOv9 Raspberry Pi study: for every block instance (the model's top-level
building blocks, or those a ``target`` pattern matches), its input/output shape and the
torch CPU time of the old block and of a freshly built light block (``compress.blocks``)
on the block's own recorded input, old and new timed alternately (median of ``runs``
runs each, after a warm-up), and the speed-up old / new. Weights do not change dense
kernels' time, so the new block keeps its random initialisation. ``runtime="onnxruntime"``
exports each block alone to ONNX and times the pair with
:func:`compress.runtime.latency.compare_latency` instead (what a deployment runs; torch's
CPU kernel choice differs between shapes, ONNX Runtime fuses Conv+BN).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def _time_pair(old: nn.Module, new: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> tuple[float, ...]:
    """Median and min ms of ``old(x)`` and ``new(x)``, called alternately (order swapped every round)."""
    times = {0: [], 1: []}
    blocks = (old, new)
    with torch.inference_mode():
        for _ in range(warmup):
            old(x), new(x)
        for r in range(runs):
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                blocks[k](x)
                times[k].append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times[0])), float(np.median(times[1])), float(min(times[0])), float(min(times[1]))


def _time_pair_ort(old: nn.Module, new: nn.Module, x: torch.Tensor, runs: int, warmup: int,
                   threads: int) -> tuple[float, ...]:
    """Median and min ms of the two blocks exported alone to ONNX, timed interleaved in ONNX Runtime."""
    import io
    import tempfile
    import warnings
    from pathlib import Path

    from compress.runtime.latency import compare_latency

    with tempfile.TemporaryDirectory(prefix="compress-blocks-") as tmp:
        paths = {}
        for key, block in (("old", old), ("new", new)):
            buf = io.BytesIO()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(block, (x,), buf, input_names=["x"], opset_version=17, dynamo=False,
                                  do_constant_folding=True)
            paths[key] = Path(tmp) / f"{key}.onnx"
            paths[key].write_bytes(buf.getvalue())
        res = compare_latency(paths, x.numpy(), threads=threads, warmup=warmup, runs=runs)
    return res["old"]["median_ms"], res["new"]["median_ms"], res["old"]["min_ms"], res["new"]["min_ms"]


def block_macs(block: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one call of ``block`` on ``x`` (its conv and linear layers)."""
    from compress.hooks import run_with_hooks
    from compress.runtime.profile import _WEIGHTED, _macs

    total = [0]

    def hook(module, args, output):
        total[0] += _macs(module, args[0], output)

    run_with_hooks(block, x, [m.register_forward_hook(hook) for m in block.modules() if isinstance(m, _WEIGHTED)])
    return total[0]


def block_table(model: nn.Module, adapter, to: str = "elan2", target: str | None = None, *, runs: int = 30,
                warmup: int = 5, seed: int = 0, runtime: str = "torch",
                threads: int = 1) -> tuple[list[dict], list[dict]]:
    """(rows, skipped): a row per block instance that ``to`` can replace, a ``{name, type, reason}``
    per block it cannot. ``runtime`` torch uses torch's current thread count (wrap in
    ``torch_threads``); onnxruntime uses ``threads``."""
    from compress.blocks.instances import find_instances, n_params, plan_replacement, probe, top_level_blocks
    from compress.errors import PassError

    from compress.blocks import names

    if to not in names():
        raise PassError(f"profile --blocks: unknown block '{to}' (known: {', '.join(names())})")
    instances = find_instances(model, target) if target else top_level_blocks(model)
    if not instances:
        raise PassError(f"profile --blocks: {'target ' + repr(target) if target else 'the model'} "
                        "matches no block")
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(adapter.example_input(1).shape, generator=gen)
    probe(model, adapter, instances, x, keep_input=True)
    rows, skipped = [], []
    model.eval()
    for k, inst in enumerate(instances):
        new = plan_replacement(inst, to, seed=seed + k)
        if isinstance(new, str):
            skipped.append({"name": inst.name, "type": type(inst.module).__name__, "reason": new})
            continue
        x = inst.extra["input"]
        if runtime == "onnxruntime":
            try:
                old_ms, new_ms, old_min, new_min = _time_pair_ort(inst.module, new, x, runs, warmup, threads)
            except Exception as e:  # a block torch.onnx cannot export alone: say so, time the others
                msg = str(e).splitlines()[0][:120] if str(e) else ""
                skipped.append({"name": inst.name, "type": type(inst.module).__name__,
                                "reason": f"ONNX export or run failed ({type(e).__name__}: {msg})"})
                continue
        else:
            old_ms, new_ms, old_min, new_min = _time_pair(inst.module, new, x, runs, warmup)
        rows.append({"name": inst.name, "type": type(inst.module).__name__, "new_type": to, "runtime": runtime,
                     "in_shape": list(inst.in_shape), "out_shape": list(inst.out_shape),
                     "params_old": n_params(inst.module), "params_new": n_params(new),
                     "macs_old": block_macs(inst.module, x), "macs_new": block_macs(new, x),
                     "old_ms": round(old_ms, 4), "new_ms": round(new_ms, 4),
                     "speedup": round(old_ms / new_ms, 3) if new_ms > 0 else None,
                     "old_min_ms": round(old_min, 4), "new_min_ms": round(new_min, 4),
                     "speedup_min": round(old_min / new_min, 3) if new_min > 0 else None})
    return rows, skipped


def print_block_table(rows: list[dict], skipped: list[dict], threads: int, runs: int, console=None,
                      runtime: str = "torch") -> None:
    from rich.console import Console
    from rich.table import Table

    from compress.report.fmt import human

    where = "torch CPU" if runtime == "torch" else "ONNX Runtime CPU, each block exported alone"
    t = Table(title=f"Per-block latency, {where}, {threads} thread(s), median of {runs} interleaved runs",
              title_justify="left")
    for col in ("block", "type", "new", "input", "output"):
        t.add_column(col, no_wrap=True)
    for col in ("params old -> new", "MACs ratio", "old ms", "new ms", "speed-up", "speed-up of mins"):
        t.add_column(col, justify="right")
    shape = lambda s: "x".join(str(v) for v in s)  # noqa: E731
    for r in rows:
        t.add_row(r["name"], r["type"], r["new_type"], shape(r["in_shape"]), shape(r["out_shape"]),
                  f"{human(r['params_old'])} -> {human(r['params_new'])}",
                  f"{r['macs_old'] / r['macs_new']:.2f}x" if r["macs_new"] else "-",
                  f"{r['old_ms']:.3f}", f"{r['new_ms']:.3f}",
                  f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                  f"{r['speedup_min']:.2f}x" if r["speedup_min"] else "-")
    if rows:
        old, new = sum(r["old_ms"] for r in rows), sum(r["new_ms"] for r in rows)
        t.add_row("all", "", "", "", "", f"{human(sum(r['params_old'] for r in rows))} -> "
                  f"{human(sum(r['params_new'] for r in rows))}",
                  f"{sum(r['macs_old'] for r in rows) / max(1, sum(r['macs_new'] for r in rows)):.2f}x",
                  f"{old:.3f}", f"{new:.3f}",
                  f"{old / new:.2f}x" if new > 0 else "-", "")
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or pipe: do not wrap the table at 80 columns
            console = Console(width=160)
    console.print(t)
    if rows:
        console.print("ms: median. On a busy machine long calls are pre-empted more often than short ones, which "
                      "inflates large speed-ups (medians and mins alike); the MACs ratio is the noise-free reference.")
    for s in skipped:
        console.print(f"skipped {s['name']} ({s['type']}): {s['reason']}")
