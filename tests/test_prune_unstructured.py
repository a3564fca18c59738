"""prune.unstructured: per-layer and global magnitude pruning, targets, BatchNorm, report."""

from __future__ import annotations

import pytest
import torch

from compress.errors import PassError, RecipeError
from compress.passes.prune_unstructured import NOTE, UnstructuredPrune
from compress.recipe import validate
from prune_fixtures import TinyDetAdapter, det_dataset, make_ctx, tiny_det


def run(**cfg):
    model = tiny_det()
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(2))
    p = UnstructuredPrune(UnstructuredPrune.Config(type="prune.unstructured", **cfg))
    p.check(model, ctx)
    out = p.apply(model, ctx)
    return out, ctx.report["prune.unstructured"]


def zero_frac(t):
    return float((t == 0).float().mean())


def test_local_each_layer_hits_amount_and_masks_are_permanent():
    model, sec = run(amount=0.4)
    for name, frac in sec["conv2d"].items():
        if name == "head":
            assert frac == 0.0  # protected by the adapter
        else:
            assert frac == pytest.approx(0.4, abs=0.01)
    assert sec["size_only"] is True and sec["note"] == NOTE
    assert sec["targeted_sparsity"] == pytest.approx(0.4, abs=0.01)
    assert not any(n.endswith("_orig") or n.endswith("_mask") for n, _ in model.named_parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 6, 64)


def test_global_one_threshold_differs_from_local():
    _, local = run(amount=0.5)
    _, glob = run(amount=0.5, scope="global")
    assert glob["targeted_sparsity"] == pytest.approx(0.5, abs=0.01)
    per_layer = [v for k, v in glob["conv2d"].items() if k != "head"]
    assert max(per_layer) - min(per_layer) > 0.05  # one threshold: layers end up different
    assert glob["conv2d"] != local["conv2d"]


def test_per_target_amounts_bn_and_channel_granularity():
    _, sec = run(targets=[{"match": "Conv2d", "amount": 0.3}, {"match": "re:.*fuse.*", "amount": 0.1},
                          {"match": "BatchNorm2d", "amount": 0.5}], include_bn=True)
    assert sec["conv2d"]["fuse.conv"] == pytest.approx(0.1, abs=0.01)
    assert sec["conv2d"]["stem.conv"] == pytest.approx(0.3, abs=0.01)
    assert sec["batchnorm2d"]["stem.bn"] == pytest.approx(0.5, abs=0.01)
    model, sec = run(amount=0.25, granularity="channel", norm="l2")
    w = model.fuse.conv.weight.flatten(1)
    assert int((w.abs().sum(1) == 0).sum()) == 8  # 25% of 32 filters zeroed whole
    assert sec["conv2d"]["fuse.conv"] == pytest.approx(0.25)


def test_bad_input():
    base = {"name": "x", "model": {"builtin": "digitdet"}}
    with pytest.raises(RecipeError, match="amount"):
        validate({**base, "passes": [{"type": "prune.unstructured", "amount": 1.0}]})
    with pytest.raises(RecipeError, match="granularity"):
        validate({**base, "passes": [{"type": "prune.unstructured", "scope": "global", "granularity": "channel"}]})
    model = tiny_det()
    ctx = make_ctx(TinyDetAdapter(), model, None)
    for targets, msg in (([{"match": "re:.*c2f.*"}], "re:.*c2f.*"), (["BatchNorm2d"], "include_bn"),
                         (["head"], "protected")):
        p = UnstructuredPrune(UnstructuredPrune.Config(type="prune.unstructured", targets=targets))
        with pytest.raises(PassError, match=msg):
            p.check(model, ctx)
    assert zero_frac(model.stem.conv.weight) == 0.0
