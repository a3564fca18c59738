"""quantize.ptq: every backend gives an ORT-runnable QDQ int8 file that still detects;
head protection is what keeps a detector alive; bad input is refused up front."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from compress.errors import PassError, RecipeError
from compress.passes import get_pass
from compress.quant import qdq, safety

try:
    from test_quant_tiny import TinyAdapter, TinyYolo, agreement, export, make_ctx, squares
except ImportError:  # tests/ imported as a package
    from tests.test_quant_tiny import TinyAdapter, TinyYolo, agreement, export, make_ctx, squares

PTQ = get_pass("quantize.ptq")


def _ptq(**cfg):
    return PTQ(PTQ.Config(type="quantize.ptq", **cfg))


def _setup(tmp_path, n=24, box_scale=1.0):
    data = squares(n)
    adapter, model = TinyAdapter(box_scale), TinyYolo(box_scale).eval()
    ctx = make_ctx(model, adapter, data, tmp_path)
    return ctx, export(model, adapter, tmp_path / "fp32.onnx")


def _assert_int8(path):
    model = onnx.load(str(path))
    ops = qdq.op_counts(model)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8) >= 4  # the conv weights are stored as 8-bit
    return model


@pytest.mark.parametrize("backend, extra", [("onnxruntime", {}), ("onnxruntime", {"calibrate": "percentile"}),
                                            pytest.param("nncf", {}, marks=pytest.mark.slow), ("torch", {}),
                                            ("torch", {"engine": "qnnpack", "calibrate": "minmax"})])
def test_backend_makes_int8_that_still_detects(tmp_path, backend, extra):
    torch.manual_seed(0)
    ctx, fp32 = _setup(tmp_path)
    p = _ptq(backend=backend, samples=16, **extra)
    p.check(ctx.model, ctx)
    out = p.apply_onnx(fp32, ctx)
    _assert_int8(out)
    a = agreement(ctx.adapter, ctx.model, out, ctx.calibration)
    assert a["reference_boxes"] > 20
    assert a["agreement_map50"] >= 0.95
    section = ctx.report["quantize.ptq"]
    assert section["quantized"] is True  # the runner diagnoses drift for such sections when fidelity fails
    assert section["calibration"]["used"] == 16
    tail = {n["node"]: n for n in section["float_nodes"]}
    assert any(n["op"] == "Concat" and "scores" in n["why"] for n in tail.values())
    assert "cpu" in section and "reduce_range" in section["cpu"]
    assert any("decode-tail" in note for note in ctx.notes)


def test_protect_head_is_what_keeps_scores_alive(tmp_path):
    """Boxes in the hundreds share a Concat with 0..1 scores: one int8 scale rounds every score to 0."""
    from compress.fidelity import check
    from compress.quant.drift import diagnose_drift
    from compress.recipe import FidelityConfig

    ctx, fp32 = _setup(tmp_path, box_scale=20.0)
    with torch.no_grad():
        assert float(ctx.model(ctx.adapter.preprocess([ctx.calibration[0].image])[0]).max()) > 200
    cfg = FidelityConfig(min_agreement_map50=0.9)
    broken = _ptq(protect_head=False).apply_onnx(fp32, ctx)
    bad = check(ctx.adapter, ctx.reference, broken, ctx.calibration, cfg)
    assert not bad.passed and bad.collapsed
    assert any("protect_head is off" in n for n in ctx.notes)
    worst = diagnose_drift(fp32, broken, ctx.adapter, [s.image for s in ctx.calibration[:4]], k=3)
    assert worst[0]["op"] == "graph output" and worst[0]["rel_error"] > 0.5

    ctx.work_dir = tmp_path / "protected"
    ok = check(ctx.adapter, ctx.reference, _ptq().apply_onnx(fp32, ctx), ctx.calibration, cfg)
    assert ok.passed and not ok.collapsed
    assert ok.metrics["agreement_map50"] >= 0.95


def test_ignore_keeps_named_layers_float(tmp_path):
    ctx, fp32 = _setup(tmp_path)
    out = _ptq(ignore=["/stem/stem.0/Conv"], samples=8).apply_onnx(fp32, ctx)
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert inits[convs["/stem/stem.0/Conv"].input[1]].data_type == onnx.TensorProto.FLOAT  # float weight
    assert convs["/b1/b1.0/Conv"].input[1] not in inits  # fed by DequantizeLinear
    with pytest.raises(PassError, match="matches no node"):
        _ptq(ignore=["/typo/Conv"], samples=8).apply_onnx(fp32, ctx)


def test_drift_on_demand_and_metadata(tmp_path):
    ctx, fp32 = _setup(tmp_path)
    out = _ptq(samples=8, diagnose=3).apply_onnx(fp32, ctx)
    rows = ctx.report["quantize.ptq"]["drift"]
    assert len(rows) == 3 and rows[0]["rel_error"] >= rows[-1]["rel_error"] >= 0
    assert all(r["op"] in ("Conv", "graph output") for r in rows)
    assert any("largest int8 activation drift" in n for n in ctx.notes)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["quantization"].startswith("int8 static QDQ (onnxruntime)")
    assert meta["task"] == "detect"  # the fp32 export's metadata is carried over


def test_calibration_counts(tmp_path):
    ctx, fp32 = _setup(tmp_path, n=10)
    with pytest.warns(UserWarning, match="50 calibration images requested but only 10"):
        _ptq(samples=50).check(ctx.model, ctx)
    ctx.calibration = squares(5)
    with pytest.raises(PassError, match="at least 8 calibration images, got 5"):
        _ptq().check(ctx.model, ctx)
    ctx.calibration = None
    with pytest.raises(PassError, match="at least 8"):
        _ptq().check(ctx.model, ctx)


def test_refuses_an_already_quantized_model(tmp_path):
    ctx, fp32 = _setup(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        once = _ptq(samples=8).apply_onnx(fp32, ctx)
    with pytest.raises(PassError, match="already quantized"):
        _ptq(samples=8).apply_onnx(once, ctx)


def test_refuses_a_model_without_3_channel_input(tmp_path):
    class Gray(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

    class GrayAdapter(TinyAdapter):
        def example_input(self, batch=1):
            return torch.zeros(batch, 1, self.imgsz, self.imgsz)

    ctx, _ = _setup(tmp_path)
    ctx.adapter = GrayAdapter()
    with pytest.raises(PassError, match="3-channel"):
        _ptq().check(Gray(), ctx)
    path = tmp_path / "gray.onnx"
    torch.onnx.export(Gray(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["images"])
    with pytest.raises(PassError, match="3-channel"):
        qdq.image_input(onnx.load(str(path)), "quantize.ptq")


def test_unavailable_backends_say_how_to_install(tmp_path, monkeypatch):
    from compress.quant.backends import nncf as nncf_backend
    from compress.quant.backends import torch_ao

    ctx, _ = _setup(tmp_path)
    monkeypatch.setattr(nncf_backend, "available", lambda: False)
    with pytest.raises(PassError, match="pip install nncf"):
        _ptq(backend="nncf").check(ctx.model, ctx)
    monkeypatch.setattr(torch_ao, "supported_engines", lambda: ["none"])
    with pytest.raises(PassError, match="engine 'qnnpack' is not available"):
        _ptq(backend="torch", engine="qnnpack").check(ctx.model, ctx)


def test_backend_specific_options_are_checked_at_load_time():
    from compress.recipe import validate

    base = {"name": "t", "model": {"builtin": "digitdet"}}
    with pytest.raises(RecipeError, match=r"passes\[0\].*'preset' applies to backend nncf"):
        validate({**base, "passes": [{"type": "quantize.ptq", "preset": "mixed"}]})
    with pytest.raises(RecipeError, match="'percentile' needs calibrate: percentile"):
        validate({**base, "passes": [{"type": "quantize.ptq", "percentile": 99.9}]})
    with pytest.raises(RecipeError, match="calibrate 'entropy' is not available with backend 'torch'"):
        validate({**base, "passes": [{"type": "quantize.ptq", "backend": "torch", "calibrate": "entropy"}]})
    with pytest.raises(RecipeError, match="'calibrate' applies to backend onnxruntime / torch"):
        validate({**base, "passes": [{"type": "quantize.ptq", "backend": "nncf", "calibrate": "minmax"}]})
    r = validate({**base, "passes": [{"type": "quantize.ptq", "backend": "torch", "engine": "qnnpack"}]})
    assert r.passes[0].engine == "qnnpack"


def test_cpu_safety_decision():
    no_vnni = {"arch": "x86_64", "avx2": True, "has_vnni": False}
    vnni = {"arch": "x86_64", "avx2": True, "avx512f": True, "has_vnni": True}
    arm = {"arch": "aarch64", "dotprod": True, "has_vnni": False}
    assert safety.decide("auto", features=no_vnni).reduce_range
    assert "VNNI" in safety.decide("auto", features=no_vnni).reason
    assert not safety.decide("auto", features=vnni).reduce_range
    assert not safety.decide("auto", features=arm).reduce_range
    assert not safety.decide("auto", "int8", "int8", features=no_vnni).reduce_range
    forced = safety.decide(False, features=no_vnni)
    assert not forced.reduce_range and "saturate" in forced.reason
    text = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    assert safety.cpu_flags(text, "x86_64")["has_vnni"]


def test_weight_folding_matches_onnx_quantize_linear():
    w = np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32)
    scale = np.abs(w).reshape(4, -1).max(1) / 127
    zp = np.zeros(4, np.int8)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=0),
         onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0)], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3, 2, 2])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(scale.astype(np.float32), "s"),
         onnx.numpy_helper.from_array(zp, "z")])
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    import onnxruntime as ort

    before = ort.InferenceSession(model.SerializeToString()).run(None, {})[0]
    assert qdq.fold_weight_quantize(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear"]
    assert {i.name for i in model.graph.initializer} == {"q", "s", "z"}
    after = ort.InferenceSession(model.SerializeToString()).run(None, {})[0]
    np.testing.assert_array_equal(before, after)


def test_compact_names_shrink_the_file_not_the_results(tmp_path):
    import onnxruntime as ort

    ctx, fp32 = _setup(tmp_path)
    out = _ptq(samples=8).apply_onnx(fp32, ctx)
    model = onnx.load(str(out))
    assert not any(n.output[0].endswith("_QuantizeLinear_Output") for n in model.graph.node)
    assert {n.name for n in model.graph.node if n.op_type == "Conv"} >= {"/stem/stem.0/Conv", "/cls.1/Conv"}
    x = ctx.adapter.preprocess([ctx.calibration[0].image])[0].numpy()
    before = ort.InferenceSession(str(out)).run(None, {"images": x})[0]
    assert qdq.compact_qdq_names(model) == 0  # already compact
    # a verbose twin: rename the short names back to long ones, then compact again
    long = {n: f"{n}_a_very_long_generated_quantization_tensor_name" for n in
            {x for node in model.graph.node if node.op_type.endswith("quantizeLinear") for x in node.output}}
    for node in model.graph.node:
        node.input[:] = [long.get(v, v) for v in node.input]
        node.output[:] = [long.get(v, v) for v in node.output]
    size_long = len(model.SerializeToString())
    assert qdq.compact_qdq_names(model) >= len(long) > 0
    assert len(model.SerializeToString()) < size_long
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"images": x})[0]
    np.testing.assert_array_equal(before, after)
