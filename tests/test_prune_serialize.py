"""Pruned models survive save -> load_model with identical outputs (weights_only checkpoints)."""

from __future__ import annotations

import pytest
import torch

from compress.errors import ModelLoadError
from compress.models import _REGISTRY, load_model, register_adapter
from compress.models.serialize import KEY, pruned_info, restore, save_model
from compress.passes.prune_structured import StructuredPrune
from compress.recipe import ModelSpec
from prune_fixtures import IMGSZ, TinyDetAdapter, det_dataset, make_ctx, tiny_det


@pytest.fixture
def tinydet_registered():
    register_adapter("tinydet")(TinyDetAdapter)
    yield
    _REGISTRY.pop("tinydet", None)


def _pruned():
    model = tiny_det()
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(4))
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", criterion="l1", ratio=0.5, round_to=None,
                                               scope="global"))
    return p.apply(model, ctx).eval(), ctx


def test_round_trip_identical_outputs(tmp_path, tinydet_registered):
    model, ctx = _pruned()
    path = save_model(ctx.adapter, model, tmp_path / "pruned.pt")
    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert KEY in raw and raw["split_free"] is True
    adapter, loaded = load_model(ModelSpec(checkpoint=str(path), adapter="tinydet"))
    assert not loaded.training and isinstance(adapter, TinyDetAdapter)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.stem.conv.out_channels == model.stem.conv.out_channels < 16
    assert loaded.stem.bn.num_features == model.stem.bn.num_features


def test_lenet5_adapter_round_trip(tmp_path):
    from compress.models.lenet5 import LeNet5, LeNet5Adapter

    torch.manual_seed(0)
    model = LeNet5().eval()
    adapter = LeNet5Adapter([str(i) for i in range(10)], 32, stride=4)
    ctx = make_ctx(adapter, model, None)
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", criterion="l2", ratio=0.5, round_to=2))
    model = p.apply(model, ctx)
    path = save_model(adapter, model, tmp_path / "lenet.pt")
    _, loaded = load_model(ModelSpec(checkpoint=str(path)))  # adapter guessed from the checkpoint
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.fc1.out_features == model.fc1.out_features < 120


def test_restore_refuses_a_mismatched_model():
    model, _ = _pruned()
    other = tiny_det()  # not rewritten split-free: names differ
    with pytest.raises(ModelLoadError, match="lacks"):
        restore(other, pruned_info(model))


def test_swapped_activations_survive_the_round_trip(tmp_path):
    """An architecture rebuilt from code (digitdet's config says SiLU) gets the saved activations back."""
    from torch import nn

    adapter, model = load_model(ModelSpec(builtin="digitdet"))
    slots = [(m, k) for m in model.modules() for k, c in m._modules.items() if isinstance(c, nn.SiLU)]
    for m, k in slots:
        m._modules[k] = nn.LeakyReLU(0.05)
    x = adapter.example_input(1)
    path = save_model(adapter, model, tmp_path / "swapped.pt")
    _, loaded = load_model(ModelSpec(checkpoint=str(path)))
    leaky = [c for c in loaded.modules() if isinstance(c, nn.LeakyReLU)]
    assert len(leaky) == len(slots) > 0 and {c.negative_slope for c in leaky} == {0.05}
    assert not any(isinstance(c, nn.SiLU) for c in loaded.modules())
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_restore_refuses_an_unknown_activation_name():
    adapter, model = load_model(ModelSpec(builtin="digitdet"))
    info = pruned_info(model)
    info["activations"] = {next(iter(info["activations"])): "os.system"}
    with pytest.raises(ModelLoadError, match="unknown activation"):
        restore(model, info)


def test_swapped_blocks_survive_the_round_trip(tmp_path):
    """Light blocks from compress.blocks are rebuilt from their saved spec, also after pruning."""
    from compress.blocks import build_block
    from compress.blocks.instances import replace_at

    adapter, model = load_model(ModelSpec(builtin="digitdet"))
    model = adapter.rewrite_for_pruning(model)
    replace_at(model, "c2f4", build_block("elan2", 96, 96, 1, torch.nn.SiLU()))
    replace_at(model, "c2f5", build_block("dwsep", 96, 96, 1, torch.nn.LeakyReLU(0.1)))
    x = adapter.example_input(1)
    path = save_model(adapter, model.eval(), tmp_path / "swapped.pt")
    _, loaded = load_model(ModelSpec(checkpoint=str(path)))
    assert type(loaded.c2f4).__name__ == "ELAN2" and type(loaded.c2f5).__name__ == "DWSep"
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    info = torch.load(path, weights_only=True)[KEY]
    info["blocks"]["c2f4"]["block"] = "no_such_block"
    with pytest.raises(ModelLoadError, match="c2f4"):
        restore(load_model(ModelSpec(builtin="digitdet"))[1], info)
