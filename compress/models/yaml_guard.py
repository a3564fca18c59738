"""Check an Ultralytics model yaml before Ultralytics builds it: no code from data.

Ultralytics' ``parse_model`` calls ``eval`` on the yaml's ``activation`` string and looks
module names up in its own globals; a ``weights_only`` checkpoint or a yaml file can
therefore carry a Python expression that runs while the model is built. Ultralytics'
own restricted mode (``ULTRALYTICS_SAFE_LOAD``) is read once at import, is process-wide,
also changes how trusted full pickles load, and is missing from older releases, so this
module checks the yaml itself, against allow-lists, before it reaches Ultralytics:

* ``activation``: ``nn.<Name>(...)`` or ``torch.nn.<Name>(...)`` for a torch activation
  in :data:`ACTIVATIONS`, with number/bool arguments only;
* layer modules: the layer classes ``ultralytics.nn.tasks`` imports from
  ``ultralytics.nn.modules`` (as the installed version resolves them), ``nn.<Name>`` for a
  ``torch.nn`` module class, and ``Silence`` (renamed to ``nn.Identity`` by Ultralytics);
  ``TorchVision`` is refused (it builds torchvision models and may download weights);
* layer arguments: numbers, bools, None, nested lists of those, and plain words;
  a word that names a local variable of ``parse_model`` is refused unless it is one the
  shipped yamls use (``nc``, ``kpt_shape``);
* counts (``nc``, repeats, channel numbers) bounded so a yaml cannot exhaust memory.

Every refusal is one :class:`~compress.errors.ModelLoadError` naming the field.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from pathlib import Path
from typing import Any

from compress.errors import ModelLoadError

ACTIVATIONS = frozenset({
    "ReLU", "ReLU6", "SiLU", "LeakyReLU", "Hardswish", "Hardsigmoid", "Mish", "GELU", "ELU", "SELU", "CELU",
    "PReLU", "RReLU", "Sigmoid", "Tanh", "Identity", "Softplus", "Hardtanh", "Softsign", "Tanhshrink",
    "LogSigmoid"})
ALLOWED_LOCALS = frozenset({"nc", "kpt_shape"})  # parse_model locals that shipped yamls pass as arguments
REFUSED_LAYERS = frozenset({"TorchVision"})  # builds torchvision models: may download weights
MAX_NC = 100_000
MAX_REPEATS = 100
MAX_INT = 65_536  # channel counts, kernel sizes, ... (shipped yamls: at most 2048)
MAX_LAYERS = 1_000
MAX_DEPTH = 8  # nesting of argument lists
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _quote(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _refuse(where: str, field: str, problem: str) -> ModelLoadError:
    return ModelLoadError(f"{where}: model yaml {field}: {problem}")


@functools.lru_cache(maxsize=1)
def ultralytics_layers() -> frozenset[str]:
    """Names of the layer classes the installed ``ultralytics.nn.tasks`` resolves from its own modules."""
    from torch import nn
    from ultralytics.nn import tasks

    return frozenset(name for name, obj in vars(tasks).items()
                     if isinstance(obj, type) and issubclass(obj, nn.Module)
                     and obj.__module__.startswith("ultralytics.nn.modules") and name not in REFUSED_LAYERS)


@functools.lru_cache(maxsize=1)
def _parse_model_locals() -> frozenset[str]:
    from ultralytics.nn import tasks

    code = tasks.parse_model.__code__
    return frozenset(code.co_varnames + code.co_cellvars + code.co_freevars) - ALLOWED_LOCALS


def check_activation(act: Any, where: str = "model") -> None:
    """Refuse an ``activation`` that is not ``[torch.]nn.<Activation>(numbers)``."""
    if act is None or act is False or act == "":
        return
    allowed = "nn.SiLU(), nn.ReLU(), nn.LeakyReLU(0.1), ... (a torch.nn activation with number arguments)"
    if not isinstance(act, str) or len(act) > 100:
        raise _refuse(where, "'activation'", f"refused {_quote(act)} (allowed: {allowed})")
    try:
        call = ast.parse(act.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        call = None
    ok = isinstance(call, ast.Call) and _is_nn_name(call.func) and all(
        _is_number(a) for a in call.args) and all(kw.arg and _is_number(kw.value) for kw in call.keywords)
    if not ok:
        raise _refuse(where, "'activation'", f"refused {_quote(act)} (allowed: {allowed})")


def _is_nn_name(node: ast.AST) -> bool:
    """``nn.X`` or ``torch.nn.X`` with X an allowed activation."""
    if not isinstance(node, ast.Attribute) or node.attr not in ACTIVATIONS:
        return False
    base = node.value
    if isinstance(base, ast.Name):
        return base.id == "nn"
    return (isinstance(base, ast.Attribute) and base.attr == "nn" and isinstance(base.value, ast.Name)
            and base.value.id == "torch")


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool))
            and (not isinstance(node.value, float) or math.isfinite(node.value))
            and abs(node.value) <= MAX_INT)


def check_module(name: Any, where: str, field: str) -> None:
    """Refuse a layer module name that Ultralytics would resolve to anything but a known layer class."""
    if isinstance(name, str) and (name in ultralytics_layers() or name == "Silence"):
        return
    if isinstance(name, str) and name.startswith("nn.") and _WORD.fullmatch(name[3:]):
        from torch import nn

        obj = getattr(nn, name[3:], None)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return
    raise _refuse(where, field, f"module {_quote(name)} is not an Ultralytics layer or a torch.nn module")


def _check_arg(value: Any, where: str, field: str, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or abs(value) > MAX_INT:
            raise _refuse(where, field, f"number {_quote(value)} out of range (|x| <= {MAX_INT})")
        return
    if isinstance(value, str):
        if not _WORD.fullmatch(value):
            raise _refuse(where, field, f"refused string {_quote(value)} (only plain words such as 'nc' or "
                                        "'nearest'; Ultralytics would evaluate it)")
        if value in _parse_model_locals():
            raise _refuse(where, field, f"refused string {_quote(value)} (it names a variable inside "
                                        "Ultralytics' parse_model)")
        return
    if isinstance(value, (list, tuple)) and depth < MAX_DEPTH:
        for i, v in enumerate(value):
            _check_arg(v, where, f"{field}[{i}]", depth + 1)
        return
    raise _refuse(where, field, f"refused value {_quote(value)} (numbers, bools, None, words and lists only)")


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check_from(f: Any) -> bool:
    if isinstance(f, list):
        return 0 < len(f) <= 64 and all(_int_in(x, -MAX_LAYERS, MAX_LAYERS) for x in f)
    return _int_in(f, -MAX_LAYERS, MAX_LAYERS)


def _check_plain(value: Any, where: str, field: str, depth: int = 0) -> None:
    """Only YAML-like data (no objects, no tensors), not nested absurdly deep."""
    if depth > 32:
        raise _refuse(where, field, "nested too deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise _refuse(where, field, f"key {_quote(k)} is not a string")
            _check_plain(v, where, f"{field}.{k}" if field else f"'{k}'", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, where, f"{field}[{i}]", depth + 1)
        return
    raise _refuse(where, field or "", f"holds a {type(value).__name__}, not plain data")


def check_model_yaml(d: Any, where: str = "model") -> dict:
    """Return ``d`` when it is safe to give to Ultralytics' ``DetectionModel``; else ModelLoadError."""
    if not isinstance(d, dict):
        raise ModelLoadError(f"{where}: the model yaml must be a mapping (got {type(d).__name__})")
    _check_plain(d, where, "")
    check_activation(d.get("activation"), where)
    nc = d.get("nc")
    if nc is not None and not _int_in(nc, 1, MAX_NC):
        raise _refuse(where, "'nc'", f"must be an integer 1..{MAX_NC} (got {_quote(nc)})")
    for key in ("depth_multiple", "width_multiple"):
        v = d.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 16:
            raise _refuse(where, f"'{key}'", f"must be a number in (0, 16] (got {_quote(v)})")
    scales = d.get("scales")
    if scales is not None:
        if not isinstance(scales, dict):
            raise _refuse(where, "'scales'", "must be a mapping of scale -> [depth, width, max_channels]")
        for k, v in scales.items():
            if not (isinstance(v, list) and len(v) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= MAX_INT for x in v)):
                raise _refuse(where, f"'scales.{k}'", f"must be [depth, width, max_channels] (got {_quote(v)})")
    for key, lo, hi in (("reg_max", 1, 64), ("channels", 1, 64)):
        if key in d and not _int_in(d[key], lo, hi):
            raise _refuse(where, f"'{key}'", f"must be an integer {lo}..{hi} (got {_quote(d[key])})")
    rows = []
    for part in ("backbone", "head"):
        layers = d.get(part)
        if not isinstance(layers, list) or not layers:
            raise _refuse(where, f"'{part}'", "must be a non-empty list of [from, repeats, module, args]")
        rows += [(f"{part}[{i}]", row) for i, row in enumerate(layers)]
    if len(rows) > MAX_LAYERS:
        raise _refuse(where, "'backbone'/'head'", f"more than {MAX_LAYERS} layers")
    for field, row in rows:
        if not isinstance(row, list) or len(row) != 4:
            raise _refuse(where, field, "must be [from, repeats, module, args]")
        f, n, m, args = row
        if not _check_from(f):
            raise _refuse(where, f"{field} from", f"must be a layer index or a list of them (got {_quote(f)})")
        if not _int_in(n, 1, MAX_REPEATS):
            raise _refuse(where, f"{field} repeats", f"must be an integer 1..{MAX_REPEATS} (got {_quote(n)})")
        check_module(m, where, f"{field} module")
        if not isinstance(args, list):
            raise _refuse(where, f"{field} args", f"must be a list (got {_quote(args)})")
        _check_arg(args, where, f"{field} args")
    return d


def read_model_yaml(cfg: str) -> dict:
    """Read a model yaml (a local file, or a name Ultralytics ships such as ``yolov8n.yaml``) and check it.

    Raises ``FileNotFoundError`` for a name that is neither (as Ultralytics does) and
    ModelLoadError for a refused yaml. URLs are refused: nothing is downloaded.
    """
    if "://" in cfg:
        raise ModelLoadError(f"{_quote(cfg)}: model yamls are read from local files only (nothing is downloaded)")
    path = Path(cfg)
    if path.is_file():
        from ultralytics.nn.tasks import guess_model_scale

        from compress.yamlio import load_file

        d = load_file(path, ModelLoadError, "model yaml")
        if not isinstance(d, dict):
            raise ModelLoadError(f"{path}: a model yaml must be a mapping")
        d["scale"] = guess_model_scale(path)  # as Ultralytics' yaml_model_load
        d["yaml_file"] = str(path)
    else:
        from ultralytics.nn.tasks import yaml_model_load

        d = yaml_model_load(cfg)  # Ultralytics' own shipped yamls; FileNotFoundError for unknown names
    return check_model_yaml(d, str(cfg))
