"""How many CPU threads torch and ONNX Runtime use, and setting torch's for a block of work.

One number for both: ``--threads`` (or the recipe's ``benchmark.threads``) is the intra-op
thread count of torch (fine-tuning, calibration, any torch forward in a run) and of every
ONNX Runtime session. The default is the number of physical cores: hyper-threads share
one core's vector units, so counting them slows both runtimes down (and on a machine
shared with other jobs, fewer threads than cores is often faster still).
"""

from __future__ import annotations

import contextlib
import os


def physical_cores() -> int:
    """Physical CPU cores (psutil), else the logical CPUs os reports, else 1."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing, or it cannot tell on this platform
        n = None
    return max(1, int(n or os.cpu_count() or 1))


def resolve_threads(*choices: int | None) -> int:
    """The first of ``choices`` that is set (e.g. ``--threads``, then the recipe), else the physical cores."""
    for n in choices:
        if n is not None:
            return int(n)
    return physical_cores()


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with torch's intra-op thread count set to ``n``; restore it afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(old)
