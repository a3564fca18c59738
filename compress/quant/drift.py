"""Which layers drift most under int8? Per-layer fp32-vs-int8 activation error.

Both graphs get the outputs of their weight layers (Conv, Gemm, MatMul) added as extra
graph outputs and run in ONNX Runtime on the same preprocessed images. In the int8
graph the tensor compared is the layer output *after* its QuantizeLinear ->
DequantizeLinear pair when there is one (what the next layer really reads). Layers
are matched by node name, then by output name, then by position. The graph outputs
themselves are compared too: a collapsed decode tail shows up there first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _layers(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node name, op type, output tensor) of each weight layer, in graph order."""
    return [(n.name or n.output[0], n.op_type, n.output[0]) for n in model.graph.node if n.op_type in LAYER_OPS]


def _after_qdq(model: onnx.ModelProto, tensor: str) -> str:
    """``tensor`` -> the DequantizeLinear output that follows its QuantizeLinear, if any."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    for q in consumers.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return tensor


def _match(fp: list, q: list) -> list[tuple[tuple, tuple]]:
    by_name = {name: row for row in q for name in (row[0],)}
    by_out = {row[2]: row for row in q}
    pairs = [(f, by_name.get(f[0]) or by_out.get(f[2])) for f in fp]
    if any(p is None for _, p in pairs) and len(fp) == len(q):
        pairs = [(f, p or q[i]) for i, (f, p) in enumerate(pairs)]
    return [(f, p) for f, p in pairs if p is not None]


def _with_outputs(model: onnx.ModelProto, tensors: list[str], path: Path) -> Path:
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
            have.add(t)
    onnx.save(model, str(path))
    return path


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def diagnose_drift(fp32_onnx: str | os.PathLike, int8_onnx: str | os.PathLike, adapter, images: list[np.ndarray],
                   k: int = 5, threads: int = 2) -> list[dict]:
    """The ``k`` layers whose int8 activations differ most from fp32 (relative L2 error).

    Each row: ``layer`` (fp32 node name), ``op``, ``tensor``, ``rel_error`` (mean over
    images of ||int8 - fp32|| / ||fp32||), ``max_abs_error``, ``fp32_range`` (max |x|).
    Graph outputs appear with ``op`` = "graph output"; their ``rel_error`` is that of the
    worst channel (a detector's boxes are hundreds of pixels, its scores 0..1).
    """
    fp = onnx.load(str(fp32_onnx))
    q = onnx.load(str(int8_onnx))
    pairs = _match(_layers(fp), _layers(q))
    rows = [(f[0], f[1], f[2], _after_qdq(q, p[2])) for f, p in pairs]
    rows += [(f"output:{o.name}", "graph output", o.name, o.name) for o in fp.graph.output
             if o.name in {x.name for x in q.graph.output}]
    with tempfile.TemporaryDirectory(prefix="compress-drift-") as tmp:
        s_fp = _session(_with_outputs(fp, [r[2] for r in rows], Path(tmp) / "fp32.onnx"), threads)
        s_q = _session(_with_outputs(q, [r[3] for r in rows], Path(tmp) / "int8.onnx"), threads)
        name_fp, name_q = s_fp.get_inputs()[0].name, s_q.get_inputs()[0].name
        err = np.zeros(len(rows))
        max_abs = np.zeros(len(rows))
        rng = np.zeros(len(rows))
        for img in images:
            x, _ = adapter.preprocess([img])
            arr = np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32))
            a = s_fp.run([r[2] for r in rows], {name_fp: arr})
            b = s_q.run([r[3] for r in rows], {name_q: arr})
            for i, (u, v) in enumerate(zip(a, b)):
                u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
                if u.shape != v.shape:
                    err[i] = np.nan
                    continue
                d = np.abs(u - v)
                err[i] += _worst_channel(u, v) if rows[i][1] == "graph output" else _rel(u, v)
                max_abs[i] = max(max_abs[i], float(d.max(initial=0.0)))
                rng[i] = max(rng[i], float(np.abs(u).max(initial=0.0)))
    n = max(1, len(images))
    out = [{"layer": r[0], "op": r[1], "tensor": r[2], "rel_error": float(err[i] / n),
            "max_abs_error": float(max_abs[i]), "fp32_range": float(rng[i])}
           for i, r in enumerate(rows) if not np.isnan(err[i])]
    out.sort(key=lambda d: d["rel_error"], reverse=True)
    return out[:k]


def _rel(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.linalg.norm(u - v) / (np.linalg.norm(u) + 1e-12))


def _worst_channel(u: np.ndarray, v: np.ndarray) -> float:
    """Largest relative error over axis-1 channels: boxes (pixels) and scores (0..1) share a
    detector's output, and a whole-tensor error would hide a lost score channel."""
    if u.ndim < 2:
        return _rel(u, v)
    uc, vc = np.moveaxis(u, 1, 0).reshape(u.shape[1], -1), np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
    norms = np.linalg.norm(uc, axis=1)
    keep = norms > 1e-6 * (norms.max() + 1e-12)
    if not keep.any():
        return _rel(u, v)
    return float((np.linalg.norm(uc - vc, axis=1)[keep] / norms[keep]).max())


def describe(rows: list[dict]) -> str:
    """One line for report notes, e.g. ``/heads.0/cls/cls.2/Conv 12.3%, ...``."""
    return ", ".join(f"{r['layer']} {100 * r['rel_error']:.1f}%" for r in rows)
