"""Executors: the local one (order, exceptions, threads), the Ray one on a 2-CPU local cluster (results,
exceptions, threads, environment, working directory), sweeps through both (same rows, resume after a
crashed worker or an interrupted driver), the missing-extra message and a quiet CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from compress.errors import PassError
from compress.executors import Executor, ExecutorError, TaskError, get_executor
from compress.report import write_report
from compress.signals import Terminated
from compress.sweep import KEY_FILE, sweep

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'compress[ray]')")

# a tiny real recipe: LeNet-5, one-shot pruning + 5 fine-tuning steps, 64 validation images, one thread
TINY = """
name: tiny-lenet5-sweep
model: {builtin: lenet5}
data:
  validation: {builtin: digits, split: val}
passes:
  - type: prune.structured
    criterion: l1
    ratio: 0.5
    round_to: 1
    finetune: {steps: 5, loss: task, batch_size: 16, data: {builtin: digits, split: train}}
fidelity: {samples: 64, overlays: 0, min_top1_agreement: 0.5}
benchmark: {threads: 1, warmup: 2, runs: 10}
"""
# two points that run, two that fail at run time (a CompressError inside the task)
GRID = {"prune.ratio": ["0.3", "0.6"], "prune.ignore": ["[]", "[re:^nomatch$]"]}
COMPARED = ("point", "params", "macs", "top1_agreement", "accuracy", "passed", "error")

CRASH, SLOW, BOOM = 0.4, 0.6, 0.7  # what fake_runner does at these ratios


# -- functions the workers run (module level: Ray imports this module by name) ----------------------------
class Unpicklable(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def probe(x: int):
    """x*x and what the worker sees; raises for 2 (a plain exception) and 3 (one that cannot be pickled)."""
    if x == 2:
        raise ValueError("two is not allowed")
    if x == 3:
        raise Unpicklable()
    return {"value": x * x, "torch_threads": torch.get_num_threads(), "cwd": os.getcwd(), "pid": os.getpid(),
            "YOLO_OFFLINE": os.environ.get("YOLO_OFFLINE"), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE")}


def fake_runner(recipe, out_dir, *, force, quiet, hazards=True):
    """A report that follows the ratio; logs each call; dies, sleeps or raises at the ratios above."""
    ratio = recipe.passes[0].ratio
    with open(Path(out_dir).parent / "calls.log", "a") as f:
        f.write(f"{ratio}\n")
    if hazards and ratio == CRASH:
        os._exit(3)  # the worker process dies mid-point
    if hazards and ratio == SLOW:
        time.sleep(60)  # still running when the driver is stopped
    if hazards and ratio == BOOM:
        raise ZeroDivisionError("a bug inside the point")
    keep = 1 - ratio
    report = {"original": {"params": 1000, "latency_ms": 2.0, "accuracy": 0.99},
              "compressed": {"params": round(1000 * keep), "latency_ms": 2 * keep, "accuracy": 0.99 - ratio / 2},
              "ratios": {"params": 1 / keep, "latency": 1 / keep},
              "fidelity": {"task": "classify", "top1_agreement": 1 - ratio / 2, "passed": True}}
    write_report(out_dir, report)
    return report


def quick_runner(recipe, out_dir, *, force, quiet):
    """fake_runner without the crash, the sleep and the bug."""
    return fake_runner(recipe, out_dir, force=force, quiet=quiet, hazards=False)


def _calls(out: Path) -> list[float]:
    log = out / "calls.log"
    return sorted(float(x) for x in log.read_text().split()) if log.is_file() else []


@pytest.fixture()
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


# -- the local executor ---------------------------------------------------------------------------------
def test_local_map_order_exceptions_and_threads(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    with get_executor("local") as ex:
        assert ex.name == "local"
        out = list(ex.map(probe, [0, 1, 2, 4], threads=[1, 2, 1, 2]))
    assert [i for i, _ in out] == [0, 1, 2, 3]  # one after another, in order
    assert [r["value"] for i, r in out if i != 2] == [0, 1, 16]
    assert [r["torch_threads"] for i, r in out if i != 2] == [1, 2, 2]
    assert isinstance(out[2][1], ValueError) and "two" in str(out[2][1])
    assert torch.get_num_threads() == before  # restored after each item

    def interrupt(x):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):  # a signal still stops the map
        list(get_executor("local").map(interrupt, [1]))
    with pytest.raises(ValueError, match="expected 2 counts"):
        list(get_executor("local").map(probe, [0, 1], threads=[1]))


def test_get_executor_rejects_bad_combinations():
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        get_executor("dask")
    with pytest.raises(ExecutorError, match="need --executor ray"):
        get_executor("local", workers=2)
    with pytest.raises(ExecutorError, match="one or the other"):
        get_executor("ray", address="127.0.0.1:6379", workers=2)


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tiny, tmp_path, capsys):
    from compress.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ExecutorError, match=r"pip install 'compress\[ray\]'"):
        get_executor("ray")
    code = main(["sweep", str(tiny), "--set", "prune.ratio=0.5", "--out", str(tmp_path / "s"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'compress[ray]'" in err and "Traceback" not in err


def test_importing_executors_does_not_import_ray():
    code = "import sys, compress.executors, compress.sweep, compress.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sweep_turns_a_crash_into_the_points_error_row(tmp_path):
    tiny = tmp_path / "r.yaml"
    tiny.write_text(TINY)
    rows = sweep(tiny, {"prune.ratio": [0.5, BOOM]}, tmp_path / "s", runner=fake_runner, quiet=True, plots=False)
    assert rows[0]["error"] is None and rows[0]["params"] == 500
    assert rows[1]["error"].startswith("ZeroDivisionError: a bug inside the point") and rows[1]["params"] is None
    assert not (tmp_path / "s" / f"prune.ratio={BOOM}" / KEY_FILE).exists()


@needs_ray
def test_unreachable_ray_address_is_one_quick_line(tiny, tmp_path, capfd):
    import socket

    from compress.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code = main(["sweep", str(tiny), "--set", "prune.ratio=0.5", "--out", str(tmp_path / "s"), "--executor", "ray",
                 "--ray-address", f"127.0.0.1:{port}"])
    out, err = capfd.readouterr()
    assert code == 2 and time.monotonic() - t0 < 30
    assert err.startswith(f"compress: cannot reach the Ray cluster at 127.0.0.1:{port}") and err.count("\n") == 1
    assert main(["sweep", str(tiny), "--set", "prune.ratio=0.5", "--executor", "ray", "--ray-address", "nohost"]) == 2
    assert "expected HOST:PORT" in capfd.readouterr().err


# -- Ray ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_ex():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'compress[ray]')")
    ex = get_executor("ray", workers=2)
    yield ex
    ex.close()


@needs_ray
def test_ray_map_results_exceptions_threads_env_and_cwd(ray_ex, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the workers run each item in the driver's working directory
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    assert ray_ex.name == "ray" and ray_ex.cpus == 2
    out = dict(ray_ex.map(probe, [0, 1, 2, 3, 4], threads=[1, 2, 1, 1, 1]))
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert [out[i]["value"] for i in (0, 1, 4)] == [0, 1, 16]
    assert [out[i]["torch_threads"] for i in (0, 1, 4)] == [1, 2, 1]
    assert all(out[i]["cwd"] == str(tmp_path) for i in (0, 1, 4))
    assert all(out[i]["YOLO_OFFLINE"] == "1" and out[i]["HF_HUB_OFFLINE"] == "1" for i in (0, 1, 4))
    assert all(out[i]["pid"] != os.getpid() for i in (0, 1, 4))  # ran in worker processes
    assert isinstance(out[2], ValueError) and "two is not allowed" in str(out[2])
    assert isinstance(out[3], TaskError) and "Unpicklable" in str(out[3])
    with pytest.raises(ExecutorError, match="3 threads but the Ray cluster has 2 CPUs"):
        list(ray_ex.map(probe, [0], threads=3))


@needs_ray
@pytest.mark.slow
def test_ray_sweep_resumes_after_a_dead_worker_and_a_stopped_driver(ray_ex, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(TINY)
    out = tmp_path / "s"
    rows = sweep(r, {"prune.ratio": [0.3, CRASH, 0.5]}, out, runner=fake_runner, quiet=True, plots=False,
                 executor=ray_ex, base_overrides=["benchmark.threads=1"])
    assert [row["params"] for row in rows] == [700, None, 500]  # grid order
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert "unexpected error in this point" in rows[1]["error"] and "Worker" in rows[1]["error"]
    assert (out / "prune.ratio=0.3" / KEY_FILE).is_file() and not (out / f"prune.ratio={CRASH}" / KEY_FILE).exists()
    (out / "calls.log").unlink()
    rows = sweep(r, {"prune.ratio": [0.3, CRASH, 0.5]}, out, runner=quick_runner, quiet=True, plots=False,
                 executor=ray_ex, base_overrides=["benchmark.threads=1"])
    assert _calls(out) == [CRASH]  # only the point that died runs again
    assert all(row["error"] is None for row in rows)

    class StopAfterFirst(Executor):
        """Passes on the first finished point, then the driver gets SIGTERM (as ``compress`` raises it)."""

        name = "stop"

        def map(self, fn, items, *, threads=1):
            for i, result in ray_ex.map(fn, items, threads=threads):
                yield i, result
                raise Terminated(signal.SIGTERM)

    out2 = tmp_path / "s2"
    grid = {"prune.ratio": [0.2, SLOW, 0.8]}
    with pytest.raises(Terminated):
        sweep(r, grid, out2, runner=fake_runner, quiet=True, plots=False, executor=StopAfterFirst(),
              base_overrides=["benchmark.threads=1"])
    assert not (out2 / f"prune.ratio={SLOW}" / "report.json").exists()  # cancelled in its 60 s sleep
    # a point Ray had already started may still finish after the stop: whatever is cached now is kept
    done = {p.parent.name: p.stat().st_mtime_ns for p in out2.glob(f"*/{KEY_FILE}")}
    assert "prune.ratio=0.2" in done  # the first point to finish was cached by its own task
    t0 = time.monotonic()
    rows = sweep(r, grid, out2, runner=quick_runner, quiet=True, plots=False, executor=ray_ex,
                 base_overrides=["benchmark.threads=1"])
    assert time.monotonic() - t0 < 50  # nothing waits for the cancelled 60 s sleep
    assert {name: (out2 / name / KEY_FILE).stat().st_mtime_ns for name in done} == done  # not run again
    assert (out2 / f"prune.ratio={SLOW}" / KEY_FILE).is_file()
    assert [row["params"] for row in rows] == [800, 400, 200]


@needs_ray
@pytest.mark.slow
def test_ray_cli_sweep_matches_local_rows_and_prints_nothing_from_ray(tiny, tmp_path, ray_ex):
    local = sweep(tiny, GRID, tmp_path / "local", quiet=True, plots=False, base_overrides=["benchmark.threads=1"])
    assert [r["error"] is None for r in local] == [True, False, True, False]
    assert all(r["params"] < 62006 for r in local if r["error"] is None)

    out = tmp_path / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "compress", "sweep", str(tiny), "--set", "prune.ratio=0.3,0.6",
                           "--set", "prune.ignore=[],[re:^nomatch$]", "--out", str(out), "--executor", "ray",
                           "--workers", "2", "--threads", "1", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no token / auth / "Started a local Ray instance" lines
    assert proc.stdout == f"sweep: {out / 'sweep.md'} (2 of 4 points failed)\n"
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [{k: r[k] for k in COMPARED} for r in rows] == [{k: r[k] for k in COMPARED} for r in local]
    assert "matches no layer" in rows[1]["error"]
    assert ray_ex.cpus == 2  # the in-process cluster is untouched by the CLI's own cluster


def test_sweep_passes_point_errors_from_any_executor(tmp_path):
    """A CompressError inside a task keeps its message (no type prefix), as before executors."""

    class Fails(Executor):
        name = "fails"

        def map(self, fn, items, *, threads=1):
            for i, _ in enumerate(items):
                yield i, PassError("prune.structured: nothing to prune")

    r = tmp_path / "r.yaml"
    r.write_text(TINY)
    rows = sweep(r, {"prune.ratio": [0.5]}, tmp_path / "s", quiet=True, plots=False, executor=Fails())
    assert rows[0]["error"] == "prune.structured: nothing to prune"
