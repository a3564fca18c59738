"""The shipped YOLOv8n digits detector, and the script that trains it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.yolo, pytest.mark.usefixtures("one_torch_thread")]

from compress.models import load_model  # noqa: E402
from compress.models.checkpoint import read_checkpoint  # noqa: E402
from compress.models.ultralytics import ZOO  # noqa: E402
from compress.recipe import ModelSpec  # noqa: E402

WEIGHTS = ZOO / "yolov8n-digits.pt"



@pytest.mark.skipif(not WEIGHTS.is_file(), reason="yolov8n-digits.pt not shipped")
def test_shipped_detector_detects_digits_and_exports(tmp_path):
    from compress.data import builtin_dataset
    from compress.export import export_onnx
    from compress.runtime.session import make_session, run
    from compress.zoo.yolo import evaluate

    ckpt = read_checkpoint(WEIGHTS)  # weights_only: a plain dict
    assert ckpt["produced_by"]["function"] == "compress.zoo.yolo.train_yolo_digits"
    assert ckpt["produced_by"]["cfg"] == "yolov8n.yaml" and "map50" in ckpt["metrics"]
    adapter, model = load_model(ModelSpec(builtin="yolov8n-digits"))
    assert adapter.class_names == [str(i) for i in range(10)] and adapter.imgsz == 128
    val = builtin_dataset("digits-det", "val", samples=40)
    assert evaluate(adapter, model, val.samples)["map50"] > 0.5
    x, _ = adapter.preprocess([s.image for s in val.samples[:2]])
    path = export_onnx(model, adapter, tmp_path / "m.onnx")
    with torch.no_grad():
        ref = adapter.forward(model, x).numpy()
    np.testing.assert_allclose(run(make_session(path, threads=1), x.numpy()), ref, atol=1e-3, rtol=1e-4)


def test_training_script_writes_a_loadable_checkpoint(tmp_path):
    from compress.zoo.yolo import train_yolo_digits

    out = tmp_path / "y.pt"
    ckpt = train_yolo_digits("yolov8n.yaml", out, imgsz=64, steps=3, batch=2, warmup=1, val_images=4, log=None)
    assert ckpt["produced_by"]["steps"] == 3 and set(ckpt["metrics"]) >= {"map50", "map50_95"}
    adapter, model = load_model(ModelSpec(checkpoint=str(out)))
    assert adapter.imgsz == 64 and adapter.forward(model, adapter.example_input()).shape == (1, 14, 84)
