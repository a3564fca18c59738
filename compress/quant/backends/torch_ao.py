"""Static int8 (and QAT preparation) with torch.ao.quantization, ending in a QDQ ONNX file.

torch 2.14 no longer ships PT2E (``prepare_pt2e``/``XNNPACKQuantizer`` moved to the
separate torchao package) and FX ``prepare_fx`` needs a symbolically traceable model,
which YOLO-style heads (shape-dependent anchors) are not. So layers are swapped
instead: every Conv/Linear outside the decode tail is wrapped with the engine's own
torch.ao observers / fake-quant modules (``get_default_qconfig(engine)`` for PTQ,
``get_default_qat_qconfig(engine)`` for QAT): per-channel or per-tensor weights as the
engine specifies, per-tensor activations at the layer's input and output (so ONNX
Runtime can fuse DQ -> Conv -> Q). BatchNorm is folded into the convolutions first
(``torch.ao.quantization.fuse_modules``). After calibration/training every quantizer is
frozen to ``torch.fake_quantize_per_*_affine`` with fixed parameters, which the
TorchScript ONNX exporter writes as QuantizeLinear/DequantizeLinear (opset >= 13);
the quantized weights are then folded into int8 initializers. Activation ranges of
0..127 (``reduce_range``) export as Q -> Clip -> DQ.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from compress.errors import PassError
from compress.quant import qdq

ENGINES = ("x86", "qnnpack")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def check_engine(engine: str, who: str) -> None:
    supported = supported_engines()
    if engine not in supported:
        raise PassError(f"{who}: torch quantized engine '{engine}' is not available in this torch build "
                        f"(supported: {', '.join(supported)}); use backend onnxruntime or install a torch "
                        "build with that engine")


def qconfig(engine: str, qat: bool, safe_activations: bool, observer: str = "histogram"):
    """(activation factory, weight factory, description) from torch.ao's engine defaults.

    ``safe_activations`` narrows activations to 0..127 (as the x86 engine already does),
    the u8s8-overflow-safe setting for CPUs without VNNI. ``observer`` "minmax" swaps the
    engine's HistogramObserver (PTQ) for a MinMaxObserver of the same dtype and range."""
    from torch.ao.quantization import get_default_qat_qconfig, get_default_qconfig

    qc = get_default_qat_qconfig(engine) if qat else get_default_qconfig(engine)
    act = qc.activation
    with warnings.catch_warnings():  # torch's own x86 defaults still use the deprecated reduce_range
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        probe = act()
        if safe_activations and _qrange(probe)[1] > 127:
            act = act.with_args(quant_min=0, quant_max=127) if qat else act.with_args(reduce_range=True)
            probe = act()
        w = qc.weight()
        if observer == "minmax" and not qat:
            from torch.ao.quantization import MinMaxObserver

            lo, hi = _qrange(probe)
            act = MinMaxObserver.with_args(dtype=probe.dtype, qscheme=probe.qscheme, quant_min=lo, quant_max=hi)
            probe = act()
    lo, hi = _qrange(probe)
    desc = {"engine": engine, "activation": f"{type(probe).__name__} {probe.dtype} {lo}..{hi}",
            "weight": f"{type(w).__name__} {w.dtype} {str(w.qscheme).replace('torch.', '')}"}
    return act, qc.weight, desc


class QuantWrap(nn.Module):
    """A Conv/Linear with quantizers on its input, weight and output (observers or fake-quant)."""

    def __init__(self, layer: nn.Module, act, weight):
        super().__init__()
        self.layer = layer
        with warnings.catch_warnings():  # torch's own x86 defaults still use the deprecated reduce_range
            warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
            self.input_q, self.weight_q, self.output_q = act(), weight(), act()

    def forward(self, x):
        w = self.weight_q(self.layer.weight)
        x = self.input_q(x)
        if isinstance(self.layer, nn.Linear):
            y = nn.functional.linear(x, w, self.layer.bias)
        else:
            y = self.layer._conv_forward(x, w, self.layer.bias)
        return self.output_q(y)


class Frozen(nn.Module):
    """Fake-quant with fixed parameters: exports as QuantizeLinear -> DequantizeLinear."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None):
        super().__init__()
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).clone())
        self.qmin, self.qmax, self.axis = int(qmin), int(qmax), axis

    def forward(self, x):
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale.reshape(-1)[0]),
                                                         int(self.zero_point.reshape(-1)[0]), self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every BatchNorm that directly consumes a convolution's output into it (eval mode)."""
    from torch.ao.quantization import fuse_modules

    names = {m: n for n, m in model.named_modules()}
    last_out: dict[int, str] = {}
    pairs: list[list[str]] = []

    def conv_hook(mod, inp, out):
        last_out[id(out)] = names[mod]

    def bn_hook(mod, inp):
        src = last_out.get(id(inp[0]))
        if src is not None:
            pairs.append([src, names[mod]])

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, convs)]
    hooks += [m.register_forward_pre_hook(bn_hook) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    from compress.hooks import run_with_hooks

    run_with_hooks(model, example, hooks)
    model.eval()  # fusing folds BN only in eval mode
    unique = list({tuple(p): p for p in pairs}.values())
    if unique:
        fuse_modules(model, unique, inplace=True)
    return len(unique)


def tail_modules(model: nn.Module, fp32: onnx.ModelProto, node_names: list[str]) -> set[str]:
    """Module names of the Conv/Gemm nodes among ``node_names`` (weight initializer name, else node scope)."""
    modules = dict(model.named_modules())
    wanted = set(node_names)
    found = set()
    for n in fp32.graph.node:
        if n.name not in wanted or n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w = n.input[1]
        cand = [w[:-len(".weight")]] if w.endswith(".weight") else []
        cand.append(scope_to_module(n.name))
        for c in cand:
            for prefix in ("", "model."):
                if prefix + c in modules and isinstance(modules[prefix + c], _LAYERS):
                    found.add(prefix + c)
    return found


def scope_to_module(node_name: str) -> str:
    """TorchScript-export node name -> module path: ``/heads.0/box/box.2/Conv`` -> ``heads.0.box.2``."""
    parts: list[str] = []
    for c in node_name.strip("/").split("/")[:-1]:
        if parts and c.startswith(parts[-1] + "."):
            parts[-1] = c
        elif c:
            parts.append(c)
    return ".".join(parts)


def match_modules(model: nn.Module, patterns: list[str], who: str) -> set[str]:
    """Conv/Linear module names matched by ``ignore`` patterns (a name, a class name or re:<regex>)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS)}
    out = set()
    for pat in patterns:
        if pat.startswith("re:"):
            hits = {n for n in layers if re.search(pat[3:], n)}
        else:
            hits = {n for n, m in layers.items() if n == pat or type(m).__name__ == pat}
        if not hits:
            raise PassError(f"{who}: ignore pattern '{pat}' matches no Conv/Linear module (give a module name, "
                            "a class name such as Conv2d, or re:<regex>)")
        out |= hits
    return out


def insert_quantizers(model: nn.Module, skip: set[str], act, weight) -> list[str]:
    """Wrap every Conv/Linear not in ``skip`` with :class:`QuantWrap`; returns the wrapped names."""
    targets = [n for n, m in model.named_modules() if isinstance(m, _LAYERS) and n not in skip and n]
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, QuantWrap(getattr(parent, attr), act, weight))
    return targets


def calibrate(model: nn.Module, batches: list[np.ndarray]) -> None:
    """Run the images through observers (fake-quant switched off while observing)."""
    from torch.ao.quantization import disable_fake_quant, enable_fake_quant, enable_observer

    model.eval()
    model.apply(disable_fake_quant)
    model.apply(enable_observer)
    with torch.no_grad():
        for b in batches:
            model(torch.from_numpy(b))
    model.apply(enable_fake_quant)


def freeze(model: nn.Module) -> int:
    """Replace every observer / fake-quant module by :class:`Frozen` with its current parameters."""
    count = 0
    for wrap in [m for m in model.modules() if isinstance(m, QuantWrap)]:
        for attr in ("input_q", "weight_q", "output_q"):
            q = getattr(wrap, attr)
            if isinstance(q, Frozen):
                continue
            scale, zp = q.calculate_qparams()
            per_channel = q.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
            qmin, qmax = _qrange(q)
            setattr(wrap, attr, Frozen(scale, zp, qmin, qmax, int(q.ch_axis) if per_channel else None))
            count += 1
    return count


def _qrange(q) -> tuple[int, int]:
    """(quant_min, quant_max) of an observer or fake-quant module (already narrowed by reduce_range)."""
    return int(q.quant_min), int(q.quant_max)


def export_qdq(model: nn.Module, adapter, path: Path, opset: int, metadata_from: onnx.ModelProto | None,
               who: str, extra: dict | None = None) -> dict:
    """Export a frozen model to QDQ ONNX with 8-bit weight initializers; returns counts."""
    from compress.export import export_onnx

    tmp = path.with_name(path.stem + ".fq.onnx")
    try:
        export_onnx(model, adapter, tmp, opset=max(13, opset), simplify=True)
    except Exception as e:
        raise PassError(f"{who}: exporting the fake-quant model failed: {qdq.first_line(e)}") from e
    proto = onnx.load(str(tmp))
    folded = qdq.fold_weight_quantize(proto)
    qdq.compact_qdq_names(proto)
    qdq.save(proto, path, metadata_from=metadata_from, extra=extra)
    tmp.unlink(missing_ok=True)
    return {"folded_weights": folded}
