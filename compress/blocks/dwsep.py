"""``dwsep``: depthwise-separable conv (depthwise 3x3 + pointwise 1x1, each with BN and activation)."""

from __future__ import annotations

from torch import nn

from compress.blocks import register_block
from compress.blocks.common import ConvBNAct


@register_block("dwsep")
class DWSep(nn.Module):
    def __init__(self, c1: int, c2: int, stride: int = 1, act: nn.Module | None = None):
        super().__init__()
        self.dw = ConvBNAct(c1, c1, 3, stride, groups=c1, act=act)
        self.pw = ConvBNAct(c1, c2, 1, 1, act=act)

    def forward(self, x):
        return self.pw(self.dw(x))
