"""swap.module and `compress profile --blocks`: light blocks keep shapes, block-wise distillation
lowers each block's error, swapped models (digitdet, Ultralytics yaml models) run and export,
pruning still runs after a swap, the per-block table has a row per instance, bad configs fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compress.blocks import build_block, names
from compress.errors import PassError
from compress.passes.swap_module import SwapModule
from prune_fixtures import make_ctx, ort_run


def _cfg(**kw):
    return SwapModule.Config(type="swap.module", **kw)


@pytest.fixture(scope="module")
def digitdet():
    from compress.models import load_model
    from compress.recipe import ModelSpec

    return load_model(ModelSpec(builtin="digitdet"))


@pytest.fixture(scope="module")
def calib():
    from compress.data import builtin_dataset

    return builtin_dataset("digits-det", "calib", 16)


def _n(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["elan2", "shufflenet", "dwsep"])
@pytest.mark.parametrize("c1,c2,stride", [(32, 32, 1), (16, 48, 1), (32, 32, 2), (24, 64, 2)])
def test_every_block_keeps_shapes(name, c1, c2, stride):
    assert name in names()
    torch.manual_seed(0)
    block = build_block(name, c1, c2, stride, torch.nn.ReLU()).eval()
    x = torch.rand(2, c1, 20, 19)
    y = block(x)
    assert y.shape == (2, c2, -(-20 // stride), -(-19 // stride))
    assert any(isinstance(m, torch.nn.ReLU) for m in block.modules())  # the given activation is used
    assert not any(isinstance(m, torch.nn.SiLU) for m in block.modules())


def test_shufflenet_refuses_odd_channels():
    with pytest.raises(ValueError, match="even"):
        build_block("shufflenet", 16, 15, 1)


def test_digitdet_swap_distils_blocks_and_prunes_after(digitdet, calib, tmp_path):
    import copy

    from compress.export import export_onnx
    from compress.passes.prune_structured import StructuredPrune

    torch.set_num_threads(1)
    adapter, base = digitdet
    model = copy.deepcopy(base)
    ctx = make_ctx(adapter, model, calib, work_dir=tmp_path)
    p = SwapModule(_cfg(target="re:c2f[45]", to="elan2", block_steps=40, block_lr=3e-3, calib_samples=16))
    p.check(model, ctx)
    before = _n(model)
    model = p.apply(model, ctx)
    rows = ctx.report["swap.module"]["instances"]
    assert [r["name"] for r in rows] == ["c2f4", "c2f5"]
    assert type(model.c2f4).__name__ == "ELAN2" and type(model.c2f2).__name__ == "C2f"
    assert _n(model) < before == ctx.report["swap.module"]["params_before"]
    for r in rows:
        assert r["in_shape"] == r["out_shape"] and r["params_new"] < r["params_old"]
        assert r["mse_after"] < 0.7 * r["mse_before"], r  # block-wise distillation learned the old block
    assert any(isinstance(m, torch.nn.SiLU) for m in model.c2f4.modules())  # digitdet's activation
    x = adapter.example_input(1)
    with torch.no_grad():
        want = adapter.forward(model, x)
    path = export_onnx(model, adapter, tmp_path / "swapped.onnx", opset=17)
    np.testing.assert_allclose(ort_run(path, x.numpy()), want.numpy(), atol=1e-3)
    # structured pruning understands the new blocks
    prune = StructuredPrune(StructuredPrune.Config(type="prune.structured", ratio=0.5))
    prune.check(model, ctx)
    swapped = _n(model)
    pruned = prune.apply(model, ctx)
    assert _n(pruned) < swapped * 0.6
    assert adapter.forward(pruned.eval(), x).shape == want.shape


def test_shufflenet_swap_then_prune_with_the_hinted_ignore(digitdet, calib, tmp_path):
    import copy

    from compress.passes.prune_structured import StructuredPrune

    adapter, base = digitdet
    model = copy.deepcopy(base)
    ctx = make_ctx(adapter, model, calib, work_dir=tmp_path)
    p = SwapModule(_cfg(target="re:c2f[45]", to="shufflenet", block_steps=1, calib_samples=4))
    p.check(model, ctx)
    model = p.apply(model, ctx)
    assert any("ignore: [ShuffleUnit]" in n for n in ctx.notes)
    # without the ignore torch-pruning cannot follow the channel shuffle: one line, model untouched
    blind = StructuredPrune(StructuredPrune.Config(type="prune.structured", ratio=0.5))
    with pytest.raises(PassError, match="torch-pruning cannot prune this model.*ignore"):
        blind.check(model, ctx)
    prune = StructuredPrune(StructuredPrune.Config(type="prune.structured", ratio=0.5, ignore=["ShuffleUnit"]))
    prune.check(model, ctx)
    n0 = _n(model)
    model = prune.apply(model, ctx)
    assert _n(model) < n0 and type(model.c2f4).__name__ == "ShuffleUnit"
    assert adapter.forward(model.eval(), adapter.example_input(1)).shape[1] == 14


@pytest.mark.parametrize("yaml,target,to", [("yolov9t.yaml", "RepNCSPELAN4", "elan2"),
                                            ("yolov8n.yaml", "C2f", "shufflenet"),
                                            ("yolo11n.yaml", "C3k2", "dwsep")])
def test_ultralytics_swap_runs_and_exports(yaml, target, to, calib, tmp_path):
    pytest.importorskip("ultralytics")
    from compress.export import export_onnx
    from compress.models import load_model
    from compress.recipe import ModelSpec

    torch.set_num_threads(1)
    adapter, model = load_model(ModelSpec(builtin=yaml, imgsz=64))
    ctx = make_ctx(adapter, model, calib, work_dir=tmp_path)
    p = SwapModule(_cfg(target=target, to=to, block_steps=3, calib_samples=4))
    p.check(model, ctx)
    before = _n(model)
    model = p.apply(model, ctx)
    rows = ctx.report["swap.module"]["instances"]
    assert rows and all(r["params_new"] < r["params_old"] for r in rows)
    assert not any(type(m).__name__ == target for m in model.modules())
    assert _n(model) < before
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = adapter.forward(model.eval(), x)
    path = export_onnx(model, adapter, tmp_path / "m.onnx", opset=17)
    got = ort_run(path, x.numpy())
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-2, rtol=1e-3)


def test_refusals_leave_the_model_untouched(digitdet, calib, tmp_path):
    pytest.importorskip("ultralytics")
    from compress.models import load_model
    from compress.recipe import ModelSpec

    adapter, model = load_model(ModelSpec(builtin="yolov8n.yaml", imgsz=64))
    ctx = make_ctx(adapter, model, calib, work_dir=tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PassError, match="several inputs"):
        SwapModule(_cfg(target="Concat")).check(model, ctx)
    with pytest.raises(PassError, match="matches no module"):
        SwapModule(_cfg(target="NoSuchBlock")).check(model, ctx)
    with pytest.raises(PassError, match="bad regular expression"):
        SwapModule(_cfg(target="re:(")).check(model, ctx)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # digitdet's neck C2f maps 192 -> 96 channels: fine; an odd width shufflenet cannot give is refused
    d_adapter, d_model = digitdet
    odd = torch.nn.Sequential(torch.nn.Conv2d(3, 15, 3, padding=1))
    d_ctx = make_ctx(d_adapter, odd, calib, work_dir=tmp_path)
    with pytest.raises(PassError, match="even number"):
        SwapModule(_cfg(target="Conv2d", to="shufflenet")).check(odd, d_ctx)


def test_bad_configs():
    with pytest.raises(ValidationError, match="unknown block"):
        _cfg(target="C2f", to="mobilevit")
    with pytest.raises(ValidationError, match="extra"):
        _cfg(target="C2f", steps=3)
    with pytest.raises(ValidationError):
        _cfg(target="C2f", block_steps=-1)
    with pytest.raises(ValidationError):
        _cfg(to="elan2")  # target is required


def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    from compress.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nmodel: {builtin: digitdet}\npasses:\n  - {type: swap.module, target: C2f, to: nope}\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown block 'nope'" in err and "\n" not in err and "Traceback" not in err


def test_profile_blocks_table(digitdet, capsys):
    from compress.cli import main
    from compress.runtime.blocks import block_table

    adapter, model = digitdet
    torch.set_num_threads(1)
    rows, skipped = block_table(model, adapter, "elan2", "C2f", runs=3, warmup=1)
    want = [n for n, m in model.named_modules() if type(m).__name__ == "C2f"]
    assert [r["name"] for r in rows] == want and not skipped
    assert all(r["old_ms"] > 0 and r["new_ms"] > 0 and r["speedup"] > 0 and r["speedup_min"] > 0 for r in rows)
    assert all(r["in_shape"][2:] == r["out_shape"][2:] for r in rows)
    # default blocks: the model's top-level blocks; the up-sampler has no parameters, heads are listed
    rows, skipped = block_table(model, adapter, "dwsep", runs=2, warmup=0)
    names_ = [r["name"] for r in rows]
    assert "stem" in names_ and "heads.0" in names_ and "up" not in names_
    rows, _ = block_table(model, adapter, "elan2", "c2f5", runs=2, warmup=1, runtime="onnxruntime", threads=1)
    assert len(rows) == 1 and rows[0]["runtime"] == "onnxruntime" and rows[0]["speedup"] > 0
    assert rows[0]["macs_new"] < rows[0]["macs_old"]
    assert main(["profile", "digitdet", "--blocks", "--target", "C2f", "--to", "dwsep", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count(" C2f ") == len(want) and "speed-up" in out
    assert main(["profile", "digitdet", "--blocks", "--target", "C2f", "--to", "nope", "--runs", "1"]) == 2
