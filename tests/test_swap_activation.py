"""``swap.activation``: every slot swapped (shared Ultralytics ``Conv.default_act`` included),
functional calls counted, outputs and ONNX export kept, int8 fusion in ONNX Runtime, and
clean refusals that leave the model untouched."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from compress.errors import PassError
from compress.export import export_onnx
from compress.models import load_model
from compress.passes import registered
from compress.recipe import ModelSpec
from prune_fixtures import make_ctx, ort_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = [str(i) for i in range(10)]
ACT_MODULE = "torch.nn.modules.activation"


def _pass(**kw):
    cls = registered()["swap.activation"]
    return cls(cls.Config(type="swap.activation", **kw))


def _slot_types(model) -> Counter:
    """Activation class per parent slot (a shared module counts once per parent holding it)."""
    out = Counter()
    for _, parent in model.named_modules(remove_duplicate=False):
        for child in parent._modules.values():
            if child is not None and type(child).__module__ == ACT_MODULE:
                out[type(child).__name__] += 1
    return out


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _silu_patterns(path) -> int:
    """Mul nodes computing x * Sigmoid(x) (a SiLU the exporter wrote as two ops)."""
    g = onnx.load(str(path)).graph
    sig = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Sigmoid"}
    return sum(1 for n in g.node if n.op_type == "Mul" and len(n.input) == 2
               and any(i in sig and sig[i] in n.input for i in n.input))


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def digitdet():
    return load_model(ModelSpec(builtin="digitdet"))


# -- digitdet ---------------------------------------------------------------------------------------
def test_digitdet_every_silu_swapped_outputs_and_onnx_kept(digitdet, tmp_path):
    adapter, original = digitdet
    model = copy.deepcopy(original)
    before = _slot_types(model)
    assert before["SiLU"] > 0 and set(before) == {"SiLU"}
    ctx = make_ctx(adapter, model, work_dir=tmp_path)
    x = adapter.example_input(1)
    with torch.no_grad():
        want = adapter.forward(model, x)
    p = _pass(to="leaky_relu", negative_slope=0.1)
    p.check(model, ctx)
    out = p.apply(model, ctx)
    after = _slot_types(out)
    assert after == Counter({"LeakyReLU": before["SiLU"]})
    assert all(m.negative_slope == 0.1 for m in out.modules() if isinstance(m, nn.LeakyReLU))
    sec = ctx.report[p.label]
    assert sec["swapped"] == before["SiLU"] and sec["by_type"] == {"SiLU -> LeakyReLU": before["SiLU"]}
    assert sec["modules_left"] == 0 and sec["functional_left"] == {}
    assert "0 functional call(s) left" in sec["summary"] and len(sec["where"]["SiLU -> LeakyReLU"]) == 6
    assert _slot_types(ctx.reference) == before  # the reference copy keeps the original activations
    # digitdet's model.pt rebuilds its architecture from code; the checkpoint's saved activations win
    assert sec["model_pt_reload"]["keeps_swap"] is True
    assert sec["model_pt_reload"]["reloaded"] == {"LeakyReLU": before["SiLU"]}
    assert not any("model.pt keeps the weights" in n for n in ctx.notes)
    with torch.no_grad():
        got = adapter.forward(out.eval(), x)
    assert got.shape == want.shape and not torch.allclose(got, want)  # same layout, new function

    path = export_onnx(out, adapter, tmp_path / "leaky.onnx", opset=17)
    ops = _ops(path)
    assert ops["LeakyRelu"] == before["SiLU"] and _silu_patterns(path) == 0
    np.testing.assert_allclose(ort_run(path, x.numpy()), got.numpy(), rtol=1e-3, atol=1e-3)


def test_layers_limit_the_swap_and_refusals_leave_the_model_untouched(digitdet, tmp_path):
    adapter, original = digitdet
    model = copy.deepcopy(original)
    ctx = make_ctx(adapter, model, work_dir=tmp_path)
    first = next(n for n, m in model.named_children())
    p = _pass(to="relu", layers=[first])
    p.apply(model, ctx)
    names = {n: type(m).__name__ for n, m in model.named_modules() if type(m).__module__ == ACT_MODULE}
    inside = [n for n in names if n.startswith(first + ".")]
    assert inside and all(names[n] == "ReLU" for n in inside)
    assert all(t == "SiLU" for n, t in names.items() if n not in inside)
    assert ctx.report[p.label]["swapped"] == len(inside)

    fresh = copy.deepcopy(original)
    state, types = _state(fresh), _slot_types(fresh)
    for bad, words in (({"replace": ["GELU"]}, "no GELU activation module"),
                       ({"layers": ["no.such.layer"]}, "layers pattern 'no.such.layer' matches no module"),
                       ({"layers": ["re:(["]}, "bad regular expression")):
        with pytest.raises(PassError, match=words):
            _pass(**bad).check(fresh, make_ctx(adapter, fresh, work_dir=tmp_path))
        assert _slot_types(fresh) == types
        assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


def test_functional_calls_are_counted_not_claimed(tmp_path):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.SiLU()

        def forward(self, x):
            return F.silu(self.conv(self.act(x))) + x.mean(1, keepdim=True).relu()

    class Adapter:  # the two adapter methods the pass uses
        name, task = "tiny", "classify"

        def example_input(self, n=1):
            return torch.rand(n, 3, 8, 8)

        def forward(self, model, x):
            return model(x)

    model = Mixed()
    ctx = make_ctx(Adapter(), model, work_dir=tmp_path)
    p = _pass(replace=["SiLU", "ReLU"], to="hardswish")
    p.apply(model, ctx)
    sec = ctx.report[p.label]
    assert isinstance(model.act, nn.Hardswish) and sec["swapped"] == 1
    assert sec["functional_left"] == {"silu": 1, "relu": 1}
    assert "2 functional call(s) left" in sec["summary"]


def test_lenet5_functional_only_refuses_with_the_count(tmp_path):
    adapter, model = load_model(ModelSpec(builtin="lenet5"))
    with pytest.raises(PassError, match=r"no ReLU activation module .*4 functional call\(s\) \(relu x4\)"):
        _pass(replace=["ReLU"]).check(model, make_ctx(adapter, model, work_dir=tmp_path))


@pytest.mark.parametrize("bad", [{"to": "gelu"}, {"replace": []}, {"replace": ["not a name"]},
                                 {"to": "relu", "negative_slope": 0.2}, {"negative_slope": 1.5},
                                 {"finetune": {"steps": 0}}, {"layer": ["x"]}])
def test_bad_config_is_rejected(bad):
    cls = registered()["swap.activation"]
    with pytest.raises(ValidationError):
        cls.Config(type="swap.activation", **bad)


# -- int8: what ONNX Runtime fuses ----------------------------------------------------------------
def _optimized_ops(path) -> Counter:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(path) + ".opt.onnx"
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _ops(opts.optimized_model_filepath)


@pytest.mark.parametrize("to", ["leaky_relu", "relu"])
def test_int8_runs_the_new_activation_inside_the_quantized_graph(digitdet, to, tmp_path):
    from compress.data import builtin_dataset

    adapter, original = digitdet
    model = copy.deepcopy(original)
    n_act = _slot_types(model)["SiLU"]
    ctx = make_ctx(adapter, model, builtin_dataset("digits-det", "calib", 8), work_dir=tmp_path)
    model = _pass(to=to).apply(model, ctx)
    fp32 = export_onnx(model, adapter, tmp_path / "fp32.onnx", opset=17)
    ctx.model = model
    ptq = registered()["quantize.ptq"]
    q = ptq(ptq.Config(type="quantize.ptq", samples=8))
    q.check(model, ctx)
    ops = _optimized_ops(q.apply_onnx(fp32, ctx))
    n_conv = _ops(fp32)["Conv"]
    assert ops["QLinearConv"] == n_conv  # every conv int8
    assert ops["QLinearSigmoid"] == 0 and ops["QLinearMul"] == 0  # no SiLU pair left
    if to == "relu":  # Relu disappears: the quantized conv's output range clips at zero
        assert ops["Relu"] == 0 and ops["QLinearLeakyRelu"] == 0
    else:  # LeakyRelu stays one int8 op (not folded into QLinearConv)
        assert ops["QLinearLeakyRelu"] == n_act and ops["LeakyRelu"] == 0


# -- Ultralytics ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yolov8n():
    pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    return load_model(ModelSpec(builtin="yolov8n.yaml", class_names=NAMES, imgsz=64))


@pytest.mark.yolo
def test_yolov8n_shared_default_act_swapped_in_every_slot(yolov8n, tmp_path):
    from ultralytics.nn.modules import Conv

    adapter, original = yolov8n
    model = copy.deepcopy(original)
    before = _slot_types(model)
    shared = {id(m) for m in model.modules() if isinstance(m, nn.SiLU)}
    assert len(shared) == 1 and before["SiLU"] > 50  # one module, many slots
    ctx = make_ctx(adapter, model, work_dir=tmp_path)
    x = adapter.example_input(1)
    p = _pass()
    p.check(model, ctx)
    out = p.apply(model, ctx)
    assert _slot_types(out) == Counter({"LeakyReLU": before["SiLU"]})
    assert len({id(m) for m in out.modules() if isinstance(m, nn.LeakyReLU)}) == 1  # sharing kept
    assert isinstance(Conv.default_act, nn.SiLU)  # Ultralytics' class attribute untouched
    sec = ctx.report[p.label]
    assert sec["swapped"] == before["SiLU"] and sec["instances"] == 1 and sec["modules_left"] == 0
    assert out.yaml["activation"] == "nn.LeakyReLU(0.01)" and sec["yaml"]["honest"] is True
    assert sec["model_pt_reload"] == {"verified": True, "keeps_swap": True, "reloaded": {"LeakyReLU": before["SiLU"]}}
    assert "activation" not in original.yaml

    path = export_onnx(out, adapter, tmp_path / "y.onnx", opset=17)
    assert _ops(path)["LeakyRelu"] > 0 and _silu_patterns(path) == 0
    with torch.no_grad():
        want = adapter.forward(out.eval(), x)
    np.testing.assert_allclose(ort_run(path, x.numpy()), want.numpy(), rtol=1e-3, atol=1e-3)

    # both checkpoints reload with the new activation: compress's model.pt (rebuilt from the yaml)
    # and model.ultralytics.pt (Ultralytics' own loader)
    from compress.models.serialize import save_model
    from compress.models.ultralytics_io import save_ultralytics_checkpoint
    from ultralytics import YOLO

    save_model(adapter, out, tmp_path / "model.pt")
    _, back = load_model(ModelSpec(checkpoint=str(tmp_path / "model.pt"), class_names=NAMES, imgsz=64),
                         trust_checkpoint=True)
    assert _slot_types(back) == Counter({"LeakyReLU": before["SiLU"]})
    save_ultralytics_checkpoint(adapter, out, tmp_path / "model.ultralytics.pt")
    yolo = YOLO(str(tmp_path / "model.ultralytics.pt"))
    assert _slot_types(yolo.model) == Counter({"LeakyReLU": before["SiLU"]})
    assert yolo.model.yaml["activation"] == "nn.LeakyReLU(0.01)"


@pytest.mark.yolo
def test_yolov8n_partial_swap_says_the_yaml_cannot_carry_it(yolov8n, tmp_path):
    adapter, original = yolov8n
    model = copy.deepcopy(original)
    ctx = make_ctx(adapter, model, work_dir=tmp_path)
    p = _pass(to="relu6", layers=["Detect"])
    p.apply(model, ctx)
    types = _slot_types(model)
    assert types["ReLU6"] > 0 and types["SiLU"] > 0
    sec = ctx.report[p.label]
    assert sec["yaml"]["honest"] is False and "activation" not in model.yaml
    assert any("yaml cannot say this swap" in n for n in ctx.notes)
