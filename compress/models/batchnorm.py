"""Re-estimating BatchNorm statistics on real images (for randomly initialised or rebuilt models)."""

from __future__ import annotations

import torch
from torch import nn


def reestimate_bn(model: nn.Module, images: torch.Tensor, batch: int = 32) -> nn.Module:
    """Reset every BatchNorm's running statistics, average them over ``images`` (cumulative, not
    momentum), and return the model in eval mode. The weights are not touched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), max(1, batch)):
            model(images[i:i + batch])
    return model.eval()
