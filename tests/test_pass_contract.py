"""The pass contract: every registered pass, applied to a tiny detector with its default
settings, leaves a model that still runs and exports to ONNX that ONNX Runtime runs
with the original output shape. New passes are covered automatically; give a pass whose
config has required fields a sample below (or the generic filler picks one)."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compress.passes import registered
from compress.passes.base import PassConfig
from prune_fixtures import IMGSZ, TinyDetAdapter, det_dataset, make_ctx, tiny_det

# small, fast settings for passes whose defaults train or calibrate for long
SAMPLES: dict[str, dict] = {
    "finetune": {"steps": 2, "batch_size": 4},
    "prune.structured": {"ratio": 0.5, "calib_samples": 4},
    "prune.unstructured": {"amount": 0.5},
}


def _filler(annotation):
    """A plausible value for a required field from its type (floats: 0.5, ints: 1, literals: first)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)[0]
    if origin is typing.Annotated:
        return _filler(typing.get_args(annotation)[0])
    return {float: 0.5, int: 1, bool: False, str: "x"}.get(annotation)


def minimal_config(type_name: str, cls) -> PassConfig:
    values = {"type": type_name, **SAMPLES.get(type_name, {})}
    for name, field in cls.Config.model_fields.items():
        if field.is_required() and name not in values:
            values[name] = _filler(field.annotation)
    try:
        return cls.Config.model_validate(values)
    except ValidationError as e:  # pragma: no cover - tells the pass author what to add
        pytest.fail(f"{type_name}: add a sample config to SAMPLES in {__file__}: {e}")


def _ort_run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("type_name", sorted(registered()))
def test_every_pass_keeps_a_runnable_exportable_model(type_name, tmp_path):
    from compress.export import export_onnx

    torch.set_num_threads(2)
    cls = registered()[type_name]
    cfg = minimal_config(type_name, cls)
    model = tiny_det()
    adapter = TinyDetAdapter()
    ctx = make_ctx(adapter, model, det_dataset(8), work_dir=tmp_path)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        want_shape = tuple(adapter.forward(model, x).shape)
    p = cls(cfg)
    p.check(model, ctx)
    if p.stage == "torch":
        model = p.apply(model, ctx)
        assert isinstance(model, torch.nn.Module)
        model.eval()
        with torch.no_grad():
            assert tuple(adapter.forward(model, x).shape) == want_shape
        path = export_onnx(model, adapter, tmp_path / "out.onnx", opset=17)
    else:
        ctx.model = model
        fp32 = export_onnx(model, adapter, tmp_path / "fp32.onnx", opset=17)
        path = p.apply_onnx(fp32, ctx)
    got = _ort_run(path, x.numpy())
    assert got.shape == want_shape and np.isfinite(got).all()
    assert ctx.report.get(p.label), f"{type_name} wrote no report section"
