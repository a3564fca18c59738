"""Adapter for any model given as ``--arch module:factory`` plus a plain state_dict.

The factory (a function or class in an importable module, or ``path/to/file.py:name``)
builds the architecture; the checkpoint supplies its weights. ``task`` decides the
rest: ``detect`` models get letterbox preprocessing and one of the output layouts of
:mod:`compress.models.layouts` (``model.output_layout``: ``ultralytics`` ``(B, 4 + nc, N)``,
the default; ``end2end`` ``(B, N, 6)``; ``torchvision`` dict lists; or ``model.decode:
module:fn``); ``classify`` models output logits ``(B, nc)`` and get a plain resize.
Inputs are RGB scaled to [0, 1]: put any normalisation inside the model. One forward on
``example_input`` at load checks the output against the contract (one clear error naming
the output seen and the one expected).
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
from compress.models.detect import preprocess_letterbox
from compress.models.layouts import describe, get_layout
from compress.models.ultralytics_blocks import conv_groups, resize_to_state_dict


@register_adapter("generic")
class GenericAdapter(Adapter):
    def __init__(self, class_names, imgsz, stride=32, *, task="classify", arch="", output_layout=None,
                 decode=None):
        super().__init__(class_names, imgsz, stride)
        self.task = task
        self.arch = arch
        self.output_layout = output_layout if task == "detect" else None
        self.decode_fn = decode if task == "detect" else None
        self.layout = get_layout(output_layout, decode) if task == "detect" else None

    @classmethod
    def load(cls, spec, ckpt, trust_checkpoint: bool):
        own = isinstance(ckpt, dict) and ckpt.get("adapter") == "generic"
        saved = ckpt if own else {}
        arch = _named_by_user(spec.arch, saved.get("arch"), "arch", "--arch")  # code: never on the file's say-so
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
            model, note = build_noted(arch, num_classes=len(names))
            state = _state_dict(ckpt, spec.checkpoint)
            if own:
                resize_to_state_dict(model, state, saved.get("groups"))
            load_weights(model, state, arch, note)
        layout = getattr(spec, "output_layout", None) or saved.get("output_layout")
        decode = _named_by_user(getattr(spec, "decode", None), saved.get("decode"), "decode", "--set model.decode=")
        adapter = cls(list(names), int(imgsz), int(saved.get("stride", 32)), task=task, arch=arch or "",
                      output_layout=layout, decode=decode)
        model = model.float().eval()
        adapter.check_output(model)
        return adapter, model

    def check_output(self, model: nn.Module) -> None:
        """One forward on ``example_input``: ModelLoadError naming the output seen and the one expected."""
        try:
            with torch.no_grad():
                out = model(self.example_input(1))
        except Exception as e:
            first = (str(e).splitlines() or [""])[0]
            raise ModelLoadError(f"the model fails on a {tuple(self.example_input(1).shape)} input "
                                 f"(model.imgsz {self.imgsz}): {type(e).__name__}: {first}") from e
        nc = len(self.class_names)
        if self.task == "detect":
            problem = self.layout.check(out, nc)
        else:
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            ok = isinstance(first, torch.Tensor) and first.dim() == 2 and first.shape[1] == nc
            problem = None if ok else (f"the model returns {describe(out)}; classify models must return logits "
                                       f"(B, nc) = (B, {nc}) for {nc} class names")
        if problem:
            raise ModelLoadError(problem)

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

    def forward(self, model, x):
        """The exported tensor: the layout's (detect; torchvision dicts flattened) or the logits."""
        out = model(x)
        if self.task == "detect":
            return self.layout.to_tensor(out)
        return out[0] if isinstance(out, (tuple, list)) else out

    def decode(self, output, metas, conf=0.25, iou=0.7, max_det=300):
        """Detect: per-image ``Detections`` (the layout's decoder); classify: per-image logits."""
        if self.task == "detect":
            return self.layout.decode(output, metas, conf, iou, max_det)
        logits = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output)
        return [row.astype(np.float32) for row in logits.detach().float().cpu().numpy()]

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
        meta = {**super().metadata(), "arch": self.arch}
        if self.task == "detect":  # the ONNX output: torchvision dict lists are exported as end2end rows
            layout = self.output_layout or "ultralytics"
            meta["output_layout"] = "end2end" if layout == "torchvision" else layout
            if self.decode_fn:
                meta["output_layout"], meta["decode"] = "custom", self.decode_fn
        return meta

    def checkpoint(self, model):
        return {"adapter": self.name, "arch": self.arch, "task": self.task, "class_names": self.class_names,
                "imgsz": self.imgsz, "stride": self.stride, "groups": conv_groups(model),
                "output_layout": self.output_layout, "decode": self.decode_fn,
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def resolve_callable(spec: str, what: str = "--arch"):
    """The callable named by ``module:attr`` or ``file.py:attr`` (ModelLoadError otherwise)."""
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise ModelLoadError(f"{what} must look like module:{'factory' if what == '--arch' else 'fn'} (got '{spec}')")
    module = _import(mod_name, spec, what)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{what} {spec}: module '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"{what} {spec}: '{attr}' is not callable")
    return obj


def build(arch: str, num_classes: int | None = None) -> nn.Module:
    """Import ``module:factory`` (or ``file.py:factory``) and call it; ``num_classes`` is passed
    when the factory takes that argument or ``**kwargs`` (torchvision's factories)."""
    return build_noted(arch, num_classes)[0]


def build_noted(arch: str, num_classes: int | None = None) -> tuple[nn.Module, str]:
    """:func:`build`, plus a note on how the class count was set (for "weights do not fit" errors)."""
    factory = resolve_callable(arch)
    named = through_kwargs = False
    try:
        params = inspect.signature(factory).parameters.values()
        named = any(p.name == "num_classes" for p in params)
        through_kwargs = not named and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        pass
    kwargs = {"num_classes": num_classes} if num_classes is not None and (named or through_kwargs) else {}
    note = (f"the factory was called with num_classes={num_classes}" if kwargs else
            "the factory takes no num_classes argument, so the model keeps its own class count")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        if not (through_kwargs and "num_classes" in str(e)):
            raise ModelLoadError(f"--arch {arch}: the factory raised TypeError: {e}") from e
        note = "the factory rejected num_classes, so the model keeps its own class count"
        try:
            model = factory()
        except Exception as e2:
            raise ModelLoadError(f"--arch {arch}: the factory raised {type(e2).__name__}: {e2}") from e2
    except Exception as e:  # the user's code: report it as a load error, one line
        raise ModelLoadError(f"--arch {arch}: the factory raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {arch}: the factory returned {type(model).__name__}, not a torch nn.Module")
    return model, note


def _import(mod_name: str, arch: str, what: str = "--arch"):
    path = Path(mod_name)
    if path.suffix == ".py":
        if not path.is_file():
            raise ModelLoadError(f"{what} {arch}: file '{mod_name}' not found")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelLoadError(f"{what} {arch}: importing '{mod_name}' failed ({type(e).__name__}: {e})") from e
        return module
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ModelLoadError(f"{what} {arch}: cannot import module '{mod_name}' ({e})") from None
    except Exception as e:
        raise ModelLoadError(f"{what} {arch}: importing '{mod_name}' failed ({type(e).__name__}: {e})") from e


def _named_by_user(user, saved, field: str, flag: str):
    """The user's ``module:callable`` (it is code); a checkpoint's own value only leads to an error."""
    if user or not saved:
        return user or None
    shown = str(saved)[:120]
    raise ModelLoadError(f"the checkpoint names {field} '{shown}', which is code: it runs only when you name it "
                         f"yourself: pass {flag}{'' if flag.endswith('=') else ' '}{shown} if you trust it")


def _state_dict(ckpt, where) -> dict:
    """The tensors of a plain state_dict or of ``{"state_dict": ...}`` (``module.`` prefixes dropped)."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{where}: expected a state_dict (name -> tensor) or a dict with 'state_dict'")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, state: dict, arch: str, note: str = "") -> None:
    """``load_state_dict`` with one clear line naming the first missing/unexpected/mis-sized key
    (and ``note``: how the factory set the class count)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    tail = f" ({note})" if note else ""
    if missing or unexpected:
        what = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        extra = len(missing) + len(unexpected) - 1
        raise ModelLoadError(f"checkpoint does not fit {arch}: {what}" + (f" (+{extra} more)" if extra else "")
                             + tail)
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ModelLoadError(f"checkpoint does not fit {arch}: '{k}' has shape {tuple(v.shape)} "
                                 f"in the checkpoint but {tuple(own[k].shape)} in the model{tail}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers whose outputs reach the model's output without passing through
    another trainable Conv/Linear (frozen ones, e.g. a DFL, are protected and looked through).

    The walk stops at every autograd node of a trainable layer, also when the layer was
    found before: a layer called several times (a head shared over an image pyramid) is
    the same producer at every call, and nothing behind it is an output layer."""
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
        if mod is not None:
            if mod not in found:
                found.append(mod)
            if any(p.requires_grad for p in mod.parameters()):
                continue  # a trainable layer (at any of its calls): the output's producer; stop here
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
