"""Peak memory of ONNX inference, measured in a separate process, and this process's own peak.

Each model is loaded by a fresh Python process (``sys.executable``) that imports ONNX Runtime and
numpy, records its resident memory (the bare runtime), then creates the session and runs it a few
times while a thread samples its RSS (psutil, every millisecond). The lifetime peak
(``ru_maxrss``) is used too where it rose after the baseline, so short spikes between two samples
are not missed. ``peak_mb`` is the peak minus the bare runtime: what loading and running the model
costs, as ``pidstat`` would show it on a board. Several models are measured in parallel processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from compress.errors import CompressError

MB = 1024 * 1024

# the child: argv = onnx path, threads, runs; prints one JSON line
_CHILD = r"""
import json, sys, threading, time
import numpy as np, onnxruntime, psutil
from compress.runtime.session import make_session, run

def maxrss():
    try:
        import resource
    except ImportError:
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024

path, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proc = psutil.Process()
base, base_max = proc.memory_info().rss, maxrss()
peak, done = [base], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)

t = threading.Thread(target=sample, daemon=True)
t.start()
sess = make_session(path, threads=threads)
shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]
x = np.random.default_rng(0).random(shape, dtype=np.float32)
for _ in range(runs):
    run(sess, x)
done.set()
t.join()
top = max(peak[0], proc.memory_info().rss)
end_max = maxrss()
if end_max > base_max:
    top = max(top, end_max)
print(json.dumps({"baseline_rss": base, "peak_rss": top}))
"""


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    root = str(Path(__file__).resolve().parents[2])  # the child imports compress from the same tree
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def peak_memory(models: dict[str, str | os.PathLike], *, threads: int = 1, runs: int = 5,
                timeout: float = 300.0) -> dict[str, dict]:
    """``{name: {"peak_mb", "baseline_mb", "peak_rss_mb", "threads", "runs"}}`` for ONNX paths.

    Every model runs in its own child process (all at once); ``peak_mb`` is the child's peak
    resident memory minus its memory with ONNX Runtime imported but no model loaded. A missing
    file or a child that fails raises :class:`CompressError` (one line).
    """
    if threads < 1 or runs < 1:
        raise CompressError(f"peak memory: threads and runs must be >= 1 (got {threads}, {runs})")
    for name, p in models.items():
        if not Path(p).is_file():
            raise CompressError(f"{p}: ONNX file not found")
    env = _env(threads)
    procs = {n: subprocess.Popen([sys.executable, "-c", _CHILD, str(p), str(threads), str(runs)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n, p in models.items()}
    out: dict[str, dict] = {}
    errors = []
    for n, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            errors.append(f"{n}: timed out after {timeout:g} s")
            continue
        line = (stdout.strip().splitlines() or [""])[-1]
        try:
            d = json.loads(line)
        except ValueError:
            last = [s for s in stderr.strip().splitlines() if s.strip()]
            msg = re.sub(r"^[\w.]*(Error|Exception): ", "", last[-1]) if last else f"exit {proc.returncode}"
            errors.append(f"{n}: {msg}")
            continue
        out[n] = {"peak_mb": round(max(0, d["peak_rss"] - d["baseline_rss"]) / MB, 2),
                  "baseline_mb": round(d["baseline_rss"] / MB, 2), "peak_rss_mb": round(d["peak_rss"] / MB, 2),
                  "threads": threads, "runs": runs}
    if errors:
        raise CompressError("peak memory: " + "; ".join(errors))
    return out


def measure_peak_memory(path: str | os.PathLike, *, threads: int = 1, runs: int = 5) -> dict:
    """Peak inference memory of one ONNX model (see :func:`peak_memory`)."""
    return peak_memory({"model": path}, threads=threads, runs=runs)["model"]


def process_peak_mb() -> float | None:
    """This process's peak resident memory so far in MB (``ru_maxrss``), None where the OS has no getrusage."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return round(getattr(psutil.Process().memory_info(), "peak_wset", 0) / MB, 2) or None
        except Exception:
            return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round((r if sys.platform == "darwin" else r * 1024) / MB, 2)


def peak_memory_or_note(models: dict[str, str | os.PathLike], notes: list[str], **kwargs) -> dict[str, float | None]:
    """``{name: peak_mb or None}``; a failed measurement becomes a line in ``notes`` (a run does not fail on it)."""
    try:
        return {n: d["peak_mb"] for n, d in peak_memory(models, **kwargs).items()}
    except CompressError as e:
        notes.append(f"Peak memory not measured: {e}")
        return {n: None for n in models}
