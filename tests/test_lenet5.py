"""LeNet-5: shapes, decode, loss, pruned-checkpoint round trip, and the committed weights' accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.models import adapter_class, load_model
from compress.models.lenet5 import WEIGHTS, LeNet5, LeNet5Adapter, build_from_state_dict
from compress.recipe import ModelSpec
from compress.types import Sample


@pytest.fixture(scope="module")
def builtin():
    return load_model(ModelSpec(builtin="lenet5"))


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_registered_and_classic_shape(builtin):
    adapter, model = builtin
    assert adapter_class("lenet5") is LeNet5Adapter
    assert adapter.task == "classify" and adapter.class_names == [str(i) for i in range(10)]
    assert [m.out_channels for m in (model.conv1, model.conv2)] == [6, 16]
    assert [m.out_features for m in (model.fc1, model.fc2, model.fc3)] == [120, 84, 10]
    assert sum(p.numel() for p in model.parameters()) == 62006  # LeNet-5 on 3-channel input
    assert not model.training


def test_preprocess_resizes_grey_and_normalises():
    adapter = LeNet5Adapter([str(i) for i in range(10)], 32)
    grey = np.full((28, 28), 255, np.uint8)  # 2-D grey, wrong size
    black = np.zeros((32, 32, 3), np.uint8)
    x, metas = adapter.preprocess([grey, black])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and len(metas) == 2
    assert torch.allclose(x[0], torch.ones_like(x[0])) and torch.allclose(x[1], -torch.ones_like(x[1]))


def test_forward_logits_and_decode_logits(builtin):
    adapter, model = builtin
    x, metas = adapter.preprocess(_images(3))
    logits = adapter.forward(model, x)
    assert logits.shape == (3, 10)
    rows = adapter.decode(logits.detach().numpy(), metas, 0.25)  # logits: the metrics apply softmax once
    assert len(rows) == 3 and all(p.shape == (10,) for p in rows)
    np.testing.assert_allclose(np.stack(rows), logits.detach().numpy(), rtol=1e-6)


def test_loss_is_cross_entropy_and_needs_labels(builtin):
    adapter, model = builtin
    imgs = _images(4)
    samples = [Sample(f"s{i}", im, label=i) for i, im in enumerate(imgs)]
    x, _ = adapter.preprocess(imgs)
    loss = adapter.loss(model, x, samples)
    expected = torch.nn.functional.cross_entropy(model(x), torch.arange(4))
    assert torch.isclose(loss, expected)
    assert adapter.loss(model, x, [Sample("u", imgs[0])] * 4) is None
    assert [o.shape for o in adapter.distill_outputs(model, x)] == [(4, 10)]


def test_protected_layer_is_the_classifier(builtin):
    adapter, model = builtin
    assert adapter.protected_layers(model) == [model.fc3]


def test_pruned_checkpoint_rebuilds_from_shapes():
    torch.manual_seed(0)
    small = LeNet5(c1=3, c2=7, f1=20, f2=11).eval()
    adapter = LeNet5Adapter([str(i) for i in range(10)], 32)
    ckpt = adapter.checkpoint(small)
    _, rebuilt = LeNet5Adapter.load(ModelSpec(checkpoint="x.pt"), ckpt, False)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), small(x))
    with pytest.raises(Exception, match="LeNet-5"):
        build_from_state_dict({"conv1.weight": torch.zeros(6, 3, 5, 5)})


def test_committed_weights_accuracy_recorded_and_remeasured(builtin):
    from compress.data import builtin_dataset
    from compress.zoo.lenet5 import top1

    ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    recorded = ckpt["metrics"]["val_top1"]
    assert recorded >= 0.95
    adapter, model = builtin
    val = builtin_dataset("digits", "val")
    measured = top1(adapter, model, val.samples)
    assert measured >= 0.95
    assert measured == pytest.approx(recorded, abs=1.5 / len(val))  # at most one image flips on other CPUs
    assert top1(adapter, model, builtin_dataset("digits", "calib").samples) >= 0.95  # the other held-out split


def test_training_learns_quickly(tmp_path):
    """Two epochs already beat chance by far; the checkpoint loads weights_only."""
    from compress.zoo.lenet5 import train_lenet5

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 for a model this small on a shared CPU
    try:
        metrics = train_lenet5(tmp_path / "l.pt", epochs=2, seed=0, log=None)
    finally:
        torch.set_num_threads(threads)
    ckpt = torch.load(tmp_path / "l.pt", weights_only=True)
    assert ckpt["metrics"] == metrics and ckpt["adapter"] == "lenet5"
    assert metrics["val_top1"] > 0.5
