"""Feature-map statistics for the ``fmap_cluster`` criterion.

Each output channel of a layer is described by four numbers computed over calibration
images: mean and variance of its activations inside the boxes (scaled to the map's
resolution) and mean and variance on the background. The feature map of a convolution
is the output of the BatchNorm that directly follows it when there is one (the
normalised response), else the convolution's own output.

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
    """Per-channel running sums inside / outside the boxes."""

    def __init__(self):
        self.s = None

    def add(self, f: torch.Tensor, m: torch.Tensor) -> None:
        f = f.detach().float()
        if f.dim() == 2:
            f = f[:, :, None, None]
        m = m[:, 0].to(f.dtype)  # (B, h, w)
        f2 = f * f
        s_in = torch.einsum("bchw,bhw->c", f, m).double()
        ss_in = torch.einsum("bchw,bhw->c", f2, m).double()
        s_all, ss_all = f.sum((0, 2, 3)).double(), f2.sum((0, 2, 3)).double()
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
        out = np.zeros((s.shape[1], 4))
        for j, (k, c) in enumerate(((0, 0), (2, 1))):
            if n[c] > 0:
                mean = s[k] / n[c]
                out[:, 2 * j] = mean
                out[:, 2 * j + 1] = np.maximum(s[k + 1] / n[c] - mean ** 2, 0.0)
        return out


def feature_map_module(dg, module: nn.Module) -> nn.Module:
    """The module whose output is ``module``'s feature map: a directly following BatchNorm, else itself."""
    node = dg.module2node.get(module)
    if node is not None:
        for nxt in node.outputs:
            if isinstance(nxt.module, nn.modules.batchnorm._BatchNorm) and len(node.outputs) == 1:
                return nxt.module
    return module


def collect_stats(model: nn.Module, layers: dict[nn.Module, nn.Module], images: list[np.ndarray],
                  source: BoxSource, adapter, batch: int = 16) -> dict[nn.Module, np.ndarray]:
    """``{layer: (C, 4) features}`` for each layer, hooking ``layers[layer]`` (its feature-map module)."""
    accs = {layer: _Acc() for layer in layers}
    state: dict = {}
    handles = []

    def hook_for(layer):
        def hook(_mod, _inp, out):
            f = out[0] if isinstance(out, (tuple, list)) else out
            hw = tuple(f.shape[-2:]) if f.dim() == 4 else (1, 1)
            if hw not in state["masks"]:
                state["masks"][hw] = _masks(state["boxes"], f.shape[0], hw, state["input_hw"])
            accs[layer].add(f, state["masks"][hw])
        return hook

    for layer, fm in layers.items():
        handles.append(fm.register_forward_hook(hook_for(layer)))
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
    return {layer: acc.features() for layer, acc in accs.items() if acc.s is not None}
