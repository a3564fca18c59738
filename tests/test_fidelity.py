"""fidelity.check on tiny torch models exported to ONNX: faithful exports pass, broken ones fail."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import DataError
from compress.fidelity import check, predict_onnx, predict_torch
from compress.models.base import Adapter
from compress.models.detect import decode_yolo, preprocess_letterbox
from compress.recipe import FidelityConfig
from compress.types import Dataset, Sample

NC = 3


class TinyDet(nn.Module):
    """64x64 input, one stride-8 conv: (B, 4 + NC, 64) in the Ultralytics layout."""

    def __init__(self, score_scale=1.0, class_bias=(-2.0, -2.5, -3.0), swap_classes=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.head = nn.Conv2d(3, 4 + NC, 8, 8)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * 0.3)
            self.head.bias.zero_()
            self.head.bias[4:] = torch.tensor(class_bias)
        ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys]).reshape(1, 2, -1).float() * 8 + 4)
        self.score_scale = score_scale
        self.swap = swap_classes

    def forward(self, x):
        y = self.head(x - 0.5).flatten(2)
        xy = self.grid + 4 * torch.tanh(y[:, :2])
        wh = 10 + 8 * torch.sigmoid(y[:, 2:4])
        logits = y[:, 4:]
        if self.swap:
            logits = logits[:, [1, 0, 2]]
        return torch.cat([xy, wh, torch.sigmoid(logits) * self.score_scale], 1)


class TinyDetAdapter(Adapter):
    name = "tinydet"
    task = "detect"

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(["a", "b", "c"], 64), TinyDet()

    def preprocess(self, images):
        return preprocess_letterbox(images, self.imgsz)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return decode_yolo(output, metas, conf, iou, max_det)


class TinyCls(nn.Module):
    """Logits from the channel means: the top class follows the image's dominant colour (not degenerate)."""

    def __init__(self, sign=1.0, constant=False, softmax=False):
        super().__init__()
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
        with torch.no_grad():
            self.body[2].weight.copy_(torch.tensor([[20.0, 0, 0], [0, 20, 0], [0, 0, 20], [6, 6, 6]]))
            self.body[2].bias.zero_()
        self.sign, self.constant, self.softmax = sign, constant, softmax

    def forward(self, x):
        out = self.body(x) * self.sign
        if self.constant:  # the same logits whatever the input (a collapsed model)
            out = out * 0 + torch.tensor([0.5, 0.1, 0.2, 0.3])
        return out.softmax(1) if self.softmax else out


class TinyClsAdapter(Adapter):
    name = "tinycls"
    task = "classify"

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(list("wxyz"), 16), TinyCls()

    def preprocess(self, images):
        x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return torch.from_numpy(x), [None] * len(images)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return [np.asarray(row) for row in np.asarray(output)]


def export(model, path, size, batch=None):
    """Legacy exporter (fast); a dynamic batch unless ``batch`` fixes it."""
    dyn = None if batch else {"images": {0: "b"}, "out": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(batch or 1, 3, size, size), str(path), opset_version=17,
                          input_names=["images"], output_names=["out"], dynamic_axes=dyn, dynamo=False)
    return path


def images(n, h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def det_data():
    return Dataset([Sample(f"img{i}.png", im) for i, im in enumerate(images(12))], ["a", "b", "c"])


def test_detector_export_passes(tmp_path, det_data):
    adapter, ref = TinyDetAdapter(["a", "b", "c"], 64), TinyDet().eval()
    onnx_path = export(TinyDet(), tmp_path / "m.onnx", 64)
    res = check(adapter, ref, onnx_path, det_data, FidelityConfig(min_matched_recall=0.99), threads=1)
    d = res.to_dict()
    assert res.passed and res.measurable and not res.failures and not res.collapsed
    assert d["agreement_map50"] >= 0.99 and d["agreement_map50_95"] >= 0.99
    assert d["matched_recall"] >= 0.99 and d["matched_precision"] >= 0.99
    assert d["score_drift"] < 1e-4 and d["lost_classes"] == []
    assert d["images"] == 12 and d["counts"]["reference_detections"] > 12 and "top1_agreement" not in d
    assert d["thresholds"] == {"min_agreement_map50": 0.9, "min_matched_recall": 0.99}
    assert res.original_metrics["map50"] is None  # no labels
    assert len(res.reference_detections) == 12 and all((r.scores >= 0.25).all() for r in res.reference_detections)


def test_detector_labels_give_true_map(tmp_path, det_data):
    adapter, ref = TinyDetAdapter(["a", "b", "c"], 64), TinyDet().eval()
    truth = predict_torch(adapter, ref, [s.image for s in det_data], conf=0.25, iou=0.7).results
    labelled = Dataset([Sample(s.path, s.image, t.boxes, t.classes) for s, t in zip(det_data, truth)],
                       det_data.class_names)
    onnx_path = export(TinyDet(), tmp_path / "m.onnx", 64)
    res = check(adapter, ref, onnx_path, labelled, FidelityConfig(samples=8), threads=1)
    assert res.images == 8
    assert res.original_metrics["map50"] == pytest.approx(1.0)
    assert res.compressed_metrics["map50"] == pytest.approx(1.0, abs=0.01)
    assert abs(res.to_dict()["labelled_delta"]["map50"]) <= 0.01


def test_fixed_batch_exports_match_torch(tmp_path, det_data):
    adapter, ref = TinyDetAdapter(["a", "b", "c"], 64), TinyDet().eval()
    ims = [s.image for s in det_data][:6]
    want = predict_torch(adapter, ref, ims, 0.25, 0.7).results
    for batch in (1, 4):  # 4 does not divide 6: the last batch is padded
        got = predict_onnx(adapter, export(TinyDet(), tmp_path / f"b{batch}.onnx", 64, batch), ims, 0.25, 0.7,
                           batch=32, threads=1).results
        assert [len(g) for g in got] == [len(w) for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
            np.testing.assert_array_equal(g.classes, w.classes)


def test_scaled_scores_collapse_and_fail(tmp_path, det_data):
    adapter, ref = TinyDetAdapter(["a", "b", "c"], 64), TinyDet().eval()
    broken = export(TinyDet(score_scale=0.1), tmp_path / "broken.onnx", 64)
    res = check(adapter, ref, broken, det_data, FidelityConfig(min_matched_recall=0.5), threads=1)
    assert not res.passed and res.collapsed
    assert any(f.startswith("collapsed") for f in res.failures)
    assert any(f.startswith("matched_recall 0.00 < 0.50") for f in res.failures)
    seen = sorted({int(c) for r in res.reference_detections for c in r.classes})
    assert res.to_dict()["lost_classes"] == [adapter.class_names[c] for c in seen]
    assert any("collapsed" in n for n in res.notes)


def test_swapped_classes_fail_agreement(tmp_path, det_data):
    adapter, ref = TinyDetAdapter(["a", "b", "c"], 64), TinyDet().eval()
    broken = export(TinyDet(swap_classes=True), tmp_path / "swap.onnx", 64)
    res = check(adapter, ref, broken, det_data, FidelityConfig(), threads=1)
    assert not res.passed and not res.collapsed
    value = res.to_dict()["agreement_map50"]
    assert value < 0.9
    assert f"agreement_map50 {value:.2f} < 0.90" in res.failures


def test_not_measurable(tmp_path, det_data):
    adapter = TinyDetAdapter(["a", "b", "c"], 64)
    silent = TinyDet(class_bias=(-30.0, -30.0, -30.0)).eval()
    res = check(adapter, silent, export(silent, tmp_path / "s.onnx", 64), det_data, FidelityConfig(), threads=1)
    assert not res.passed and not res.measurable
    assert res.reason == "the original model makes no detections with score >= 0.25 on the 12 validation images"
    assert res.to_dict()["agreement_map50"] is None
    with pytest.raises(DataError):
        check(adapter, silent, tmp_path / "s.onnx", Dataset([], ["a"]), FidelityConfig())


def test_classifier_top1_agreement(tmp_path):
    adapter, ref = TinyClsAdapter(list("wxyz"), 16), TinyCls().eval()
    ims = images(10, 16, 16, seed=3)
    logits = predict_torch(adapter, ref, ims, 0.25, 0.7).logits
    assert logits.shape == (10, 4)
    data = Dataset([Sample(f"{i}.png", im, label=int(k)) for i, (im, k) in enumerate(zip(ims, logits.argmax(1)))],
                   list("wxyz"))
    good = check(adapter, ref, export(TinyCls(), tmp_path / "c.onnx", 16), data, FidelityConfig(), threads=1)
    assert good.passed and good.to_dict()["top1_agreement"] == 1.0 and "agreement_map50" not in good.to_dict()
    assert good.original_metrics["accuracy"] == 1.0 and good.compressed_metrics["accuracy"] == 1.0
    bad = check(adapter, ref, export(TinyCls(sign=-1.0), tmp_path / "n.onnx", 16), data, FidelityConfig(),
                threads=1)
    assert not bad.passed and bad.failures[0].startswith("top1_agreement ")
    assert bad.compressed_metrics["accuracy"] < 1.0


def _cls_data(ref, n=12, seed=3):
    adapter = TinyClsAdapter(list("wxyz"), 16)
    ims = images(n, 16, 16, seed=seed)
    return adapter, Dataset([Sample(f"{i}.png", im) for i, im in enumerate(ims)], list("wxyz"))


def test_classifier_degenerate_reference_is_not_measurable(tmp_path):
    """A constant reference: the top class wins everywhere; a constant compressed model would 'agree'."""
    ref = TinyCls(constant=True).eval()
    adapter, data = _cls_data(ref)
    res = check(adapter, ref, export(TinyCls(constant=True), tmp_path / "k.onnx", 16), data, FidelityConfig(),
                threads=1)
    d = res.to_dict()
    assert d["top1_agreement"] == 1.0  # what the old check called a pass
    assert not res.passed and not res.measurable and "predicts class 'w' on 100%" in res.reason
    assert res.failures == [f"not measurable: {res.reason}"]


def test_classifier_tied_reference_is_not_measurable(tmp_path):
    """All classes tied (zero logits): argmax is class 0 on every image; the reason says 'tied'."""
    ref = TinyCls(sign=0.0).eval()
    adapter, data = _cls_data(ref)
    res = check(adapter, ref, export(TinyCls(sign=0.0), tmp_path / "z.onnx", 16), data, FidelityConfig(),
                threads=1)
    assert not res.passed and not res.measurable and "tied" in res.reason


def test_classifier_top5_kl_thresholds_and_softmax_outputs(tmp_path):
    from compress.metrics.classification import kl_divergence, topk_agreement

    ref = TinyCls().eval()
    adapter, data = _cls_data(ref)
    same = check(adapter, ref, export(TinyCls(), tmp_path / "s.onnx", 16), data,
                 FidelityConfig(max_kl=1e-4), threads=1)
    assert same.passed and same.metrics["kl_divergence"] < 1e-6 and same.metrics["top5_agreement"] is None  # 4 classes
    flipped = check(adapter, ref, export(TinyCls(sign=-1.0), tmp_path / "f.onnx", 16), data,
                    FidelityConfig(min_top1_agreement=None, max_kl=0.05), threads=1)
    assert not flipped.passed and flipped.failures[0].startswith("kl_divergence ")
    # a model ending in softmax gives probabilities: read as such, not softened a second time
    probs_ref = TinyCls(softmax=True).eval()
    res = check(adapter, probs_ref, export(TinyCls(sign=-1.0, softmax=True), tmp_path / "p.onnx", 16), data,
                FidelityConfig(min_top1_agreement=None), threads=1)
    logits_res = check(adapter, ref, export(TinyCls(sign=-1.0), tmp_path / "l.onnx", 16), data,
                       FidelityConfig(min_top1_agreement=None), threads=1)
    assert res.metrics["kl_divergence"] == pytest.approx(logits_res.metrics["kl_divergence"], rel=1e-3)
    # top-5 of 10 classes: the reference's class inside the compressed model's top five
    r = np.tile(np.arange(10.0), (4, 1))
    c = r.copy()
    c[0, 9] = -1.0  # ref's top (9) drops to last: outside the top 5
    c[1, 9] = 5.5  # 9 drops to 4th place (8, 7, 6, 5.5): inside
    assert topk_agreement(r, c, 5) == 0.75 and kl_divergence(r, r) == pytest.approx(0.0, abs=1e-12)
