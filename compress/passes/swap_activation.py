"""``swap.activation``: replace one activation type with a cheaper one, then optionally recover.

SiLU -> LeakyReLU / ReLU / ReLU6 / Hardswish: ReLU-family activations are cheaper on ARM CPUs
and int8 runtimes fold them into the quantized convolution (ONNX Runtime: Relu disappears
into QLinearConv's output range, LeakyRelu becomes one QLinearLeakyRelu instead of a
Sigmoid + Mul pair kept around the conv).

Replacement is per *parent slot*: every parent's ``_modules`` dict is walked (Ultralytics'
``Conv.default_act`` is one ``nn.SiLU`` shared by every ``Conv``, and ``named_modules()``
lists a shared module once). Sharing is kept: one new module per old instance. Activations
called as functions in ``forward`` (``F.silu(x)``, ``x.relu()``) cannot be swapped; one
forward pass under a ``TorchFunctionMode`` counts them and the report says so.

For an Ultralytics ``DetectionModel`` whose every activation was swapped, the model yaml gets
``activation: nn.LeakyReLU(0.01)`` (what Ultralytics' own yaml key means), checked by
rebuilding the yaml: ``model.pt`` / ``model.ultralytics.pt`` then reload and retrain with the
new activation. When the yaml cannot express the swap (``layers`` given, or activations that
are not ``Conv.default_act``), the yaml is left alone and the report says a rebuild from it
would bring the old activation back.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register
from compress.passes.finetune import FinetuneConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

TARGETS = ("relu", "relu6", "leaky_relu", "hardswish")
# functional spellings of activation classes (F.<name>, torch.<name>, Tensor.<name>)
_FUNCTIONAL = {"SiLU": ("silu", "silu_"), "ReLU": ("relu", "relu_"), "ReLU6": ("relu6",),
               "LeakyReLU": ("leaky_relu", "leaky_relu_"), "Hardswish": ("hardswish", "hardswish_"),
               "GELU": ("gelu",), "Mish": ("mish",), "ELU": ("elu", "elu_"), "Hardsigmoid": ("hardsigmoid",),
               "Sigmoid": ("sigmoid", "sigmoid_"), "Tanh": ("tanh", "tanh_"), "SELU": ("selu", "selu_"),
               "CELU": ("celu", "celu_"), "Softplus": ("softplus",), "PReLU": ("prelu",)}
_YAML_SPEC = {"relu": "nn.ReLU()", "relu6": "nn.ReLU6()", "hardswish": "nn.Hardswish()"}
SHOW = 5  # names listed per report entry


def _type_name(pattern: str) -> str:
    for prefix in ("torch.nn.", "nn."):
        if pattern.startswith(prefix):
            return pattern[len(prefix):]
    return pattern


def new_activation(to: str, negative_slope: float = 0.01, inplace: bool = False) -> "nn.Module":
    """A fresh activation module for ``to``."""
    from torch import nn

    if to == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=inplace)
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}[to](inplace=inplace)


def activation_slots(model: "nn.Module", types: list[str]) -> list[tuple[str, "nn.Module", str, "nn.Module"]]:
    """``(slot name, parent, key, module)`` for every parent slot holding a module of one of ``types``
    (class or base-class names); a module shared by several parents appears once per slot."""
    want = {_type_name(t) for t in types}
    seen: set[tuple[int, str]] = set()
    out = []
    for pname, parent in model.named_modules(remove_duplicate=False):
        for key, child in parent._modules.items():
            if child is None or (id(parent), key) in seen:
                continue
            if want & {c.__name__ for c in type(child).__mro__}:
                seen.add((id(parent), key))
                out.append((f"{pname}.{key}" if pname else key, parent, key, child))
    return out


def _layer_roots(model: "nn.Module", patterns: list[str], who: str) -> list[str]:
    """Names (every alias of shared modules) of the modules the ``layers`` patterns match."""
    from compress.pruning.targets import matches

    named = list(model.named_modules(remove_duplicate=False))
    roots: list[str] = []
    for p in patterns:
        hits = [n for n, m in named if matches(n, m, p)]
        if not hits:
            raise PassError(f"{who}: layers pattern '{p}' matches no module of the model")
        roots += hits
    return roots


def _inside(name: str, roots: list[str]) -> bool:
    return any(r == "" or name == r or name.startswith(r + ".") for r in roots)


def functional_calls(model: "nn.Module", adapter, types: list[str]) -> dict[str, int]:
    """Calls of the functional form of ``types`` (``F.silu``, ``x.relu()``...) made outside any
    activation module during one eval forward pass of ``adapter.example_input(1)``."""
    import torch
    from torch.overrides import TorchFunctionMode

    names = {f for t in types for f in _FUNCTIONAL.get(_type_name(t), (_type_name(t).lower(),))}
    depth = [0]
    counts: Counter = Counter()

    class _Count(TorchFunctionMode):
        def __torch_function__(self, func, types_, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if depth[0] == 0 and name in names:
                counts[name.rstrip("_")] += 1
            return func(*args, **(kwargs or {}))

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    handles = []
    for m in {id(m): m for m in model.modules()}.values():
        if type(m).__module__.startswith("torch.nn.modules.activation"):
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _Count():
            adapter.forward(model, adapter.example_input(1))
    except Exception as e:  # a model that cannot run here: count nothing, say why
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return dict(counts)


@register("swap.activation")
class SwapActivation(Pass):
    """Replace every (or every matched layer's) activation of the given types."""

    class Config(PassConfig):
        replace: list[str] = Field(default=["SiLU"], min_length=1)  # activation class names
        to: Literal["relu", "relu6", "leaky_relu", "hardswish"] = "leaky_relu"
        negative_slope: float = Field(default=0.01, ge=0, lt=1)  # leaky_relu only
        layers: list[str] = []  # names / re:patterns / type names; empty = everywhere
        finetune: FinetuneConfig | None = None  # recovery after the swap

        @field_validator("replace")
        @classmethod
        def _names(cls, v):
            bad = [t for t in v if not _type_name(t).isidentifier()]
            if bad:
                raise ValueError(f"not a class name: {bad[0]!r}")
            return v

        @model_validator(mode="after")
        def _slope(self):
            if "negative_slope" in self.model_fields_set and self.to != "leaky_relu" and self.negative_slope != 0.01:
                raise ValueError("'negative_slope' applies to to: leaky_relu only")
            return self

    # -- planning ---------------------------------------------------------------------------------
    def plan(self, model: "nn.Module", ctx) -> list[tuple[str, "nn.Module", str, "nn.Module"]]:
        """The slots to swap; PassError when none match (naming functional calls found instead)."""
        cfg = self.config
        slots = activation_slots(model, cfg.replace)
        if cfg.layers:
            roots = _layer_roots(model, cfg.layers, self.label)
            slots = [s for s in slots if _inside(s[0], roots)]
        if not slots:
            where = f" inside layers {cfg.layers}" if cfg.layers else ""
            fn = functional_calls(model, ctx.adapter, cfg.replace)
            fn.pop("error", None)
            extra = (f"; {sum(fn.values())} functional call(s) ({', '.join(f'{k} x{v}' for k, v in fn.items())}) "
                     "in forward cannot be swapped") if fn else ""
            raise PassError(f"{self.label}: no {' / '.join(cfg.replace)} activation module{where} in the model{extra}")
        return slots

    def check(self, model, ctx):
        self.plan(model, ctx)
        if self.config.finetune is not None:
            from compress.passes.finetune import check_finetune

            check_finetune(ctx, self.config.finetune, f"{self.label}.finetune")

    # -- the swap ---------------------------------------------------------------------------------
    def apply(self, model, ctx):
        cfg = self.config
        slots = self.plan(model, ctx)
        made: dict[int, "nn.Module"] = {}  # old instance -> its replacement (sharing kept)
        by_type: Counter = Counter()
        where: dict[str, list[str]] = {}
        for name, parent, key, old in slots:
            new = made.get(id(old))
            if new is None:
                new = made[id(old)] = new_activation(cfg.to, cfg.negative_slope, bool(getattr(old, "inplace", False)))
            parent._modules[key] = new
            pair = f"{type(old).__name__} -> {type(new).__name__}"
            by_type[pair] += 1
            where.setdefault(pair, []).append(name)
        left_modules = len(activation_slots(model, cfg.replace))
        functional = functional_calls(model, ctx.adapter, cfg.replace)
        error = functional.pop("error", None)
        n_fn = sum(functional.values())
        sec = ctx.section(self.label)
        to = f"LeakyReLU({cfg.negative_slope:g})" if cfg.to == "leaky_relu" else type(next(iter(made.values()))).__name__
        summary = (f"{len(slots)} activation(s) swapped to {to} ({len(made)} module instance(s)), "
                   f"{left_modules} {'/'.join(cfg.replace)} module(s) left"
                   + (f", {n_fn} functional call(s) left (cannot be swapped)" if error is None
                      else f", functional calls not counted ({error})"))
        sec.update({"to": to, "replace": list(cfg.replace), "layers": list(cfg.layers), "swapped": len(slots),
                    "instances": len(made), "by_type": dict(by_type),
                    "where": {k: v[:SHOW] + ([f"... {len(v) - SHOW} more"] if len(v) > SHOW else [])
                              for k, v in where.items()},
                    "modules_left": left_modules, "functional_left": functional, "summary": summary})
        if error is not None:
            sec["functional_error"] = error
        ctx.notes.append(f"{self.label}: {summary}")
        yaml_note = self._update_yaml(model, not cfg.layers and left_modules == 0)
        if yaml_note is not None:
            sec["yaml"] = yaml_note
            if not yaml_note.get("honest", True):
                ctx.notes.append(f"{self.label}: {yaml_note['note']}")
        reload = _reload_check(model, ctx, to_type=type(next(iter(made.values()))).__name__)
        sec["model_pt_reload"] = reload
        if reload.get("keeps_swap") is False:
            ctx.notes.append(f"{self.label}: {reload['note']}")
        if cfg.finetune is not None:
            from compress.passes.finetune import run_finetune

            sec["finetune"] = {}
            model = run_finetune(model, ctx, cfg.finetune, report=sec["finetune"], label=f"{self.label} finetune")
        return model

    # -- Ultralytics yaml ---------------------------------------------------------------------------
    def _update_yaml(self, model, everywhere: bool) -> dict | None:
        """Make an Ultralytics model's yaml say the new activation (``activation:`` key) when a
        rebuild from it gives the swapped activation in every slot; otherwise say it cannot."""
        cfg = self.config
        yaml = getattr(model, "yaml", None)
        if not isinstance(yaml, dict) or type(model).__module__.split(".")[0] != "ultralytics":
            return None
        spec = f"nn.LeakyReLU({cfg.negative_slope!r})" if cfg.to == "leaky_relu" else _YAML_SPEC[cfg.to]
        if everywhere:
            trial = copy.deepcopy(yaml)
            trial["activation"] = spec
            same, why = _rebuild_matches(model, trial)
            if same:
                model.yaml = trial
                return {"activation": spec, "honest": True}
        else:
            why = "only some layers were swapped"
        return {"activation": yaml.get("activation"), "honest": False,
                "note": f"the model yaml cannot say this swap ({why}): the pickled model in model.ultralytics.pt "
                        "has the new activations, but anything rebuilt from the yaml (model.pt reload, "
                        "Ultralytics train()) gets the old ones back"}


def _rebuild_matches(model, yaml: dict) -> tuple[bool, str]:
    """Does a DetectionModel built from ``yaml`` have the same activation type in every slot
    that both models have (and no slot of another activation type)?"""
    try:
        from ultralytics.nn.tasks import DetectionModel

        fresh = DetectionModel(copy.deepcopy(yaml), ch=int(yaml.get("channels", 3)), nc=yaml.get("nc"), verbose=False)
    except Exception as e:  # a yaml that does not build cannot carry the swap
        return False, f"the yaml does not rebuild: {type(e).__name__}"

    def acts(m):
        return {n: type(a).__name__ for n, _, _, a in activation_slots(m, ["Module"])
                if type(a).__module__.startswith("torch.nn.modules.activation")}

    have, want = acts(model), acts(fresh)
    diff = [n for n in want if n in have and have[n] != want[n]]
    if diff:
        return False, f"{len(diff)} activation(s) such as {diff[0]} are not Conv.default_act"
    return True, ""


def _reload_check(model, ctx, to_type: str) -> dict:
    """Save ``model`` the way the runner writes ``model.pt`` and load it back: does the reloaded
    network have the new activation in every slot? (An adapter that rebuilds the architecture from
    code, e.g. digitdet's config, brings the old activation back.)"""
    import tempfile
    from pathlib import Path

    from compress.models import load_model
    from compress.models.serialize import save_model
    from compress.recipe import ModelSpec

    want = Counter(type(m).__name__ for _, _, _, m in activation_slots(model, ["Module"])
                   if type(m).__module__.startswith("torch.nn.modules.activation"))
    try:
        with tempfile.TemporaryDirectory(dir=getattr(ctx, "work_dir", None)) as tmp:
            path = Path(tmp) / "model.pt"
            save_model(ctx.adapter, model, path)
            _, back = load_model(ModelSpec(checkpoint=str(path), adapter=ctx.adapter.name))
    except Exception as e:  # an adapter without a reloadable checkpoint: say so, do not guess
        return {"verified": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
    got = Counter(type(m).__name__ for _, _, _, m in activation_slots(back, ["Module"])
                  if type(m).__module__.startswith("torch.nn.modules.activation"))
    keeps = got == want
    out = {"verified": True, "keeps_swap": keeps, "reloaded": dict(got)}
    if not keeps:
        out["note"] = (f"model.pt keeps the weights, but the {ctx.adapter.name} adapter rebuilds the architecture "
                       f"from code on load, so a reloaded model.pt has {dict(got)} instead of {to_type}: "
                       "use model.onnx (it has the new activation)")
    return out
