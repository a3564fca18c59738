"""``elan2``: a two-conv ELAN-style block (the YOLOv9 Raspberry Pi study's "MGHELAN").

A 1x1 conv split into two halves (written as two 1x1 convs: the same function, and every
tensor has one producer, which channel pruning can follow), one 3x3 conv on the second
half, concat of the three pieces, 1x1 fuse to the output channels. With stride 2 the two
half convs are 3x3 stride-2 convs.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.blocks import register_block
from compress.blocks.common import ConvBNAct


@register_block("elan2")
class ELAN2(nn.Module):
    def __init__(self, c1: int, c2: int, stride: int = 1, act: nn.Module | None = None):
        super().__init__()
        h = max(1, c2 // 2)
        k = 1 if stride == 1 else 3
        self.cv_a = ConvBNAct(c1, h, k, stride, act=act)
        self.cv_b = ConvBNAct(c1, h, k, stride, act=act)
        self.cv_c = ConvBNAct(h, h, 3, 1, act=act)
        self.fuse = ConvBNAct(3 * h, c2, 1, 1, act=act)

    def forward(self, x):
        a, b = self.cv_a(x), self.cv_b(x)
        return self.fuse(torch.cat([a, b, self.cv_c(b)], 1))
