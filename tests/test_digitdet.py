"""DigitDet: shapes, decode, loss, checkpoints, pruning rewrite, ONNX parity, committed weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from compress.errors import ModelLoadError
from compress.models.detect import letterbox
from compress.models.digitdet import (WEIGHTS, C2f, C2fSplitFree, DigitDetAdapter, DigitDetConfig, build_digitdet,
                                      letterbox_transform)
from compress.recipe import ModelSpec
from compress.types import Detections, Sample

TINY = DigitDetConfig(width=0.25, depth=0.5)


def _tiny(seed: int = 0, cfg: DigitDetConfig = TINY):
    torch.manual_seed(seed)
    model = build_digitdet(cfg)
    return DigitDetAdapter([str(i) for i in range(cfg.nc)], cfg.imgsz, 32, cfg), model


def _samples(n: int, seed: int = 0) -> list[Sample]:
    """Noisy images with 1-3 bright rectangles of random classes (labels are their boxes)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(0, 100, (128, 128, 3), np.uint8)
        boxes, classes = [], []
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.integers(0, 90, 2)
            w, h = rng.integers(12, 38, 2)
            image[y:y + h, x:x + w] = 255
            boxes.append([x, y, x + w, y + h])
            classes.append(int(rng.integers(10)))
        out.append(Sample(f"s{i}", image, np.array(boxes, np.float32), np.array(classes, np.int64)))
    return out


def test_train_and_eval_shapes():
    adapter, model = _tiny()
    x = torch.rand(2, 3, 128, 128)
    maps = model.train()(x)
    assert [tuple(m.shape) for m in maps] == [(2, 4 * 8 + 10, s, s) for s in (16, 8, 4)]
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (2, 4 + 10, 16 * 16 + 8 * 8 + 4 * 4)
    scores = out[:, 4:]
    assert float(scores.min().detach()) >= 0 and float(scores.max().detach()) <= 1
    assert float(out[:, 2:4].min()) >= 0  # widths and heights


def test_decoded_boxes_follow_the_dfl_expectation():
    """A box distribution peaked on bin k at every side gives a (2k x 2k)-stride box around the anchor."""
    adapter, model = _tiny()
    r = model.cfg.reg_max
    maps = [torch.zeros(1, 4 * r + 10, s, s) for s in (16, 8, 4)]
    for m in maps:
        m[:, :4 * r].view(1, 4, r, *m.shape[-2:])[:, :, 3] = 50.0  # all mass on bin 3
    out = model.decode(maps)
    assert torch.allclose(out[0, 2, :256], torch.full((256,), 6.0 * 8), atol=1e-3)  # w = (3 + 3) * stride 8
    assert torch.allclose(out[0, 0, :2], torch.tensor([4.0, 12.0]), atol=1e-3)  # cx of the first two anchors
    assert torch.allclose(out[0, 3, -16:], torch.full((16,), 6.0 * 32), atol=1e-3)


def test_decode_gives_detections_in_original_pixels():
    adapter, model = _tiny()
    images = [np.random.default_rng(1).integers(0, 255, (100, 150, 3), np.uint8),
              np.zeros((128, 128, 3), np.uint8)]
    x, metas = adapter.preprocess(images)
    assert x.shape == (2, 3, 128, 128)
    dets = adapter.decode(adapter.forward(model.eval(), x), metas, conf=0.0, iou=0.7, max_det=50)
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    assert 0 < len(dets[0]) <= 50
    assert dets[0].boxes[:, [0, 2]].max() <= 150 and dets[0].boxes[:, [1, 3]].max() <= 100


def test_letterbox_transform_matches_letterbox():
    image = np.zeros((90, 200, 3), np.uint8)
    image[30:60, 40:80] = 255  # a white box at x 40..80, y 30..60
    canvas, meta = letterbox(image, 128)
    scale, px, py = letterbox_transform(90, 200, 128)
    assert (scale, px, py) == (meta.scale, meta.pad_x, meta.pad_y)
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    mapped = np.array([40, 30, 80, 60]) * scale + np.array([px, py, px, py])
    assert np.allclose(mapped, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)


def test_loss_is_finite_and_decreases_on_a_fixed_batch():
    adapter, model = _tiny()
    samples = _samples(4)
    x, _ = adapter.preprocess([s.image for s in samples])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = adapter.loss(model, x, samples)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_without_labels_is_none_and_empty_images_are_fine():
    adapter, model = _tiny()
    x = torch.rand(2, 3, 128, 128)
    img = np.zeros((128, 128, 3), np.uint8)
    assert adapter.loss(model, x, [Sample("a", img), Sample("b", img)]) is None
    empty = Sample("c", img, boxes=np.zeros((0, 4), np.float32), classes=np.zeros(0, np.int64))
    one = Sample("d", img, boxes=np.array([[10, 10, 40, 60]], np.float32), classes=np.array([3]))
    loss = adapter.loss(model.train(), x, [empty, one])
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def test_distill_outputs_are_the_head_maps_in_either_mode():
    adapter, model = _tiny()
    x = torch.rand(1, 3, 128, 128)
    model.eval()
    maps = adapter.distill_outputs(model, x)
    assert [m.shape[1] for m in maps] == [42, 42, 42]
    assert torch.allclose(model.decode(maps), model(x))
    model.train()
    assert [m.shape for m in adapter.distill_outputs(model, x)] == [m.shape for m in maps]


def test_protected_layers_are_the_head_output_convs():
    adapter, model = _tiny()
    layers = adapter.protected_layers(model)
    assert len(layers) == 6
    assert sorted({m.out_channels for m in layers}) == [10, 32]


def test_checkpoint_round_trip_weights_only(tmp_path):
    adapter, model = _tiny(seed=3)
    model.eval()
    path = tmp_path / "dd.pt"
    torch.save(adapter.checkpoint(model), path)
    ckpt = torch.load(path, weights_only=True)
    spec = ModelSpec(checkpoint=str(path))
    adapter2, model2 = DigitDetAdapter.load(spec, ckpt, False)
    x = torch.rand(2, 3, 128, 128)
    assert torch.equal(model(x), model2(x))
    assert adapter2.class_names == adapter.class_names and adapter2.config == TINY


def test_split_free_rewrite_is_exact_and_round_trips(tmp_path):
    adapter, model = _tiny(seed=4)
    model.eval()
    x = torch.rand(2, 3, 128, 128)
    before = model(x)
    model = adapter.rewrite_for_pruning(model)
    assert not any(isinstance(m, C2f) for m in model.modules())
    assert sum(isinstance(m, C2fSplitFree) for m in model.modules()) == 8
    assert torch.allclose(model(x), before, atol=1e-5)
    path = tmp_path / "sf.pt"
    torch.save(adapter.checkpoint(model), path)
    _, model2 = DigitDetAdapter.load(None, torch.load(path, weights_only=True), False)
    assert model2.cfg.split_free and torch.allclose(model2(x), before, atol=1e-5)


def test_split_free_model_prunes_with_torch_pruning():
    import torch_pruning as tp

    adapter, model = _tiny(seed=5, cfg=DigitDetConfig(width=0.5, depth=0.5))
    model = adapter.rewrite_for_pruning(model.eval())
    x = adapter.example_input(1)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=adapter.protected_layers(model))
    pruner.step()
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before
    assert model(x).shape == (1, 14, 336)
    assert [m.out_channels for m in adapter.protected_layers(model)] == [32, 10] * 3


def test_bad_checkpoints_raise_model_load_error():
    adapter, model = _tiny()
    good = adapter.checkpoint(model)
    with pytest.raises(ModelLoadError, match="not a digitdet checkpoint"):
        DigitDetAdapter.load(None, {"adapter": "lenet5", "state_dict": {}}, False)
    with pytest.raises(ModelLoadError, match="unknown field"):
        DigitDetAdapter.load(None, {**good, "config": {**good["config"], "bogus": 1}}, False)
    with pytest.raises(ModelLoadError, match="does not fit"):
        DigitDetAdapter.load(None, {**good, "config": DigitDetConfig(width=0.5).to_dict()}, False)
    with pytest.raises(ModelLoadError, match="class names"):
        DigitDetAdapter.load(ModelSpec(checkpoint="x.pt", class_names=["a", "b"]), good, False)


def test_onnx_export_matches_torch():
    import onnxruntime as ort

    adapter, model = _tiny(seed=6, cfg=DigitDetConfig(width=0.5, depth=0.5))
    model.eval()
    x = torch.rand(1, 3, 128, 128)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, opset_version=17, input_names=["images"], output_names=["output0"],
                      dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    ops = {n.op_type for n in __import__("onnx").load_from_string(buf.getvalue()).graph.node}
    assert {"Softmax", "Sigmoid", "Concat", "Resize", "MaxPool"} <= ops  # decode tail + SPPF + FPN inside
    assert got.shape == (1, 14, 336)
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_train_digitdet_writes_a_loadable_half_precision_checkpoint(tmp_path):
    from compress.zoo.train import train_digitdet

    lines = []
    out = tmp_path / "dd.pt"
    metrics = train_digitdet(out, epochs=1, epoch_images=8, batch=4, config=TINY, workers=0, val_samples=8,
                             log=lines.append)
    assert metrics["steps"] == 2 and metrics["images"] == 8 and metrics["seed"] == 0
    assert 0.0 <= metrics["val_map50"] <= 1.0 and metrics["val_images"] == 8
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["metrics"] == metrics and "val mAP50" in lines[-1]
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    _, model = DigitDetAdapter.load(None, ckpt, False)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_committed_weights_reach_their_recorded_map():
    from compress.data import builtin_dataset
    from compress.models import load_model
    from compress.zoo.train import evaluate

    ckpt = torch.load(WEIGHTS, weights_only=True)
    metrics = ckpt["metrics"]
    assert metrics["val_map50"] >= 0.9 and metrics["steps"] > 0
    adapter, model = load_model(ModelSpec(builtin="digitdet"))
    assert isinstance(adapter, DigitDetAdapter) and adapter.class_names == [str(i) for i in range(10)]
    scores = evaluate(adapter, model, builtin_dataset("digits-det", "val", samples=100))
    assert scores["map50"] >= 0.85, scores
    assert scores["map50_95"] >= 0.5, scores
