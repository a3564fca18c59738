"""GenericAdapter: --arch module:factory + a plain state_dict, classify and detect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import ModelLoadError
from compress.models import load_model
from compress.models.generic import GenericAdapter, output_layers
from compress.recipe import ModelSpec
from compress.types import Detections, Sample

ASSETS = Path(__file__).parent / "assets"
ARCH_FILE = str(ASSETS / "generic_arch.py")
NAMES10 = [str(i) for i in range(10)]


@pytest.fixture
def classifier_ckpt(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generic_arch_t", ARCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.tiny_classifier(10)
    path = tmp_path / "clf.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _spec(path, arch=f"{ARCH_FILE}:tiny_classifier", **kw):
    base = dict(checkpoint=str(path), arch=arch, task="classify", class_names=NAMES10, imgsz=32)
    base.update(kw)
    return ModelSpec(**base)


def test_loads_plain_state_dict_and_classifies(classifier_ckpt):
    path, ref = classifier_ckpt
    adapter, model = load_model(_spec(path))
    assert isinstance(adapter, GenericAdapter) and adapter.task == "classify"
    images = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8) for i in range(3)]
    x, metas = adapter.preprocess(images)
    assert x.shape == (3, 3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        out = adapter.forward(model, x)
        torch.testing.assert_close(out, ref(x))
    logits = adapter.decode(out, metas, conf=0.0)  # logits, before any softmax
    assert len(logits) == 3 and np.allclose(np.stack(logits), out.numpy(), atol=1e-6)
    assert adapter.metadata()["arch"].endswith(":tiny_classifier")


def test_wrapped_state_dict_and_module_form(classifier_ckpt, tmp_path, monkeypatch):
    path, ref = classifier_ckpt
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, wrapped)
    monkeypatch.syspath_prepend(str(ASSETS))
    adapter, model = load_model(_spec(wrapped, arch="generic_arch:tiny_classifier", adapter="generic"))
    x = adapter.example_input(2)
    with torch.no_grad():
        torch.testing.assert_close(adapter.forward(model, x), ref(x))


def test_mismatch_names_first_key(classifier_ckpt, tmp_path):
    path, ref = classifier_ckpt
    sd = ref.state_dict()
    bad = tmp_path / "missing.pt"
    torch.save({k: v for k, v in sd.items() if k != "fc.bias"}, bad)
    with pytest.raises(ModelLoadError, match="missing key 'fc.bias'"):
        load_model(_spec(bad))
    extra = tmp_path / "extra.pt"
    torch.save({**sd, "head.weight": torch.zeros(1)}, extra)
    with pytest.raises(ModelLoadError, match="unexpected key 'head.weight'"):
        load_model(_spec(extra))
    # class count comes from --names: 5 names -> fc has 5 outputs, the checkpoint 10
    with pytest.raises(ModelLoadError, match=r"'fc.weight' has shape \(10, 16\)"):
        load_model(_spec(path, class_names=list("abcde")))


@pytest.mark.parametrize("arch, message", [
    ("no_colon", "must look like module:factory"),
    ("compress_no_such_module_xyz:f", "cannot import module 'compress_no_such_module_xyz'"),
    (f"{ARCH_FILE}:nope", "has no attribute 'nope'"),
    (f"{ARCH_FILE}:not_a_model", "is not callable"),
    (f"{ARCH_FILE}:broken", "the factory raised RuntimeError: cannot build"),
    (f"{ARCH_FILE}:returns_dict", "returned dict, not a torch nn.Module"),
    ("missing_file.py:f", "file 'missing_file.py' not found"),
])
def test_bad_arch_is_one_clear_error(classifier_ckpt, arch, message):
    path, _ = classifier_ckpt
    with pytest.raises(ModelLoadError, match=message):
        load_model(_spec(path, arch=arch))


def test_required_fields(classifier_ckpt):
    path, _ = classifier_ckpt
    with pytest.raises(ModelLoadError, match="needs model.class_names, model.imgsz"):
        load_model(ModelSpec(checkpoint=str(path), arch=f"{ARCH_FILE}:tiny_classifier", task="classify"))
    with pytest.raises(ModelLoadError, match="needs model.task"):
        load_model(_spec(path, task=None))


def test_protected_is_the_output_layer_and_loss(classifier_ckpt):
    path, _ = classifier_ckpt
    adapter, model = load_model(_spec(path))
    assert adapter.protected_layers(model) == [model.fc]
    samples = [Sample(f"s{i}", np.zeros((32, 32, 3), np.uint8), label=i) for i in range(4)]
    x, _ = adapter.preprocess([s.image for s in samples])
    loss = adapter.loss(model, x, samples)
    assert torch.isfinite(loss) and loss.item() > 0
    assert adapter.loss(model, x, [Sample("u", samples[0].image)] * 4) is None


def test_checkpoint_round_trip_after_shrinking(classifier_ckpt, tmp_path):
    """The project checkpoint rebuilds a model whose widths no longer match the factory."""
    import torch_pruning as tp

    path, _ = classifier_ckpt
    adapter, model = load_model(_spec(path))
    x = adapter.example_input(2)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    dg.get_pruning_group(model.features[0], tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
    assert model.features[0].out_channels == 5
    with torch.no_grad():
        ref = adapter.forward(model, x)
    out = tmp_path / "own.pt"
    torch.save(adapter.checkpoint(model), out)
    # everything but the arch read from the dict (the arch is code: only the user names it, issue 8)
    adapter2, model2 = load_model(ModelSpec(checkpoint=str(out), arch=adapter.arch))
    assert adapter2.task == "classify" and adapter2.class_names == NAMES10 and adapter2.imgsz == 32
    with torch.no_grad():
        torch.testing.assert_close(adapter2.forward(model2, x), ref)


def test_detect_task_decodes_yolo_layout(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generic_arch_d", ARCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    path = tmp_path / "det.pt"
    torch.save(mod.tiny_detector().state_dict(), path)
    adapter, model = load_model(_spec(path, arch=f"{ARCH_FILE}:tiny_detector", task="detect",
                                      class_names=["a", "b", "c"], imgsz=64))
    x, metas = adapter.preprocess([np.full((48, 64, 3), 90, np.uint8)])
    assert x.shape == (1, 3, 64, 64)
    with torch.no_grad():
        out = adapter.forward(model, x)
    assert out.shape == (1, 7, 64)
    dets = adapter.decode(out, metas, conf=0.01)
    assert isinstance(dets[0], Detections) and len(dets[0]) > 0
    assert dets[0].boxes[:, [1, 3]].max() <= 48  # mapped back to the 64x48 original
    names = {m: n for n, m in model.named_modules()}
    assert sorted(names[m] for m in adapter.protected_layers(model)) == ["box", "cls"]
    assert adapter.loss(model, x, [Sample("d", np.zeros((48, 64, 3), np.uint8))]) is None


def test_output_layers_looks_through_frozen_layers():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 1)
            self.b = torch.nn.Conv2d(3, 4, 1)
            self.frozen = torch.nn.Conv2d(4, 4, 1).requires_grad_(False)

        def forward(self, x):
            return self.frozen(self.a(x)) + self.b(x)

    net = Net()
    assert set(output_layers(net, torch.zeros(1, 3, 8, 8))) == {net.a, net.b, net.frozen}


def test_output_layers_stop_at_a_shared_layer_called_twice():
    """A head shared over an image pyramid: the backbone behind it is not an output layer."""
    class Pyramid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.head = torch.nn.Conv2d(8, 6, 1)

        def forward(self, x):
            outs = []
            for scale in (1.0, 0.5):
                y = torch.nn.functional.interpolate(x, scale_factor=scale) if scale != 1.0 else x
                outs.append(self.head(torch.relu(self.body(torch.relu(self.stem(y))))).flatten(2))
            return torch.cat(outs, 2)

    net = Pyramid()
    assert output_layers(net, torch.zeros(1, 3, 16, 16)) == [net.head]


def test_torchvision_factory_gets_num_classes_through_kwargs(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    adapter, loaded = load_model(_spec(path, arch="torchvision.models:resnet18"))
    assert loaded.fc.out_features == 10
    with pytest.raises(ModelLoadError, match=r"'fc.weight' has shape \(10, 512\).*called with num_classes=5"):
        load_model(_spec(path, arch="torchvision.models:resnet18", class_names=list("abcde")))


def _det_ckpt(tmp_path, factory="tiny_detector"):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generic_arch_c", ARCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    path = tmp_path / f"{factory}.pt"
    torch.save(getattr(mod, factory)().state_dict(), path)
    return path


@pytest.mark.parametrize("factory, layout, message", [
    ("tiny_detector", "end2end", r"returns Tensor\(1, 7, 64\); detect models with output_layout 'end2end' must "
                                 r"return \(B, N, 6\).*set model.output_layout: ultralytics"),
    ("tuple_detector", None, r"returns tuple\(Tensor\(1, 64, 7\), Tensor\(1, 16, 8, 8\)\); .*must return "
                             r"\(B, 4\+nc, N\) = \(B, 7, N\).*looks transposed"),
    ("dict_detector", None, r"returns list\(dict\(boxes: .*set model.output_layout: torchvision"),
])
def test_output_contract_is_checked_on_load(tmp_path, factory, layout, message):
    path = _det_ckpt(tmp_path, factory)
    with pytest.raises(ModelLoadError, match=message):
        load_model(_spec(path, arch=f"{ARCH_FILE}:{factory}", task="detect", class_names=["a", "b", "c"],
                         imgsz=64, output_layout=layout))


def test_classifier_contract(classifier_ckpt):
    path, _ = classifier_ckpt
    with pytest.raises(ModelLoadError, match=r"returns Tensor\(1, 10\); classify models must return logits "
                                             r"\(B, nc\) = \(B, 3\)"):
        load_model(_spec(path, arch=f"{ARCH_FILE}:tiny_classifier_any", class_names=list("abc")))


def test_torchvision_dict_layout_exports_and_decodes_as_rows(tmp_path):
    from compress.export import export_onnx
    from compress.fidelity import predict_onnx, predict_torch

    path = _det_ckpt(tmp_path, "dict_detector")
    adapter, model = load_model(_spec(path, arch=f"{ARCH_FILE}:dict_detector", task="detect",
                                      class_names=["a", "b", "c"], imgsz=64, output_layout="torchvision"))
    x = adapter.example_input(2)
    with torch.no_grad():
        rows = adapter.forward(model, x)
    assert rows.shape[0] == 2 and rows.shape[2] == 6
    onnx_path = export_onnx(model, adapter, tmp_path / "d.onnx")
    images = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(3)]
    ref = predict_torch(adapter, model, images, 0.01, 0.7)
    got = predict_onnx(adapter, onnx_path, images, 0.01, 0.7, threads=1)
    assert sum(len(r) for r in ref.results) > 0
    for r, g in zip(ref.results, got.results):
        np.testing.assert_allclose(r.boxes, g.boxes, atol=1e-3)
        np.testing.assert_array_equal(r.classes, g.classes)
        assert r.boxes[:, [1, 3]].max() <= 48


def test_user_decode_function(tmp_path):
    path = _det_ckpt(tmp_path, "tiny_detector")
    adapter, model = load_model(_spec(path, arch=f"{ARCH_FILE}:tiny_detector", task="detect",
                                      class_names=["a", "b", "c"], imgsz=64, decode=f"{ARCH_FILE}:to_rows"))
    x, metas = adapter.preprocess([np.full((64, 64, 3), 90, np.uint8)])
    with torch.no_grad():
        out = adapter.forward(model, x)
    dets = adapter.decode(out, metas, conf=0.0)
    assert len(dets[0]) == 64 and adapter.metadata()["output_layout"] == "custom"
    with pytest.raises(ModelLoadError, match=r"model.decode .*:bad_rows: returned Tensor\(1, 64, 5\)"):
        load_model(_spec(path, arch=f"{ARCH_FILE}:tiny_detector", task="detect", class_names=["a", "b", "c"],
                         imgsz=64, decode=f"{ARCH_FILE}:bad_rows"))


def test_recipe_validates_output_layout_up_front():
    from compress.errors import RecipeError
    from compress.recipe import validate

    with pytest.raises(RecipeError, match=r"model: output_layout: unknown layout 'yolo' \(known: end2end, "
                                          r"torchvision, ultralytics\)"):
        validate({"name": "x", "model": {"checkpoint": "x.pt", "output_layout": "yolo"}})
    with pytest.raises(RecipeError, match="give model.output_layout or model.decode, not both"):
        validate({"name": "x", "model": {"checkpoint": "x.pt", "output_layout": "end2end", "decode": "m:f"}})


def test_cli_names_the_output_contract_in_one_line(tmp_path, capsys):
    import yaml

    from compress.cli import main

    path = _det_ckpt(tmp_path, "tuple_detector")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "bad-layout",
        "model": {"checkpoint": str(path), "arch": f"{ARCH_FILE}:tuple_detector", "task": "detect",
                  "class_names": ["a", "b", "c"], "imgsz": 64},
        "data": {"validation": {"builtin": "digits-det", "split": "val", "samples": 2}}}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "the model returns tuple(Tensor(1, 64, 7), Tensor(1, 16, 8, 8))" in err and "(B, 4+nc, N)" in err
    assert not (tmp_path / "out").exists()


def test_reestimate_bn_averages_real_statistics_and_leaves_weights():
    from compress.models.batchnorm import reestimate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    w = model[0].weight.detach().clone()
    x = torch.rand(20, 3, 8, 8) * 5 + 2
    out = reestimate_bn(model, x, batch=5)  # equal batches: the average of batch means is the mean
    with torch.no_grad():
        feats = model[0](x)
    assert out is model and not model.training and torch.equal(model[0].weight, w)
    torch.testing.assert_close(model[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
