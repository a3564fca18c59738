"""The pass contract: every registered pass, applied with its default settings to a tiny
detector (or, if it refuses that with a PassError, to a tiny classifier), leaves a model
that still runs and exports to ONNX that ONNX Runtime runs with the original output shape.
A refusal must be a clean PassError from ``check`` that leaves the model untouched.
New passes are covered automatically; give a pass whose config has required fields a
sample below (or the generic filler picks one)."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compress.errors import PassError
from compress.passes import registered
from compress.passes.base import PassConfig
from prune_fixtures import (IMGSZ, ort_run, TinyClsAdapter, TinyDetAdapter, cls_dataset, det_dataset, make_ctx, tiny_cls,
                            tiny_det)

TINY = [("detector", tiny_det, TinyDetAdapter, det_dataset), ("classifier", tiny_cls, TinyClsAdapter, cls_dataset)]

# small, fast settings for passes whose defaults train or calibrate for long
SAMPLES: dict[str, dict] = {
    "finetune": {"steps": 2, "batch_size": 4},
    "prune.structured": {"ratio": 0.5, "calib_samples": 4},
    "prune.unstructured": {"amount": 0.5},
    "swap.activation": {"replace": ["ReLU"]},  # the tiny models use ReLU, not the default SiLU
    "swap.module": {"target": "re:res|fuse", "block_steps": 2, "calib_samples": 4},  # tiny models' CBR blocks
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



@pytest.mark.parametrize("type_name", sorted(registered()))
def test_every_pass_keeps_a_runnable_exportable_model(type_name, tmp_path):
    torch.set_num_threads(2)
    cls = registered()[type_name]
    refusals = []
    for kind, make_model, make_adapter, make_data in TINY:
        model, adapter = make_model(), make_adapter()
        ctx = make_ctx(adapter, model, make_data(8), work_dir=tmp_path / kind)
        ctx.work_dir.mkdir()
        p = cls(minimal_config(type_name, cls))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            p.check(model, ctx)
        except PassError as e:
            assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "check touched the model"
            refusals.append(f"{kind}: {e}")
            continue
        _apply_and_export(p, model, adapter, ctx, tmp_path / kind)
        return
    pytest.fail(f"{type_name} refused every tiny model: {refusals}")


def _apply_and_export(p, model, adapter, ctx, out):
    from compress.export import export_onnx

    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        want_shape = tuple(adapter.forward(model, x).shape)
    if p.stage == "torch":
        model = p.apply(model, ctx)
        assert isinstance(model, torch.nn.Module)
        model.eval()
        with torch.no_grad():
            assert tuple(adapter.forward(model, x).shape) == want_shape
        path = export_onnx(model, adapter, out / "out.onnx", opset=17)
    else:
        ctx.model = model
        fp32 = export_onnx(model, adapter, out / "fp32.onnx", opset=17)
        path = p.apply_onnx(fp32, ctx)
    got = ort_run(path, x.numpy())
    assert got.shape == want_shape and np.isfinite(got).all()
    assert ctx.report.get(p.label), f"{p.type} wrote no report section"
