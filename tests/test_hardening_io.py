"""Safe outputs, signals and data sanity (issue 8): markers, stale temp folders, umask, SIGTERM,
bad label values, COCO paths that leave the data root."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.atomic import MARKER, _start_time, atomic_write_text, ensure_writable, read_marker, staged_dir
from compress.cli import main
from compress.data.coco import load_coco
from compress.data.yolo import MAX_CLASSES, load_yolo, write_yolo
from compress.errors import CompressError, DataError
from compress.signals import Terminated, raise_on_signals
from compress.types import Sample

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "digitdet-export.yaml"


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("compress: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def fake_tmp(parent: Path, name: str, **marker) -> Path:
    d = parent / name
    (d / "work").mkdir(parents=True)
    (d / "work" / "model.onnx").write_bytes(b"x" * 100)
    if marker:
        info = {"tool": "compress", "host": socket.gethostname(), "start": None, **marker}
        (d / MARKER).write_text(json.dumps(info))
    return d


# -- --force and the output marker -----------------------------------------------------------
def test_force_refuses_a_folder_compress_did_not_write(capsys, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "keep.jpg").write_bytes(b"mine")
    code = main(["run", str(RECIPE), "--out", str(out), "--force"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "is not a compress output" in line and MARKER in line, line
    assert sorted(p.name for p in out.iterdir()) == ["keep.jpg"] and (out / "keep.jpg").read_bytes() == b"mine"


def test_force_replaces_a_marked_folder_and_empty_ones(tmp_path):
    final = tmp_path / "run"
    with staged_dir(final, force=False) as tmp:
        (tmp / "a.txt").write_text("1")
    assert read_marker(final)["state"] == "complete"
    with staged_dir(final, force=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "b.txt"]
    (final / MARKER).unlink()  # no longer ours: --force must refuse it
    with pytest.raises(CompressError, match="not a compress output"):
        ensure_writable(final, force=True)
    with pytest.raises(CompressError, match="not a compress output"):
        with staged_dir(final, force=True):
            pass
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_writable(empty, force=True)  # nothing to lose
    with pytest.raises(CompressError, match="use --force"):
        ensure_writable(empty, force=False)


# -- stale temp folders ---------------------------------------------------------------------------
def test_stale_temp_folders_of_dead_runs_are_removed_by_the_next_run(tmp_path):
    dead = dead_pid()
    stale = fake_tmp(tmp_path, "exp1.tmp-abc123", state="staging", pid=dead)
    aside = fake_tmp(tmp_path, "exp1.old-xyz789", state="replaced", pid=dead)
    live = fake_tmp(tmp_path, "exp2.tmp-live00", state="staging", pid=os.getppid())
    foreign = fake_tmp(tmp_path, "exp3.tmp-nomark")  # no marker: not ours, never touched
    finished = fake_tmp(tmp_path, "odd.tmp-name00", state="complete", pid=dead)  # a finished run's name
    other_host = fake_tmp(tmp_path, "exp4.tmp-remote", state="staging", pid=dead, host="elsewhere")
    reused = None
    if _start_time(os.getppid()) is not None:  # a live pid whose start time differs: the pid was reused
        reused = fake_tmp(tmp_path, "exp5.tmp-reused", state="staging", pid=os.getppid(), start="1")
    with staged_dir(tmp_path / "next", force=False) as tmp:
        (tmp / "r.txt").write_text("ok")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not stale.exists() and not aside.exists() and (reused is None or not reused.exists())
    assert left == sorted(["next", live.name, foreign.name, finished.name, other_host.name])


def test_write_yolo_removes_a_killed_writers_temp_folder(tmp_path):
    stale = fake_tmp(tmp_path, ".cache.tmp-k1ll3d", state="staging", pid=dead_pid())
    img = np.zeros((16, 16, 3), np.uint8)
    root = write_yolo([Sample("a", img, boxes=np.zeros((0, 4)), classes=np.zeros(0))], tmp_path / "ds", ["a"])
    assert not stale.exists() and not (root / MARKER).exists()


# -- permissions follow the umask ------------------------------------------------------------------
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
        with staged_dir(tmp_path / "run", force=False) as tmp:
            atomic_write_text(tmp / "report.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "run").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "run" / "report.json").stat().st_mode & 0o777 == file_mode


# -- signals ---------------------------------------------------------------------------------------
_SIGNAL_SCRIPT = """
import signal, sys, time
from pathlib import Path
from compress.atomic import staged_dir
from compress.signals import Terminated, raise_on_signals
sig, root = int(sys.argv[1]), Path(sys.argv[2])
before = signal.getsignal(sig)
try:
    with raise_on_signals(), staged_dir(root / "run", force=False) as tmp:
        (tmp / "half.onnx").write_bytes(b"half")
        signal.raise_signal(sig)
        time.sleep(5)  # the handler raises before this ends
except (Terminated, KeyboardInterrupt) as e:
    print(type(e).__name__, signal.getsignal(sig) is before)
"""


@pytest.mark.parametrize("sig, exc", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_signal_inside_staged_dir_cleans_up(tmp_path, sig, exc):
    """In a fresh interpreter, as a command runs (this test process has loaded every runtime of the suite,
    and delivering a signal in it once crashed inside a native library's signal stack)."""
    root = tmp_path / "out"
    root.mkdir()
    done = subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT, str(int(sig)), str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [exc.__name__, "True"], done.stderr  # raised, handlers restored
    assert list(root.iterdir()) == []


def test_sigterm_during_a_cli_run_leaves_no_temp_folder(tmp_path):
    out = tmp_path / "runs" / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "compress", "run", str(RECIPE), "--out", str(out), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.parent.is_dir() and any(p.name.startswith("exp.tmp-") for p in out.parent.iterdir()):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        time.sleep(1.0)  # well inside the run: export / check under way
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in one_line(err)
    assert list(out.parent.iterdir()) == []  # neither the output nor its temp folder


# -- YOLO labels and data.yaml ---------------------------------------------------------------------
def _yolo(tmp_path, lines: list[str]) -> Path:
    img = np.full((40, 50, 3), 128, np.uint8)
    root = write_yolo([Sample("a", img, boxes=np.zeros((0, 4)), classes=np.zeros(0))], tmp_path / "ds",
                      ["a", "b", "c"], ext=".png")
    (root / "labels" / "000000.txt").write_text("".join(line + "\n" for line in lines))
    return root


def test_yolo_bad_label_values_are_skipped_and_counted(tmp_path):
    good = "1 0.5 0.5 0.2 0.4"
    bad = ["0 nan 0.5 0.1 0.1", "0 0.5 inf 0.1 0.1", "2 0.5 0.5 -0.1 0.1", "2 0.5 0.5 0.1 0", "7 0.5 0.5 0.1 0.1",
           "-1 0.5 0.5 0.1 0.1", "1.5 0.5 0.5 0.1 0.1", "0 0.1 0.1 nan 0.2 0.3 0.3"]
    root = _yolo(tmp_path, [good, *bad])
    with pytest.warns(UserWarning, match="8 label line"):
        data = load_yolo(root)
    np.testing.assert_allclose(data[0].boxes, [[20, 12, 30, 28]])
    np.testing.assert_array_equal(data[0].classes, [1])
    label = root / "labels" / "000000.txt"
    assert [p for p, _ in data.skipped] == [f"{label}:{i}" for i in range(2, 10)]
    reasons = [r for _, r in data.skipped]
    assert "NaN or infinite" in reasons[0] and "width and height" in reasons[2] and "class id 7" in reasons[4]


def test_yolo_malformed_lines_are_still_an_error(tmp_path):
    with pytest.raises(DataError, match="expected 5 columns"):
        load_yolo(_yolo(tmp_path, ["0 0.5 0.5"]))


@pytest.mark.parametrize("meta, problem", [
    ({"nc": 1_000_000_000}, "'nc' must be an integer"),
    ({"nc": -3}, "'nc' must be an integer"),
    ({"nc": "many"}, "'nc' must be an integer"),
    ({"names": [str(i) for i in range(11)]}, "lists 11 classes; at most 10"),
])
def test_data_yaml_class_count_is_bounded(tmp_path, monkeypatch, meta, problem):
    import compress.data.yolo

    assert MAX_CLASSES == 100_000
    if "names" in meta:  # a 100k-name yaml takes PyYAML 10 s to parse: check the rule on a lower bound
        monkeypatch.setattr(compress.data.yolo, "MAX_CLASSES", 10)
    root = _yolo(tmp_path, ["0 0.5 0.5 0.1 0.1"])
    (root / "data.yaml").write_text(json.dumps({"train": "images", "val": "images", **meta}))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=problem) as err:
        load_yolo(root)
    assert "\n" not in str(err.value) and time.perf_counter() - t0 < 5


# -- COCO ------------------------------------------------------------------------------------------
def _coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    for name in ("images/a.jpg", "val/b.jpg"):  # images in two of the usual folders
        Image.fromarray(np.full((40, 50, 3), 100, np.uint8)).save(root / name)
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "secret.jpg")  # outside the root
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
              {"id": 3, "file_name": "../../secret.jpg"}, {"id": 4, "file_name": str(tmp_path / "secret.jpg")},
              {"id": 5, "file_name": "images/../../../secret.jpg"}]
    anns = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
            {"image_id": 1, "category_id": 1, "bbox": [1, 2, float("nan"), 20]},
            {"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, float("inf")]},
            {"image_id": 2, "category_id": 1, "bbox": [5, 5, -10, 10]},
            {"image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10]}]
    path = root / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return path


def test_coco_paths_leaving_the_root_and_bad_boxes_are_skipped_and_counted(tmp_path):
    ann = _coco(tmp_path)
    with pytest.warns(UserWarning, match="6 image"):
        data = load_coco(ann)
    assert sorted(Path(s.path).name for s in data) == ["a.jpg", "b.jpg"]  # each image found in its own folder
    assert all(str(tmp_path / "coco") in s.path for s in data)
    by_name = {Path(s.path).name: s for s in data}
    np.testing.assert_allclose(by_name["a.jpg"].boxes, [[1, 2, 11, 22]])
    np.testing.assert_allclose(by_name["b.jpg"].boxes, [[5, 5, 15, 15]])
    reasons = [r for _, r in data.skipped]
    assert sum("leaves the data folder" in r for r in reasons) == 3
    assert sum("NaN, infinite or negative" in r for r in reasons) == 3


def test_coco_with_only_escaping_paths_is_one_line_error(tmp_path):
    ann = _coco(tmp_path)
    data = json.loads(ann.read_text())
    data["images"] = [im for im in data["images"] if im["id"] >= 3]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="leaves the data folder") as err:
        load_coco(ann)
    assert "\n" not in str(err.value)
