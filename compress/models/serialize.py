"""Saving and re-loading pruned models as ``weights_only``-loadable checkpoints.

A pruned model's layers are narrower than the architecture its adapter builds.
:func:`save_model` writes ``adapter.checkpoint(model)`` plus, under :data:`KEY`, what
torch-pruning changes: the shape attributes of every ``torch.nn`` layer (the
``attributions`` half of ``tp.state_dict``; its other half pickles each module's
``__dict__`` and is not ``weights_only``-loadable, so it is not used) and the pruned
weights. :func:`restore` turns a freshly built base model into the pruned one: it sets
the attributes, resizes parameters and buffers, then loads the weights strictly.

``compress.models.load_model`` calls :func:`load_pruned` when a checkpoint has :data:`KEY`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.errors import ModelLoadError

KEY = "compress_pruned"
FORMAT = 1
_PLAIN = (int, float, bool, str, type(None))


def _plain(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return isinstance(v, _PLAIN)


def layer_attributes(model: nn.Module) -> dict[str, dict]:
    """Public plain-valued attributes of every ``torch.nn`` layer (in/out channels, features...)."""
    out = {}
    for name, m in model.named_modules():
        if not type(m).__module__.startswith("torch.nn"):
            continue  # custom blocks: torch-pruning does not edit their attributes
        attrs = {k: v for k, v in vars(m).items()
                 if not k.startswith("_") and k != "training" and _plain(v)}
        if attrs:
            out[name] = attrs
    return out


def pruned_info(model: nn.Module, state_dict: dict | None = None) -> dict:
    """The :data:`KEY` entry of a checkpoint: attributes, tensor shapes and weights.

    ``state_dict`` (e.g. the adapter checkpoint's own copy) is used when it matches the
    model's, so ``torch.save`` stores the tensors once.
    """
    sd = model.state_dict()
    if isinstance(state_dict, dict) and state_dict.keys() == sd.keys() and all(
            isinstance(v, torch.Tensor) and v.shape == sd[k].shape for k, v in state_dict.items()):
        sd = state_dict
    return {"format": FORMAT, "attributes": layer_attributes(model),
            "shapes": {k: list(v.shape) for k, v in sd.items()}, "state_dict": sd}


def save_model(adapter, model: nn.Module, path: str | Path) -> Path:
    """Write ``adapter.checkpoint(model)`` + pruned shapes to ``path`` (atomically)."""
    from compress.atomic import atomic_path

    ckpt = dict(adapter.checkpoint(model))
    ckpt[KEY] = pruned_info(model, ckpt.get("state_dict"))
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def _owner(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    mod_name, _, leaf = dotted.rpartition(".")
    try:
        return (model.get_submodule(mod_name) if mod_name else model), leaf
    except AttributeError:
        raise ModelLoadError(f"pruned checkpoint names '{dotted}', which the rebuilt model lacks") from None


def restore(model: nn.Module, info: dict) -> nn.Module:
    """Give a freshly built base ``model`` the pruned shapes and weights in ``info``."""
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelLoadError(f"pruned checkpoint: unsupported format {info.get('format') if isinstance(info, dict) else info!r}")
    for name, attrs in info["attributes"].items():
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError:
            raise ModelLoadError(f"pruned checkpoint names layer '{name}', which the rebuilt model lacks") from None
        for k, v in attrs.items():
            setattr(module, k, tuple(v) if isinstance(v, list) and isinstance(getattr(module, k, None), tuple) else v)
    for key, shape in info["shapes"].items():
        owner, leaf = _owner(model, key)
        if leaf in owner._parameters and owner._parameters[leaf] is not None:
            old = owner._parameters[leaf]
            if list(old.shape) != list(shape):
                owner._parameters[leaf] = nn.Parameter(torch.empty(shape, dtype=old.dtype),
                                                       requires_grad=old.requires_grad)
        elif leaf in owner._buffers and owner._buffers[leaf] is not None:
            old = owner._buffers[leaf]
            if list(old.shape) != list(shape):
                owner._buffers[leaf] = torch.empty(shape, dtype=old.dtype)
    try:
        model.load_state_dict(info["state_dict"], strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"pruned checkpoint does not fit the rebuilt model: {str(e).splitlines()[0]}") from None
    return model


def load_pruned(adapter_cls, spec, ckpt: dict, trust_checkpoint: bool):
    """Build the base architecture through the adapter, then restore the pruned model.

    The adapter gets the checkpoint without its weights first (architecture only); an
    adapter that needs weights to build gets the pruned ones (as LeNet-5's, which reads
    its widths from them).
    """
    info = ckpt[KEY]
    base = {k: v for k, v in ckpt.items() if k not in (KEY, "state_dict")}
    try:
        adapter, model = adapter_cls.load(spec, base, trust_checkpoint)
    except (ModelLoadError, KeyError, RuntimeError):
        full = {k: v for k, v in ckpt.items() if k != KEY}
        full.setdefault("state_dict", info["state_dict"])
        adapter, model = adapter_cls.load(spec, full, trust_checkpoint)
    return adapter, restore(model, info).eval()
