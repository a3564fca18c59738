"""The notebooks run top to bottom in a kernel of this venv's python, within a time budget."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01-pruning-sweep.ipynb"
BUDGET_S = 180


def _kernel(tmp_path: Path, monkeypatch) -> str:
    """Register a kernel spec for this interpreter in a temporary Jupyter path; return its name."""
    spec = tmp_path / "jupyter" / "kernels" / "compress-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "compress (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return "compress-test"


@pytest.mark.slow
def test_pruning_sweep_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from compress.models.digitdet import WEIGHTS

    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: the notebook sweeps the built-in detector's trained weights"

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=_kernel(tmp_path, monkeypatch), timeout=BUDGET_S,
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    assert seconds < BUDGET_S, f"notebook took {seconds:.0f} s (budget {BUDGET_S} s)"

    out = tmp_path / "runs" / "01-pruning-sweep" / "sweep"
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["prune.ratio"]) for r in rows] == [0.25, 0.5]
    for r in rows:
        assert r["error"] == "" and int(r["params"]) > 0 and float(r["latency_ms"]) > 0
        assert r["agreement_map50"] != "" and r["passed"] in ("True", "False")
    assert int(rows[1]["params"]) < int(rows[0]["params"])  # more pruning, fewer parameters
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 4  # quality, latency, size, pareto
