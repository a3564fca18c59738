"""Split-free stand-ins for Ultralytics CSP blocks, and shape-driven rebuilds.

C2f, C3k2, C2PSA and friends run one 1x1 convolution ``cv1`` and then cut its
output in two with ``.chunk``/``.split``. Torch-Pruning's dependency graph then has
to keep both halves in lock-step, and a plain slice of the output is easy to get
wrong. Here ``cv1`` becomes two convolutions, ``cv1a`` and ``cv1b``, each carrying
one half of the original output channels (weights copied, so the function is
unchanged); the block concatenates instead of splitting.

The other half of this module rebuilds a model whose channel counts were changed by
pruning: :func:`resize_to_state_dict` reshapes a freshly built model's layers to the
tensors of a saved state_dict, so checkpoints stay plain ``weights_only`` dicts.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_KEEP_ATTRS = ("i", "f", "type", "np")  # Ultralytics' per-layer routing info used by _predict_once


def _half(conv_block: nn.Module, first: bool) -> nn.Module:
    """A copy of an Ultralytics ``Conv`` (conv [+ bn] + act) keeping one half of its outputs."""
    import torch_pruning as tp

    new = copy.deepcopy(conv_block)
    out = new.conv.out_channels
    c = out // 2
    drop = list(range(c, out)) if first else list(range(c))
    tp.prune_conv_out_channels(new.conv, drop)
    if isinstance(getattr(new, "bn", None), nn.BatchNorm2d):
        tp.prune_batchnorm_out_channels(new.bn, drop)
    return new


class _SplitFree(nn.Module):
    """Common part: ``cv1`` replaced by its two halves; routing attributes kept."""

    def __init__(self, block: nn.Module):
        super().__init__()
        if block.cv1.conv.out_channels % 2:
            raise ValueError(f"{type(block).__name__}.cv1 has an odd number of outputs")
        self.cv1a = _half(block.cv1, first=True)
        self.cv1b = _half(block.cv1, first=False)
        self.source = type(block).__name__
        for k in _KEEP_ATTRS:
            if hasattr(block, k):
                setattr(self, k, getattr(block, k))

    def extra_repr(self) -> str:
        return f"rewritten from {self.source}"


class SplitFreeC2f(_SplitFree):
    """C2f / C3k2 / C2fPSA / C2fCIB: ``cv2(cat(a, b, m1(b), m2(m1(b)), ...))``."""

    def __init__(self, block):
        super().__init__(block)
        self.m, self.cv2 = block.m, block.cv2

    def forward(self, x):
        y = [self.cv1a(x), self.cv1b(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SplitFreeC2fAttn(_SplitFree):
    """C2fAttn: as C2f, plus a guided attention branch on the last output."""

    def __init__(self, block):
        super().__init__(block)
        self.m, self.attn, self.cv2 = block.m, block.attn, block.cv2

    def forward(self, x, guide):
        y = [self.cv1a(x), self.cv1b(x)]
        y.extend(m(y[-1]) for m in self.m)
        y.append(self.attn(y[-1], guide))
        return self.cv2(torch.cat(y, 1))


class SplitFreeC2(_SplitFree):
    """C2: ``cv2(cat(m(a), b))``."""

    def __init__(self, block):
        super().__init__(block)
        self.m, self.cv2 = block.m, block.cv2

    def forward(self, x):
        return self.cv2(torch.cat((self.m(self.cv1a(x)), self.cv1b(x)), 1))


class SplitFreeC2PSA(_SplitFree):
    """C2PSA: ``cv2(cat(a, m(b)))``."""

    def __init__(self, block):
        super().__init__(block)
        self.m, self.cv2 = block.m, block.cv2

    def forward(self, x):
        return self.cv2(torch.cat((self.cv1a(x), self.m(self.cv1b(x))), 1))


class SplitFreePSA(_SplitFree):
    """PSA: ``b += attn(b); b += ffn(b); cv2(cat(a, b))``."""

    def __init__(self, block):
        super().__init__(block)
        self.attn, self.ffn, self.cv2 = block.attn, block.ffn, block.cv2

    def forward(self, x):
        a, b = self.cv1a(x), self.cv1b(x)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class SplitFreeELAN(_SplitFree):
    """RepNCSPELAN4 / ELAN1: ``cv4(cat(a, b, cv2(b), cv3(cv2(b))))``."""

    def __init__(self, block):
        super().__init__(block)
        self.cv2, self.cv3, self.cv4 = block.cv2, block.cv3, block.cv4

    def forward(self, x):
        y = [self.cv1a(x), self.cv1b(x)]
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class TraceOpaqueAAttn(nn.Module):
    """YOLO12's area attention (``AAttn``), computed by its own code, opaque to torch-pruning.

    ``AAttn`` flattens, transposes and reshapes its ``qkv`` output per area and per head;
    torch-pruning maps channel indices through every one of those ops (its flatten
    mapping multiplies each index by H*W), which took yolo12n's pruning past 15 minutes
    while its head-sized convolutions must keep their widths anyway. Here the same
    forward runs inside a reentrant ``torch.utils.checkpoint`` when the model is traced
    (eval mode with gradients on), so the trace sees one channel-preserving op; the
    adapter protects the attention's convolutions and the block's input width (kept
    whole). Training, inference and export run the original forward unchanged; the
    state_dict keys (``qkv``, ``proj``, ``pe``) are the original's.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self._forward = type(block).forward
        for k in ("area", "num_heads", "head_dim", "all_head_dim"):
            setattr(self, k, getattr(block, k))
        self.qkv, self.proj, self.pe = block.qkv, block.proj, block.pe
        for k in _KEEP_ATTRS:
            if hasattr(block, k):
                setattr(self, k, getattr(block, k))

    def forward(self, x):
        if torch.is_grad_enabled() and not self.training and x.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._forward, self, x, use_reentrant=True)
        return self._forward(self, x)

    def extra_repr(self) -> str:
        return "rewritten from AAttn (kept whole when pruning)"

    def original(self) -> nn.Module:
        """The Ultralytics ``AAttn`` again, sharing this module's layers (e.g. for an Ultralytics checkpoint)."""
        from ultralytics.nn.modules.block import AAttn

        new = AAttn.__new__(AAttn)
        nn.Module.__init__(new)
        new.train(self.training)
        for k in ("area", "num_heads", "head_dim", "all_head_dim", *_KEEP_ATTRS):
            if hasattr(self, k):
                setattr(new, k, getattr(self, k))
        new.qkv, new.proj, new.pe = self.qkv, self.proj, self.pe
        return new


SPLIT_FREE_TYPES = (SplitFreeC2f, SplitFreeC2fAttn, SplitFreeC2, SplitFreeC2PSA, SplitFreePSA, SplitFreeELAN)
REWRITTEN_TYPES = (*SPLIT_FREE_TYPES, TraceOpaqueAAttn)


def _rules():
    """(Ultralytics class, replacement) pairs; a block qualifies only if it keeps that class's forward."""
    from ultralytics.nn.modules import block as B

    names = [("C2f", SplitFreeC2f), ("C2fAttn", SplitFreeC2fAttn), ("C2", SplitFreeC2),
             ("C2PSA", SplitFreeC2PSA), ("PSA", SplitFreePSA), ("RepNCSPELAN4", SplitFreeELAN),
             ("AAttn", TraceOpaqueAAttn)]
    return [(getattr(B, n), r) for n, r in names if hasattr(B, n)]


def rewrite_split_blocks(model: nn.Module) -> list[str]:
    """Replace every split-using CSP block in ``model`` (in place); return the names replaced.

    Blocks whose class overrides ``forward`` (or whose instance does) are left alone,
    so an unknown variant is never silently given the wrong computation.
    """
    rules = _rules()
    todo = []
    for name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if "forward" in vars(child):
                continue
            for cls, repl in rules:
                if isinstance(child, cls) and type(child).forward is cls.forward:
                    todo.append((parent, child_name, repl, f"{name}.{child_name}" if name else child_name))
                    break
    for parent, child_name, repl, _ in todo:
        setattr(parent, child_name, repl(getattr(parent, child_name)))
    return [full for *_, full in todo]


def is_split_free(model: nn.Module) -> bool:
    """True when ``model`` contains rewritten blocks (its state_dict uses cv1a/cv1b keys)."""
    return any(isinstance(m, REWRITTEN_TYPES) for m in model.modules())


def conv_groups(model: nn.Module) -> dict[str, int]:
    """``{name: groups}`` of the grouped convolutions (the one thing a state_dict does not tell)."""
    return {n: int(m.groups) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups != 1}


def resize_to_state_dict(model: nn.Module, state_dict: dict, groups: dict[str, int] | None = None) -> list[str]:
    """Give ``model``'s parameters and buffers the shapes in ``state_dict`` (e.g. a pruned model's).

    Only tensors whose shape differs are replaced (with uninitialised ones for
    ``load_state_dict`` to fill); Conv2d/BatchNorm/Linear size attributes follow, and
    grouped convolutions take their ``groups`` from ``groups``. Returns the layers touched.
    """
    modules = dict(model.named_modules())
    touched = set()
    for key, value in state_dict.items():
        mod_name, _, attr = key.rpartition(".")
        mod = modules.get(mod_name)
        if mod is None or not isinstance(value, torch.Tensor):
            continue
        current = mod._parameters.get(attr) if attr in mod._parameters else mod._buffers.get(attr)
        if current is None or current.shape == value.shape:
            continue
        fresh = torch.empty(value.shape, dtype=current.dtype, device=current.device)
        if attr in mod._parameters:
            mod._parameters[attr] = nn.Parameter(fresh, requires_grad=current.requires_grad)
        else:
            mod._buffers[attr] = fresh
        touched.add(mod_name)
    groups = groups or {}
    for name, mod in modules.items():
        if isinstance(mod, nn.Conv2d) and (name in touched or mod.groups != groups.get(name, 1)):
            mod.groups = groups.get(name, 1)
            mod.out_channels = mod.weight.shape[0]
            mod.in_channels = mod.weight.shape[1] * mod.groups
            touched.add(name)
        elif name in touched and isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.num_features = mod.weight.shape[0] if mod.weight is not None else mod.running_mean.shape[0]
        elif name in touched and isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = mod.weight.shape
    return sorted(touched)
