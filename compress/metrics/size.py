"""Model size: parameters, MACs (through torch-pruning's counter), file bytes, sparsity."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return int(total)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example_input`` (torch-pruning's counter).

    The model is copied by the counter, so hooks never stay on ``model``.
    """
    import torch_pruning as tp

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = example_input.to(device) if isinstance(example_input, torch.Tensor) else example_input
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # "__flops__ already defined" for shared activation instances
        macs, _, per_layer, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    # the counter adds one op per element for ReLU-like modules but none for SiLU: leave every
    # activation out, so a swap.activation pass does not change the count
    acts = sum(int(per_layer.get(m) or 0) for m in {id(m): m for m in model.modules()}.values()
               if type(m).__module__ == "torch.nn.modules.activation")
    return int(macs) - acts


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a file on disk in bytes."""
    return Path(path).stat().st_size


def zero_fraction(t: torch.Tensor) -> float:
    """Fraction of exactly-zero entries of a tensor (0.0 for an empty one)."""
    n = t.numel()
    return float((t == 0).sum().item() / n) if n else 0.0


def sparsity_report(model: nn.Module) -> dict:
    """Fraction of exactly-zero weights: overall and per Conv2d / BatchNorm2d.

    ``{"overall": float, "conv2d": {name: frac}, "batchnorm2d": {name: frac}}``.
    "Weights" are the parameters named ``weight`` (biases, zero at init, do not
    count); a BatchNorm2d's fraction is that of its scale, the tensor pruning zeroes.
    """
    zeros = total = 0
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen or name.rsplit(".", 1)[-1] != "weight":
            continue
        seen.add(id(p))
        zeros += int((p.detach() == 0).sum().item())
        total += p.numel()
    conv, bn = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            conv[name] = zero_fraction(m.weight.detach())
        elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            bn[name] = zero_fraction(m.weight.detach())
    return {"overall": zeros / total if total else 0.0, "conv2d": conv, "batchnorm2d": bn}
