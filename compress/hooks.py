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


def adapter_forward_with_hooks(model: nn.Module, adapter, hooks: list, x: torch.Tensor | None = None) -> None:
    """One ``adapter.forward`` (eval, no grad) on ``x`` (default: the adapter's example input, on the
    model's device); then remove ``hooks`` and restore every module's own train/eval mode."""
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    x = adapter.example_input(1) if x is None else x
    if param is not None:
        x = x.to(param.device)
    try:
        model.eval()
        with torch.no_grad():
            adapter.forward(model, x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
