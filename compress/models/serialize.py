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


def activation_types(model: nn.Module) -> dict[str, str]:
    """``{slot: class name}`` of every ``torch.nn`` activation module, shared instances under each
    slot (a ``swap.activation`` pass changes them; the architecture code would rebuild the old ones)."""
    return {name: type(m).__name__ for name, m in model.named_modules(remove_duplicate=False)
            if name and type(m).__module__ == "torch.nn.modules.activation"}


def block_specs(model: nn.Module) -> dict[str, dict]:
    """``{name: spec}`` of the light blocks a ``swap.module`` pass put in (compress.blocks)."""
    return {name: dict(m.block_spec) for name, m in model.named_modules()
            if name and isinstance(getattr(m, "block_spec", None), dict)}


def _restore_blocks(model: nn.Module, saved: dict) -> None:
    """Build the registered light blocks named in ``saved`` where the rebuilt model has the old ones."""
    import torch.nn.modules.activation as acts

    from compress.blocks import build_block
    from compress.blocks.instances import replace_at

    for name, spec in sorted(saved.items(), key=lambda kv: kv[0].count(".")):
        try:
            act_name = spec.get("act")
            act_cls = getattr(acts, act_name) if act_name else None
            if act_cls is not None and not (isinstance(act_cls, type) and issubclass(act_cls, nn.Module)):
                raise ValueError(f"unknown activation '{act_name}'")
            new = build_block(str(spec["block"]), int(spec["c1"]), int(spec["c2"]), int(spec["stride"]),
                              act_cls() if act_cls else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelLoadError(f"pruned checkpoint: block '{name}' cannot be rebuilt ({e})") from None
        _owner(model, name)  # a clear error when the rebuilt model lacks the slot
        replace_at(model, name, new)


def _restore_activations(model: nn.Module, saved: dict) -> None:
    """Put back activation types that differ from the rebuilt model's (torch.nn classes only)."""
    import torch.nn.modules.activation as acts

    made: dict[tuple[int, str], nn.Module] = {}  # one new module per (old instance, new type): sharing kept
    for name, m in list(model.named_modules(remove_duplicate=False)):
        want = saved.get(name)
        if not name or want is None or type(m).__name__ == want or type(m).__module__ != acts.__name__:
            continue
        cls = getattr(acts, want, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ModelLoadError(f"pruned checkpoint: '{name}' names an unknown activation '{want}'")
        owner, leaf = _owner(model, name)
        owner._modules[leaf] = made.setdefault((id(m), want), cls())


def pruned_info(model: nn.Module, state_dict: dict | None = None) -> dict:
    """The :data:`KEY` entry of a checkpoint: attributes, tensor shapes and weights.

    ``state_dict`` (e.g. the adapter checkpoint's own copy) is used when it matches the
    model's, so ``torch.save`` stores the tensors once.
    """
    sd = model.state_dict()
    if isinstance(state_dict, dict) and state_dict.keys() == sd.keys() and all(
            isinstance(v, torch.Tensor) and v.shape == sd[k].shape for k, v in state_dict.items()):
        sd = state_dict
    return {"format": FORMAT, "blocks": block_specs(model), "activations": activation_types(model), "attributes": layer_attributes(model),
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
    if isinstance(info.get("blocks"), dict) and info["blocks"]:
        _restore_blocks(model, info["blocks"])
    if isinstance(info.get("activations"), dict):
        _restore_activations(model, info["activations"])
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
