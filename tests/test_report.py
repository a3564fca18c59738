"""report.json / report.md writers, console tables and detection overlays."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from compress.report import print_profile, print_stage_table, print_summary, to_jsonable, write_report
from compress.report.overlay import save_overlays
from compress.types import Detections, Sample


def _full_report() -> dict:
    return {
        "recipe": {"name": "digitdet-prune50", "digest": "0123abcd4567"},
        "model": {"adapter": "digitdet", "task": "detect", "class_names": [str(i) for i in range(10)],
                  "imgsz": 128},
        "data": {"calibration": {"root": "builtin:digits-det", "images": 64, "labelled": True, "skipped": []},
                 "validation": {"root": "/data/val", "images": 40, "labelled": True,
                                "skipped": [{"path": "/data/val/broken.jpg", "reason": "cannot identify image"},
                                            ("/data/val/empty.png", "empty file")]}},
        "stages": [{"name": "original", "seconds": 0.0, "params": 123456, "macs": 98765432},
                   {"name": "prune.structured", "seconds": 12.5, "params": 61728, "macs": 45000000}],
        "passes": {"prune.structured": {"ratio": 0.5, "criterion": "l2", "steps": 2,
                                        "per_layer": {"backbone.0.conv": 0.25, "neck.1.cv2": 0.75},
                                        "history": [{"step": 1, "params": 90000}, {"step": 2, "params": 61728}]}},
        "original": {"params": 123456, "macs": 98765432, "onnx_bytes": 500000, "latency_ms": 4.25,
                     "latency_p90_ms": 5.5, "map50": 0.9123, "map50_95": 0.6012, "accuracy": None},
        "compressed": {"params": 61728, "macs": 45000000, "onnx_bytes": 250000, "latency_ms": 2.125,
                       "latency_p90_ms": 2.75, "map50": 0.9001, "map50_95": float("nan")},
        "ratios": {"params": 2.0, "macs": 2.1948, "onnx_bytes": 2.0, "latency": 2.0},
        "fidelity": {"passed": False, "agreement_map50": 0.8765, "agreement_map50_95": 0.61,
                     "matched_recall": 0.93, "matched_precision": 0.91, "score_drift": 0.031,
                     "lost_classes": [7], "thresholds": {"min_agreement_map50": 0.9, "max_score_drift": None},
                     "failures": ["agreement mAP50 0.8765 < 0.9"], "counts": {"images": 40, "matched": 93}},
        "notes": ["Latency ratio 2.00x follows the MAC ratio.", "Class 7 lost its detections."],
        "files": {"onnx": "model.onnx", "overlays": ["overlays/00_a.png", "overlays/01_b.png"]},
        "environment": {"python": "3.11", "threads": 2, "cpu": {"arch": "x86_64", "has_vnni": False}},
        "int8_drift": [{"layer": "/head/Conv", "rel_error": 0.12}],
    }


def test_write_report_minimal_and_empty(tmp_path):
    j, m = write_report(tmp_path / "out", {})
    assert json.loads(j.read_text()) == {}
    assert m.read_text().startswith("# compress: run")

    j, m = write_report(tmp_path, {"recipe": {"name": "tiny"}, "original": {"params": 10},
                                   "fidelity": {}, "passes": {}, "stages": [], "notes": []})
    assert json.loads(j.read_text())["original"] == {"params": 10}
    md = m.read_text()
    assert "# compress: tiny" in md and "| params | 10 | - | - |" in md
    assert "PASS" not in md and "FAIL" not in md  # no fidelity result, no verdict


def test_write_report_full(tmp_path):
    j, m = write_report(tmp_path, _full_report())
    data = json.loads(j.read_text())
    assert data["compressed"]["map50_95"] is None  # NaN -> null
    assert data["data"]["validation"]["skipped"][1] == ["/data/val/empty.png", "empty file"]
    assert isinstance(data["original"]["params"], int) and isinstance(data["original"]["latency_ms"], float)
    assert j.read_text().startswith('{\n  "recipe"')  # indent 2

    md = m.read_text()
    assert md.splitlines()[0] == "# compress: digitdet-prune50 - FAIL"
    assert "| params | 123,456 (123 k) | 61,728 (61.7 k) | 2.00x |" in md
    assert "| latency median (ms) | 4.25 | 2.125 | 2.00x |" in md
    assert "| latency p90 (ms) | 5.5 | 2.75 | 2.00x |" in md  # computed: original / compressed
    assert "| mAP50 | 0.9123 | 0.9001 | -0.0122 |" in md
    assert "| mAP50-95 | 0.6012 | - | - |" in md
    assert "top-1 accuracy" not in md  # neither side has it
    assert "| agreement mAP50 | 0.8765 | >= 0.9 |" in md
    assert "| mean score drift | 0.031 |  |" in md
    assert "| lost classes | 7 |  |" in md
    assert "- agreement mAP50 0.8765 < 0.9" in md
    assert "### prune.structured" in md and "| ratio | 0.5 |" in md
    assert "| backbone.0.conv | 0.25 |" in md  # nested name -> number table
    assert "| step | params |" in md and "| 2 | 61,728 |" in md  # list of dicts
    assert "- Class 7 lost its detections." in md
    assert "| validation | 40 | yes | 2 | /data/val |" in md
    assert "`/data/val/broken.jpg`: cannot identify image" in md
    assert "![overlays/00_a.png](overlays/00_a.png)" in md
    assert "[model.onnx](model.onnx)" in md
    assert "| cpu.has_vnni | no |" in md
    assert "## int8_drift" in md and "/head/Conv" in md
    assert "| prune.structured | 12.5 | 61,728 (61.7 k) | 45,000,000 (45 M) |" in md


def test_to_jsonable_numpy_and_paths():
    out = to_jsonable({"a": np.float32(1.5), "b": np.int64(3), "c": np.array([1.0, np.nan]),
                       "d": Path("x/y"), 1: (float("inf"), True)})
    assert out == {"a": 1.5, "b": 3, "c": [1.0, None], "d": "x/y", "1": [None, True]}
    assert json.dumps(out, allow_nan=False)


def test_console_tables():
    buf = io.StringIO()
    con = Console(file=buf, width=140, color_system=None)
    rep = _full_report()
    print_stage_table(rep["stages"], con)
    print_summary(rep, con)
    print_summary({}, con)  # nothing to show, no crash
    print_profile([{"name": "stem", "type": "Conv2d", "params": 10, "macs": 20000, "latency_ms": 0.5,
                    "latency_share": 0.25}], con)
    text = buf.getvalue()
    assert "prune.structured" in text and "123,456" in text and "2.00x" in text
    assert "FAIL" in text and "agreement mAP50 0.8765 < 0.9" in text and "25.0%" in text


def _sample(i, h=48, w=64):
    img = np.full((h, w, 3), 30 * i, np.uint8)
    return Sample(path=f"/data/img {i}.jpg", image=img)


def test_overlays_detection_and_classification(tmp_path):
    from PIL import Image

    samples = [_sample(i) for i in range(3)]
    ref = [Detections(np.array([[4, 4, 30, 30]], np.float32), np.array([0.9], np.float32),
                      np.array([1])) for _ in samples]
    cmp = [Detections.empty(), ref[1], ref[2]]
    paths = save_overlays(tmp_path / "ov", samples, ref, cmp, ["zero", "one"], n=2)
    assert len(paths) == 2 and all(p.suffix == ".png" and p.is_file() for p in paths)
    assert paths[0].name == "00_img_0.png"
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.width > 100
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == sorted(p.name for p in paths)

    logits = [np.array([2.0, -1.0]), np.array([0.1, 0.9])]
    cls = save_overlays(tmp_path / "cls", samples[:2], logits, [1, 0], ["cat", "dog"], n=4)
    assert len(cls) == 2 and all(p.stat().st_size > 0 for p in cls)
    assert save_overlays(tmp_path / "none", samples, ref, cmp, ["a", "b"], n=0) == []


def test_overlay_top1_label():
    from compress.report.overlay import _top1

    assert _top1(np.array([0.0, math.log(3.0)]), ["a", "b"]) == "b (0.75)"
    assert _top1(np.array([0.2, 0.8]), ["a", "b"]) == "b (0.80)"
    assert _top1(0, ["a", "b"]) == "a"
    with pytest.raises(ValueError):
        _top1("not a number", ["a"])


def test_classifier_rows_show_top5_and_kl_with_their_thresholds():
    from compress.report.fmt import fidelity_rows

    fid = {"top1_agreement": 0.9, "top5_agreement": 0.99, "kl_divergence": 0.02, "reference_margin": 1.5,
           "thresholds": {"min_top5_agreement": 0.95, "max_kl": 0.1}}
    rows = {label: (value, bound) for label, value, bound in fidelity_rows(fid)}
    assert rows["top-5 agreement"][1].startswith(">=") and "0.95" in rows["top-5 agreement"][1]
    assert rows["KL(original || compressed)"][1].startswith("<=")
    assert "original's median top-1 margin" in rows


def test_peak_memory_row_shows_both_sides_and_the_ratio():
    from compress.report.fmt import metric_rows

    rows = {r[0]: r for r in metric_rows({"original": {"peak_memory_mb": 31.4}, "compressed": {"peak_memory_mb": 15.7}})}
    label, a, b, change = rows["peak inference memory (MB)"]
    assert "31.4" in a and "15.7" in b and change == "2.00x"
