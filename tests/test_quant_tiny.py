"""Tiny models, adapters and images for the int8 tests (imported by the other test_quant_* files).

``TinyYolo`` has the YOLOv8 head layout (per-level box/class 1x1 convs, DFL softmax +
fixed-weight conv, anchor arithmetic, sigmoid, one Concat of boxes with scores) and
fixed, hand-set weights that find bright (class 0) and red (class 1) squares on a grey
background with scores far from the threshold, so int8 is benign for it. With
``box_scale`` large its boxes are in the hundreds, which makes a shared int8 scale over
the boxes+scores Concat round every score to 0.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.context import Context
from compress.models.base import Adapter
from compress.models.detect import decode_yolo, preprocess_letterbox
from compress.types import Dataset, Sample

IMGSZ, NC, REG = 32, 2, 4
STRIDES = (4, 8)


def _conv_bn(c1, c2, k):
    return nn.Sequential(nn.Conv2d(c1, c2, k, k, 0, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class TinyYolo(nn.Module):
    def __init__(self, box_scale: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.box_scale = box_scale
        # patchify stem (4x4 -> stride 4), 1x1 mix, 2x2 merge (stride 8): features align with the grid
        self.stem, self.b1, self.b2 = _conv_bn(3, 8, 4), _conv_bn(8, 16, 1), _conv_bn(16, 16, 2)
        self.box = nn.ModuleList(nn.Conv2d(16, 4 * REG, 1) for _ in STRIDES)
        self.cls = nn.ModuleList(nn.Conv2d(16, NC, 1) for _ in STRIDES)
        self.dfl = nn.Conv2d(REG, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(REG, dtype=torch.float32).view(1, REG, 1, 1)
        with torch.no_grad():
            for seq in (self.stem, self.b1, self.b2):
                w = seq[0].weight
                w.copy_(torch.randn(w.shape, generator=g) * 0.05)
                w[:2] = 0.0
                taps = w.shape[2] * w.shape[3]
                if w.shape[1] == 3:  # channel 0: brightness, channel 1: redness (R - G)
                    w[0] = 1.0 / (3 * taps)
                    w[1, 0], w[1, 1] = 1.0 / taps, -1.0 / taps
                else:  # carry both features forward (average over the taps)
                    w[0, 0], w[1, 1] = 1.0 / taps, 1.0 / taps
            for box, cls in zip(self.box, self.cls):
                box.weight.copy_(torch.randn(box.weight.shape, generator=g) * 0.05)
                box.bias.copy_(torch.tensor([3.0, 3.0, 0.0, 0.0] * 4))  # each side ~half a stride
                cls.weight.zero_()
            # classes are read at stride 8 only (squares sit on that grid); stride 4 never fires
            self.cls[0].bias.fill_(-30.0)
            self.cls[1].weight[0, 0], self.cls[1].weight[1, 1] = 60.0, 60.0
            self.cls[1].bias.copy_(torch.tensor([-10.0, -8.0]))

    def forward(self, x):
        f1 = self.b1(self.stem(x))
        f2 = self.b2(f1)
        maps = [torch.cat([b(f), c(f)], 1) for f, b, c in zip((f1, f2), self.box, self.cls)]
        flat = torch.cat([m.flatten(2) for m in maps], 2)
        box, cls = flat[:, : 4 * REG], flat[:, 4 * REG:]
        b, _, n = box.shape
        dist = self.dfl(box.view(b, 4, REG, n).transpose(2, 1).softmax(1)).view(b, 4, n)
        anchors, strides = [], []
        for m, s in zip(maps, STRIDES):
            h, w = m.shape[-2:]
            ys, xs = torch.arange(h, dtype=m.dtype) + 0.5, torch.arange(w, dtype=m.dtype) + 0.5
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            anchors.append(torch.stack([gx.flatten(), gy.flatten()]))
            strides.append(torch.full((h * w,), float(s)))
        anchor, stride = torch.cat(anchors, 1).unsqueeze(0), torch.cat(strides)
        lt, rb = dist[:, :2], dist[:, 2:]
        xy = (anchor + (rb - lt) / 2) * stride
        wh = (lt + rb) * stride
        return torch.cat([xy * self.box_scale, wh * self.box_scale, cls.sigmoid()], 1)


class TinyAdapter(Adapter):
    name = "tinyyolo"
    task = "detect"

    def __init__(self, box_scale: float = 1.0):
        super().__init__([str(i) for i in range(NC)], IMGSZ, stride=8)
        self.box_scale = box_scale

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(), TinyYolo()

    def preprocess(self, images):
        return preprocess_letterbox(images, self.imgsz)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        out = torch.as_tensor(np.asarray(output)).clone()
        out[:, :4] /= self.box_scale  # back to input pixels
        return decode_yolo(out, metas, conf, iou, max_det)


class TinyNet(nn.Module):
    """A small classifier: two conv blocks, pooling, two Linear layers (most MACs in convs)."""

    def __init__(self, nc: int = NC, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, nc)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.features(x))))


class TinyClassifierAdapter(Adapter):
    name = "tinynet"
    task = "classify"

    def __init__(self):
        super().__init__([str(i) for i in range(NC)], IMGSZ, stride=1)

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(), TinyNet()

    def preprocess(self, images):
        x = np.stack([np.asarray(i, np.float32) / 255.0 for i in images]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(x)), [None] * len(images)

    def decode(self, output, metas, conf=0.0, iou=0.7, max_det=300):
        return [np.asarray(o, np.float32).reshape(-1) for o in np.asarray(output)]


def squares(n: int, seed: int = 0) -> Dataset:
    """Grey 32x32 images with one or two 8x8 squares: white (class 0) or red (class 1)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img = np.full((IMGSZ, IMGSZ, 3), 60, np.uint8)
        img += rng.integers(0, 12, img.shape, dtype=np.uint8)
        boxes, classes = [], []
        for k in range(1 + i % 2):  # squares on the stride-8 grid, one per half of the image
            x, y = 16 * k + 8 * int(rng.integers(0, 2)), 8 * int(rng.integers(0, 4))
            c = int(rng.integers(0, 2))
            img[y:y + 8, x:x + 8] = (255, 255, 255) if c == 0 else (255, 20, 20)
            boxes.append([x, y, x + 8, y + 8])
            classes.append(c)
        samples.append(Sample(f"sq{i}.png", img, np.array(boxes, np.float32), np.array(classes, np.int64),
                              label=classes[0]))
    return Dataset(samples, [str(i) for i in range(NC)], root="squares")


def make_ctx(model: nn.Module, adapter: Adapter, calib: Dataset | None, work_dir: Path | None = None) -> Context:
    import copy

    ref = copy.deepcopy(model).eval()
    return Context(adapter=adapter, reference=ref, calibration=calib, validation=calib,
                   work_dir=Path(work_dir or tempfile.mkdtemp(prefix="qtest")), model=model.eval())


def export(model: nn.Module, adapter: Adapter, path: Path) -> Path:
    from compress.export import export_onnx

    return export_onnx(model, adapter, path, opset=17, simplify=True)


def agreement(adapter, model, onnx_path, data: Dataset) -> dict:
    """fp32 torch detections vs the ONNX file's, as the fidelity check compares them."""
    from compress.fidelity import predict_onnx, predict_torch
    from compress.metrics.detection import agreement as agree

    images = [s.image for s in data]
    ref = predict_torch(adapter, model, images, conf=0.25, iou=0.7).results
    cmp = predict_onnx(adapter, str(onnx_path), images, conf=0.001, iou=0.7).results
    out = agree(ref, cmp, num_classes=NC, conf=0.25)
    out["reference_boxes"] = sum(len(d) for d in ref)
    return out


# -- sanity of the fixtures themselves ------------------------------------------------------
def test_tiny_yolo_finds_the_squares():
    data = squares(6)
    ad, model = TinyAdapter(), TinyYolo().eval()
    x, metas = ad.preprocess([s.image for s in data])
    with torch.no_grad():
        out = model(x)
    assert out.shape == (6, 4 + NC, 8 * 8 + 4 * 4)
    dets = ad.decode(out, metas, conf=0.5)
    for d, s in zip(dets, data):
        assert len(d) >= len(s.boxes)
        assert set(d.classes.tolist()) >= set(s.classes.tolist())
