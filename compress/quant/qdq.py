"""Small ONNX graph helpers shared by the quantization backends.

Reading and checking the float model (already quantized? 3-channel image input?),
folding ``QuantizeLinear`` of constant weights into int8 initializers (what makes a
fake-quant export 4x smaller), counting QDQ nodes and writing the result atomically
with the float model's metadata carried over.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress.errors import PassError

# op types that mean "this graph is already quantized"
QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
    "QLinearConcat", "QLinearSigmoid", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSoftmax",
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat", "QGemm", "QAttention",
})


_SHORT = re.compile(r"q\d+")


def first_line(e: Exception) -> str:
    """The first line of an exception's message (library errors can be pages long)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load(path: str | os.PathLike) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise PassError(f"{p}: ONNX file not found")
    return onnx.load(str(p))


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def ensure_float(model: onnx.ModelProto, who: str) -> None:
    """PassError when the graph already holds quantization ops (quantizing twice corrupts it)."""
    found = {op: c for op, c in op_counts(model).items() if op in QUANT_OPS}
    if found:
        listed = ", ".join(f"{c} {op}" for op, c in sorted(found.items()))
        raise PassError(f"{who}: the model is already quantized ({listed}); quantize the float model once")


def image_input(model: onnx.ModelProto, who: str) -> tuple[str, list]:
    """Name and shape of the image input; PassError unless it is NCHW with 3 channels."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise PassError(f"{who}: expected one image input, the model has {len(inputs)}")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3:
        raise PassError(f"{who}: input '{inp.name}' has shape {dims}; int8 calibration needs a 3-channel "
                        "NCHW image input (N, 3, H, W)")
    return inp.name, dims


def fold_weight_quantize(model: onnx.ModelProto) -> int:
    """Replace ``QuantizeLinear(constant)`` by its int8/uint8 result; return how many were folded.

    Fake-quant exports keep float weights followed by Q -> DQ; after folding the file
    stores 8-bit weights feeding ``DequantizeLinear`` (the layout ONNX Runtime fuses).
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = dict(inits)
    for n in graph.node:  # Constant nodes (and Identity copies of constants) hold weights too
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
        elif n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    keep, folded = [], 0
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3 and all(x in consts for x in node.input[:3]):
            x = numpy_helper.to_array(consts[node.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(consts[node.input[1]]).astype(np.float32)
            zp = numpy_helper.to_array(consts[node.input[2]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zpb = scale.reshape(shape), zp.reshape(shape)
            else:
                zpb = zp
            info = np.iinfo(zp.dtype)
            q = np.clip(np.round(x / scale) + zpb.astype(np.int32), info.min, info.max).astype(zp.dtype)
            t = numpy_helper.from_array(q, node.output[0])
            graph.initializer.append(t)
            folded += 1
            continue
        keep.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused(model)
    return folded


def drop_unused(model: onnx.ModelProto) -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    graph = model.graph
    for _ in range(2):
        used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
        nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
        inits = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        names = {i.name for i in inits}
        ins = [i for i in graph.input if i.name in used or i.name not in names]
        del graph.input[:]
        graph.input.extend(ins)


def compact_qdq_names(model: onnx.ModelProto) -> int:
    """Give QuantizeLinear/DequantizeLinear nodes, their outputs and their scale / zero-point /
    weight initializers short names (``q12``); returns how many names changed.

    Quantizers name every generated tensor after its source (``<tensor>_QuantizeLinear_Output``,
    ``<tensor>_DequantizeLinear_Output``, ``<tensor>_zero_point``...), so each QDQ pair repeats a
    long name up to eight times: about a tenth of a small int8 file. Names of the original
    graph's nodes and tensors (Conv outputs etc.) are kept.
    """
    graph = model.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    inits = {i.name for i in graph.initializer}
    taken = {x for n in graph.node for x in (*n.input, *n.output)} | inits
    rename: dict[str, str] = {}
    counter = iter(range(10 ** 9))

    def short(name: str) -> None:
        if not name or name in keep or name in rename or _SHORT.fullmatch(name):
            return
        new = f"q{next(counter)}"
        while new in taken:
            new = f"q{next(counter)}"
        rename[name] = new

    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for x in n.output:
                short(x)
            for x in n.input:
                if x in inits:
                    short(x)
            if not _SHORT.fullmatch(n.name[1:] if n.name else ""):
                n.name = ""
    if not rename:
        return 0
    for i, n in enumerate(graph.node):
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(x, x) for x in n.output]
        if not n.name:
            n.name = f"{n.op_type[0].lower()}q{i}"  # qq12 / dq13
    for coll in (graph.initializer, graph.value_info):
        for item in coll:
            item.name = rename.get(item.name, item.name)
    return len(rename)


def qdq_summary(model: onnx.ModelProto) -> dict:
    """How many QDQ pairs and which of the weight-bearing layers run on 8-bit weights."""
    counts = op_counts(model)
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    int8_inits = sum(1 for i in model.graph.initializer if i.data_type in eight_bit)
    return {"quantize_linear": counts.get("QuantizeLinear", 0), "dequantize_linear": counts.get("DequantizeLinear", 0),
            "int8_initializers": int8_inits}


def save(model: onnx.ModelProto, path: str | os.PathLike, metadata_from: onnx.ModelProto | None = None,
         extra: dict | None = None) -> Path:
    """Write ``model`` atomically, carrying over ``metadata_from``'s metadata_props plus ``extra``."""
    from compress.atomic import atomic_write_bytes

    props = {p.key: p.value for p in (metadata_from.metadata_props if metadata_from is not None else [])}
    props.update({p.key: p.value for p in model.metadata_props if p.key not in props})
    props.update({str(k): str(v) for k, v in (extra or {}).items() if v is not None})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    return atomic_write_bytes(path, model.SerializeToString())
