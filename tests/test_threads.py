"""--threads / benchmark.threads: one thread count for torch (fine-tuning) and ONNX Runtime."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from compress import api
from compress import recipe as R
from compress.cli import main
from compress.runtime import threads as T

THREADS = 3  # differs from the suite's fixtures (1) and from this machine's core count (2)


def _recipe(**benchmark) -> dict:
    return {"name": "threads", "model": {"builtin": "lenet5"},
            "data": {"calibration": {"builtin": "digits", "split": "calib", "samples": 16},
                     "validation": {"builtin": "digits", "split": "val", "samples": 16}},
            "passes": [{"type": "finetune", "steps": 3, "batch_size": 8, "loss": "distill",
                        "data": {"builtin": "digits", "split": "calib", "samples": 16}}],
            "fidelity": {"min_top1_agreement": None, "overlays": 0},
            "benchmark": {"warmup": 0, "runs": 1, **benchmark}}


@pytest.fixture
def seen(monkeypatch):
    """torch.get_num_threads() at every fine-tuning loss evaluation (the loop's own steps included)."""
    from compress.passes import finetune

    calls: list[int] = []
    real = finetune._loss_fn

    def spy(*a, **k):
        fn = real(*a, **k)

        def wrapped(*args, **kwargs):
            calls.append(torch.get_num_threads())
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(finetune, "_loss_fn", spy)
    return calls


def test_physical_cores_from_psutil_else_os(monkeypatch):
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 5 if not logical else 10)
    assert T.physical_cores() == 5
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)  # psutil cannot tell
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert T.physical_cores() == 7


def test_resolve_order_and_restore(monkeypatch):
    monkeypatch.setattr(T, "physical_cores", lambda: 6)
    assert T.resolve_threads(None, None) == 6
    assert T.resolve_threads(None, 4) == 4 and T.resolve_threads(2, 4) == 2
    old = torch.get_num_threads()
    with T.torch_threads(old + 1) as n:
        assert n == old + 1 and torch.get_num_threads() == old + 1
    assert torch.get_num_threads() == old


def test_recipe_default_is_resolved_at_run_time(monkeypatch):
    """The recipe keeps None (its hash must not depend on the machine); the run resolves it."""
    monkeypatch.setattr(T, "physical_cores", lambda: 6)
    r = R.validate(_recipe(), "r")
    assert r.benchmark.threads is None and T.resolve_threads(None, r.benchmark.threads) == 6
    monkeypatch.setattr(T, "physical_cores", lambda: 3)
    assert R.validate(_recipe(), "r").digest() == r.digest()
    assert R.validate(_recipe(threads=2), "r").benchmark.threads == 2
    with pytest.raises(Exception, match="threads"):
        R.validate(_recipe(threads=0), "r")


def test_finetune_runs_with_recipe_threads(tmp_path, seen):
    before = torch.get_num_threads()
    rep = api.run(R.validate(_recipe(threads=THREADS), "r"), tmp_path / "run", quiet=True)
    assert len(seen) >= 3 and set(seen) == {THREADS}  # every step of the loop
    assert rep["passes"]["finetune"]["torch_threads"] == THREADS
    env = rep["environment"]
    assert env["torch_threads"] == THREADS and env["onnxruntime_threads"] == THREADS == env["threads"]
    assert env["physical_cores"] == T.physical_cores()
    assert torch.get_num_threads() == before  # restored after the run


def test_cli_threads_overrides_recipe(tmp_path, seen):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(threads=1)))
    code = main(["run", str(path), "--out", str(tmp_path / "run"), "--threads", str(THREADS), "--quiet"])
    assert code == 0
    assert seen and set(seen) == {THREADS}
    import json

    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["environment"]["torch_threads"] == THREADS


def test_sweep_threads_reach_every_point(monkeypatch, tmp_path):
    import compress.sweep as S

    got = {}
    monkeypatch.setattr(S, "sweep", lambda *a, **k: got.update(k) or [])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe()))
    assert main(["sweep", str(path), "--set", "seed=0,1", "--out", str(tmp_path / "s"), "--threads", "2"]) == 0
    assert got["base_overrides"] == ["benchmark.threads=2"]
    assert R.load(path, got["base_overrides"]).benchmark.threads == 2
