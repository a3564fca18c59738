"""quantize.dynamic (int8 Linear weights) and quantize.qat (fake-quant fine-tune -> QDQ ONNX)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from compress.errors import PassError
from compress.fidelity import predict_onnx, predict_torch
from compress.passes import get_pass
from compress.quant import qdq

try:
    from test_quant_tiny import (TinyAdapter, TinyClassifierAdapter, TinyNet, TinyYolo, agreement, export,
                                 make_ctx, squares)
except ImportError:  # tests/ imported as a package
    from tests.test_quant_tiny import (TinyAdapter, TinyClassifierAdapter, TinyNet, TinyYolo, agreement, export,
                                       make_ctx, squares)


def _classifier(tmp_path, n=16):
    data = squares(n)
    adapter, model = TinyClassifierAdapter(), TinyNet().eval()
    ctx = make_ctx(model, adapter, data, tmp_path)
    return ctx, export(model, adapter, tmp_path / "fp32.onnx")


def _logits(ctx, path):
    images = [s.image for s in ctx.calibration]
    ref = predict_torch(ctx.adapter, ctx.model, images, 0.25, 0.7).logits
    return ref, predict_onnx(ctx.adapter, str(path), images, 0.25, 0.7).logits


def test_dynamic_quantizes_linear_weights_and_reports_conv_share(tmp_path):
    ctx, fp32 = _classifier(tmp_path)
    P = get_pass("quantize.dynamic")
    p = P(P.Config(type="quantize.dynamic"))
    p.check(ctx.model, ctx)
    out = p.apply_onnx(fp32, ctx)
    model = onnx.load(str(out))
    ops = qdq.op_counts(model)
    assert ops["MatMulInteger"] == 2 and ops["DynamicQuantizeLinear"] >= 1
    int8_2d = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert sorted(tuple(i.dims) for i in int8_2d) == [(16, 64), (64, 2)]  # both Linear weights, (in, out)
    assert ops["Conv"] == 2  # convolutions untouched
    ref, got = _logits(ctx, out)
    assert np.abs(ref - got).max() < 0.05 * (np.abs(ref).max() + 1e-6) + 1e-3
    section = ctx.report["quantize.dynamic"]
    assert section["quantized"] is True
    macs = section["macs"]
    assert macs["conv"] > macs["linear"] > 0
    assert macs["linear"] == 16 * 64 + 64 * 2
    note = next(n for n in ctx.notes if "dynamic int8 covers" in n)
    assert "convolutions stay float" in note


def test_dynamic_refuses_a_model_without_linear_layers(tmp_path):
    ctx = make_ctx(TinyYolo().eval(), TinyAdapter(), squares(8), tmp_path)
    P = get_pass("quantize.dynamic")
    with pytest.raises(PassError, match="no Linear or LSTM"):
        P(P.Config(type="quantize.dynamic")).check(ctx.model, ctx)


@pytest.mark.slow
def test_qat_detector_exports_qdq_that_still_detects(tmp_path):
    data = squares(16)
    adapter, model = TinyAdapter(), TinyYolo().eval()
    ctx = make_ctx(model, adapter, data, tmp_path)
    fp32 = export(model, adapter, tmp_path / "fp32.onnx")
    P = get_pass("quantize.qat")
    p = P(P.Config(type="quantize.qat", steps=2, batch_size=8, calib_samples=8))
    p.check(model, ctx)
    out = p.apply_onnx(fp32, ctx)
    graph = onnx.load(str(out))
    ops = qdq.op_counts(graph)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    int8_w = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_w) == 7  # every conv but the DFL expectation
    section = ctx.report["quantize.qat"]
    assert section["quantized"] is True
    assert section["float_layers"] == ["dfl"]
    assert section["finetune"]["steps"] == 2 and section["finetune"]["loss"] == "distill"
    assert agreement(adapter, model, out, data)["agreement_map50"] >= 0.95
    # the caller's model is untouched (the pass works on a copy)
    assert not any(type(m).__name__ == "QuantWrap" for m in model.modules())


def test_qat_classifier(tmp_path):
    torch.manual_seed(0)
    ctx, fp32 = _classifier(tmp_path)
    P = get_pass("quantize.qat")
    p = P(P.Config(type="quantize.qat", steps=2, batch_size=8, calib_samples=8, engine="qnnpack"))
    p.check(ctx.model, ctx)
    out = p.apply_onnx(fp32, ctx)
    ops = qdq.op_counts(onnx.load(str(out)))
    assert ops["QuantizeLinear"] >= 4 and ops["Gemm"] == 2
    ref, got = _logits(ctx, out)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert ctx.report["quantize.qat"]["engine"] == "qnnpack"
    from compress.quant import safety

    # overflow-safe 0..127 activations exactly where the CPU needs them (no VNNI), the full range elsewhere
    narrow = safety.decide("auto", "uint8", "int8", remedy="").reduce_range
    assert ("0..127" if narrow else "0..255") in ctx.report["quantize.qat"]["activation"]
