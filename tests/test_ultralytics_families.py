"""Every Ultralytics detection family through prune.structured -> ONNX -> int8 (issue 10).

Each family is built from its yaml (no weights), pruned 50% with L2 through the Pass API
exactly as the runner does, exported, run in ONNX Runtime against torch, and quantized by
``quantize.ptq`` (onnxruntime): the decode tail after the head's final convolutions must
stay float. End-to-end heads (YOLOv10, YOLO26) are also exported as their NMS-free
``(B, max_det, 6)`` output, decoded, distilled and trained with the task loss.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.yolo, pytest.mark.usefixtures("one_torch_thread")]

from compress.data import builtin_dataset  # noqa: E402
from compress.export import export_onnx  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.passes import registered  # noqa: E402
from compress.quant import head as qhead  # noqa: E402
from compress.recipe import ModelSpec  # noqa: E402
from prune_fixtures import make_ctx, ort_run, seeded  # noqa: E402

IMGSZ = 64
NAMES = [str(i) for i in range(10)]
FAMILIES = ["yolov3-tinyu.yaml", "yolov5nu.yaml", "yolov6n.yaml", "yolov8n.yaml", "yolov9t.yaml", "yolov10n.yaml",
            "yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml"]
END2END = ["yolov10n.yaml", "yolo26n.yaml"]
FT = {"steps": 1, "batch_size": 2, "samples": 2}


@pytest.fixture(scope="module")
def data():
    return builtin_dataset("digits-det", "calib", 8)


def _build(cfg):
    torch.manual_seed(0)
    return load_model(ModelSpec(builtin=cfg, class_names=NAMES, imgsz=IMGSZ))


def _apply(ptype, values, adapter, model, data, tmp_path):
    cls = registered()[ptype]
    p = cls(cls.Config.model_validate({"type": ptype, **values}))
    ctx = make_ctx(adapter, model, data, work_dir=tmp_path)
    p.check(model, ctx)
    return p, ctx


def _prune(adapter, model, data, tmp_path, **values):
    values = {"criterion": "l2", "ratio": 0.5, **values}
    p, ctx = _apply("prune.structured", values, adapter, model, data, tmp_path)
    return p.apply(model, ctx).eval(), ctx


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _x(seed=0):
    return torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def _assert_tail_float(int8_path, fp32_path):
    """No QuantizeLinear is fed by a decode-tail node, and the tail's non-shape ops are still there, float."""
    fp32, q = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    tail = qhead.analyse(fp32)
    assert tail.final_convs and tail.tail, "no decode tail found"
    producer = {o: n for n in q.graph.node for o in n.output}
    tail_names = set(tail.names)
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            src = producer.get(n.input[0])
            assert src is None or src.name not in tail_names, f"{src.name} ({src.op_type}) is quantized"
    q_ops = {n.name: n.op_type for n in q.graph.node}
    kept = [t for t in tail.tail if t.op in ("Sigmoid", "Concat", "Softmax", "TopK")]
    assert kept and all(q_ops.get(t.name) == t.op for t in kept)
    ints = [i.name for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(ints) >= 8, "the backbone was not quantized"


def _assert_same_rows(got, want, tol=1e-3):
    """Top-k rows equal up to order: near-equal scores of an untrained model may swap places
    (and at the k-th place, swap in or out), so rows are matched, not compared by position."""
    np.testing.assert_allclose(np.sort(got[:, 4]), np.sort(want[:, 4]), rtol=tol, atol=1e-6)
    scale = np.maximum(np.abs(want).max(0), 1.0)
    matched = [np.any(np.all(np.abs(want - row) <= tol * scale, axis=1)) for row in got]
    assert np.mean(matched) >= 0.95, f"{np.mean(matched):.0%} of the rows match"


@pytest.mark.parametrize("cfg", FAMILIES)
def test_family_prune_export_int8(cfg, data, tmp_path, record_property):
    t0 = time.perf_counter()
    adapter, model = _build(cfg)
    x = _x()
    with torch.no_grad():
        want = adapter.forward(model, x)
    widths = sorted(m.out_channels for m in adapter.protected_layers(model))
    n0 = _params(model)
    pruned, ctx = _prune(adapter, copy.deepcopy(model), data, tmp_path, finetune={**FT, "loss": "distill"})
    with torch.no_grad():
        got = adapter.forward(pruned, x)
    n1 = _params(pruned)
    assert got.shape == want.shape
    assert sorted(m.out_channels for m in adapter.protected_layers(pruned)) == widths
    assert n1 < 0.5 * n0, (n0, n1)
    assert ctx.report["prune.structured"]["rounds"][0]["finetune"], "the fine-tune round did not run"
    ckpt = tmp_path / "pruned.pt"  # the weights_only checkpoint rebuilds the pruned model from its yaml
    torch.save(adapter.checkpoint(pruned), ckpt)
    adapter2, rebuilt = load_model(ModelSpec(checkpoint=str(ckpt)))
    with torch.no_grad():
        torch.testing.assert_close(adapter2.forward(rebuilt, x), got, rtol=1e-4, atol=1e-4)

    fp32 = export_onnx(pruned, adapter, tmp_path / "model.onnx", opset=17)
    out = ort_run(fp32, x.numpy())
    scale = float(np.abs(got.numpy()).max())
    diff = float(np.abs(out - got.numpy()).max())
    assert diff <= 1e-3 * max(scale, 1.0), (diff, scale)

    ptq, qctx = _apply("quantize.ptq", {"backend": "onnxruntime", "samples": 8}, adapter, pruned, data, tmp_path)
    int8 = ptq.apply_onnx(fp32, qctx)
    _assert_tail_float(int8, fp32)
    assert ort_run(int8, x.numpy()).shape == tuple(got.shape)
    for k, v in {"params_before": n0, "params_after": n1, "max_abs_diff": diff,
                 "seconds": round(time.perf_counter() - t0, 1)}.items():
        record_property(k, v)


@pytest.mark.parametrize("cfg", END2END)
def test_end2end_export_matches_torch_and_decodes(cfg, data, tmp_path):
    adapter, model = _build(cfg)
    seeded(model)  # random BN statistics: an untrained model's scores tie, and top-k orders ties arbitrarily
    pruned, _ = _prune(adapter, model, data, tmp_path)
    noise = np.random.default_rng(0).integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8)  # no flat regions: no ties
    x, _metas = adapter.preprocess([noise])
    adapter.end2end = True
    try:
        with torch.no_grad():
            torch_out = adapter.forward(pruned, x)
        anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
        assert torch_out.shape == (1, min(300, anchors), 6)
        path = export_onnx(pruned, adapter, tmp_path / "e2e.onnx", opset=17)
        out = ort_run(path, x.numpy())
        _assert_same_rows(out[0], torch_out[0].numpy())
        dets = adapter.decode(out, _metas, conf=0.0, max_det=20)
        assert len(dets) == 1 and len(dets[0]) == 20
        assert np.all(np.diff(dets[0].scores) <= 0) and set(dets[0].classes.tolist()) <= set(range(len(NAMES)))
        tail = qhead.analyse(onnx.load(str(path))).tail
        assert any(n.op == "TopK" and "NMS-free top-k" in n.why for n in tail)
        ptq, qctx = _apply("quantize.ptq", {"backend": "onnxruntime", "samples": 8}, adapter, pruned, data, tmp_path)
        _assert_tail_float(ptq.apply_onnx(path, qctx), path)
    finally:
        adapter.end2end = False
    with torch.no_grad():  # back to the one-to-many (B, 4 + nc, N) layout
        assert adapter.forward(pruned, x).shape[1] == 4 + len(NAMES)


@pytest.mark.parametrize("cfg", END2END)
def test_end2end_task_loss_and_distill_reach_both_branches(cfg, data):
    adapter, model = _build(cfg)
    model.train()
    x, _ = adapter.preprocess([s.image for s in data][:2])
    maps = adapter.distill_outputs(model, x)
    assert len(maps) == 6 and all(m.shape[1] == 4 * model.model[-1].reg_max + len(NAMES) for m in maps)
    loss = adapter.loss(model, x, list(data)[:2])
    loss.backward()
    head = model.model[-1]
    for branch in (head.cv3, head.one2one_cv3):
        assert branch[0][-1].weight.grad is not None and float(branch[0][-1].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("cfg, criterion, loss", [
    ("yolo26n.yaml", "l1", "task"), ("yolo26n.yaml", "fmap_cluster", "distill"),
    ("yolov10n.yaml", "fmap_cluster", "task"), ("yolo12n.yaml", "fmap_cluster", "task")])
def test_other_criteria_and_losses(cfg, criterion, loss, data, tmp_path):
    adapter, model = _build(cfg)
    x = _x(1)
    extra = {"calib_samples": 4, "n_init": 1} if criterion == "fmap_cluster" else {}
    pruned, ctx = _prune(adapter, copy.deepcopy(model), data, tmp_path, criterion=criterion,
                         finetune={**FT, "loss": loss}, **extra)
    assert ctx.report["prune.structured"]["rounds"][0]["finetune"]["loss"] == loss
    with torch.no_grad():
        got = adapter.forward(pruned, x)
    head = pruned.model[-1]
    if getattr(head, "one2one_cv2", None) is not None:  # both branches pruned alike
        for a, b in ((head.cv2, head.one2one_cv2), (head.cv3, head.one2one_cv3)):
            assert [m.weight.shape for m in a.modules() if isinstance(m, torch.nn.Conv2d)] == \
                   [m.weight.shape for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
    assert _params(pruned) < 0.6 * _params(model)
    out = ort_run(export_onnx(pruned, adapter, tmp_path / "m.onnx", opset=17), x.numpy())
    np.testing.assert_allclose(out, got.numpy(), rtol=1e-3, atol=1e-3)


def test_yolo12_area_attention_stand_in_is_exact_and_opaque():
    """The rewritten AAttn gives the same outputs and gradients, and hides its reshapes from tracing."""
    from ultralytics.nn.modules.block import AAttn

    from compress.models.ultralytics_blocks import TraceOpaqueAAttn

    torch.manual_seed(0)
    attn = AAttn(64, num_heads=2, area=4).eval()
    opaque = TraceOpaqueAAttn(copy.deepcopy(attn)).eval()
    assert opaque.state_dict().keys() == attn.state_dict().keys()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(opaque(x), attn(x))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = attn(xa), opaque(xb)  # eval with gradients: the traced path (one checkpoint op)
    assert "Checkpoint" in type(yb.grad_fn).__name__ and "Checkpoint" not in type(ya.grad_fn).__name__
    torch.testing.assert_close(yb, ya)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    back = opaque.original()
    assert type(back) is AAttn and back.qkv is opaque.qkv
    with torch.no_grad():
        torch.testing.assert_close(back(x), attn(x))


@pytest.mark.parametrize("end2end", [False, True])
def test_fidelity_check_reads_both_end2end_layouts(end2end, data, tmp_path):
    """export.end2end picks the output; the check decodes it (NMS or NMS-free) against the same branch in torch."""
    from compress.fidelity import check
    from compress.recipe import FidelityConfig

    adapter, model = _build("yolo26n.yaml")
    seeded(model)
    path = export_onnx(model, adapter, tmp_path / "m.onnx", opset=17, end2end=end2end)
    shape = onnx.load(str(path)).graph.output[0].type.tensor_type.shape
    dims = [d.dim_value for d in shape.dim]
    assert (dims[2] == 6) if end2end else (dims[1] == 4 + len(NAMES))
    assert adapter.end2end is end2end
    # untrained: every score is about 0.0013, so the pseudo ground truth threshold sits below it
    result = check(adapter, model, path, data, FidelityConfig(conf=0.001, eval_conf=0.0005, overlays=0))
    assert result.measurable and result.metrics["counts"]["reference_detections"] > 0
    assert result.metrics["agreement_map50"] > 0.95 and result.passed, result.failures


def test_end2end_export_refused_without_one_to_one_head(tmp_path):
    from compress.errors import CompressError

    adapter, model = _build("yolov8n.yaml")
    with pytest.raises(CompressError, match="end-to-end head"):
        export_onnx(model, adapter, tmp_path / "m.onnx", end2end=True)
    assert not (tmp_path / "m.onnx").exists() and adapter.end2end is False


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov8n-p2.yaml", "yolov8n-p6.yaml", "yolo26n-p2.yaml", "yolo26n-p6.yaml"])
def test_p2_p6_variants_prune_and_export(cfg, data, tmp_path):
    adapter, model = _build(cfg)
    x = _x(2)
    n0 = _params(model)
    pruned, _ = _prune(adapter, copy.deepcopy(model), data, tmp_path)
    with torch.no_grad():
        got = adapter.forward(pruned, x)
    assert _params(pruned) < 0.5 * n0
    assert got.shape[-1] == sum((IMGSZ // int(s)) ** 2 for s in pruned.stride.tolist())
    out = ort_run(export_onnx(pruned, adapter, tmp_path / "m.onnx", opset=17), x.numpy())
    np.testing.assert_allclose(out, got.numpy(), rtol=1e-3, atol=1e-3)


def test_yolo12_attention_is_protected_with_reasons():
    adapter, model = _build("yolo12n.yaml")
    model = adapter.rewrite_for_pruning(model)
    protected = adapter.protected_layers(model)
    reasons = adapter.protection_reasons(model)
    assert set(protected) == set(reasons)
    n_blocks = sum(type(m).__name__ == "TraceOpaqueAAttn" for m in model.modules())
    n_a2 = sum(type(m).__name__ == "A2C2f" and type(m.m[0]).__name__ != "C3k" for m in model.modules())
    assert n_blocks > 0 and n_a2 > 0
    assert sum("area attention, kept whole" in reasons[m] for m in protected) == 3 * n_blocks
    assert sum("A2C2f" in reasons[m] for m in protected) == n_a2


def _e2e_recipe(tmp_path, cfg, end2end):
    import yaml

    path = tmp_path / f"{cfg}-{end2end}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "e2e", "model": {"builtin": cfg, "class_names": NAMES, "imgsz": IMGSZ},
        "data": {"validation": {"builtin": "digits-det", "split": "val", "samples": 6}},
        "export": {"end2end": end2end}, "benchmark": {"warmup": 1, "runs": 2, "threads": 1},
        # untrained: every score is about 0.0013, so the pseudo ground truth threshold sits below it
        "fidelity": {"conf": 0.001, "eval_conf": 0.0005, "overlays": 0}}))
    return path


def test_run_and_check_with_end2end_export(tmp_path, capsys):
    """recipe export.end2end: true -> model.onnx is (1, max_det, 6); every stage and `compress check` read that
    branch, so the exact export agrees 1.0 with the original."""
    import json

    from compress.cli import main

    out = tmp_path / "run"
    rc = main(["run", str(_e2e_recipe(tmp_path, "yolo26n.yaml", True)), "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    dims = [d.dim_value for d in onnx.load(str(out / "model.onnx")).graph.output[0].type.tensor_type.shape.dim]
    assert dims[0] == 1 and dims[2] == 6
    report = json.loads((out / "report.json").read_text())
    assert report["fidelity"]["agreement_map50"] == pytest.approx(1.0)
    rc = main(["check", str(out / "model.onnx"), "--reference", "yolo26n.yaml", "--names", ",".join(NAMES),
               "--imgsz", str(IMGSZ), "--data", "calibration/digits-det/val", "--samples", "6", "--conf", "0.001",
               "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err


def test_run_refuses_end2end_for_a_model_without_one_to_one_head(tmp_path, capsys):
    from compress.cli import main

    out = tmp_path / "run"
    rc = main(["run", str(_e2e_recipe(tmp_path, "yolov8n.yaml", True)), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "export.end2end" in err[0] and "end-to-end head" in err[0]
    assert not out.exists() and not list(tmp_path.glob("run.tmp-*"))
