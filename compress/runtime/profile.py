"""Per-layer cost of a model: parameters and MACs from torch, latency from ONNX Runtime.

Params and MACs come from forward hooks on convolution and linear layers (one forward
pass of ``adapter.example_input(1)``). Latency comes from ONNX Runtime's own profiler
(``enable_profiling``): each kernel's time is taken over several runs (median, first
run dropped) and attributed to the torch module whose scope the ONNX node name carries
(``compress.export`` keeps torch's ``/backbone/backbone.0/conv/Conv`` names; ORT's
fused nodes keep their first node's name). Nodes with no module scope get rows of
their own, so the latencies add up to the whole model's kernel time.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.hooks import adapter_forward_with_hooks

from compress.report.console import print_profile  # noqa: F401  (the CLI prints rows with it)

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-accumulates of one call, per image (the first dimension is the batch)."""
    per = out.shape[0] if out.dim() > 1 else 1
    if isinstance(module, nn.Linear):
        return int(out.numel() // per * module.in_features)
    k = math.prod(module.kernel_size)
    if getattr(module, "transposed", False):  # each input element feeds out_ch/groups * k outputs
        return int(inp.numel() // per * (module.out_channels // module.groups) * k)
    return int(out.numel() // per * (module.in_channels // module.groups) * k)


def layer_costs(model: nn.Module, adapter) -> list[dict]:
    """Rows ``{name, type, params, macs, output_shape}`` for every conv / linear call, in call order."""
    names = {m: n for n, m in model.named_modules()}
    rows: dict[str, dict] = {}
    hooks = []

    def hook(module, args, output):
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        name = names.get(module, "?")
        row = rows.setdefault(name, {"name": name, "type": type(module).__name__,
                                     "params": sum(p.numel() for p in module.parameters(recurse=False)),
                                     "macs": 0, "output_shape": list(output.shape)})
        row["macs"] += _macs(module, args[0], output)  # a layer called twice costs twice

    for m in model.modules():
        if isinstance(m, _WEIGHTED):
            hooks.append(m.register_forward_hook(hook))
    adapter_forward_with_hooks(model, adapter, hooks)
    return list(rows.values())


def onnx_node_times(onnx_path: str | os.PathLike, threads: int = 2, runs: int = 5) -> dict[str, dict]:
    """``{node name: {"op", "ms"}}``: median kernel time per ONNX Runtime node over ``runs`` runs."""
    return onnx_node_times_many({"model": onnx_path}, threads=threads, runs=runs)["model"]


def onnx_node_times_many(models: dict[str, str | os.PathLike], threads: int = 2,
                         runs: int = 5) -> dict[str, dict[str, dict]]:
    """:func:`onnx_node_times` of several models, profiled interleaved (one run of each per round,
    order rotated) so load on a shared machine hits them alike: ``{name: {node: {"op", "ms"}}}``."""
    from compress.runtime.session import make_session, run

    with tempfile.TemporaryDirectory(prefix="compress-prof-") as tmp:
        names = list(models)
        sessions = {n: make_session(p, threads=threads, profile=True, profile_prefix=str(Path(tmp) / f"ort{i}"))
                    for i, (n, p) in enumerate(models.items())}
        inputs = {}
        for n, sess in sessions.items():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]
            inputs[n] = np.random.default_rng(0).random(shape, dtype=np.float32)
        for r in range(runs + 1):  # the first run is dropped below (allocations, caches)
            k = r % len(names)
            for n in names[k:] + names[:k]:
                run(sessions[n], inputs[n])
        return {n: _node_times(json.loads(Path(sessions[n].end_profiling()).read_text())) for n in names}


def _node_times(events: list[dict]) -> dict[str, dict]:
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        durations.setdefault(node, []).append(float(e.get("dur", 0)) / 1000.0)
        ops[node] = str(e.get("args", {}).get("op_name", ""))
    return {n: {"op": ops[n], "ms": float(np.median(d[1:] if len(d) > 1 else d))} for n, d in durations.items()}


def module_of(node_name: str, module_names: set[str]) -> str | None:
    """The torch module an exported node belongs to, from its scope path, or None.

    Each scope part names a child relative to an enclosing module: an attribute
    (``conv``) or, inside containers, a dotted name relative to the container's
    parent (``/heads.0/cls/cls.0/conv`` is ``heads.0.cls.0.conv``).
    """
    cur = ""
    if node_name.startswith("fused "):  # ORT names a fused node "fused <first node>" (FusedGemm, FusedConv)
        node_name = node_name[len("fused "):]
    for part in node_name.strip("/").split("/"):
        segments = cur.split(".") if cur else []
        for k in range(len(segments), -1, -1):  # longest enclosing prefix first
            cand = ".".join(segments[:k] + [part])
            if cand in module_names and (not cur or cand.startswith(cur + ".")):
                cur = cand
                break
        else:
            break
    return cur or None


def profile_model(model: nn.Module, adapter, onnx_path: str | os.PathLike | None = None, threads: int = 2,
                  runs: int = 5, latency: bool = False) -> list[dict]:
    """Per-layer rows ``{name, type, params, macs, output_shape, latency_ms, onnx_nodes}``.

    Without ``onnx_path`` only conv / linear layers are listed and ``latency_ms`` is
    None, unless ``latency`` is true: then the model is exported to a temporary ONNX
    file first. With an ONNX model, every module (or scope-less node) that spent
    kernel time in ONNX Runtime gets a row too, and ``latency_share`` is its fraction
    of the total.
    """
    if onnx_path is None and latency:
        from compress.export import export_onnx

        with tempfile.TemporaryDirectory(prefix="compress-profile-") as tmp:
            path = export_onnx(model, adapter, Path(tmp) / "model.onnx")
            return profile_model(model, adapter, path, threads=threads, runs=runs)
    rows = layer_costs(model, adapter)
    for r in rows:
        r.update(latency_ms=None, onnx_nodes=[])
    if onnx_path is None:
        return rows
    by_name = {r["name"]: r for r in rows}
    modules = dict(model.named_modules())
    names = set(modules) - {""}
    for node, info in onnx_node_times(onnx_path, threads=threads, runs=runs).items():
        owner = module_of(node, names)
        if owner is None:
            key, row = node, {"name": node, "type": f"onnx:{info['op']}", "params": 0, "macs": 0,
                              "output_shape": None}
        else:
            key, m = owner, modules[owner]
            row = {"name": owner, "type": type(m).__name__, "output_shape": None,
                   "params": sum(p.numel() for p in m.parameters(recurse=False)), "macs": 0}
        if key not in by_name:
            by_name[key] = {**row, "latency_ms": None, "onnx_nodes": []}
            rows.append(by_name[key])
        row = by_name[key]
        row["latency_ms"] = (row["latency_ms"] or 0.0) + info["ms"]
        row["onnx_nodes"].append(node)
    total = sum(r["latency_ms"] or 0.0 for r in rows)
    for r in rows:
        r["latency_share"] = (r["latency_ms"] or 0.0) / total if total > 0 else None
    return rows


def profile_with_memory(model: nn.Module, adapter, threads: int = 2, runs: int = 5) -> tuple[list[dict], dict]:
    """:func:`profile_model` with latency, plus the model's peak inference memory
    (:func:`compress.runtime.memory.measure_peak_memory`) from the same temporary ONNX export."""
    from compress.export import export_onnx
    from compress.runtime.memory import measure_peak_memory

    with tempfile.TemporaryDirectory(prefix="compress-profile-") as tmp:
        path = export_onnx(model, adapter, Path(tmp) / "model.onnx")
        rows = profile_model(model, adapter, path, threads=threads, runs=runs)
        return rows, measure_peak_memory(path, threads=threads)
