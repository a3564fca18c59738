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
    probs = adapter.decode(out, metas, conf=0.0)
    assert len(probs) == 3 and np.allclose([p.sum() for p in probs], 1.0, atol=1e-5)
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
    adapter2, model2 = load_model(ModelSpec(checkpoint=str(out)))  # everything read from the dict
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
