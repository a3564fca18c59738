"""prune.structured on tiny models: every criterion, scopes, rounding, overrides, bad input."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress.errors import PassError, RecipeError
from compress.passes.prune_structured import StructuredPrune
from compress.recipe import validate
from prune_fixtures import (IMGSZ, TinyClsAdapter, TinyDetAdapter, cls_dataset, det_dataset, make_ctx, tiny_cls,
                            tiny_det)


def prune(model, ctx, **cfg):
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", **cfg))
    p.check(model, ctx)
    return p.apply(model, ctx), ctx.section("prune.structured")


def det_ctx(seed=0, n=12, labelled=True):
    model = tiny_det(seed)
    return model, make_ctx(TinyDetAdapter(), model, det_dataset(n, seed, labelled), seed=seed)


def widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def onnx_agrees(model, tmp_path, name="m.onnx"):
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    path = tmp_path / name
    torch.onnx.export(model.eval(), (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["out"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("criterion,scope", [("l1", "local"), ("l2", "local"), ("random", "local"),
                                             ("fmap_cluster", "local"), ("l2", "global"),
                                             ("fmap_cluster", "global")])
def test_criteria_run_export_round(criterion, scope, tmp_path):
    torch.set_num_threads(2)
    model, ctx = det_ctx()
    before = widths(model)
    pruned, sec = prune(model, ctx, criterion=criterion, ratio=0.5, scope=scope, calib_samples=8)
    after = widths(pruned)
    assert after["head"] == before["head"] == 6  # protected layer keeps its channels
    assert all(w % 8 == 0 for k, w in after.items() if k != "head")
    assert sec["params_after"] < sec["params_before"] and sec["macs_after"] < sec["macs_before"]
    assert sec["channels"]["fuse.conv"] == "32->16"
    assert pruned(torch.zeros(2, 3, IMGSZ, IMGSZ)).shape == (2, 6, 64)
    onnx_agrees(pruned, tmp_path)


def _kept(orig: torch.Tensor, new: torch.Tensor) -> set[int]:
    """Which channels of ``orig`` survive in ``new`` (matched by their distinct values)."""
    kept = set()
    for v in new.tolist():
        hits = [i for i, o in enumerate(orig.tolist()) if o == v]
        assert len(hits) == 1
        kept.add(hits[0])
    return kept


def test_l1_and_random_pick_different_channels():
    picks = {}
    for crit in ("l1", "random"):
        model, ctx = det_ctx()
        orig = model.fuse.bn.running_mean.clone()
        pruned, _ = prune(model, ctx, criterion=crit, ratio=0.5)
        picks[crit] = _kept(orig, pruned.fuse.bn.running_mean)
        assert len(picks[crit]) == 16
    assert picks["l1"] != picks["random"]
    # l1 keeps the filters with the larger norms of the (fuse.conv, fuse.bn, head-input) group
    model, _ = det_ctx()
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 3, IMGSZ, IMGSZ))
    group = dg.get_pruning_group(model.fuse.conv, tp.prune_conv_out_channels, list(range(32)))
    imp = tp.importance.MagnitudeImportance(p=1)(group)
    assert picks["l1"] == set(torch.argsort(imp, descending=True)[:16].tolist())


def test_round_to_nearest_multiple_and_none():
    model, ctx = det_ctx()
    pruned, _ = prune(model, ctx, criterion="l2", ratio=0.3)  # 16 * 0.7 = 11.2 -> 11 -> nearest 8
    assert widths(pruned)["stem.conv"] == 8 and widths(pruned)["fuse.conv"] == 24  # 22 -> 24
    model, ctx = det_ctx()
    pruned, _ = prune(model, ctx, criterion="l2", ratio=0.3, round_to=None)
    assert widths(pruned)["stem.conv"] == 11 and widths(pruned)["fuse.conv"] == 22


def test_layer_ratios_ignore_and_max_layer_ratio():
    model, ctx = det_ctx()
    pruned, sec = prune(model, ctx, criterion="l1", ratio=0.5, round_to=4,
                        layer_ratios={"fuse.conv": 0.75}, ignore=["re:.*branch.*"])
    w = widths(pruned)
    assert w["fuse.conv"] == 8 and w["branch.conv"] == 16 and w["stem.conv"] == 8
    assert "branch.conv" not in sec["channels"]
    model, ctx = det_ctx()
    pruned, _ = prune(model, ctx, criterion="l1", ratio=0.6, scope="global", round_to=None, max_layer_ratio=0.5)
    for name, before in widths(tiny_det()).items():
        if name not in ("down.conv",):
            assert widths(pruned).get(name, before) >= before * 0.5


def test_global_differs_from_local():
    model, ctx = det_ctx()
    local, _ = prune(model, ctx, criterion="l1", ratio=0.5, round_to=None)
    model, ctx = det_ctx()
    glob, _ = prune(model, ctx, criterion="l1", ratio=0.5, round_to=None, scope="global")
    assert widths(local) != widths(glob)
    assert sum(widths(glob).values()) == pytest.approx(sum(widths(local).values()), abs=4)


def test_iterative_steps_reach_target_with_finetune():
    model, ctx = det_ctx()
    pruned, sec = prune(model, ctx, criterion="l2", ratio=0.5, round_to=None, steps=3,
                        finetune={"steps": 1, "loss": "distill", "batch_size": 4, "eval_batches": 1})
    assert widths(pruned)["stem.conv"] == 8 and widths(pruned)["fuse.conv"] == 16
    assert [r["target_ratio"] for r in sec["rounds"]] == [pytest.approx(1 / 6, abs=1e-3),
                                                          pytest.approx(1 / 3, abs=1e-3), 0.5]
    assert all(r["finetune"]["steps"] == 1 for r in sec["rounds"])
    assert sec["rounds"][0]["params"] > sec["rounds"][1]["params"] > sec["rounds"][2]["params"]


def test_classifier_protects_last_layer_and_fmap_uses_whole_map():
    model = tiny_cls()
    ctx = make_ctx(TinyClsAdapter(), model, cls_dataset(8))
    pruned, sec = prune(model, ctx, criterion="fmap_cluster", ratio=0.5)
    assert pruned.fc2.out_features == 4 and pruned.fc1.out_features == 16
    assert sec["fmap_boxes"] == "whole map (classifier)"
    assert pruned(torch.zeros(1, 3, IMGSZ, IMGSZ)).shape == (1, 4)


def test_bad_input():
    base = {"name": "x", "model": {"builtin": "digitdet"}}
    for bad, field in (({"ratio": 1.5}, "ratio"), ({"ratio": 0}, "ratio"), ({"ratio": 0.5, "steps": 0}, "steps"),
                       ({"ratio": 0.5, "layer_ratios": {"a": 1.0}}, "layer_ratios"),
                       ({"ratio": 0.5, "criterion": "l3"}, "criterion")):
        with pytest.raises(RecipeError, match=field):
            validate({**base, "passes": [{"type": "prune.structured", **bad}]})
    model, ctx = det_ctx()
    snapshot = copy.deepcopy(model.state_dict())
    for cfg, msg in (({"ignore": ["re:nothing.*"]}, "re:nothing"), ({"layer_ratios": {"nope": 0.3}}, "'nope'"),
                     ({"ratio": 0.97, "round_to": None}, "every channel")):
        p = StructuredPrune(StructuredPrune.Config(type="prune.structured", **{"ratio": 0.5, **cfg}))
        with pytest.raises(PassError, match=msg):
            p.check(model, ctx)
    for k, v in model.state_dict().items():  # check never touches the model
        assert torch.equal(v, snapshot[k])
