"""A small third-party-style detector: one shared sub-network run over an image pyramid.

What makes it "foreign" to the workbench (and what the generic adapter must handle):

* the same backbone + head (same weights) run on the image at full and at half size, so
  every layer has two autograd calls (weight sharing);
* the output is end-to-end rows ``(B, N, 6)``: x1 y1 x2 y2 score class in input pixels,
  the top ``topk`` candidates by score (NMS-free, like one-to-one heads), not the
  Ultralytics ``(B, 4 + nc, N)``: the recipe says ``output_layout: end2end``.

Use it as the template for your own detector: a factory taking ``num_classes``, an
``nn.Module`` whose eval output follows one of the documented layouts, a plain
``state_dict`` checkpoint. ``python recipes/custom-detector/pyramid_detector.py`` writes an
untrained checkpoint (random weights, BatchNorm statistics re-estimated on the built-in
digits-det images) to ``runs/custom-detector/pyramid-detector.pt``, where the recipe
looks for it.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(c1: int, c2: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, 3, stride, 1, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class PyramidDetector(nn.Module):
    """Shared backbone + head over ``scales``; outputs ``(B, topk, 6)`` rows."""

    def __init__(self, num_classes: int = 10, width: int = 32, scales=(1.0, 0.5), topk: int = 100):
        super().__init__()
        self.nc, self.scales, self.topk = num_classes, tuple(scales), topk
        self.stride = 8
        self.body = nn.Sequential(conv_bn(3, width // 2, 2), conv_bn(width // 2, width, 2),
                                  conv_bn(width, width, 1), conv_bn(width, 2 * width, 2), conv_bn(2 * width, 2 * width))
        self.head = nn.Sequential(conv_bn(2 * width, 2 * width), nn.Conv2d(2 * width, 4 + num_classes, 1))
        with torch.no_grad():  # a low class prior (0.12), as detectors initialise their score bias
            self.head[-1].bias[4:].fill_(-2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, scores = [], []
        for s in self.scales:
            xi = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            p = self.head(self.body(xi))  # the same modules at every scale
            b, _, h, w = p.shape
            stride = self.stride / s  # in input pixels
            gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                                    indexing="ij")
            centre = (torch.stack([gx, gy], 0).float() + 0.5).mul(stride).view(1, 2, h * w)
            dist = F.softplus(p[:, :4]).view(b, 4, h * w) * stride  # l t r b
            boxes.append(torch.cat([centre - dist[:, :2], centre + dist[:, 2:]], 1))
            scores.append(p[:, 4:].sigmoid().view(b, self.nc, h * w))
        boxes, scores = torch.cat(boxes, 2).transpose(1, 2), torch.cat(scores, 2).transpose(1, 2)  # (B, N, .)
        best, cls = scores.max(2)
        top = best.topk(min(self.topk, best.shape[1]), dim=1).indices  # (B, k)
        rows = torch.cat([boxes, best[..., None], cls[..., None].float()], 2)
        return rows.gather(1, top[..., None].expand(-1, -1, 6))


def build(num_classes: int = 10) -> PyramidDetector:
    return PyramidDetector(num_classes)


def main(out: str, imgsz: int = 128, samples: int = 64) -> None:
    from pathlib import Path

    from compress.data import builtin_dataset
    from compress.models.batchnorm import reestimate_bn
    from compress.models.detect import preprocess_letterbox

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build(10)
    data = builtin_dataset("digits-det", "calib", samples)
    x, _ = preprocess_letterbox([s.image for s in data.samples], imgsz)
    torch.save(reestimate_bn(model, x, batch=16).state_dict(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/custom-detector/pyramid-detector.pt")
