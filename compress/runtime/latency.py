"""CPU latency of ONNX models, measured side by side so comparisons are fair.

All sessions are created up front in this process and warmed up; then every round
times each model once, in an order rotated by one each round (A B C, B C A, C A B,
...), so slow drifts of the shared machine (other processes, frequency scaling) hit
every model alike. Per-run wall time comes from ``time.perf_counter``. The conditions of the
timing (threads, CPU, governor, frequency, temperature; see :mod:`compress.runtime.conditions`)
are read before, between rounds (outside the timed calls) and after, and every model's
statistics carry them as ``conditions``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from compress.runtime.session import make_session, run


def _stats(times_ms: list[float]) -> dict:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "runs": int(a.size)}


def _input_for(session, x) -> np.ndarray:
    if x is not None:
        return np.asarray(x, dtype=np.float32)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in session.get_inputs()[0].shape]
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def compare_latency(models: dict[str, str | os.PathLike], x: np.ndarray | None = None, *, threads: int = 2,
                    warmup: int = 10, runs: int = 50, monitor=None) -> dict[str, dict]:
    """Interleaved latency of several ONNX models on the same input.

    ``models`` maps a name to an ONNX path (or an existing session); ``x`` is the
    input (None: a fixed random tensor of each model's input shape). Returns
    ``{name: {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "conditions"}}`` (one
    ``conditions`` dict shared by all names; ``monitor`` is a
    :class:`compress.runtime.conditions.Monitor`, default one for ``threads``).
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1 (got {runs})")
    names = list(models)
    sessions = {n: (m if hasattr(m, "run") and hasattr(m, "get_inputs") else make_session(m, threads=threads))
                for n, m in models.items()}
    inputs = {n: _input_for(s, x) for n, s in sessions.items()}
    for n in names:
        for _ in range(max(0, warmup)):
            run(sessions[n], inputs[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    if monitor is None:
        from compress.runtime.conditions import Monitor

        monitor = Monitor(threads)
    monitor.start()
    every = max(1, runs // 10)  # about ten frequency readings during the timing
    for r in range(runs):
        if r and r % every == 0:
            monitor.sample()
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            run(sessions[n], inputs[n])
            times[n].append((time.perf_counter() - t0) * 1000.0)
    conditions = monitor.finish()
    return {n: {**_stats(times[n]), "conditions": conditions} for n in names}


def measure(path: str | os.PathLike, x: np.ndarray | None = None, *, threads: int = 2, warmup: int = 10,
            runs: int = 50) -> dict:
    """Latency statistics of one ONNX model (see :func:`compare_latency`)."""
    return compare_latency({"model": path}, x, threads=threads, warmup=warmup, runs=runs)["model"]
