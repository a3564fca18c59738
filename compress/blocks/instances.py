"""Finding the block instances to swap and what each one looks like from the outside.

:func:`find_instances` selects modules by class name or ``re:`` pattern over module names
(outermost matches only); :func:`probe` runs the model once on an example input with
forward hooks and records, per instance, its input and output shapes, or why it cannot
be swapped (several inputs or outputs, not called, called more than once);
:func:`plan_replacement` checks that a registered light block gives the same output shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from compress.hooks import adapter_forward_with_hooks

_ACTS = (nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ELU, nn.PReLU, nn.Tanh,
         nn.Hardtanh, nn.SELU, nn.CELU)
ULTRALYTICS_ATTRS = ("i", "f", "type")  # graph wiring Ultralytics' DetectionModel reads from each layer


@dataclass
class Instance:
    name: str
    module: nn.Module
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    calls: int = 0
    reason: str | None = None  # why it cannot be swapped
    extra: dict = field(default_factory=dict)

    @property
    def stride(self) -> int | None:
        """Spatial stride (H_in / H_out, integer >= 1), None when the block up-samples or is irregular."""
        hi, wi = self.in_shape[-2:]
        ho, wo = self.out_shape[-2:]
        if ho > hi or wo > wi:
            return None
        s = max(1, round(hi / ho))
        return s if math.ceil(hi / s) == ho and math.ceil(wi / s) == wo else None


def _matches(name: str, module: nn.Module, pattern: str) -> bool:
    from compress.pruning.targets import matches

    return matches(name, module, pattern)


def find_instances(model: nn.Module, target: str) -> list[Instance]:
    """Modules matched by ``target`` (class name or ``re:pattern``), skipping those inside another match."""
    hits: list[Instance] = []
    for name, m in model.named_modules():
        if name and _matches(name, m, target) and not any(name.startswith(h.name + ".") for h in hits):
            hits.append(Instance(name, m))
    return hits


def top_level_blocks(model: nn.Module) -> list[Instance]:
    """The model's building blocks: Ultralytics ``model.model[i]``, else the root's children
    (containers such as ModuleList opened one level); only blocks with parameters."""
    inner = getattr(model, "model", None)
    if isinstance(inner, (nn.Sequential, nn.ModuleList)):
        items = [(f"model.{n}", m) for n, m in inner.named_children()]
    else:
        items = []
        for n, m in model.named_children():
            if isinstance(m, (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
                items += [(f"{n}.{k}", c) for k, c in m.named_children()]
            else:
                items.append((n, m))
    return [Instance(n, m) for n, m in items if any(True for _ in m.parameters())]


def probe(model: nn.Module, adapter, instances: list[Instance], x: torch.Tensor | None = None,
          keep_input: bool = False) -> list[Instance]:
    """Record each instance's input/output shapes (one eval forward of ``x``, default the
    adapter's example input; with ``keep_input`` also the input tensor, as ``extra["input"]``);
    sets ``reason`` on instances that cannot be swapped."""
    hooks = []

    def hook_for(inst: Instance):
        def hook(module, args, kwargs, output):
            inst.calls += 1
            tensors_in = [a for a in list(args) + list(kwargs.values()) if a is not None]
            if len(tensors_in) != 1 or not isinstance(tensors_in[0], torch.Tensor):
                kind = type(tensors_in[0]).__name__ if len(tensors_in) == 1 else f"{len(tensors_in)} arguments"
                inst.reason = inst.reason or f"it takes several inputs ({kind})"
                return
            if not isinstance(output, torch.Tensor):
                inst.reason = inst.reason or f"it returns several outputs ({type(output).__name__})"
                return
            if tensors_in[0].dim() != 4 or output.dim() != 4:
                inst.reason = inst.reason or "its input and output are not (B, C, H, W) feature maps"
                return
            inst.in_shape, inst.out_shape = tuple(tensors_in[0].shape), tuple(output.shape)
            if keep_input:
                inst.extra["input"] = tensors_in[0].detach().clone()
        return hook

    for inst in instances:
        hooks.append(inst.module.register_forward_hook(hook_for(inst), with_kwargs=True))
    adapter_forward_with_hooks(model, adapter, hooks, x)
    for inst in instances:
        if inst.calls == 0:
            inst.reason = "the model's forward never calls it"
        elif inst.calls > 1 and not inst.reason:
            inst.reason = f"it is called {inst.calls} times per forward (a shared module)"
        elif not inst.reason and inst.stride is None:
            inst.reason = (f"its output {list(inst.out_shape)} is not its input {list(inst.in_shape)} "
                           "at an integer stride")
    return instances


def activation_of(module: nn.Module) -> nn.Module:
    """The first activation module inside ``module`` (SiLU when it has none)."""
    for m in module.modules():
        if isinstance(m, _ACTS):
            return m
    return nn.SiLU()


def plan_replacement(inst: Instance, to: str, seed: int = 0) -> nn.Module | str:
    """A new block for ``inst`` (random weights, eval mode), or the reason none fits."""
    from compress.blocks import build_block

    if inst.reason:
        return inst.reason
    c1, c2, s = inst.in_shape[1], inst.out_shape[1], inst.stride
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            new = build_block(to, c1, c2, s, activation_of(inst.module))
    except ValueError as e:
        return str(e)
    new.eval()
    with torch.no_grad():
        got = tuple(new(torch.zeros((1,) + inst.in_shape[1:])).shape)
    if got[1:] != inst.out_shape[1:]:
        return f"{to} gives {list(got[1:])} where the block gives {list(inst.out_shape[1:])}"
    return new


def replace(model: nn.Module, inst: Instance, new: nn.Module) -> None:
    """Put ``new`` where ``inst`` was (keeping the graph attributes Ultralytics layers carry)."""
    replace_at(model, inst.name, new)


def replace_at(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in the slot ``name`` (keeping the graph attributes Ultralytics layers carry)."""
    old = model.get_submodule(name)
    for attr in ULTRALYTICS_ATTRS:
        if hasattr(old, attr) and not hasattr(new, attr):
            setattr(new, attr, getattr(old, attr))
    if hasattr(old, "np"):
        new.np = sum(p.numel() for p in new.parameters())
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    p = next(old.parameters(), None)
    if p is not None:
        new.to(p.device)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
