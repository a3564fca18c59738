"""ONNX export (checked, simplified, metadata, same numbers as torch) and atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress import __version__
from compress.atomic import atomic_path, atomic_write_bytes, atomic_write_text, ensure_writable, staged_dir
from compress.errors import CompressError
from compress.export import export_onnx, read_metadata
from compress.models.base import Adapter


class TinyAdapter(Adapter):
    name = "tiny"
    task = "detect"

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(["a", "b"], 32), TinyNet()

    def preprocess(self, images):
        return torch.zeros(len(images), 3, self.imgsz, self.imgsz), [None] * len(images)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return [output[i] for i in range(len(metas))]


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """Returns a tuple like Ultralytics models: only the first element is exported."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.body = nn.Sequential(Block(8), Block(8))
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        feats = self.body(self.stem(x))
        return self.head(feats).flatten(2).sigmoid(), [feats]


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = TinyNet()
    for m in model.modules():  # non-trivial BN statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return TinyAdapter(["a", "b"], 32), model


def test_export_is_checked_opset17_and_matches_torch(tiny, tmp_path):
    adapter, model = tiny
    model.train()
    model.body[0].eval()  # mixed modes must come back exactly as they were
    path = export_onnx(model, adapter, tmp_path / "sub" / "m.onnx", metadata={"recipe_hash": "abc123", "x": 5})
    assert path.is_file()
    assert model.training and not model.body[0].training and model.body[1].training

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output0"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # simplified / folded
    assert any(n.name.startswith("/body/") for n in proto.graph.node)  # torch scope names, no wrapper

    meta = read_metadata(path)
    assert meta["task"] == "detect" and meta["names"] == "{0: 'a', 1: 'b'}" and meta["imgsz"] == "[32, 32]"
    assert meta["recipe_hash"] == "abc123" and meta["x"] == "5"
    assert meta["compress_version"] == __version__
    assert meta["simplified"] == "true" and meta["preprocess"].startswith("letterbox")
    assert not any(k.startswith("onnxsim.") for k in meta)

    import onnxruntime as ort

    x = torch.rand(1, 3, 32, 32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    assert len(got) == 1
    with torch.no_grad():
        want = model.eval()(x)[0].numpy()
    np.testing.assert_allclose(got[0], want, atol=1e-5, rtol=0)


def test_export_keeps_unsimplified_model_when_onnxsim_fails(tiny, tmp_path, monkeypatch, caplog):
    import onnxsim

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    adapter, model = tiny
    path = export_onnx(model, adapter, tmp_path / "m.onnx")
    meta = read_metadata(path)
    assert meta["simplified"] == "false" and "boom" in meta["simplify_error"]
    assert "onnxsim" in caplog.text
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_export_failure_is_one_line_error_and_leaves_no_file(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            raise ValueError("cannot trace this\nsecond line")

    adapter = TinyAdapter(["a"], 32)
    with pytest.raises(CompressError, match="ONNX export failed: cannot trace this$"):
        export_onnx(Bad(), adapter, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_errors(tmp_path):
    with pytest.raises(CompressError, match="not found"):
        read_metadata(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(CompressError, match="not a readable ONNX"):
        read_metadata(tmp_path / "bad.onnx")


# -- atomic writes -----------------------------------------------------------------------
def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_error_leaves_nothing_and_keeps_old_file(tmp_path):
    p = tmp_path / "new.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old.bin"
    old.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(old) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert old.read_bytes() == b"good"
    assert [x.name for x in tmp_path.iterdir()] == ["old.bin"]


def test_staged_dir_success_error_and_force(tmp_path):
    final = tmp_path / "run"
    with staged_dir(final, force=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith("run.tmp-")
        (tmp / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"

    with pytest.raises(CompressError, match="exists; use --force to overwrite"):
        ensure_writable(final, force=False)
    with pytest.raises(CompressError, match="exists; use --force"):
        with staged_dir(final, force=False):
            pass

    with pytest.raises(RuntimeError):
        with staged_dir(final, force=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("crash")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run"]  # temp dir removed
    assert sorted(x.name for x in final.iterdir()) == [".compress-run", "a.txt"]  # old output untouched

    with staged_dir(final, force=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(x.name for x in final.iterdir()) == [".compress-run", "b.txt"]  # + the output marker
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run"]


def test_export_fake_quant_model_pauses_observers(tmp_path):
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    def fq():
        return FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8)

    torch.manual_seed(0)
    model = nn.Sequential(fq(), nn.Conv2d(3, 4, 3), fq()).train()
    model(torch.rand(2, 3, 32, 32))  # calibrate the observers once
    scale = model[2].scale.clone()
    path = export_onnx(model, TinyAdapter(["a"], 32), tmp_path / "q.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2
    assert torch.equal(model[2].scale, scale)  # the zeros example input was not observed
    assert model.training and int(model[0].observer_enabled) == 1  # switches restored


def test_check_reads_names_metadata_in_both_formats(tmp_path):
    """compress check refuses an ONNX whose (Ultralytics-format) names disagree with the reference's
    class count; a file with the old comma-joined names is still accepted."""
    from compress import api
    from compress.data import builtin_dataset
    from compress.data.yolo import write_yolo
    from compress.export import set_metadata
    from compress.models import load_model
    from compress.recipe import ModelSpec

    ds = builtin_dataset("digits-det", "val", 2)
    data = write_yolo(ds.samples, tmp_path / "val", ds.class_names)
    adapter, model = load_model(ModelSpec(builtin="digitdet"))
    path = export_onnx(model, adapter, tmp_path / "m.onnx")
    for names, ok in (("{0: 'a', 1: 'b', 2: 'c'}", False), (",".join(adapter.class_names), True)):
        proto = onnx.load(str(path))
        set_metadata(proto, {"names": names})
        onnx.save(proto, str(path))
        if ok:
            result, _ = api.check(path, {"builtin": "digitdet"}, {"path": str(data)}, threads=1)
            assert result.to_dict()["agreement_map50"] > 0.99  # the same model, exported
        else:
            with pytest.raises(CompressError, match="names 3 classes"):
                api.check(path, {"builtin": "digitdet"}, {"path": str(data)}, threads=1)


@pytest.mark.parametrize("builtin", ["digitdet", "yolov8n.yaml"])
def test_dynamic_batch_export_runs_any_batch_like_torch(builtin, tmp_path):
    """export.dynamic_batch: the exported graph takes a batch of 3 and gives each image torch's output."""
    import ast

    from compress.models import load_model
    from compress.recipe import ModelSpec
    from compress.runtime.session import make_session

    if builtin.endswith(".yaml"):
        pytest.importorskip("ultralytics")
    spec = ModelSpec(builtin=builtin, **({"imgsz": 64} if builtin.endswith(".yaml") else {}))
    adapter, model = load_model(spec)
    path = export_onnx(model, adapter, tmp_path / "m.onnx", dynamic_batch=True)
    sess = make_session(path, threads=1)
    assert not isinstance(sess.get_inputs()[0].shape[0], int)  # a named, free axis
    x = torch.rand(3, *adapter.example_input(1).shape[1:], generator=torch.Generator().manual_seed(0))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = adapter.forward(model.eval(), x).numpy()
    assert got.shape == want.shape and got.shape[0] == 3
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert ast.literal_eval(read_metadata(path)["args"])["dynamic"] is True
    fixed = export_onnx(model, adapter, tmp_path / "f.onnx")
    assert make_session(fixed, threads=1).get_inputs()[0].shape[0] == 1
