"""Run every benchmark script in turn (what `make bench` does); each prints its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["prune_digitdet.py", "prune_yolo.py", "quant_peers.py", "lenet5_table.py", "yolo26n_digits.py",
           "deploy_digitdet.py", "activation_swap.py", "gradual_vs_static.py", "search.py", "latency_table_check.py"]

if __name__ == "__main__":
    failed = [s for s in SCRIPTS if subprocess.call([sys.executable, str(HERE / s)]) != 0]
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")
