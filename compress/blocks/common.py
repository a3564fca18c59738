"""Pieces the light blocks share: Conv-BN-activation and the channel shuffle."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_act(act: nn.Module | None) -> nn.Module:
    """A private copy of ``act`` (SiLU when None), so blocks never share activation modules."""
    return copy.deepcopy(act) if act is not None else nn.SiLU()


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> activation (``act=False``: no activation)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, groups: int = 1, act: nn.Module | None | bool = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.Identity() if act is False else make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
