"""Tiny factories for the generic-adapter tests (``--arch tests/assets/generic_arch.py:NAME``)."""

import torch
from torch import nn


class TinyClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(inplace=True),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def tiny_classifier(num_classes: int = 10) -> nn.Module:
    return TinyClassifier(num_classes)


class TinyDetector(nn.Module):
    """Outputs the Ultralytics layout (B, 4 + nc, N): one box per 8x8 cell, sigmoid scores."""

    def __init__(self, nc: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU(),
                                  nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU())
        self.box = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(16, nc, 1)

    def forward(self, x):
        f = self.body(x)
        b, _, h, w = f.shape
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centre = torch.stack([gx, gy]).float().add(0.5).mul(8).view(1, 2, h * w)
        raw = self.box(f).view(b, 4, h * w)
        xy = centre + raw[:, :2].tanh() * 8
        wh = raw[:, 2:].sigmoid() * 64
        return torch.cat([xy, wh, self.cls(f).view(b, -1, h * w).sigmoid()], 1)


def tiny_detector() -> nn.Module:
    return TinyDetector(3)


def broken():
    raise RuntimeError("cannot build")


not_a_model = 42


def returns_dict():
    return {}


def tiny_classifier_any(num_classes: int = 10) -> nn.Module:
    """Ignores num_classes (a fixed 10-class head): for the output-contract test."""
    return TinyClassifier(10)


class TupleDetector(TinyDetector):
    """Returns (the transposed layout, a feature map): a contract the adapter must refuse."""

    def forward(self, x):
        return super().forward(x).transpose(1, 2), self.body(x)


def tuple_detector() -> nn.Module:
    return TupleDetector(3)


class DictDetector(TinyDetector):
    """torchvision-style output: one {boxes, scores, labels} dict per image, top 10 cells."""

    def forward(self, x):
        out = super().forward(x)  # (B, 4 + nc, N)
        res = []
        for o in out:
            xy, wh, cls = o[:2].T, o[2:4].T, o[4:].T
            scores, labels = cls.max(1)
            top = scores.topk(10).indices
            boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)[top]
            res.append({"boxes": boxes, "scores": scores[top], "labels": labels[top]})
        return res


def dict_detector() -> nn.Module:
    return DictDetector(3)


def to_rows(out):
    """A user decode function: (B, 4 + nc, N) -> (B, N, 6) x1 y1 x2 y2 score class."""
    xy, wh = out[:, :2].transpose(1, 2), out[:, 2:4].transpose(1, 2)
    scores, labels = out[:, 4:].max(1)
    return torch.cat([xy - wh / 2, xy + wh / 2, scores[..., None], labels[..., None].float()], 2)


def bad_rows(out):
    return to_rows(out)[..., :5]
