"""One forward pass with temporary hooks: how layer statistics are collected."""

from __future__ import annotations

import torch
from torch import nn


def run_with_hooks(model: nn.Module, example: torch.Tensor, hooks: list) -> None:
    """Run ``model`` once (eval, no grad) on ``example``, then remove ``hooks`` and restore its mode."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
