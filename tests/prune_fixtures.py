"""Tiny models, adapters and data for the pruning / fine-tuning tests (fast on 2 CPU cores)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.context import Context
from compress.models.base import Adapter
from compress.models.detect import decode_yolo, preprocess_letterbox
from compress.types import Dataset, Sample

IMGSZ = 32
NC = 2


class CBR(nn.Module):
    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TinyDet(nn.Module):
    """Stem -> residual add -> chunk/split -> concat -> head; eval output (B, 4 + nc, N)."""

    def __init__(self, c: int = 16, nc: int = NC):
        super().__init__()
        self.stem = CBR(3, c, 3, 2)  # /2
        self.res = CBR(c, c, 3)
        self.down = CBR(c, 2 * c, 3, 2)  # /4
        self.branch = CBR(c, c, 3)
        self.fuse = CBR(2 * c, 2 * c, 1)
        self.head = nn.Conv2d(2 * c, 4 + nc, 1)
        self.stride = 4
        self.split_free = False

    def rewrite_split_free(self):
        """Replace ``down`` + chunk by two half-width convs (exactly the same function)."""
        c = self.down.conv.out_channels // 2
        halves = []
        for h in range(2):
            cbr = CBR(self.down.conv.in_channels, c, 3, 2)
            sl = slice(h * c, (h + 1) * c)
            cbr.conv.weight.data.copy_(self.down.conv.weight.data[sl])
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(cbr.bn, k).data.copy_(getattr(self.down.bn, k).data[sl])
            halves.append(cbr)
        self.down_a, self.down_b = halves
        del self.down
        self.split_free = True
        return self

    def raw(self, x):
        x = self.stem(x)
        x = x + self.res(x)  # residual add
        if self.split_free:
            a, b = self.down_a(x), self.down_b(x)
        else:
            a, b = self.down(x).chunk(2, 1)  # chunk / split (torch-pruning 1.6 mis-tracks chunk -> cat)
        y = torch.cat([a, self.branch(b)], 1)  # concat
        return self.head(self.fuse(y))

    def forward(self, x):
        m = self.raw(x)
        if self.training:
            return m
        b, _, h, w = m.shape
        gy, gx = torch.meshgrid(torch.arange(h, dtype=m.dtype), torch.arange(w, dtype=m.dtype), indexing="ij")
        flat = m.flatten(2)
        cx = (gx.flatten() + 0.5 + flat[:, 0].tanh()) * self.stride
        cy = (gy.flatten() + 0.5 + flat[:, 1].tanh()) * self.stride
        wh = flat[:, 2:4].sigmoid() * IMGSZ
        return torch.cat([cx.unsqueeze(1), cy.unsqueeze(1), wh, flat[:, 4:].sigmoid()], 1)


class TinyDetAdapter(Adapter):
    name = "tinydet"
    task = "detect"

    def __init__(self):
        super().__init__([str(i) for i in range(NC)], IMGSZ, stride=4)

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        model = TinyDet()
        if ckpt is not None and ckpt.get("split_free"):
            model.rewrite_split_free()
        if ckpt is not None and "state_dict" in ckpt:
            model.load_state_dict(ckpt["state_dict"])
        return cls(), model

    def checkpoint(self, model):
        return {**super().checkpoint(model), "split_free": model.split_free}

    def preprocess(self, images):
        return preprocess_letterbox(images, self.imgsz)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return decode_yolo(output, metas, conf, iou, max_det)

    def protected_layers(self, model):
        return [model.head]

    def rewrite_for_pruning(self, model):
        return model if model.split_free else model.rewrite_split_free().eval()

    def distill_outputs(self, model, x):
        return [model.raw(x)]

    def loss(self, model, images, samples):
        # a toy task loss: class-score map should be high inside boxes (enough to test the loop)
        m = model.raw(images)
        target = torch.zeros_like(m[:, 4:])
        for i, s in enumerate(samples):
            for (x0, y0, x1, y1), c in zip(s.boxes, s.classes):
                sl = (slice(int(y0) // 4, max(int(y0) // 4 + 1, int(y1) // 4)),
                      slice(int(x0) // 4, max(int(x0) // 4 + 1, int(x1) // 4)))
                target[i, int(c)][sl] = 1.0
        return nn.functional.binary_cross_entropy_with_logits(m[:, 4:], target)


class TinyCls(nn.Module):
    def __init__(self, c: int = 16, nc: int = 4):
        super().__init__()
        self.features = nn.Sequential(CBR(3, c, 3, 2), CBR(c, 2 * c, 3, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc1 = nn.Linear(2 * c, 32)
        self.fc2 = nn.Linear(32, nc)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.features(x))))


class TinyClsAdapter(Adapter):
    name = "tinycls"
    task = "classify"

    def __init__(self):
        super().__init__(["a", "b", "c", "d"], IMGSZ)

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint):
        return cls(), TinyCls()

    def preprocess(self, images):
        x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        return x, [None] * len(images)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return list(torch.as_tensor(output))

    def protected_layers(self, model):
        return [model.fc2]


def det_dataset(n: int = 16, seed: int = 0, labelled: bool = True) -> Dataset:
    """Noise images with one bright square each (the box)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        im = rng.integers(0, 60, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
        s = int(rng.integers(8, 16))
        x0, y0 = (int(v) for v in rng.integers(0, IMGSZ - s, 2))
        im[y0:y0 + s, x0:x0 + s] = rng.integers(180, 255, 3, dtype=np.uint8)
        boxes = np.array([[x0, y0, x0 + s, y0 + s]], np.float32) if labelled else None
        classes = np.array([i % NC], np.int64) if labelled else None
        samples.append(Sample(f"img{i}.png", im, boxes, classes))
    return Dataset(samples, [str(i) for i in range(NC)])


def cls_dataset(n: int = 16, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    samples = [Sample(f"c{i}.png", rng.integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8), label=i % 4)
               for i in range(n)]
    return Dataset(samples, ["a", "b", "c", "d"])


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give a model reproducible, non-trivial BN statistics and weights."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def ort_run(path, x: np.ndarray) -> np.ndarray:
    """The first output of an ONNX file run by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def make_ctx(adapter, model, data=None, seed: int = 0, work_dir: Path | None = None) -> Context:
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    work = work_dir or Path(tempfile.mkdtemp(prefix="prune-test-"))
    return Context(adapter=adapter, reference=ref, calibration=data, validation=data, work_dir=work, seed=seed)


def tiny_det(seed: int = 0):
    torch.manual_seed(seed)
    return seeded(TinyDet(), seed)


def tiny_cls(seed: int = 0):
    torch.manual_seed(seed)
    return seeded(TinyCls(), seed)
