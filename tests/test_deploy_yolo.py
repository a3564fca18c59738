"""Deployment of a model this project did not write: the built-in YOLOv8n (Ultralytics
architecture from yolov8n.yaml) to the runtimes that convert it their own way — OpenVINO
(from the ONNX file, fp32 and int8 QDQ) and ncnn (pnnx from the torch model) — checked in
each runtime, and each bundle's infer.py reproducing the check's detections."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from compress import recipe as R
from compress.deploy import get_target

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.yolo, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TARGETS = [t for t in ("openvino", "ncnn") if get_target(t).available()]
if not TARGETS:
    pytest.skip("neither openvino nor ncnn is installed: pip install -e '.[openvino,ncnn]'", allow_module_level=True)

RECIPE = {
    "name": "yolo-deploy",
    "model": {"builtin": "yolov8n-digits", "adapter": "ultralytics"},
    "data": {"calibration": {"builtin": "digits-det", "split": "calib", "samples": 16},
             "validation": {"builtin": "digits-det", "split": "val", "samples": 8}},
    "passes": [{"type": "quantize.ptq", "backend": "onnxruntime"}],
    "fidelity": {"overlays": 0, "min_agreement_map50": 0.85},
    "benchmark": {"runs": 3, "warmup": 1, "threads": 1},
    "deploy": {"targets": TARGETS},
}


def test_yolov8n_deploys_and_infer_py_reproduces_the_check(tmp_path):
    from compress import api

    out = tmp_path / "run"
    rep = api.run(R.validate(RECIPE), out, quiet=True)
    dep = rep["deploy"]
    for t in TARGETS:
        rows = dep[t]["artifacts"]
        assert rows["fp32"]["agreement_map50"] >= 0.99 and rows["fp32"]["matched_recall"] >= 0.99, t
        if t == "openvino":
            assert rows["int8"]["passed"], rows["int8"]
        bundle = tmp_path / f"bundle-{t}"
        shutil.copytree(out / "deploy" / t, bundle)
        info = json.loads((bundle / "deploy.json").read_text())
        assert "AGPL" in info["licence"]  # Ultralytics architecture
        for art in info["artifacts"].values():
            proc = subprocess.run([sys.executable, "infer.py", "example.png", "--model", art["file"]], cwd=bundle,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr[-2000:]
            got, want = json.loads(proc.stdout), art["example_detections"]
            assert want and [d["class"] for d in got] == [d["class"] for d in want], t
            assert np.allclose([d["box"] for d in got], [d["box"] for d in want], atol=0.02), t
