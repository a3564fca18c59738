"""Write a compressed Ultralytics model as a checkpoint Ultralytics itself loads (``model.ultralytics.pt``).

The file has the layout of the checkpoint Ultralytics' trainer leaves after training
(``strip_optimizer``): ``model`` is the pickled ``DetectionModel`` in fp16, ``train_args``,
``date``, ``version``, ``license``, ``docs``, ``epoch: -1``, the optimizer keys ``None``.
``YOLO("model.ultralytics.pt")`` loads it, and ``predict``, ``val``, ``export`` run on it.

The pickle references only Ultralytics and torch classes: the split-free blocks that
:mod:`compress.models.ultralytics_blocks` made for pruning are turned back into the
Ultralytics class they came from (``cv1a``/``cv1b`` concatenated into ``cv1``; when pruning
left the halves unequal, the narrower one is padded with channels that are exactly zero --
for the second half also through the Bottleneck / C3k blocks it feeds), and other stand-ins
with an ``original()`` method (YOLO12's ``TraceOpaqueAAttn``) give back theirs. A block
that cannot be turned back (e.g. a second half feeding attention blocks) stays a compress
class, and :func:`save_ultralytics_checkpoint` says so: loading then needs
``compress`` importable. The result is compared with the input model on a random image
before it is written.

Training: ``YOLO(...).train()`` rebuilds the network from ``model.yaml`` and copies the
weights whose shapes match, so a *pruned* model would silently grow back to the yaml's
widths. :data:`KeepArchitectureTrainer` trains the loaded module itself:
``YOLO("model.ultralytics.pt").train(data=..., trainer=KeepArchitectureTrainer)``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from compress.models.ultralytics_blocks import SPLIT_FREE_TYPES

_FINAL_CONV = {"SplitFreeC2f": "cv2", "SplitFreeC2fAttn": "cv2", "SplitFreeC2PSA": "cv2", "SplitFreePSA": "cv2",
               "SplitFreeELAN": "cv4"}  # the convolution that takes the first half ``a`` first in its concat


def save_ultralytics_checkpoint(adapter, model: nn.Module, path: str | Path, *,
                                description: str | None = None) -> list[str]:
    """Write ``model`` as an Ultralytics checkpoint at ``path`` (atomically).

    Returns notes for the report (blocks left as compress classes, the pruned-training hint).
    """
    from compress.atomic import atomic_path

    ckpt, notes = ultralytics_checkpoint(adapter, model, description=description)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return notes


def ultralytics_checkpoint(adapter, model: nn.Module, *, description: str | None = None) -> tuple[dict, list[str]]:
    """``(checkpoint dict, notes)``: the layout of Ultralytics' stripped training checkpoint."""
    import ultralytics
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from compress import __version__
    from compress.export import ULTRALYTICS_DOCS, ULTRALYTICS_LICENSE

    out, kept = to_ultralytics_model(model, adapter)
    train_args = {**DEFAULT_CFG_DICT, "task": "detect", "mode": "train", "imgsz": int(adapter.imgsz),
                  "model": str(getattr(out, "yaml", {}).get("yaml_file", "") or "") or None}
    out.args = dict(train_args)
    out.half()
    for p in out.parameters():
        p.requires_grad_(False)
    notes, pruned = [], is_pruned(out)
    if kept:
        notes.append("model.ultralytics.pt keeps compress's own blocks (" + ", ".join(kept[:5])
                     + ("..." if len(kept) > 5 else "") + "): loading it needs the compress package importable.")
    if pruned:
        notes.append("model.ultralytics.pt is pruned: Ultralytics' train() rebuilds models from their yaml; train it "
                     "with trainer=compress.models.ultralytics_io.KeepArchitectureTrainer to keep the pruned widths.")
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "license": ULTRALYTICS_LICENSE,
        "docs": ULTRALYTICS_DOCS,
        "epoch": -1,
        "best_fitness": None,
        "model": out,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "scaler": None,
        "stopper": None,
        "train_args": train_args,
        "train_metrics": {},
        "train_results": {},
        "compress": {"version": __version__, "description": description or "compressed by compress",
                     "pruned": pruned, "class_names": list(adapter.class_names)},
    }
    return ckpt, notes


def to_ultralytics_model(model: nn.Module, adapter=None) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` as Ultralytics would hold it: split-free blocks turned back into
    their Ultralytics classes, the head in its normal (non-export) mode, class names set.

    Returns ``(model, names of blocks left as compress classes)``: a block whose conversion
    would change its outputs is kept as it is. Raises ``RuntimeError`` when the whole
    model's outputs differ from the input's (a bug, never a silent change).
    """
    out = copy.deepcopy(model).float().eval()
    for name, parent in list(out.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SPLIT_FREE_TYPES):
                new = _unsplit(child)
                if new is not None and _same(child, new):
                    setattr(parent, child_name, new)
            elif _is_ours(child) and callable(getattr(child, "original", None)):
                setattr(parent, child_name, child.original())  # e.g. TraceOpaqueAAttn -> AAttn
    kept = [n for n, m in out.named_modules() if _is_ours(m) and not any(_is_ours(p) for p in _parents(out, n))]
    head = out.model[-1]
    if hasattr(head, "export"):
        head.export = False
    if getattr(head, "one2one_cv2", None) is not None and getattr(head, "cv2", None) is not None:
        head.end2end = bool(getattr(adapter, "end2end", False)) if adapter is not None else True
    if adapter is not None:
        out.names = {i: str(n) for i, n in enumerate(adapter.class_names)}
    out.task = "detect"
    if not _same_model(model, out, adapter):
        raise RuntimeError("the Ultralytics copy of the model gives different outputs")
    return out, kept


def _is_ours(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "compress"


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


def is_pruned(model: nn.Module) -> bool:
    """True when rebuilding ``model`` from its yaml would not give the same tensor shapes."""
    from ultralytics.nn.tasks import DetectionModel

    cfg = copy.deepcopy(getattr(model, "yaml", None))
    if not isinstance(cfg, dict):
        return True
    try:
        fresh = DetectionModel(cfg, ch=int(cfg.get("channels", 3)), nc=cfg.get("nc"), verbose=False)
    except Exception:  # a yaml that does not build: training from it cannot work either
        return True
    want = {k: v.shape for k, v in fresh.state_dict().items()}
    have = {k: v.shape for k, v in model.state_dict().items()}
    if any(isinstance(m, nn.BatchNorm2d) for m in fresh.modules()) and not any(
            isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        fresh.fuse(verbose=False)
        want = {k: v.shape for k, v in fresh.state_dict().items()}
    return want != have


# -- split-free block -> Ultralytics block ----------------------------------------------------------
def _block_class(source: str):
    from ultralytics.nn.modules import block as B

    cls = getattr(B, source, None)
    if cls is None:
        import ultralytics.nn.modules as M

        cls = getattr(M, source, None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def _unsplit(sf: nn.Module) -> nn.Module | None:
    """The Ultralytics block ``sf`` was rewritten from, with ``cv1 = cat(cv1a, cv1b)``; None if impossible."""
    cls = _block_class(getattr(sf, "source", ""))
    a, b = sf.cv1a, sf.cv1b
    ca, cb = a.conv.out_channels, b.conv.out_channels
    if cls is None or a.conv.groups != 1 or b.conv.groups != 1:
        return None
    final_name = None
    if ca != cb:
        final_name = _FINAL_CONV.get(type(sf).__name__)
        if final_name is None:
            return None
    if ca > cb:  # the second half feeds the bottleneck chain: pad it there too (C2f of Bottlenecks only)
        sf = _pad_second_half(sf, ca - cb)
        if sf is None:
            return None
        b, cb = sf.cv1b, ca
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.train(sf.training)
    new.cv1 = _cat_convs(_pad_conv(a, cb - ca), b)
    for k, m in sf.named_children():
        if k not in ("cv1a", "cv1b"):
            setattr(new, k, m)
    if final_name is not None and cb > ca:
        setattr(new, final_name, _insert_inputs(getattr(new, final_name), at=ca, n=cb - ca))
    new.c = cb
    for k, v in vars(sf).items():
        if not k.startswith("_") and k not in ("training", "source", "c"):
            setattr(new, k, v)
    return new


def _pad_second_half(sf: nn.Module, n: int) -> nn.Module | None:
    """A copy of a split-free C2f/C3k2 whose second half ``b`` has ``n`` extra, exactly-zero channels,
    carried through the blocks it feeds (Bottleneck residual sums stay zero there; a C3k's inputs
    take zero weights); None when a block it feeds is of another kind."""
    from ultralytics.nn.modules.block import C3, Bottleneck

    if type(sf).__name__ != "SplitFreeC2f":
        return None
    sf = copy.deepcopy(sf)
    ca, cb = sf.cv1a.conv.out_channels, sf.cv1b.conv.out_channels
    sf.cv1b = _pad_conv(sf.cv1b, n)
    inserts = [ca + cb]  # where the final conv's input gets n zero columns (unpadded coordinates): after b
    pos, padded = ca + cb, True  # pos: end of the last segment; padded: the next block's input has padding
    for m in sf.m:
        if type(m) is Bottleneck:
            width = m.cv2.conv.out_channels
            if padded and m.cv1.conv.groups == 1 and (not m.add or m.cv2.conv.groups == 1):
                m.cv1 = _insert_inputs(m.cv1, at=m.cv1.conv.in_channels, n=n)
                padded = bool(m.add)
                if padded:  # x + cv2(cv1(x)): the output has the input's padding, so cv2 gets it too
                    m.cv2 = _pad_conv(m.cv2, n)
            elif padded:
                return None
        elif isinstance(m, C3) and type(m).forward is C3.forward:  # cv3(cat(m(cv1(x)), cv2(x)))
            width = m.cv3.conv.out_channels
            if padded and all(c.conv.groups == 1 for c in (m.cv1, m.cv2)):
                m.cv1 = _insert_inputs(m.cv1, at=m.cv1.conv.in_channels, n=n)
                m.cv2 = _insert_inputs(m.cv2, at=m.cv2.conv.in_channels, n=n)
                padded = False
            elif padded:
                return None
        else:
            return None
        pos += width
        if padded:
            inserts.append(pos)
    for at in sorted(inserts, reverse=True):  # from the end, so earlier positions stay valid
        sf.cv2 = _insert_inputs(sf.cv2, at=at, n=n)
    return sf


def _pad_conv(block: nn.Module, n: int) -> nn.Module:
    """An Ultralytics ``Conv`` with ``n`` extra outputs that are exactly zero after BN and activation."""
    if n == 0:
        return block
    new = copy.deepcopy(block)
    conv = new.conv
    w = conv.weight.detach()
    conv.weight = nn.Parameter(torch.cat([w, w.new_zeros(n, *w.shape[1:])]))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.cat([conv.bias.detach(), conv.bias.new_zeros(n)]))
    conv.out_channels += n
    bn = getattr(new, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        bn.weight = nn.Parameter(torch.cat([bn.weight.detach(), bn.weight.new_zeros(n)]))
        bn.bias = nn.Parameter(torch.cat([bn.bias.detach(), bn.bias.new_zeros(n)]))
        bn.running_mean = torch.cat([bn.running_mean, bn.running_mean.new_zeros(n)])
        bn.running_var = torch.cat([bn.running_var, bn.running_var.new_ones(n)])
        bn.num_features += n
    return new


def _cat_convs(a: nn.Module, b: nn.Module) -> nn.Module:
    """One Ultralytics ``Conv`` whose outputs are ``a``'s then ``b``'s (same input, kernel, activation)."""
    new = copy.deepcopy(a)
    conv = new.conv
    conv.weight = nn.Parameter(torch.cat([a.conv.weight.detach(), b.conv.weight.detach()]))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.cat([a.conv.bias.detach(), b.conv.bias.detach()]))
    conv.out_channels = a.conv.out_channels + b.conv.out_channels
    bn = getattr(new, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        bn.weight = nn.Parameter(torch.cat([a.bn.weight.detach(), b.bn.weight.detach()]))
        bn.bias = nn.Parameter(torch.cat([a.bn.bias.detach(), b.bn.bias.detach()]))
        bn.running_mean = torch.cat([a.bn.running_mean, b.bn.running_mean])
        bn.running_var = torch.cat([a.bn.running_var, b.bn.running_var])
        bn.num_features = conv.out_channels
    return new


def _insert_inputs(block: nn.Module, at: int, n: int) -> nn.Module:
    """``block`` (an Ultralytics ``Conv``) taking ``n`` extra (zero) input channels at position ``at``."""
    new = copy.deepcopy(block)
    conv = new.conv
    w = conv.weight.detach()
    conv.weight = nn.Parameter(torch.cat([w[:, :at], w.new_zeros(w.shape[0], n, *w.shape[2:]), w[:, at:]], 1))
    conv.in_channels += n
    return new


def _same(old: nn.Module, new: nn.Module) -> bool:
    """Same outputs on a random input of ``old``'s input width (one-input blocks; others: trust the shapes)."""
    if type(old).__name__ == "SplitFreeC2fAttn":
        return True  # needs the guide tensor; the whole-model comparison still runs
    x = torch.randn(1, old.cv1a.conv.in_channels, 16, 16)
    with torch.no_grad():
        return torch.allclose(old.eval()(x), new.eval()(x), atol=1e-4, rtol=1e-4)


def _same_model(old: nn.Module, new: nn.Module, adapter) -> bool:
    if adapter is None:
        return True
    x = torch.rand_like(adapter.example_input(1))
    with torch.no_grad():
        want = adapter.forward(old, x)
        got = new(x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    if isinstance(got, dict):
        return True  # an end-to-end head in training layout; the block-level checks ran
    return got.shape == want.shape and torch.allclose(got, want, atol=1e-3, rtol=1e-3)


# -- training a pruned model in Ultralytics -------------------------------------------------------
def _make_trainer():
    from ultralytics.models.yolo.detect import DetectionTrainer

    class KeepArchitectureTrainer(DetectionTrainer):
        """A ``DetectionTrainer`` that trains the loaded model itself instead of rebuilding it from its
        yaml (which would restore the widths pruning removed)."""

        def get_model(self, cfg=None, weights=None, verbose=True):
            if weights is None:
                return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
            model = weights if isinstance(weights, nn.Module) else (weights.get("ema") or weights["model"])
            model = copy.deepcopy(model).float()
            for p in model.parameters():
                p.requires_grad_(True)
            nc = int(self.data["nc"])
            if int(model.model[-1].nc) != nc:
                raise ValueError(f"the pruned model predicts {int(model.model[-1].nc)} classes, the data has {nc}")
            return model

    KeepArchitectureTrainer.__module__ = __name__
    return KeepArchitectureTrainer


def __getattr__(name: str):
    """``KeepArchitectureTrainer`` is created on first use (ultralytics is an optional extra)."""
    if name == "KeepArchitectureTrainer":
        cls = _make_trainer()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
