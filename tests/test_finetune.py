"""The finetune pass and the reusable fine-tuning loop."""

from __future__ import annotations

import pytest
import torch

from compress.errors import PassError, RecipeError
from compress.passes.finetune import Finetune, FinetuneConfig, run_finetune
from compress.recipe import validate
from prune_fixtures import TinyClsAdapter, TinyDetAdapter, det_dataset, make_ctx, tiny_cls, tiny_det


def _perturbed(seed=0):
    model = tiny_det(seed)
    ctx = make_ctx(TinyDetAdapter(), model, det_dataset(16, seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, ctx


def test_distill_lowers_loss_and_reports():
    torch.set_num_threads(2)
    model, ctx = _perturbed()
    report = {}
    out = run_finetune(model, ctx, FinetuneConfig(steps=8, batch_size=8, loss="distill", lr_scale=2.0,
                                                  eval_batches=2), report=report)
    assert out is model and not model.training
    assert report["loss"] == "distill" and report["steps"] == 8
    assert report["loss_after"] < 0.7 * report["loss_before"]
    assert report["lr"] == pytest.approx(2e-3)
    assert all(not p.requires_grad for p in ctx.reference.parameters())


def test_deterministic_with_seed():
    results = []
    for _ in range(2):
        model, ctx = _perturbed()
        run_finetune(model, ctx, FinetuneConfig(steps=2, batch_size=4, eval_batches=1, loss="distill"))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_bn_eval_keeps_running_stats():
    model, ctx = _perturbed()
    before = model.stem.bn.running_mean.clone()
    fast = {"steps": 1, "batch_size": 4, "eval_batches": 1, "loss": "distill"}
    run_finetune(model, ctx, FinetuneConfig(bn_eval=True, **fast))
    assert torch.equal(before, model.stem.bn.running_mean)
    run_finetune(model, ctx, FinetuneConfig(**fast))
    assert not torch.equal(before, model.stem.bn.running_mean)


def test_pass_task_loss_auto_and_lr_scale():
    model, ctx = _perturbed()
    p = Finetune(Finetune.Config(type="finetune", steps=2, batch_size=4, eval_batches=1))
    p.check(model, ctx)
    p.apply(model, ctx)
    sec = ctx.report["finetune"]
    assert sec["loss"] == "task" and sec["lr"] == pytest.approx(1e-4)
    assert sec["loss_before"] > 0 and sec["seconds"] >= 0 and sec["train_loss_last"] > 0


def test_bad_input():
    with pytest.raises(RecipeError, match="steps"):
        validate({"name": "x", "model": {"builtin": "digitdet"}, "passes": [{"type": "finetune", "steps": 0}]})
    with pytest.raises(RecipeError, match="not both"):
        validate({"name": "x", "model": {"builtin": "digitdet"},
                  "passes": [{"type": "finetune", "steps": 2, "epochs": 1}]})
    with pytest.raises(RecipeError, match="unknown field"):
        validate({"name": "x", "model": {"builtin": "digitdet"}, "passes": [{"type": "finetune", "lr": 1}]})
    model = tiny_cls()
    ctx = make_ctx(TinyClsAdapter(), model, None)
    with pytest.raises(PassError, match="calibration"):
        Finetune(Finetune.Config(type="finetune")).check(model, ctx)
    ctx = make_ctx(TinyDetAdapter(), tiny_det(), det_dataset(4, labelled=False))
    with pytest.raises(PassError, match="labelled"):
        Finetune(Finetune.Config(type="finetune", loss="task")).check(ctx.reference, ctx)
    if not torch.cuda.is_available():
        with pytest.raises(PassError, match="CUDA"):
            Finetune(Finetune.Config(type="finetune", device="cuda")).check(ctx.reference, ctx)
