"""``shufflenet``: a ShuffleNetV2 unit.

Same channels and stride 1: the basic unit (channel split; 1x1 -> depthwise 3x3 -> 1x1 on
one half; concat; channel shuffle). A stride or a channel change: the two-branch
down-sampling unit (depthwise 3x3 -> 1x1 on the whole input next to 1x1 -> depthwise 3x3
-> 1x1; concat; shuffle), each branch giving half the output channels.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.blocks import register_block
from compress.blocks.common import ConvBNAct, channel_shuffle


@register_block("shufflenet")
class ShuffleUnit(nn.Module):
    # torch-pruning cannot follow the channel split and shuffle (measured: IndexError inside its graph)
    prune_hint = "prune.structured after this swap needs `ignore: [ShuffleUnit]` (the channel shuffle is opaque to it)"

    @staticmethod
    def why_not(c1: int, c2: int, stride: int) -> str | None:
        if c2 % 2:
            return f"a ShuffleNetV2 unit needs an even number of output channels (got {c2})"
        return None

    def __init__(self, c1: int, c2: int, stride: int = 1, act: nn.Module | None = None):
        super().__init__()
        self.basic = stride == 1 and c1 == c2
        h = c2 // 2
        if self.basic:
            self.branch1 = nn.Identity()
            cin = h
        else:
            self.branch1 = nn.Sequential(ConvBNAct(c1, c1, 3, stride, groups=c1, act=False),
                                         ConvBNAct(c1, h, 1, 1, act=act))
            cin = c1
        self.branch2 = nn.Sequential(ConvBNAct(cin, h, 1, 1, act=act),
                                     ConvBNAct(h, h, 3, stride, groups=h, act=False),
                                     ConvBNAct(h, h, 1, 1, act=act))

    def forward(self, x):
        if self.basic:
            a, b = x.chunk(2, 1)
            y = torch.cat([a, self.branch2(b)], 1)
        else:
            y = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(y, 2)
