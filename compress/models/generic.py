"""Adapter for any model given as ``--arch module:factory`` plus a plain state_dict.

The factory (a function or class in an importable module, or ``path/to/file.py:name``)
builds the architecture; the checkpoint supplies its weights. ``task`` decides the
rest: ``detect`` models must output the Ultralytics layout ``(B, 4 + nc, N)`` and get
letterbox preprocessing + YOLO decode; ``classify`` models output logits and get a
plain resize. Inputs are RGB scaled to [0, 1]: put any normalisation inside the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from compress.errors import ModelLoadError
from compress.models import register_adapter
from compress.models.base import Adapter
from compress.models.detect import decode_yolo, preprocess_letterbox
from compress.models.ultralytics_blocks import conv_groups, resize_to_state_dict


@register_adapter("generic")
class GenericAdapter(Adapter):
    def __init__(self, class_names, imgsz, stride=32, *, task="classify", arch=""):
        super().__init__(class_names, imgsz, stride)
        self.task = task
        self.arch = arch

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint: bool):
        own = isinstance(ckpt, dict) and ckpt.get("adapter") == "generic"
        saved = ckpt if own else {}
        arch = spec.arch or saved.get("arch")
        task = spec.task or saved.get("task")
        names = spec.class_names or saved.get("class_names")
        imgsz = spec.imgsz or saved.get("imgsz")
        missing = [f for f, v in (("task", task), ("class_names", names), ("imgsz", imgsz)) if not v]
        if missing:
            raise ModelLoadError(f"the generic adapter needs model.{', model.'.join(missing)} "
                                 "(--task/--names/--imgsz): it cannot read them from a plain state_dict")
        if isinstance(ckpt, nn.Module):  # a trusted full pickle of the module itself
            model = ckpt
        else:
            if not arch:
                raise ModelLoadError("the generic adapter needs --arch module:factory to build the model")
            model = build(arch, num_classes=len(names))
            state = _state_dict(ckpt, spec.checkpoint)
            if own:
                resize_to_state_dict(model, state, saved.get("groups"))
            load_weights(model, state, arch)
        adapter = cls(list(names), int(imgsz), int(saved.get("stride", 32)), task=task, arch=arch or "")
        return adapter, model.float().eval()

    # -- input / output -------------------------------------------------------------
    def preprocess(self, images):
        if self.task == "detect":
            return preprocess_letterbox(images, self.imgsz)
        arrays = []
        for im in images:
            im = np.asarray(im, np.uint8)
            im = np.repeat(im[:, :, None], 3, 2) if im.ndim == 2 else im[:, :, :3]
            if im.shape[:2] != (self.imgsz, self.imgsz):
                im = np.asarray(Image.fromarray(im).resize((self.imgsz, self.imgsz), Image.BILINEAR))
            arrays.append(im)
        batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(batch)), [None] * len(arrays)

    def decode(self, output, metas, conf=0.25, iou=0.7, max_det=300):
        """Detect: per-image ``Detections``; classify: per-image softmax probabilities."""
        if self.task == "detect":
            return decode_yolo(output, metas, conf, iou, max_det)
        logits = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output)
        probs = torch.softmax(logits.detach().float().cpu(), dim=1).numpy()
        return [p.astype(np.float32) for p in probs]

    # -- hooks for passes -------------------------------------------------------------
    def protected_layers(self, model):
        return output_layers(model, self.example_input())

    def loss(self, model, images, samples):
        """Cross-entropy for classifiers with labels; detectors have no generic loss (use distill)."""
        if self.task != "classify" or not samples or any(s.label is None for s in samples):
            return None
        labels = torch.tensor([int(s.label) for s in samples], dtype=torch.long, device=images.device)
        return F.cross_entropy(self.forward(model, images), labels)

    def metadata(self):
        return {**super().metadata(), "arch": self.arch}

    def checkpoint(self, model):
        return {"adapter": self.name, "arch": self.arch, "task": self.task, "class_names": self.class_names,
                "imgsz": self.imgsz, "stride": self.stride, "groups": conv_groups(model),
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def build(arch: str, num_classes: int | None = None) -> nn.Module:
    """Import ``module:factory`` (or ``file.py:factory``) and call it; ``num_classes`` is passed
    when the factory takes that argument."""
    mod_name, sep, attr = str(arch).partition(":")
    if not sep or not mod_name or not attr:
        raise ModelLoadError(f"--arch must look like module:factory (got '{arch}')")
    module = _import(mod_name, arch)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelLoadError(f"--arch {arch}: module '{mod_name}' has no attribute '{attr}'")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(f"--arch {arch}: '{attr}' is not callable")
    kwargs = {}
    try:
        if num_classes is not None and "num_classes" in inspect.signature(factory).parameters:
            kwargs["num_classes"] = num_classes
    except (TypeError, ValueError):
        pass
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code: report it as a load error, one line
        raise ModelLoadError(f"--arch {arch}: the factory raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {arch}: the factory returned {type(model).__name__}, not a torch nn.Module")
    return model


def _import(mod_name: str, arch: str):
    path = Path(mod_name)
    if path.suffix == ".py":
        if not path.is_file():
            raise ModelLoadError(f"--arch {arch}: file '{mod_name}' not found")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelLoadError(f"--arch {arch}: importing '{mod_name}' failed ({type(e).__name__}: {e})") from e
        return module
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ModelLoadError(f"--arch {arch}: cannot import module '{mod_name}' ({e})") from None
    except Exception as e:
        raise ModelLoadError(f"--arch {arch}: importing '{mod_name}' failed ({type(e).__name__}: {e})") from e


def _state_dict(ckpt, where) -> dict:
    """The tensors of a plain state_dict or of ``{"state_dict": ...}`` (``module.`` prefixes dropped)."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{where}: expected a state_dict (name -> tensor) or a dict with 'state_dict'")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, state: dict, arch: str) -> None:
    """``load_state_dict`` with one clear line naming the first missing/unexpected/mis-sized key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        extra = len(missing) + len(unexpected) - 1
        raise ModelLoadError(f"checkpoint does not fit {arch}: {what}" + (f" (+{extra} more)" if extra else ""))
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ModelLoadError(f"checkpoint does not fit {arch}: '{k}' has shape {tuple(v.shape)} "
                                 f"in the checkpoint but {tuple(own[k].shape)} in the model")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers whose outputs reach the model's output without passing through
    another trainable Conv/Linear (frozen ones, e.g. a DFL, are protected and looked through)."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)
    owner = {}

    def hook(mod, _inp, out):
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            owner[out.grad_fn] = mod

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was = model.training
    try:
        model.eval()
        with torch.enable_grad():
            out = model(example.requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    roots = [t for t in _tensors(out) if t.grad_fn is not None]
    found, seen, stack = [], set(), [t.grad_fn for t in roots]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        mod = owner.get(fn)
        if mod is not None and mod not in found:
            found.append(mod)
            if any(p.requires_grad for p in mod.parameters()):
                continue  # a trainable layer: the output's producer; stop here
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []
