"""ONNX Runtime helpers: sessions, interleaved latency, CPU features, per-layer profile."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress.errors import CompressError
from compress.models.base import Adapter
from compress.runtime import latency
from compress.runtime.cpu import cpu_features
from compress.runtime.profile import layer_costs, module_of, profile_model
from compress.runtime.session import input_shape, make_session, run


def _matmul_model(path, w: np.ndarray, batch: int | str = 1):
    """y = relu(x @ w) with a fixed (or symbolic) batch, built directly with onnx.helper."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, w.shape[0]])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, w.shape[1]])
    nodes = [helper.make_node("MatMul", ["images", "w"], ["h"], name="/fc/MatMul"),
             helper.make_node("Relu", ["h"], ["output0"], name="/act/Relu")]
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def w():
    return np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def test_session_runs_and_splits_batches(tmp_path, w):
    path = _matmul_model(tmp_path / "m.onnx", w)
    sess = make_session(path, threads=1)
    assert input_shape(sess) == [1, 6]
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    out = run(sess, x)  # fixed batch 1: three runs, concatenated
    np.testing.assert_allclose(out, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
    out_t = run(sess, torch.from_numpy(x[:1]))
    np.testing.assert_allclose(out_t, np.maximum(x[:1] @ w, 0), rtol=1e-5, atol=1e-6)

    dyn = make_session(_matmul_model(tmp_path / "d.onnx", w, batch="N"), threads=1)
    assert input_shape(dyn)[0] == "N"
    assert run(dyn, x).shape == (3, 4)


def test_session_errors_are_one_line(tmp_path):
    with pytest.raises(CompressError, match="not found"):
        make_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(CompressError, match="cannot load") as e:
        make_session(bad)
    assert "\n" not in str(e.value)


def test_compare_latency_real_models(tmp_path, w):
    a = _matmul_model(tmp_path / "a.onnx", w)
    b = _matmul_model(tmp_path / "b.onnx", np.concatenate([w, w], axis=1))
    x = np.ones((1, 6), np.float32)
    res = latency.compare_latency({"original": a, "compressed": b}, x, threads=1, warmup=2, runs=7)
    assert set(res) == {"original", "compressed"}
    for stats in res.values():
        assert stats["runs"] == 7
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    one = latency.measure(a, None, threads=1, warmup=1, runs=3)  # None: random input of the model's shape
    assert one["runs"] == 3 and one["median_ms"] > 0


def test_compare_latency_is_interleaved_and_rotated(monkeypatch):
    calls = []

    class FakeSession:
        def __init__(self, name):
            self.name = name

        def get_inputs(self):
            raise AssertionError("x is given, the input shape is not needed")

    monkeypatch.setattr(latency, "make_session", lambda path, threads: FakeSession(str(path)))
    monkeypatch.setattr(latency, "run", lambda sess, x: calls.append(sess.name))
    res = latency.compare_latency({"A": "a.onnx", "B": "b.onnx", "C": "c.onnx"}, np.zeros(1), warmup=2, runs=4)
    warm, timed = calls[:6], calls[6:]
    assert warm == ["a.onnx"] * 2 + ["b.onnx"] * 2 + ["c.onnx"] * 2
    rounds = [timed[i:i + 3] for i in range(0, 12, 3)]
    assert rounds == [["a.onnx", "b.onnx", "c.onnx"], ["b.onnx", "c.onnx", "a.onnx"],
                      ["c.onnx", "a.onnx", "b.onnx"], ["a.onnx", "b.onnx", "c.onnx"]]
    assert all(res[n]["runs"] == 4 for n in "ABC")
    with pytest.raises(ValueError):
        latency.compare_latency({"A": "a.onnx"}, np.zeros(1), runs=0)


def test_cpu_features_parses_x86_and_arm():
    here = cpu_features()
    flags = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "dotprod", "i8mm", "has_vnni")
    assert all(isinstance(here[k], bool) for k in flags)
    assert here["arch"] and here["cores"] >= 1

    x86 = cpu_features("processor : 0\nmodel name : Intel Xeon\nflags : fpu avx2 avx512f avx512_vnni amx_int8\n",
                       arch="x86_64")
    assert x86["model"] == "Intel Xeon" and x86["avx512_vnni"] and x86["amx"] and x86["has_vnni"]
    assert not x86["avx_vnni"] and not x86["dotprod"]

    old = cpu_features("model name : Old\nflags : sse2 avx\n", arch="x86_64")
    assert not old["avx2"] and not old["has_vnni"] and not old["int8_accel"]

    arm = cpu_features("processor : 0\nFeatures : fp asimd asimddp i8mm\nCPU part : 0xd0c\n", arch="aarch64")
    assert arm["dotprod"] and arm["i8mm"] and not arm["has_vnni"] and arm["int8_accel"]


# -- per-layer profile --------------------------------------------------------------------
class _Adapter(Adapter):
    name = "tiny-profile"
    task = "classify"

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(["a"], 16), _Net()

    def preprocess(self, images):
        return torch.zeros(len(images), 3, self.imgsz, self.imgsz), [None] * len(images)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return list(output)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1, groups=2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.blocks = nn.Sequential(_Block(), _Block())
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_layer_costs_params_and_macs():
    adapter, model = _Adapter.load(None, None, False)
    model.train()
    rows = {r["name"]: r for r in layer_costs(model, adapter)}
    assert model.training  # mode restored
    assert list(rows) == ["stem", "blocks.0.conv", "blocks.1.conv", "fc"]
    assert rows["stem"]["params"] == 3 * 4 * 9 + 4
    assert rows["stem"]["macs"] == 4 * 8 * 8 * 3 * 9  # out elements * in/groups * k*k
    assert rows["blocks.0.conv"]["macs"] == 4 * 8 * 8 * 2 * 9  # groups=2
    assert rows["fc"]["macs"] == 5 * 4 and rows["fc"]["output_shape"] == [1, 5]


def test_module_of_follows_torch_scope_names():
    names = {"model", "model.2", "model.2.0", "model.2.0.conv", "head"}
    assert module_of("/model/model.2/model.2.0/conv/Conv", names) == "model.2.0.conv"
    assert module_of("/model/model.2/model.2.0/conv/Conv_output_0_nchwc", names) == "model.2.0.conv"
    assert module_of("/head/Mul/QuickGeluFusion/", names) == "head"
    heads = {"heads", "heads.0", "heads.0.cls", "heads.0.cls.0", "heads.0.cls.0.conv", "cls"}
    assert module_of("/heads.0/cls/cls.0/conv/Conv", heads) == "heads.0.cls.0.conv"
    assert module_of("/Concat", names) is None and module_of("ReorderOutput", names) is None


def test_profile_model_with_onnx_latency(tmp_path):
    from compress.export import export_onnx

    torch.manual_seed(0)
    adapter, model = _Adapter.load(None, None, False)
    path = export_onnx(model, adapter, tmp_path / "m.onnx", simplify=False)
    rows = profile_model(model, adapter, path, threads=1, runs=3)
    by_name = {r["name"]: r for r in rows}
    assert {"stem", "blocks.0.conv", "blocks.1.conv", "fc"} <= set(by_name)
    assert by_name["stem"]["latency_ms"] > 0 and by_name["stem"]["onnx_nodes"]
    timed = [r for r in rows if r["latency_ms"] is not None]
    assert abs(sum(r["latency_share"] for r in timed) - 1.0) < 1e-6
    plain = profile_model(model, adapter)
    auto = profile_model(model, adapter, threads=1, runs=2, latency=True)  # exports to a temp file itself
    assert any(r["name"] == "fc" and r["latency_ms"] for r in auto)
    assert all(r["latency_ms"] is None for r in plain) and len(plain) == 4
