"""DigitDet: the built-in YOLO-style detector (10 digit classes, 128x128 input) and its adapter.

The network has the structures real YOLOs have and compression passes must survive:
Conv-BN-SiLU blocks, C2f CSP blocks (1x1 conv -> chunk in two -> residual bottlenecks ->
concat -> 1x1 conv), SPPF, an FPN/PAN neck (nearest upsample + concat) and a decoupled
anchor-free head at strides 8/16/32 with a DFL box distribution. In train mode ``forward``
returns the raw per-level head maps ``(B, 4*reg_max + nc, H, W)``; in eval mode it returns
``(B, 4 + nc, N)`` (cx, cy, w, h in input pixels, sigmoid class scores), the Ultralytics
layout that :func:`compress.models.detect.decode_yolo` reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.errors import ModelLoadError
from compress.models import register_adapter
from compress.models.base import Adapter
from compress.models.detect import decode_yolo, preprocess_letterbox
from compress.types import Sample

STRIDES = (8, 16, 32)
WEIGHTS = Path(__file__).resolve().parent.parent / "zoo" / "weights" / "digitdet.pt"
CLASS_NAMES = [str(i) for i in range(10)]


@dataclass(frozen=True)
class DigitDetConfig:
    """Architecture knobs; stored in checkpoints so the model can be rebuilt."""

    nc: int = 10
    width: float = 1.0  # multiplies the channel counts in ``channels``
    depth: float = 1.0  # multiplies the bottleneck counts in ``blocks``
    channels: tuple[int, ...] = (32, 64, 96, 96, 96)  # stem, P2, P3, P4, P5 at width 1
    blocks: tuple[int, ...] = (1, 2, 2, 1)  # C2f bottlenecks at P2..P5 at depth 1
    reg_max: int = 8
    imgsz: int = 128
    split_free: bool = False  # True once C2f blocks are rewritten without chunk (for pruning)

    def ch(self, i: int) -> int:
        return max(8, int(round(self.channels[i] * self.width / 8)) * 8)

    def n(self, i: int) -> int:
        return max(1, round(self.blocks[i] * self.depth))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"], d["blocks"] = list(self.channels), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DigitDetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelLoadError(f"digitdet config: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        for key in ("channels", "blocks"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


# -- building blocks -------------------------------------------------------------------
class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs with a residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP block: cv1 -> chunk(2) -> bottlenecks on the second half -> concat all -> cv2."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) if shortcut else _Plain(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _Plain(nn.Module):
    """Bottleneck without the residual add (used in the neck)."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x):
        return self.cv2(self.cv1(x))


class C2fSplitFree(nn.Module):
    """C2f with cv1 as two separate convs instead of one conv + chunk: same function,
    but every tensor has exactly one producer, which channel pruning can follow."""

    def __init__(self, block: C2f):
        super().__init__()
        w, bn = block.cv1.conv.weight.data, block.cv1.bn
        c = w.shape[0] // 2
        self.cv0, self.cv1 = Conv(w.shape[1], c, 1), Conv(w.shape[1], c, 1)
        for half, conv in enumerate((self.cv0, self.cv1)):
            sl = slice(half * c, (half + 1) * c)
            conv.conv.weight.data.copy_(w[sl])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(conv.bn, name).data.copy_(getattr(bn, name).data[sl])
            conv.bn.eps, conv.bn.momentum = bn.eps, bn.momentum
        self.cv2, self.m = block.cv2, block.m
        self.train(block.training)

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, concat, 1x1 conv."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c = c1 // 2
        self.cv1 = Conv(c1, c, 1)
        self.cv2 = Conv(c * 4, c2, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Head(nn.Module):
    """Decoupled head for one stride: box branch (4 * reg_max DFL logits) and class branch."""

    def __init__(self, c: int, cb: int, cc: int, reg_max: int, nc: int):
        super().__init__()
        self.box = nn.Sequential(Conv(c, cb, 3), Conv(cb, cb, 3), nn.Conv2d(cb, 4 * reg_max, 1))
        self.cls = nn.Sequential(Conv(c, cc, 3), Conv(cc, cc, 3), nn.Conv2d(cc, nc, 1))

    def forward(self, x):
        return torch.cat([self.box(x), self.cls(x)], 1)


# -- the network -------------------------------------------------------------------------
class DigitDet(nn.Module):
    """Backbone (P3-P5) + PAN neck + three decoupled heads; see the module docstring."""

    def __init__(self, cfg: DigitDetConfig = DigitDetConfig()):
        super().__init__()
        self.cfg = cfg
        ch, n = cfg.ch, cfg.n
        self.stem = Conv(3, ch(0), 3, 2)  # /2
        self.down2, self.c2f2 = Conv(ch(0), ch(1), 3, 2), C2f(ch(1), ch(1), n(0))  # /4
        self.down3, self.c2f3 = Conv(ch(1), ch(2), 3, 2), C2f(ch(2), ch(2), n(1))  # /8
        self.down4, self.c2f4 = Conv(ch(2), ch(3), 3, 2), C2f(ch(3), ch(3), n(2))  # /16
        self.down5, self.c2f5 = Conv(ch(3), ch(4), 3, 2), C2f(ch(4), ch(4), n(3))  # /32
        self.sppf = SPPF(ch(4), ch(4))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = C2f(ch(4) + ch(3), ch(3), 1, shortcut=False)
        self.top3 = C2f(ch(3) + ch(2), ch(2), 1, shortcut=False)
        self.pan3 = Conv(ch(2), ch(2), 3, 2)
        self.bot4 = C2f(ch(2) + ch(3), ch(3), 1, shortcut=False)
        self.pan4 = Conv(ch(3), ch(3), 3, 2)
        self.bot5 = C2f(ch(3) + ch(4), ch(4), 1, shortcut=False)
        cb = max(16, ch(2) // 4, 4 * cfg.reg_max)  # box branch width
        cc = max(min(ch(2), 64), cfg.nc)  # class branch width
        self.heads = nn.ModuleList(Head(c, cb, cc, cfg.reg_max, cfg.nc) for c in (ch(2), ch(3), ch(4)))
        self.register_buffer("proj", torch.arange(cfg.reg_max, dtype=torch.float32), persistent=False)
        self._init_biases()

    def _init_biases(self):
        """Start with a low class prior (few objects per cell) and flat box distributions."""
        for head, s in zip(self.heads, STRIDES):
            nn.init.constant_(head.box[-1].bias, 1.0)
            nn.init.constant_(head.cls[-1].bias, float(np.log(5 / self.cfg.nc / (self.cfg.imgsz / s) ** 2)))

    def head_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw per-level head outputs ``(B, 4 * reg_max + nc, H, W)`` for strides 8/16/32."""
        x = self.c2f2(self.down2(self.stem(x)))
        p3 = self.c2f3(self.down3(x))
        p4 = self.c2f4(self.down4(p3))
        p5 = self.sppf(self.c2f5(self.down5(p4)))
        t4 = self.top4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bot4(torch.cat([self.pan3(n3), t4], 1))
        n5 = self.bot5(torch.cat([self.pan4(n4), p5], 1))
        return [head(f) for head, f in zip(self.heads, (n3, n4, n5))]

    def forward(self, x: torch.Tensor):
        maps = self.head_maps(x)
        return maps if self.training else self.decode(maps)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Head maps -> ``(B, 4 + nc, N)``: DFL expectation, anchor arithmetic, sigmoid."""
        r = self.cfg.reg_max
        flat = torch.cat([m.flatten(2) for m in maps], 2)  # (B, 4r + nc, N)
        anchors, strides = make_anchors(maps)
        box, cls = flat[:, : 4 * r], flat[:, 4 * r:]
        b, _, n = box.shape
        dist = (box.view(b, 4, r, n).softmax(2) * self.proj.view(1, 1, r, 1)).sum(2)  # (B, 4, N) l,t,r,b
        lt, rb = dist[:, :2], dist[:, 2:]
        centre = anchors.T.unsqueeze(0)  # (1, 2, N) grid units
        xy = (centre + (rb - lt) / 2) * strides
        wh = (lt + rb) * strides
        return torch.cat([xy, wh, cls.sigmoid()], 1)


def make_anchors(maps: list[torch.Tensor], offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres ``(N, 2)`` in grid units of each level and per-anchor strides ``(N,)``."""
    points, strides = [], []
    for m, s in zip(maps, STRIDES):
        h, w = m.shape[-2:]
        sy, sx = torch.meshgrid(torch.arange(h, dtype=m.dtype, device=m.device) + offset,
                                torch.arange(w, dtype=m.dtype, device=m.device) + offset, indexing="ij")
        points.append(torch.stack([sx, sy], -1).view(-1, 2))
        strides.append(torch.full((h * w,), float(s), dtype=m.dtype, device=m.device))
    return torch.cat(points), torch.cat(strides)


def build_digitdet(cfg: DigitDetConfig = DigitDetConfig()) -> DigitDet:
    """A fresh (randomly initialised) DigitDet; split-free C2f blocks when ``cfg.split_free``."""
    model = DigitDet(dataclasses.replace(cfg, split_free=False))
    return make_split_free(model) if cfg.split_free else model


def make_split_free(model: DigitDet) -> DigitDet:
    """Replace every C2f by an equivalent :class:`C2fSplitFree`, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f):
                setattr(parent, name, C2fSplitFree(child))
    model.cfg = dataclasses.replace(model.cfg, split_free=True)
    return model


# -- the adapter -------------------------------------------------------------------------
@register_adapter("digitdet")
class DigitDetAdapter(Adapter):
    """Adapter of the built-in detector (letterbox in, Ultralytics-layout decode out)."""

    task = "detect"

    def __init__(self, class_names: list[str], imgsz: int, stride: int = 32,
                 config: DigitDetConfig | None = None):
        super().__init__(class_names, imgsz, stride)
        self.config = config or DigitDetConfig(nc=len(class_names), imgsz=imgsz)

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint: bool = False):
        """The committed weights for ``builtin: digitdet``, else a digitdet checkpoint dict."""
        if ckpt is None:
            builtin = getattr(spec, "builtin", "digitdet")
            if builtin not in (None, "digitdet"):
                raise ModelLoadError(f"the digitdet adapter cannot build builtin '{builtin}'")
            ckpt = read_weights(WEIGHTS)
        if not isinstance(ckpt, dict) or ckpt.get("adapter", "digitdet") != "digitdet" or "config" not in ckpt:
            raise ModelLoadError("not a digitdet checkpoint (expected a dict with adapter 'digitdet' and a config)")
        cfg = DigitDetConfig.from_dict(ckpt["config"])
        model = build_digitdet(cfg)
        if ckpt.get("state_dict") is not None:  # absent: architecture only (pruned checkpoints)
            sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
            try:
                model.load_state_dict(sd)
            except RuntimeError as e:
                raise ModelLoadError(f"digitdet state_dict does not fit its config: {str(e).splitlines()[0]}") from None
        names = list(getattr(spec, "class_names", None) or ckpt.get("class_names") or CLASS_NAMES[:cfg.nc])
        if len(names) != cfg.nc:
            raise ModelLoadError(f"digitdet has {cfg.nc} classes but {len(names)} class names were given")
        imgsz = int(getattr(spec, "imgsz", None) or ckpt.get("imgsz") or cfg.imgsz)
        if imgsz % 32:
            raise ModelLoadError(f"digitdet input size must be a multiple of 32 (got {imgsz})")
        return cls(names, imgsz, 32, cfg), model.eval()

    def preprocess(self, images):
        return preprocess_letterbox(images, self.imgsz)

    def decode(self, output, metas, conf, iou=0.7, max_det=300):
        return decode_yolo(output, metas, conf, iou, max_det)

    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        """The last conv of every head branch: box-distribution and class logits."""
        return [layer for head in model.heads for layer in (head.box[-1], head.cls[-1])]

    def loss(self, model: nn.Module, images: torch.Tensor, samples: list[Sample]) -> torch.Tensor | None:
        """Detection loss of the raw head maps against the samples' boxes (mapped through the letterbox)."""
        if not any(s.boxes is not None for s in samples):
            return None
        from compress.models.digitdet_loss import DetectionLoss

        size = images.shape[-1]
        boxes, classes = [], []
        for s in samples:
            b = np.zeros((0, 4), np.float32) if s.boxes is None else np.asarray(s.boxes, np.float32).reshape(-1, 4)
            scale, px, py = letterbox_transform(s.image.shape[0], s.image.shape[1], size)
            boxes.append(b * scale + np.array([px, py, px, py], np.float32))
            classes.append(np.zeros(0, np.int64) if s.classes is None else np.asarray(s.classes, np.int64))
        cfg = getattr(model, "cfg", self.config)
        total, _ = DetectionLoss(cfg.nc, cfg.reg_max)(model.head_maps(images), boxes, classes)
        return total

    def distill_outputs(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw per-level head maps ``(B, 4 * reg_max + nc, H, W)``, in either mode."""
        return model.head_maps(x)

    def rewrite_for_pruning(self, model: nn.Module) -> nn.Module:
        """Split-free C2f blocks (same outputs), so torch-pruning sees one producer per tensor."""
        return make_split_free(model)

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "family": "digitdet"}

    def checkpoint(self, model: nn.Module) -> dict:
        cfg = getattr(model, "cfg", self.config)
        return {"adapter": self.name, "config": cfg.to_dict(), "class_names": self.class_names,
                "imgsz": self.imgsz, "stride": self.stride,
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def letterbox_transform(h: int, w: int, size: int) -> tuple[float, float, float]:
    """(scale, pad_x, pad_y) that :func:`compress.models.detect.letterbox` applies to an h x w image."""
    scale = min(size / h, size / w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, (size - nw) // 2, (size - nh) // 2


def read_weights(path: Path = WEIGHTS) -> dict:
    """The committed checkpoint (``weights_only`` load)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: the built-in digitdet weights are missing; "
                             "train them with `compress zoo train digitdet`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt package file: say which
        raise ModelLoadError(f"{path}: unreadable digitdet weights ({type(e).__name__})") from None
