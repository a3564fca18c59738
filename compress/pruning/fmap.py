"""Feature-map statistics for the ``fmap_cluster`` criterion.

Each output channel of a layer is described by four numbers computed over calibration
images: mean and variance of its activations inside the boxes (scaled to the map's
resolution) and mean and variance on the background. The feature map of a convolution
is the output of its Conv-BN-activation block when it sits in one (what the next layer
sees; on a trained YOLOv8n this kept one-shot agreement far higher than the
pre-activation BatchNorm output), else of the BatchNorm directly after it, else its own.

Boxes come from the labels, or (unlabelled detection data) from the reference model's
own confident detections; classifiers use whole-map statistics (every pixel counts as
"inside", the background numbers are 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compress.errors import PassError


@dataclass
class BoxSource:
    """Per-image boxes in input-tensor pixels (xyxy), and where they came from."""

    boxes: list[np.ndarray] | None  # None: whole-map statistics (classifier)
    origin: str  # "labels" | "reference detections (conf 0.25)" | "whole map (classifier)"


def to_input_pixels(boxes: np.ndarray, meta, image_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Boxes in original-image pixels -> pixels of the preprocessed tensor.

    Uses the letterbox metadata (``scale``, ``pad_x``, ``pad_y``) when the adapter gives
    it, else assumes a plain resize to the input size.
    """
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if all(hasattr(meta, a) for a in ("scale", "pad_x", "pad_y")):
        b *= float(meta.scale)
        b[:, [0, 2]] += float(meta.pad_x)
        b[:, [1, 3]] += float(meta.pad_y)
    else:
        b[:, [0, 2]] *= input_hw[1] / image_hw[1]
        b[:, [1, 3]] *= input_hw[0] / image_hw[0]
    return b


def find_boxes(ctx, images: list[np.ndarray], labelled_boxes: list[np.ndarray] | None, who: str,
               conf: float = 0.25, batch: int = 16) -> BoxSource:
    """Boxes for fmap statistics: labels, else the reference's detections; PassError if none."""
    adapter = ctx.adapter
    if adapter.task == "classify":
        return BoxSource(None, "whole map (classifier)")
    out: list[np.ndarray] = []
    if labelled_boxes is not None:
        origin = "labels"
        raw = labelled_boxes
    else:
        origin = f"reference detections (conf {conf:g})"
        raw = []
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x, metas = adapter.preprocess(images[i:i + batch])
                dets = adapter.decode(adapter.forward(ctx.reference.eval(), x), metas, conf)
                raw.extend(d.boxes for d in dets)
    for im, b in zip(images, raw):
        x, metas = adapter.preprocess([im])
        out.append(to_input_pixels(b, metas[0], im.shape[:2], tuple(x.shape[-2:])))
    if sum(len(b) for b in out) == 0:
        what = "the labels hold no boxes" if labelled_boxes is not None else \
            f"the reference model detects nothing above conf {conf:g} on them"
        raise PassError(f"{who}: criterion fmap_cluster needs boxes on the calibration images, but {what}")
    return BoxSource(out, origin)


def _masks(boxes: list[np.ndarray] | None, n: int, hw: tuple[int, int], input_hw: tuple[int, int]) -> torch.Tensor:
    """(n, 1, h, w) float masks: 1 inside any box (pixel centres), at least one pixel per box."""
    h, w = hw
    if boxes is None:
        return torch.ones(n, 1, h, w)
    m = torch.zeros(n, 1, h, w)
    sy, sx = h / input_hw[0], w / input_hw[1]
    for i, bs in enumerate(boxes):
        for x0, y0, x1, y1 in bs:
            c0, c1 = int(np.floor(x0 * sx)), int(np.ceil(x1 * sx))
            r0, r1 = int(np.floor(y0 * sy)), int(np.ceil(y1 * sy))
            c0, r0 = min(max(c0, 0), w - 1), min(max(r0, 0), h - 1)
            m[i, 0, r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = 1.0
    return m


class _Acc:
    """Per-channel running sums inside / outside the boxes.

    Values are shifted by the first batch's channel means before squaring, so
    ``E[x^2] - E[x]^2`` does not cancel catastrophically in float32.
    """

    def __init__(self):
        self.s = None

    def add(self, f: torch.Tensor, m: torch.Tensor) -> None:
        f = f.detach().float()
        if f.dim() == 2:
            f = f[:, :, None, None]
        if self.s is None:
            self.shift = f.mean((0, 2, 3), keepdim=True)
        g = f - self.shift
        m = m[:, 0].to(g.dtype)  # (B, h, w)
        g2 = g * g
        s_in = torch.einsum("bchw,bhw->c", g, m).double()
        ss_in = torch.einsum("bchw,bhw->c", g2, m).double()
        s_all, ss_all = g.sum((0, 2, 3)).double(), g2.sum((0, 2, 3)).double()
        parts = torch.stack([s_in, ss_in, s_all - s_in, ss_all - ss_in])
        n_in = float(m.sum())
        counts = torch.tensor([n_in, float(m.numel()) - n_in], dtype=torch.float64)
        if self.s is None:
            self.s, self.n = parts, counts
        else:
            self.s, self.n = self.s + parts, self.n + counts

    def features(self) -> np.ndarray:
        """(C, 4): in-box mean, in-box variance, background mean, background variance."""
        s, n = self.s.numpy(), self.n.numpy()
        shift = self.shift.flatten().double().numpy()
        out = np.zeros((s.shape[1], 4))
        for j, (k, c) in enumerate(((0, 0), (2, 1))):
            if n[c] > 0:
                mean = s[k] / n[c]
                out[:, 2 * j] = shift + mean
                out[:, 2 * j + 1] = np.maximum(s[k + 1] / n[c] - mean ** 2, 0.0)
        return out


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ELU, nn.PReLU,
               nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Identity)


def feature_map_candidates(model: nn.Module, dg, layers) -> dict[nn.Module, list[nn.Module]]:
    """Per layer, the modules whose output may be its feature map, best first.

    A Conv-BN-activation block (a module whose children are the layer, its BatchNorm and
    activations only) gives the activated map; else the BatchNorm directly following the
    layer; else the layer itself. :func:`collect_stats` keeps the first candidate whose
    output has the layer's channel count.
    """
    parents = {c: p for p in model.modules() for c in p.children()}
    out = {}
    for layer in layers:
        bn = layer
        node = dg.module2node.get(layer)
        if node is not None and len(node.outputs) == 1 and isinstance(
                node.outputs[0].module, nn.modules.batchnorm._BatchNorm):
            bn = node.outputs[0].module
        cands = [bn] if bn is layer else [bn, layer]
        block = parents.get(layer)
        if block is not None and block is not model:
            kids = list(block.children())
            if any(isinstance(k, ACTIVATIONS) for k in kids) and all(
                    k is layer or k is bn or isinstance(k, ACTIVATIONS) for k in kids):
                cands.insert(0, block)
        out[layer] = cands
    return out


def collect_stats(model: nn.Module, layers: dict[nn.Module, list[nn.Module]], images: list[np.ndarray],
                  source: BoxSource, adapter, batch: int = 16) -> dict[nn.Module, np.ndarray]:
    """``{layer: (C, 4) features}``, hooking each layer's feature-map candidates (see above)."""
    accs = {(layer, i): _Acc() for layer, cands in layers.items() for i in range(len(cands))}
    state: dict = {}
    handles = []

    def hook_for(key):
        def hook(_mod, _inp, out):
            f = out[0] if isinstance(out, (tuple, list)) else out
            hw = tuple(f.shape[-2:]) if f.dim() == 4 else (1, 1)
            if hw not in state["masks"]:
                state["masks"][hw] = _masks(state["boxes"], f.shape[0], hw, state["input_hw"])
            accs[key].add(f, state["masks"][hw])
        return hook

    for layer, cands in layers.items():
        for i, m in enumerate(cands):
            handles.append(m.register_forward_hook(hook_for((layer, i))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x, _ = adapter.preprocess(images[i:i + batch])
                boxes = None if source.boxes is None else source.boxes[i:i + batch]
                state.update(boxes=boxes, masks={}, input_hw=tuple(x.shape[-2:]))
                adapter.forward(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for layer, cands in layers.items():
        width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        for i in range(len(cands)):
            acc = accs[(layer, i)]
            if acc.s is not None and acc.s.shape[1] == width:
                out[layer] = acc.features()
                break
    return out
