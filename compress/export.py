"""Export a torch model to a simplified, checked ONNX file with the project's metadata.

Exporter choice (torch 2.14): the TorchScript-based exporter (``dynamo=False``). It
still ships, is about 50x faster than the ``torch.export`` path on small models, emits
the requested opset (17) exactly and produces a clean static graph whose node names
follow the torch module path (``/backbone/backbone.0/Conv``), which the per-layer
profile relies on. The dynamo exporter cannot emit opset 17 (it starts at 18 and its
down-conversion fails on ``ReduceMean``); pass ``dynamo=True`` through
``**export_kwargs`` to use it anyway (then ask for ``opset >= 18``); it is chosen
automatically for opsets above 20, which the TorchScript exporter cannot emit.

The input is fixed at batch 1 and named ``images``; the single output is ``output0``
(the adapter's first output). ``compress.runtime.session.run`` splits larger batches.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError

log = logging.getLogger("compress")

_TORCHSCRIPT_MAX_OPSET = 20  # newer opsets go through the dynamo exporter
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
PREPROCESS = {"detect": "letterbox rgb /255 nchw", "classify": "resize rgb /255 nchw"}


class _FirstOutput(nn.Module):
    """Exports exactly what ``adapter.forward`` returns (the first output)."""

    def __init__(self, model: nn.Module, adapter):
        super().__init__()
        self.model = model
        self._adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._adapter.forward(self.model, x)


def export_onnx(model: nn.Module, adapter, path: str | os.PathLike, *, opset: int = 17, simplify: bool = True,
                metadata: dict[str, Any] | None = None, end2end: bool | None = None, dynamic_batch: bool = False,
                **export_kwargs) -> Path:
    """Export ``model`` to ``path`` (written atomically) and return the path.

    Steps: ``torch.onnx.export`` of ``adapter.example_input(1)`` in eval mode with
    fake-quant observers paused (train/eval flags and observer switches are restored
    afterwards; QAT models export as QuantizeLinear/DequantizeLinear), onnxsim (on failure the
    unsimplified graph is kept, a warning logged and ``simplified=false`` recorded),
    ``onnx.checker.check_model(full_check=True)``, then metadata_props:
    ``adapter.metadata()`` (Ultralytics' keys, see :func:`ultralytics_metadata`), ``args``,
    ``preprocess``, ``compress_version``, ``recipe_hash``, ``opset``, ``simplified`` and
    every key of ``metadata``.
    ``export_kwargs`` go to ``torch.onnx.export`` (e.g. for fake-quant models).
    ``end2end`` (recipe ``export.end2end``) picks an end-to-end head's output through
    ``adapter.set_end2end`` (kept on the adapter, so the fidelity check decodes the same branch).
    ``dynamic_batch`` (recipe ``export.dynamic_batch``) makes the first axis of input and output free.
    """
    import onnx

    from compress import __version__
    from compress.atomic import atomic_write_bytes

    if end2end is not None:
        if not hasattr(adapter, "set_end2end"):
            raise CompressError(f"export.end2end: the {adapter.name} adapter has no end-to-end output")
        adapter.set_end2end(model, end2end)
    if dynamic_batch:
        export_kwargs.setdefault("dynamic_axes", {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = _torch_export(model, adapter, opset, export_kwargs)
    simplified, why = False, "disabled"
    if simplify:
        proto, simplified, why = _simplify(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise CompressError(f"{path}: exported ONNX model fails onnx.checker: {_first_line(e)}") from e

    props: dict[str, Any] = dict(adapter.metadata())
    props.update(args=export_args(_opset(proto), simplified, dynamic=dynamic_batch), preprocess=PREPROCESS.get(adapter.task, "rgb /255 nchw"),
                 compress_version=__version__, recipe_hash="none", opset=str(_opset(proto)),
                 simplified=str(simplified).lower())
    if not simplified and simplify:
        props["simplify_error"] = why
    props.update(metadata or {})
    set_metadata(proto, props)
    return atomic_write_bytes(path, proto.SerializeToString())


def _torch_export(model: nn.Module, adapter, opset: int, export_kwargs: dict):
    import onnx

    modes = {m: m.training for m in model.modules()}
    # fake-quant observers (QAT) must not record the export's dummy input, nor be traced
    observers = {m: m.observer_enabled.clone() for m in model.modules()
                 if isinstance(getattr(m, "observer_enabled", None), torch.Tensor)}
    param = next(model.parameters(), None)
    x = adapter.example_input(1)
    if param is not None:
        x = x.to(param.device)
    buf = io.BytesIO()
    kwargs = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset,
              "dynamo": opset > _TORCHSCRIPT_MAX_OPSET, **export_kwargs}
    if not kwargs["dynamo"]:
        kwargs.setdefault("do_constant_folding", True)
    try:
        model.eval()
        for m in observers:
            m.observer_enabled.fill_(0)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            result = torch.onnx.export(_FirstOutput(model, adapter).eval(), (x,), buf, **kwargs)
    except CompressError:
        raise
    except Exception as e:
        raise CompressError(f"ONNX export failed: {_first_line(e)}") from e
    finally:
        for m, training in modes.items():
            m.train(training)
        for m, enabled in observers.items():
            m.observer_enabled.copy_(enabled)
    if result is not None and buf.tell() == 0:  # the dynamo exporter returns an ONNXProgram
        proto = result.model_proto
    else:
        proto = onnx.load_from_string(buf.getvalue())
    _strip_wrapper_scope(proto)
    return proto


def _strip_wrapper_scope(proto) -> None:
    """Names as if the model had been exported directly, without the wrapper module:
    ``/model/head/Conv`` -> ``/head/Conv`` (nodes and values), ``model.head.weight`` ->
    ``head.weight`` (initializers, now equal to the model's state_dict keys)."""
    graph = proto.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return  # subgraphs may refer to outer names; leave such a model as exported

    def rename(name: str) -> str:
        if name.startswith("/model/"):
            return name[len("/model"):]
        return name[len("model."):] if name.startswith("model.") else name

    names = {v for n in graph.node for v in (n.name, *n.input, *n.output)}
    names |= {i.name for coll in (graph.initializer, graph.input, graph.output) for i in coll}
    if any(rename(v) != v and rename(v) in names for v in names):
        return  # the wrapper's own ops (e.g. an adapter's flattening) hold the short names
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(v) for v in node.input]
        node.output[:] = [rename(v) for v in node.output]
    for coll in (graph.initializer, graph.value_info, graph.input, graph.output):
        for item in coll:
            item.name = rename(item.name)


def _simplify(proto):
    """(model, simplified?, reason) -- onnxsim, or the input unchanged with a warning."""
    try:
        import onnxsim

        out, ok = onnxsim.simplify(proto)
    except Exception as e:  # onnxsim failing must not lose the export
        ok, out, why = False, None, _first_line(e)
    else:
        why = "" if ok else "onnxsim's output check failed"
    if not ok:
        log.warning("onnxsim could not simplify the model (%s); keeping the unsimplified graph", why)
        return proto, False, why
    return out, True, ""


def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def set_metadata(proto, props: dict[str, Any]) -> None:
    """Replace ``proto``'s metadata_props by ``props`` merged over the existing ones."""
    merged = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("onnxsim.")}
    merged.update({str(k): str(v) for k, v in props.items() if v is not None})
    del proto.metadata_props[:]
    for k, v in merged.items():
        proto.metadata_props.add(key=k, value=v)


# -- metadata in Ultralytics' format ------------------------------------------------------------
# Ultralytics' exporter (ultralytics/engine/exporter.py) writes ``str(value)`` of Python objects and its
# AutoBackend reads them back with ``ast.literal_eval`` (names, imgsz, args, end2end) or ``int`` (stride,
# batch, channels); writing the same keys the same way lets ``YOLO("model.onnx")`` load our files.
ULTRALYTICS_LICENSE = "AGPL-3.0 License (https://ultralytics.com/license)"
ULTRALYTICS_DOCS = "https://docs.ultralytics.com"


def ultralytics_metadata(class_names: list[str], imgsz: int | tuple[int, int], stride: int, task: str, *,
                         description: str, author: str = "compress", version: str | None = None,
                         license: str = "unspecified: the license of the original model applies",
                         docs: str = "compress README: What a run writes", head: str | None = None,
                         end2end: bool = False, channels: int = 3, batch: int = 1) -> dict[str, str]:
    """The metadata keys Ultralytics' ONNX exporter writes, as the strings it writes them.

    ``names`` ``{0: 'a', 1: 'b'}``, ``imgsz`` ``[h, w]``, ``stride``/``batch``/``channels``
    integers, ``end2end`` ``True``/``False``; ``version`` defaults to compress's.
    """
    from datetime import datetime

    from compress import __version__

    hw = [int(imgsz), int(imgsz)] if isinstance(imgsz, int) else [int(v) for v in imgsz]
    meta = {"description": description, "author": author, "date": datetime.now().astimezone().isoformat(),
            "version": version or __version__, "license": license, "docs": docs, "stride": str(int(stride)),
            "task": task, "batch": str(int(batch)), "imgsz": str(hw),
            "names": str({i: str(n) for i, n in enumerate(class_names)}), "channels": str(int(channels)),
            "end2end": str(bool(end2end))}
    if head:
        meta["head"] = head
    return meta


def export_args(opset: int, simplified: bool, *, nms: bool = False, quantize: int | None = None,
                dynamic: bool = False) -> str:
    """The ``args`` metadata value (Ultralytics writes the ONNX export arguments it used)."""
    return str({"batch": 1, "quantize": quantize, "nms": nms, "dynamic": bool(dynamic), "simplify": bool(simplified),
                "opset": int(opset)})


_INT8_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


def restamp_args(proto, args: str | None) -> str:
    """``args`` (as :func:`export_args` wrote it) with ``quantize: 8`` when ``proto`` has int8 ops."""
    import ast

    try:
        parsed = ast.literal_eval(args) if args else None
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, dict):
        parsed = ast.literal_eval(export_args(_opset(proto), False))
    if any(n.op_type in _INT8_OPS for n in proto.graph.node):
        parsed["quantize"] = 8
    return str(parsed)


def parse_names(value: str | None) -> list[str] | None:
    """Class names from a ``names`` metadata value: Ultralytics' dict literal, or the
    comma-joined list files written by compress before 0.2 used (both are read)."""
    import ast

    if value is None:
        return None
    text = value.strip()
    if text.startswith(("{", "[")):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise CompressError(f"unreadable 'names' metadata: {text[:60]!r}") from None
        if isinstance(parsed, dict):
            return [str(parsed[k]) for k in sorted(parsed, key=int)]
        return [str(v) for v in parsed]
    return text.split(",") if text else []


def parse_imgsz(value: str | None) -> list[int] | None:
    """``[h, w]`` from an ``imgsz`` metadata value (``[64, 64]``, or ``64`` as older files wrote it)."""
    import ast

    if value is None:
        return None
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise CompressError(f"unreadable 'imgsz' metadata: {value[:60]!r}") from None
    if isinstance(parsed, int):
        return [parsed, parsed]
    return [int(v) for v in parsed]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict (weights are not loaded)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise CompressError(f"{p}: ONNX file not found")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise CompressError(f"{p}: not a readable ONNX file ({_first_line(e)})") from e
    return {m.key: m.value for m in proto.metadata_props}
