"""UltralyticsAdapter: build from yaml, eval layout, decode, split-free rewrite, loss, checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.yolo, pytest.mark.usefixtures("one_torch_thread")]

from compress.errors import ModelLoadError  # noqa: E402
from compress.models import adapter_class, load_model  # noqa: E402
from compress.models.checkpoint import read_checkpoint  # noqa: E402
from compress.models.detect import letterbox  # noqa: E402
from compress.recipe import ModelSpec  # noqa: E402
from compress.types import Detections, Sample  # noqa: E402

IMGSZ = 128
NAMES = [str(i) for i in range(10)]



@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    out = {cfg: load_model(ModelSpec(builtin=cfg, class_names=NAMES, imgsz=IMGSZ))
           for cfg in ("yolov8n.yaml", "yolo11n.yaml")}
    return out


@pytest.fixture
def v8(built):
    adapter, model = built["yolov8n.yaml"]
    return adapter, copy.deepcopy(model)


def _samples():
    rng = np.random.default_rng(0)
    return [Sample("a", rng.integers(0, 255, (96, 120, 3), dtype=np.uint8),
                   np.array([[10, 10, 40, 50], [60, 20, 100, 90]], np.float32), np.array([1, 3])),
            Sample("b", rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
                   np.array([[5, 5, 30, 30]], np.float32), np.array([7]))]


def test_builds_from_yaml_with_eval_layout(v8):
    adapter, model = v8
    assert adapter.name == "ultralytics" and adapter.task == "detect"
    assert adapter.imgsz == IMGSZ and adapter.stride == 32 and adapter.class_names == NAMES
    assert not model.training
    with torch.no_grad():
        out = model(adapter.example_input(2))
    # plain tensor (export flag set), 4 + nc rows, one column per anchor of the 3 strides
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 4 + 10, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)
    scores = out[:, 4:]
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1


def test_decode_maps_back_to_original_pixels(v8):
    adapter, model = v8
    images = [np.full((64, 128, 3), 114, np.uint8), np.zeros((100, 80, 3), np.uint8)]
    x, metas = adapter.preprocess(images)
    assert x.shape == (2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        dets = adapter.decode(adapter.forward(model, x), metas, conf=0.0, max_det=20)
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    assert all(0 < len(d) <= 20 for d in dets)
    assert dets[0].boxes[:, [1, 3]].max() <= 64 and dets[1].boxes[:, [0, 2]].max() <= 80


@pytest.mark.parametrize("cfg, blocks", [("yolov8n.yaml", {"C2f"}), ("yolo11n.yaml", {"C3k2", "C2PSA"})])
def test_rewrite_is_split_free_and_equivalent(built, cfg, blocks):
    adapter, model = built[cfg]
    model = copy.deepcopy(model)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = adapter.forward(model, x)
    rewritten = adapter.rewrite_for_pruning(model)
    sources = {m.source for m in rewritten.modules() if hasattr(m, "cv1a")}
    assert sources == blocks
    assert not any(type(m).__name__ in blocks for m in rewritten.modules())
    with torch.no_grad():
        after = adapter.forward(rewritten, x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # also in train mode (the raw head maps the loss and distillation use)
    rewritten.train()
    model_ref = copy.deepcopy(built[cfg][1]).train()
    with torch.no_grad():
        for a, b in zip(adapter.distill_outputs(rewritten, x), adapter.distill_outputs(model_ref, x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_loss_is_finite_and_trains(v8):
    adapter, model = v8
    samples = _samples()
    x, _ = adapter.preprocess([s.image for s in samples])
    model.train()
    loss = adapter.loss(model, x, samples)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    head = model.model[-1]
    assert head.cv3[0][-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.dfl.parameters())  # the DFL projection stays frozen
    assert adapter.loss(model, x, [Sample("u", s.image) for s in samples]) is None
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(adapter.loss(model, x, samples))  # also from eval mode
        assert isinstance(model(x), torch.Tensor)  # export flag restored


def test_targets_follow_the_letterbox():
    from compress.models.ultralytics_loss import letterbox_meta, targets

    for h, w in [(96, 120), (128, 128), (50, 200), (300, 40)]:
        _, meta = letterbox(np.zeros((h, w, 3), np.uint8), IMGSZ)
        assert letterbox_meta(h, w, IMGSZ) == (meta.scale, meta.pad_x, meta.pad_y)
    s = Sample("a", np.zeros((64, 128, 3), np.uint8), np.array([[0, 0, 128, 64]], np.float32), np.array([2]))
    batch = targets(torch.zeros(1, 3, IMGSZ, IMGSZ), [s])
    torch.testing.assert_close(batch["bboxes"], torch.tensor([[0.5, 0.5, 1.0, 0.5]]))
    assert batch["cls"].tolist() == [[2.0]] and batch["batch_idx"].tolist() == [0.0]


def test_distill_outputs_are_per_level_maps(v8):
    adapter, model = v8
    x = adapter.example_input(1)
    for train in (False, True):
        model.train(train)
        maps = adapter.distill_outputs(model, x)
        assert [tuple(m.shape) for m in maps] == [(1, 64 + 10, IMGSZ // s, IMGSZ // s) for s in (8, 16, 32)]


def test_protected_layers(built):
    from torch import nn

    adapter, model = built["yolov8n.yaml"]
    names = {m: n for n, m in model.named_modules()}
    got = sorted(names[m] for m in adapter.protected_layers(model))
    assert got == sorted([f"model.22.cv{b}.{i}.2" for b in (2, 3) for i in range(3)] + ["model.22.dfl.conv"])
    adapter11, model11 = built["yolo11n.yaml"]
    prot = adapter11.protected_layers(model11)
    assert all(isinstance(m, nn.Conv2d) for m in prot) and len(prot) == 7 + 3  # + C2PSA attention q/k/v, proj, pe


def test_pruned_checkpoint_round_trip(v8, tmp_path):
    """Prune with torch-pruning, save the weights_only dict, rebuild from the yaml: same outputs."""
    import torch_pruning as tp

    adapter, model = v8
    adapter.rewrite_for_pruning(model)
    n0 = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(model, adapter.example_input(),
                                       importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.4,
                                       ignored_layers=adapter.protected_layers(model), round_to=8)
    pruner.step()
    assert sum(p.numel() for p in model.parameters()) < 0.7 * n0
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        ref = adapter.forward(model, x)
    assert ref.shape[1] == 14
    path = tmp_path / "pruned.pt"
    torch.save(adapter.checkpoint(model), path)
    ckpt = read_checkpoint(path)  # weights_only
    assert ckpt["adapter"] == "ultralytics" and ckpt["split_free"] is True
    adapter2, model2 = load_model(ModelSpec(checkpoint=str(path)))
    assert adapter2.class_names == NAMES and adapter2.imgsz == IMGSZ
    with torch.no_grad():
        torch.testing.assert_close(adapter2.forward(model2, x), ref)


def test_ultralytics_pickle_needs_trust(v8, tmp_path):
    adapter, model = v8
    path = tmp_path / "best.pt"
    m = copy.deepcopy(model).half()
    m.names = {i: f"digit{i}" for i in range(10)}
    torch.save({"model": m, "ema": None, "train_args": {"imgsz": 96}, "epoch": -1}, path)
    with pytest.raises(ModelLoadError, match="refusing to unpickle.*--trust-checkpoint"):
        load_model(ModelSpec(checkpoint=str(path)))
    adapter2, model2 = load_model(ModelSpec(checkpoint=str(path)), trust_checkpoint=True)
    assert adapter2.name == "ultralytics" and adapter2.imgsz == 96 and adapter2.class_names[0] == "digit0"
    x = adapter.example_input()
    with torch.no_grad():
        torch.testing.assert_close(adapter2.forward(model2, x), adapter.forward(model.half().float(), x))


@pytest.mark.parametrize("spec, message", [
    (dict(builtin="yolov8n.pt"), "neither an Ultralytics model yaml"),
    (dict(builtin="yolov99z.yaml"), "unknown Ultralytics model yaml 'yolov99z.yaml'"),
    (dict(builtin="yolov8n-seg.yaml"), "only Ultralytics detection models"),
    (dict(builtin="yolov8n.yaml", imgsz=100), "not a multiple of the model stride 32"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(ModelSpec(**spec))


def test_class_names_must_match(v8, tmp_path):
    adapter, model = v8
    path = tmp_path / "own.pt"
    torch.save(adapter.checkpoint(model), path)
    with pytest.raises(ModelLoadError, match="has 3 names but the model predicts 10 classes"):
        adapter_class("ultralytics").load(ModelSpec(checkpoint=str(path), class_names=["a", "b", "c"]),
                                          read_checkpoint(path), False)
