"""ONNX Runtime sessions on the CPU with fixed, reproducible settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compress.errors import CompressError


def make_session(path: str | os.PathLike, threads: int = 2, profile: bool = False,
                 profile_prefix: str | None = None):
    """A CPU ``InferenceSession``: ``threads`` intra-op threads, one inter-op thread,
    all graph optimisations, sequential execution; ``profile`` turns on ORT's profiler
    (its JSON goes to ``profile_prefix``, see ``session.end_profiling()``)."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise CompressError(f"{p}: ONNX file not found")
    if threads < 1:
        raise CompressError(f"threads must be >= 1 (got {threads})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    # idle worker threads must sleep, not spin: two sessions timed side by side on few cores
    # otherwise slow each other down (digitdet: 7.5 ms beside another session vs 3.6 ms alone)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        opts.enable_profiling = True
        if profile_prefix:
            opts.profile_file_prefix = str(profile_prefix)
    try:
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompressError(f"{p}: ONNX Runtime cannot load this model ({first})") from e


def input_shape(session) -> list[int | str | None]:
    """Shape of the first input; symbolic dimensions stay as their names (or None)."""
    return list(session.get_inputs()[0].shape)


def _fixed_batch(session) -> int | None:
    dim = input_shape(session)[0] if input_shape(session) else None
    return dim if isinstance(dim, int) and dim > 0 else None


def run(session, x) -> np.ndarray:
    """Run ``session`` on ``x`` (NCHW float) and return its first output.

    A model exported with a fixed batch (1 for ``compress.export``) is run on
    ``x`` in chunks of that size and the outputs are concatenated.
    """
    arr = np.ascontiguousarray(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32))
    inp = session.get_inputs()[0].name
    out = session.get_outputs()[0].name
    batch = _fixed_batch(session)
    if arr.ndim == 0 or batch is None or arr.shape[0] == batch:
        return session.run([out], {inp: arr})[0]
    if arr.shape[0] == 0 or arr.shape[0] % batch:
        raise CompressError(f"input batch {arr.shape[0]} is not a multiple of the model's fixed batch {batch}")
    parts = [session.run([out], {inp: arr[i:i + batch]})[0] for i in range(0, arr.shape[0], batch)]
    return np.concatenate(parts, axis=0)
