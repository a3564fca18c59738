"""The finetune pass and the reusable fine-tuning loop."""

from __future__ import annotations

import pytest
import torch

from compress.errors import PassError, RecipeError
from compress.passes.distill import distill_loss, resolve_mode, yolo_layout
from compress.passes.finetune import Finetune, FinetuneConfig, run_finetune
from compress.recipe import validate
from prune_fixtures import TinyClsAdapter, TinyDetAdapter, cls_dataset, det_dataset, make_ctx, tiny_cls, tiny_det


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
    assert report["loss"] == "distill" and report["steps"] == 8 and report["distill"] == "yolo"
    assert report["loss_after"] < 0.7 * report["loss_before"]
    assert report["lr"] == pytest.approx(2e-3)
    assert all(not p.requires_grad for p in ctx.reference.parameters())


def _head(nc=10, reg=8, fg_logit=3.0, bg_logit=-10.0, seed=0):
    """One teacher head map: background everywhere, one confident object (class 3 at (2, 5))."""
    g = torch.Generator().manual_seed(seed)
    box = torch.randn(2, 4 * reg, 8, 8, generator=g)
    cls = torch.full((2, nc, 8, 8), bg_logit)
    cls[:, 3, 2, 5] = fg_logit
    return torch.cat([box, cls], 1)


def test_yolo_distill_prefers_kept_detections_to_shrunken_scores():
    nc, reg = 10, 8
    teacher = _head(nc, reg)
    lost = teacher.clone()
    lost[:, 4 * reg + 3, 2, 5] = -3.0  # the object's score falls to 0.05: nothing left above 0.25
    noisy = teacher.clone()
    noisy[:, 4 * reg:] += 3.0  # every background logit 3 higher (scores 0.0009), the object kept
    noisy[:, 4 * reg + 3, 2, 5] = 3.0
    mse = {k: float(distill_loss("mse", [v], [teacher], nc)) for k, v in (("lost", lost), ("noisy", noisy))}
    yolo = {k: float(distill_loss("yolo", [v], [teacher], nc)) for k, v in (("lost", lost), ("noisy", noisy))}
    assert mse["lost"] < mse["noisy"]  # plain MSE on logits rewards the collapse ...
    assert yolo["noisy"] < yolo["lost"]  # ... the detection loss does not
    assert float(distill_loss("yolo", [teacher], [teacher], nc)) == pytest.approx(0.0, abs=1e-5)
    moved = teacher.clone()
    moved[:, :4 * reg, 2, 5] = torch.randn(2, 4 * reg)  # the object's box distributions change
    assert float(distill_loss("yolo", [moved], [teacher], nc)) > 0.05
    background = teacher.clone()
    background[:, :4 * reg, 0, 0] += 5 * torch.randn(2, 4 * reg)  # boxes where nothing is seen barely count
    assert float(distill_loss("yolo", [background], [teacher], nc)) < 1e-3


def test_distill_mode_resolution():
    det = [_head(), _head()[:, :, :4, :4]]
    assert yolo_layout(det, 10) == 8
    assert yolo_layout([torch.zeros(2, 10)], 10) is None
    assert yolo_layout([torch.zeros(2, 4 * 8 + 10, 4, 4), torch.zeros(2, 4 * 16 + 10, 4, 4)], 10) is None
    assert resolve_mode("auto", "detect", det, 10) == "yolo"
    assert resolve_mode("auto", "classify", [torch.zeros(2, 10)], 10) == "mse"
    assert resolve_mode("mse", "detect", det, 10) == "mse"
    with pytest.raises(PassError, match="head maps"):
        resolve_mode("yolo", "classify", [torch.zeros(2, 10)], 10)
    with pytest.raises(PassError, match="does not match"):
        distill_loss("yolo", [det[1]], [det[0]], 10)
    model = tiny_cls()
    ctx = make_ctx(TinyClsAdapter(), model, cls_dataset(8))
    with pytest.raises(PassError, match="distill 'yolo'"):
        Finetune(Finetune.Config(type="finetune", loss="distill", distill="yolo")).check(model, ctx)
    report = {}
    run_finetune(model, ctx, FinetuneConfig(steps=1, batch_size=4, eval_batches=1, loss="distill"), report=report)
    assert report["distill"] == "mse"


def test_teacher_outputs_computed_once_across_epochs(monkeypatch):
    from compress.passes import distill

    params, calls = {}, {}
    for limit in (None, 0):
        monkeypatch.setattr(distill, "CACHE_LIMIT_BYTES", distill.CACHE_LIMIT_BYTES if limit is None else limit)
        model, ctx = _perturbed()
        n = calls[limit] = [0]
        raw = ctx.adapter.distill_outputs

        def counted(m, x, raw=raw, n=n, ref=ctx.reference):
            n[0] += m is ref
            return raw(m, x)

        ctx.adapter.distill_outputs = counted
        report = {}
        run_finetune(model, ctx, FinetuneConfig(epochs=3, batch_size=8, eval_batches=1, loss="distill"),
                     report=report)
        assert report["steps"] == 6 and report["teacher_cached"] is (limit is None)
        params[limit] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert calls[0][0] == 8  # 6 steps + loss before/after, each a teacher forward
    assert calls[None][0] <= 3  # only the first sight of each image
    assert torch.allclose(params[None], params[0], atol=1e-5)


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
