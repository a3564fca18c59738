"""prune.structured on the built-in detector: 50% l2, timed, exported, saved and re-loaded."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress.models import load_model
from compress.models.digitdet import CLASS_NAMES, DigitDetAdapter, DigitDetConfig, build_digitdet
from compress.models.serialize import save_model
from compress.passes.prune_structured import StructuredPrune
from compress.recipe import ModelSpec
from prune_fixtures import make_ctx, seeded


@pytest.mark.slow
def test_digitdet_l2_half(tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = seeded(build_digitdet(DigitDetConfig()))
    adapter = DigitDetAdapter(CLASS_NAMES, 128, 32)
    ctx = make_ctx(adapter, model, None)
    protected_before = [m.out_channels for m in adapter.protected_layers(model)]
    p = StructuredPrune(StructuredPrune.Config(type="prune.structured", criterion="l2", ratio=0.5))
    p.check(model, ctx)
    t0 = time.perf_counter()
    pruned = p.apply(model, ctx)
    seconds = time.perf_counter() - t0
    sec = ctx.report["prune.structured"]
    print(f"\ndigitdet prune.structured l2 50%: {seconds:.1f} s, params {sec['params_before']} -> "
          f"{sec['params_after']}, MACs {sec['macs_before']} -> {sec['macs_after']}")
    assert seconds < 60
    assert [m.out_channels for m in adapter.protected_layers(pruned)] == protected_before
    assert 0.2 < sec["params_ratio"] < 0.35 and 0.2 < sec["macs_ratio"] < 0.35
    assert all(int(v.split("->")[1]) % 8 == 0 for v in sec["channels"].values())

    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        want = pruned.eval()(x)
    assert want.shape == (1, 14, 336)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(pruned, (x,), str(path), opset_version=17, dynamo=False, input_names=["images"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-3)

    ckpt = save_model(adapter, pruned, tmp_path / "pruned.pt")
    _, loaded = load_model(ModelSpec(checkpoint=str(ckpt)))
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
