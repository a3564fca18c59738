"""Gradual pruning during fine-tune: cubic schedule, masks after every step, logs, exact removal, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.errors import RecipeError
from compress.passes.prune_structured import StructuredPrune
from compress.passes.prune_unstructured import UnstructuredPrune
from compress.pruning import gradual
from compress.pruning.gradual import GradualConfig, Schedule, cubic
from compress.recipe import validate
from prune_fixtures import (IMGSZ, TinyClsAdapter, TinyDetAdapter, cls_dataset, det_dataset, make_ctx, tiny_cls,
                            tiny_det)

TYPES = {StructuredPrune: "prune.structured", UnstructuredPrune: "prune.unstructured"}
FT = {"loss": "distill", "batch_size": 4, "eval_batches": 1, "base_lr": 0.01, "lr_scale": 1.0}


def run_pass(cls, model, ctx, **cfg):
    p = cls(cls.Config(type=TYPES[cls], **cfg))
    p.check(model, ctx)
    out = p.apply(model, ctx)
    return out, ctx.section(p.label)


def det(n=12, seed=0):
    model = tiny_det(seed)
    return model, make_ctx(TinyDetAdapter(), model, det_dataset(n, seed), seed=seed)


def widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


# -- the schedule ---------------------------------------------------------------------------------
def test_cubic_schedule_values():
    assert cubic(0.7, 0.0, 0.0) == 0.0
    assert cubic(0.7, 0.1, 0.0) == pytest.approx(0.1)
    assert cubic(0.7, 0.0, 1.0) == 0.7 and cubic(0.7, 0.0, 2.0) == 0.7  # exact, then held
    assert cubic(0.8, 0.0, 0.5) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # fast first, slow last
    values = [cubic(0.9, 0.0, i / 100) for i in range(101)]
    assert all(b > a for a, b in zip(values, values[1:]))

    s = Schedule(GradualConfig(), total=200)  # begin 0, end 0.75 -> target at step 150
    steps = [u for u, _ in s.updates]
    assert 10 <= len(steps) <= 20 and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert s.updates[-1] == (150, 1.0) and s.end == 150
    assert all(0 <= p <= 1 for _, p in s.updates)
    s = Schedule(GradualConfig(begin=0.2, end=0.5, update_every=7), total=100)
    assert [u for u, _ in s.updates] == [20, 27, 34, 41, 48, 50]
    assert s.updates[0][1] == 0.0 and s.updates[-1][1] == 1.0
    assert s.due(19) is None and s.due(20) == 0.0 and s.due(20) is None  # each update once
    assert s.due(45) == pytest.approx((41 - 20) / 30)  # skipped-over updates collapse to the newest
    with pytest.raises(ValueError, match="before"):
        GradualConfig(begin=0.8, end=0.5)


# -- masks held after every AdamW step ------------------------------------------------------------
def _spy(monkeypatch, check):
    calls = []
    original = gradual.GradualRun.__call__

    def spy(self, step, total, per_epoch):
        original(self, step, total, per_epoch)
        calls.append(check(self.masks))

    monkeypatch.setattr(gradual.GradualRun, "__call__", spy)
    return calls


def _weight_masks_hold(masks):
    return all(bool((m.weight_orig[m.weight_mask == 0] == 0).all()) for m, _ in masks.plan.values())


def _channel_masks_hold(masks):
    return all(bool((p[~keep] == 0).all()) for p, keep in masks.masks.items())


def test_unstructured_masks_reapplied_after_every_adamw_step(monkeypatch):
    calls = _spy(monkeypatch, _weight_masks_hold)
    model, ctx = det()
    out, sec = run_pass(UnstructuredPrune, model, ctx, amount=0.6, schedule="gradual",
                        gradual={"end": 0.5, "update_every": 2}, finetune={**FT, "steps": 12, "optimizer": "adamw"})
    assert len(calls) == 12 and all(calls)
    assert sec["finetune"]["optimizer"] == "adamw" and sec["finetune"]["steps"] == 12
    # target reached exactly at `end` (step 6) and held; masks are permanent afterwards
    ups = sec["updates"]
    assert ups[-1]["step"] == 6 and ups[-1]["progress"] == 1.0 and ups[-1]["target_amount"] == 0.6
    assert [u["targeted_sparsity"] for u in ups] == sorted(u["targeted_sparsity"] for u in ups)
    assert sec["targeted_sparsity"] == pytest.approx(0.6, abs=2e-3)
    assert [t["sparsity"] for t in sec["targets"]] == [pytest.approx(0.6, abs=2e-3)]
    assert not any(n.endswith("_orig") for n, _ in out.named_parameters())
    assert not any(m._forward_pre_hooks for m in out.modules())


def test_without_reapplying_adamw_regrows_masked_weights(monkeypatch):
    """The control for the test above: masks applied only at updates let AdamW move zeros."""
    monkeypatch.setattr(gradual.WeightMasks, "apply", lambda self: None)
    calls = _spy(monkeypatch, _weight_masks_hold)
    model, ctx = det()
    run_pass(UnstructuredPrune, model, ctx, amount=0.6, schedule="gradual", gradual={"end": 0.5},
             finetune={**FT, "steps": 12})
    assert not all(calls)


def test_unstructured_per_target_amounts_and_static_arm():
    model, ctx = det()
    _, sec = run_pass(UnstructuredPrune, model, ctx, schedule="gradual",
                      targets=[{"match": "Conv2d", "amount": 0.3}, {"match": "re:fuse.*", "amount": 0.7}],
                      finetune={**FT, "steps": 8})
    by = {t["match"]: t for t in sec["targets"]}
    assert by["Conv2d"]["sparsity"] == pytest.approx(0.3, abs=2e-3)
    assert by["re:fuse.*"]["sparsity"] == pytest.approx(0.7, abs=2e-3) and by["re:fuse.*"]["layers"] == 1
    assert sec["conv2d"]["fuse.conv"] == pytest.approx(0.7, abs=2e-3)
    # one-shot + fine-tune (the static arm): full sparsity from the first step, held to the end
    model, ctx = det()
    _, sec = run_pass(UnstructuredPrune, model, ctx, amount=0.5, finetune={**FT, "steps": 6})
    assert sec["schedule"] == "oneshot" and "updates" not in sec
    assert [e["conv"] for e in sec["epochs"]][0] > 0.45
    assert sec["targeted_sparsity"] == pytest.approx(0.5, abs=2e-3)


# -- structured: soft filter pruning, then exact removal ------------------------------------------
def test_structured_gradual_logs_and_removes_exactly_the_masked_channels(monkeypatch):
    calls = _spy(monkeypatch, _channel_masks_hold)
    snap = {}
    original_remove = gradual.ChannelMasks.remove

    def remove(self):
        snap["masked"] = copy.deepcopy(self.pruner.model).eval()
        snap["zero_bn"] = sum(int((m.weight == 0).sum()) for m in self.pruner.model.modules()
                              if isinstance(m, torch.nn.BatchNorm2d))
        return original_remove(self)

    monkeypatch.setattr(gradual.ChannelMasks, "remove", remove)
    model, ctx = det(n=12)
    out, sec = run_pass(StructuredPrune, model, ctx, ratio=0.5, round_to=4, schedule="gradual",
                        finetune={**FT, "epochs": 3})  # 12 images / 4 = 3 steps an epoch, 9 steps
    assert len(calls) == 9 and all(calls)
    g = sec["gradual"]
    assert [e["epoch"] for e in g["epochs"]] == [1, 2, 3]
    for e in g["epochs"] + g["updates"]:
        assert set(e) >= {"conv", "batchnorm"}
    bn = [e["batchnorm"] for e in g["epochs"]]
    assert bn == sorted(bn) and bn[-1] > 0.2
    assert g["updates"][-1]["progress"] == 1.0 and g["updates"][-1]["target_ratio"] == 0.5
    assert snap["zero_bn"] > 0 and g["groups_removed"] > 0
    # the surgery removed exactly the zeroed channels: same function, smaller model, no zero BN left
    assert g["surgery_max_abs_diff"] <= 1e-4
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(out.eval()(x), snap["masked"](x), atol=1e-4, rtol=0)
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in snap["masked"].parameters())
    assert sec["params_after"] < sec["params_before"]
    assert not any(bool((m.weight == 0).any()) for m in out.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # the same plan as one-shot pruning at that ratio: the same widths
    model2, ctx2 = det(n=12)
    one, _ = run_pass(StructuredPrune, model2, ctx2, ratio=0.5, round_to=4)
    assert widths(out) == widths(one)


def test_structured_gradual_classifier_linear_after_flatten():
    model = tiny_cls()
    ctx = make_ctx(TinyClsAdapter(), model, cls_dataset(8))
    out, sec = run_pass(StructuredPrune, model, ctx, ratio=0.5, round_to=None, schedule="gradual",
                        gradual={"initial": 0.1, "end": 1.0}, finetune={**FT, "steps": 6})
    assert sec["gradual"]["surgery_max_abs_diff"] <= 1e-4
    assert out.fc1.out_features == 16 and out.fc2.out_features == 4  # protected classifier kept whole
    assert sec["gradual"]["updates"][0]["target_ratio"] >= 0.1


# -- recipe errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,extra,msg", [
    ("prune.structured", {"ratio": 0.5, "schedule": "gradual"}, "give a finetune config"),
    ("prune.structured", {"ratio": 0.5, "schedule": "gradual", "steps": 3, "finetune": {"steps": 5}},
     "steps > 1 cannot be combined"),
    ("prune.structured", {"ratio": 0.5, "schedule": "gradual", "criterion": "fmap_cluster",
                          "finetune": {"steps": 5}}, "l1 or l2"),
    ("prune.structured", {"ratio": 0.5, "gradual": {"end": 0.5}}, "schedule is 'oneshot'"),
    ("prune.structured", {"ratio": 0.5, "schedule": "gradual", "finetune": {"steps": 5},
                          "gradual": {"begin": 0.5, "end": 0.4}}, "before"),
    ("prune.structured", {"ratio": 0.5, "schedule": "gradual", "finetune": {"steps": 5},
                          "gradual": {"stop": 0.5}}, "stop"),
    ("prune.unstructured", {"schedule": "gradual"}, "give a finetune config"),
])
def test_recipe_errors(kind, extra, msg):
    with pytest.raises(RecipeError, match=msg) as e:
        validate({"name": "x", "model": {"builtin": "digitdet"}, "passes": [{"type": kind, **extra}]})
    assert "\n" not in str(e.value).strip()
    ok = validate({"name": "x", "model": {"builtin": "digitdet"}, "passes": [
        {"type": "prune.structured", "ratio": 0.5, "schedule": "gradual", "finetune": {"steps": 5}}]})
    assert ok.passes[0].schedule == "gradual"
