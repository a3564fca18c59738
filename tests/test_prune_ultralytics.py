"""The pruning passes on Ultralytics YOLOv8 and YOLO11 models built from yaml.

Each pass is checked, applied through the Pass API exactly as the runner does, and the
result must: still produce the original output layout, keep the Detect head's protected
output convolutions at full width, export to ONNX that ONNX Runtime runs with the same
numbers as torch, and say in its report what it did. (The end-to-end fidelity of a
trained YOLOv8n after pruning is recipes/yolov8n-prune50.yaml, run by the slow test.)
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.yolo, pytest.mark.usefixtures("one_torch_thread")]

from compress.data import builtin_dataset  # noqa: E402
from compress.export import export_onnx  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.passes import registered  # noqa: E402
from compress.recipe import ModelSpec  # noqa: E402
from prune_fixtures import make_ctx, ort_run  # noqa: E402

IMGSZ = 64
NAMES = [str(i) for i in range(10)]
BLOCK = {"yolov8n.yaml": "C2f", "yolo11n.yaml": "C3k2"}
FT = {"steps": 1, "batch_size": 4, "samples": 4}

PASSES = {
    "l2-task": {"type": "prune.structured", "criterion": "l2", "ratio": 0.5, "finetune": {**FT, "loss": "task"}},
    "fmap-iterative": {"type": "prune.structured", "criterion": "fmap_cluster", "ratio": 0.5, "steps": 2,
                       "calib_samples": 4, "n_init": 1, "finetune": {**FT, "loss": "distill"}},
    "l1-global": {"type": "prune.structured", "criterion": "l1", "ratio": 0.4, "scope": "global",
                  "max_layer_ratio": 0.75},
    "unstructured": {"type": "prune.unstructured", "norm": "l2",
                     "targets": [{"match": "Conv2d", "amount": 0.5}, {"match": "BLOCK", "amount": 0.3}]},
}



@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {cfg: load_model(ModelSpec(builtin=cfg, class_names=NAMES, imgsz=IMGSZ)) for cfg in BLOCK}


@pytest.fixture(scope="module")
def data():
    return builtin_dataset("digits-det", "calib", 8)



def _conv_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", sorted(PASSES))
@pytest.mark.parametrize("cfg", sorted(BLOCK))
def test_pass_on_ultralytics(cfg, name, built, data, tmp_path):
    adapter, original = built[cfg]
    model = copy.deepcopy(original)
    values = copy.deepcopy(PASSES[name])
    for t in values.get("targets", []):
        t["match"] = BLOCK[cfg] if t["match"] == "BLOCK" else t["match"]
    cls = registered()[values["type"]]
    p = cls(cls.Config.model_validate(values))
    ctx = make_ctx(adapter, model, data, work_dir=tmp_path)
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = adapter.forward(original, x)
    head_widths = sorted(m.out_channels for m in adapter.protected_layers(model))
    n0 = _conv_params(model)

    p.check(model, ctx)
    model = p.apply(model, ctx).eval()
    with torch.no_grad():
        got = adapter.forward(model, x)
    assert got.shape == want.shape
    assert sorted(m.out_channels for m in adapter.protected_layers(model)) == head_widths
    section = ctx.report[p.label]
    if values["type"] == "prune.structured":
        assert _conv_params(model) < (0.75 if values["ratio"] >= 0.5 else 0.9) * n0, "too few weights removed"
        assert not any(type(m).__name__ == BLOCK[cfg] for m in model.modules()), "split block left in place"
    else:
        assert _conv_params(model) == n0
        zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert 0.25 < zeros / n0 < 0.55, zeros / n0
        assert section["overall_sparsity"] == pytest.approx(zeros / n0, abs=0.02)

    onnx_path = export_onnx(model, adapter, tmp_path / "model.onnx", opset=17)
    out = ort_run(onnx_path, x.numpy())
    np.testing.assert_allclose(out, got.numpy(), rtol=1e-3, atol=1e-3)
