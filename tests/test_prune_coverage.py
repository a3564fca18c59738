"""Pruning coverage: requested vs effective ratio per layer, layers left whole with the reason,
round_to overshoot and ``rounding: down``, grouped convolutions (torchvision RegNet) pruned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.passes.prune_structured import StructuredPrune
from compress.pruning.schedule import rounded_keep
from prune_fixtures import TinyDetAdapter, det_dataset, make_ctx, ort_run, tiny_det

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prune(model, ctx, **cfg):
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", **cfg))
    p.check(model, ctx)
    return p.apply(model, ctx), ctx.section("prune.structured")


def rows(cov, key="pruned"):
    return {r["layer"]: r for r in cov[key]}


def test_rounded_keep_modes():
    assert rounded_keep(16, 11, 8) == 8  # nearest: 0.3 of 16 removes half
    assert rounded_keep(16, 11, 8, "down") == 16  # down: never more than asked -> nothing
    assert rounded_keep(64, 19, 8) == 16 and rounded_keep(64, 19, 8, "down") == 24
    assert rounded_keep(20, 14, 8, "down") == 16 and rounded_keep(20, 18, 8, "down") == 20
    assert rounded_keep(6, 3, 8, "down") == 6  # narrower than round_to: left as it is


def test_round_to_overshoot_is_reported_and_rounding_down_avoids_it():
    model = tiny_det(0)
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(8))
    _, sec = prune(model, ctx, criterion="l2", ratio=0.3, round_to=8)
    cov = sec["coverage"]
    stem = rows(cov)["stem.conv"]
    assert stem["channels"] == "16->8" and stem["requested"] == 0.3 and stem["effective"] == 0.5
    assert "stem.conv" in rows(cov, "overshoot")
    assert any("removed more than asked" in n and "stem.conv" in n for n in ctx.notes)
    whole = rows(cov, "whole")
    assert whole["head"]["kind"] == "protected"

    model = tiny_det(0)
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(8))
    pruned, sec = prune(model, ctx, criterion="l2", ratio=0.3, round_to=8, rounding="down")
    cov = sec["coverage"]
    assert pruned.stem.conv.out_channels == 16
    assert rows(cov, "whole")["stem.conv"]["kind"] == "rounding"
    assert cov["overshoot"] == [] and all(r["effective"] <= r["requested"] for r in cov["pruned"])
    assert rows(cov)["fuse.conv"]["effective"] == 0.25  # 32 * 0.7 = 22 -> 24 kept


def test_ignored_and_too_narrow_layers_are_listed():
    model = tiny_det(0)
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(8))
    _, sec = prune(model, ctx, criterion="l1", ratio=0.5, round_to=16, ignore=["branch"])
    whole = rows(sec["coverage"], "whole")
    assert whole["branch.conv"]["kind"] == "ignored"
    assert whole["stem.conv"]["kind"] == "too narrow" and "16 channels" in whole["stem.conv"]["reason"]
    assert "fuse.conv" in rows(sec["coverage"])  # 32 -> 16
    assert all(r["reason"] for r in sec["coverage"]["whole"])


def test_regnet_grouped_convolutions_are_pruned(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from compress.models.generic import GenericAdapter

    torch.manual_seed(0)
    model = torchvision.models.regnet_y_400mf(weights=None, num_classes=10).eval()
    grouped = {n: (m.out_channels, m.groups) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels}
    assert len(grouped) == 16
    adapter = GenericAdapter([str(i) for i in range(10)], 64, task="classify")
    ctx = make_ctx(adapter, model)
    pruned, sec = prune(model, ctx, criterion="l2", ratio=0.5)
    mods = dict(pruned.named_modules())
    cov = sec["coverage"]
    got = rows(cov)
    for name, (width, groups) in grouped.items():
        assert mods[name].groups == groups and mods[name].out_channels == width // 2, name
        assert got[name]["grouped"] == groups and got[name]["effective"] == 0.5
    whole = rows(cov, "whole")
    assert whole["fc"]["kind"] == "protected"
    assert all(r["kind"] != "grouped" for r in whole.values())
    assert sec["params_after"] < 0.5 * sec["params_before"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = pruned(x).numpy()
    assert want.shape == (2, 10)
    torch.onnx.export(pruned, (x,), str(tmp_path / "r.onnx"), opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["logits"])
    np.testing.assert_allclose(ort_run(tmp_path / "r.onnx", x.numpy()), want, rtol=1e-3, atol=1e-4)


def test_layer_ratios_are_the_requested_ratio():
    model = tiny_det(0)
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(8))
    _, sec = prune(model, ctx, criterion="l1", ratio=0.5, round_to=None, layer_ratios={"fuse": 0.25})
    got = rows(sec["coverage"])
    assert got["fuse.conv"]["requested"] == 0.25 and got["fuse.conv"]["effective"] == 0.25
    assert got["stem.conv"]["requested"] == 0.5 and got["stem.conv"]["effective"] == 0.5
    _, sec = prune(tiny_det(0), make_ctx(TinyDetAdapter(), tiny_det(0), det_dataset(8)), criterion="l1",
                   ratio=0.5, round_to=None, scope="global")
    assert all(r["requested"] is None for r in sec["coverage"]["pruned"])  # global: only the total is asked
