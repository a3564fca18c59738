"""The shipped Ultralytics digits detectors (YOLOv8n, YOLO26n), and the script that trains them."""

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

# shipped model -> (model yaml, val mAP50 floor on the first 40 val images, the loss it was trained with);
# measured there: yolov8n-digits 0.835, yolo26n-digits 0.883 (one-to-one branch 0.878)
SHIPPED = {"yolov8n-digits": ("yolov8n.yaml", 0.7, "v8DetectionLoss"),
           "yolo26n-digits": ("yolo26n.yaml", 0.75, "E2ELoss")}


@pytest.fixture(scope="module")
def val40():
    from compress.data import builtin_dataset

    return builtin_dataset("digits-det", "val", samples=40)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_detector_detects_digits_and_exports(name, val40, tmp_path):
    from compress.export import export_onnx
    from compress.runtime.session import make_session, run
    from compress.zoo.yolo import evaluate

    cfg, floor, loss = SHIPPED[name]
    if not (ZOO / f"{name}.pt").is_file():
        pytest.skip(f"{name}.pt not shipped")
    ckpt = read_checkpoint(ZOO / f"{name}.pt")  # weights_only: a plain dict
    assert ckpt["produced_by"]["function"] == "compress.zoo.yolo.train_yolo_digits"
    assert ckpt["produced_by"]["cfg"] == cfg and loss in ckpt["produced_by"]["loss"]
    assert {"map50", "map50_95"} <= set(ckpt["metrics"]) and ckpt["metrics"]["val_images"] == 200
    adapter, model = load_model(ModelSpec(builtin=name))
    assert adapter.class_names == [str(i) for i in range(10)] and adapter.imgsz == 128
    assert evaluate(adapter, model, val40.samples)["map50"] > floor
    x, _ = adapter.preprocess([s.image for s in val40.samples[:2]])
    path = export_onnx(model, adapter, tmp_path / "m.onnx")
    with torch.no_grad():
        ref = adapter.forward(model, x).numpy()
    np.testing.assert_allclose(run(make_session(path, threads=1), x.numpy()), ref, atol=1e-3, rtol=1e-4)


def test_yolo26n_one_to_one_branch_was_trained_too(val40):
    """E2ELoss trains both heads: the NMS-free branch (top-k, no NMS) detects digits as well."""
    from compress.zoo.yolo import evaluate, has_one2one

    if not (ZOO / "yolo26n-digits.pt").is_file():
        pytest.skip("yolo26n-digits.pt not shipped")
    adapter, model = load_model(ModelSpec(builtin="yolo26n-digits"))
    assert has_one2one(model)
    o2o = evaluate(adapter, model, val40.samples, one2one=True)["map50"]
    o2m = evaluate(adapter, model, val40.samples)["map50"]
    assert o2o > 0.75 and abs(o2o - o2m) < 0.1
    assert read_checkpoint(ZOO / "yolo26n-digits.pt")["metrics"]["one2one_map50"] > 0.75


@pytest.mark.parametrize("cfg, loss", [("yolov8n.yaml", "v8DetectionLoss"), ("yolo26n.yaml", "E2ELoss")])
def test_training_script_writes_a_loadable_checkpoint(cfg, loss, tmp_path):
    from compress.zoo.yolo import train_yolo_digits

    out = tmp_path / "y.pt"
    ckpt = train_yolo_digits(cfg, out, imgsz=64, steps=3, batch=2, warmup=1, val_images=4, log=None)
    assert ckpt["produced_by"]["steps"] == 3 and ckpt["produced_by"]["cfg"] == cfg
    assert set(ckpt["metrics"]) >= {"map50", "map50_95"} and loss in ckpt["produced_by"]["loss"]
    assert ("one2one_map50" in ckpt["metrics"]) == (loss == "E2ELoss")
    adapter, model = load_model(ModelSpec(checkpoint=str(out)))
    assert adapter.imgsz == 64 and adapter.forward(model, adapter.example_input()).shape == (1, 14, 84)
    written = read_checkpoint(out)["state_dict"]
    for k, v in model.state_dict().items():  # the file holds the trained (EMA) weights the checkpoint returned
        torch.testing.assert_close(v, written[k].to(v.dtype))


def test_criterion_is_the_one_ultralytics_picks():
    """YOLO26's end-to-end head gets E2ELoss (one-to-many + one-to-one), whose one-to-many gain decays."""
    from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

    from compress.zoo.yolo import ultralytics_criterion

    names = [str(i) for i in range(10)]
    _, v8 = load_model(ModelSpec(builtin="yolov8n.yaml", class_names=names, imgsz=64))
    _, y26 = load_model(ModelSpec(builtin="yolo26n.yaml", class_names=names, imgsz=64))
    assert type(ultralytics_criterion(v8)) is v8DetectionLoss
    args_before = getattr(y26, "args", None)
    crit = ultralytics_criterion(y26, epochs=4)
    assert type(crit) is E2ELoss and getattr(y26, "args", None) is args_before  # the model is left as it was
    gains = [crit.o2m]
    for _ in range(4):
        crit.update()
        gains.append(crit.o2m)
    assert gains[0] == pytest.approx(0.8) and gains[-1] == pytest.approx(0.1) and gains == sorted(gains, reverse=True)


def test_cli_trains_yolo26n_into_its_own_file(monkeypatch, tmp_path):
    """`compress zoo train yolo26n` trains from yolo26n.yaml and refuses to overwrite without --force."""
    import compress.zoo.yolo as zoo_yolo
    from compress.cli import main

    seen = {}

    def fake_train(cfg="yolov8n.yaml", out=None, **kw):
        seen.update(cfg=cfg, out=out, **kw)
        out.write_bytes(b"x")
        return {"imgsz": 128}

    monkeypatch.setattr(zoo_yolo, "train_yolo_digits", fake_train)
    out = tmp_path / "w.pt"
    assert main(["zoo", "train", "yolo26n", "--out", str(out), "--minutes", "0.5"]) == 0
    assert seen["cfg"] == "yolo26n.yaml" and seen["out"] == out and seen["minutes"] == 0.5
    assert main(["zoo", "train", "yolo26n", "--out", str(out)]) == 2


@pytest.mark.slow
def test_yolo26n_int8_recipe_passes_its_check(tmp_path):
    """recipes/yolo26n-int8.yaml as shipped (fewer images): int8 ONNX that still agrees with the fp32 model."""
    import json
    from pathlib import Path

    from compress.cli import main

    if not (ZOO / "yolo26n-digits.pt").is_file():
        pytest.skip("yolo26n-digits.pt not shipped")
    recipe = Path(__file__).parents[1] / "recipes" / "yolo26n-int8.yaml"
    out = tmp_path / "run"
    fast = ["--set", "fidelity.samples=40", "--set", "quantize.samples=64", "--set", "benchmark.runs=5",
            "--set", "benchmark.warmup=1", "--set", "fidelity.overlays=0", "--quiet"]
    assert main(["run", str(recipe), "--out", str(out), *fast]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["fidelity"]["agreement_map50"] >= 0.9 and rep["fidelity"]["matched_recall"] >= 0.8
    assert rep["ratios"]["onnx_bytes"] > 3  # int8 weights
