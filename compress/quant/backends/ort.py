"""Static int8 with ONNX Runtime: ``quant_pre_process`` then ``quantize_static`` (QDQ)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx

from compress.errors import PassError
from compress.quant import head as headmod
from compress.quant import qdq
from compress.quant.calib_reader import calibration_reader

log = logging.getLogger("compress")

TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def preprocess(src: Path, dst: Path) -> str:
    """ONNX Runtime's quantization pre-processing (symbolic shape inference + basic graph
    optimisation); falls back to ONNX shape inference only, then to the graph as is.
    Returns which step succeeded."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for label, kwargs in (("symbolic shapes + optimisation", {}),
                          ("onnx shapes + optimisation", {"skip_symbolic_shape": True})):
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return label
        except Exception as e:  # a model ORT's shape tools cannot handle is still quantizable
            log.info("quant_pre_process (%s) failed: %s", label, qdq.first_line(e))
    shutil.copyfile(src, dst)
    return "none (pre-processing failed; graph used as exported)"


def _stride(n: int, cap: int = 50) -> int:
    """Largest divisor of ``n`` not above ``cap``: calibration statistics are merged every
    ``stride`` images, which bounds memory (ORT requires it to divide the total)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def quantize(fp32_path: Path, out_path: Path, input_name: str, batches: list[np.ndarray], *, work_dir: Path,
             per_channel: bool = True, calibrate: str = "minmax", percentile: float = 99.999,
             activation_type: str = "uint8", weight_type: str = "int8", reduce_range: bool = False,
             protect_head: bool = True, ignore: list[str] = (), task: str = "detect",
             who: str = "quantize.ptq") -> dict:
    """Quantize ``fp32_path`` into ``out_path``; returns the report facts (float nodes etc.)."""
    from onnxruntime import quantization as oq

    work_dir.mkdir(parents=True, exist_ok=True)
    pre = work_dir / f"{out_path.stem}.pre.onnx"
    pre_step = preprocess(fp32_path, pre)
    model = onnx.load(str(pre))
    keep, head = headmod.float_nodes(model, protect_head, list(ignore), who, task)
    reader = calibration_reader(input_name, batches)
    stride = _stride(len(batches))
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "CalibStridedMinMax": stride}
    if calibrate == "percentile":
        extra["CalibPercentile"] = float(percentile)
    tmp = work_dir / f"{out_path.stem}.int8.tmp.onnx"
    try:
        oq.quantize_static(
            str(pre), str(tmp), reader, quant_format=oq.QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=reduce_range, activation_type=getattr(oq.QuantType, TYPES[activation_type]),
            weight_type=getattr(oq.QuantType, TYPES[weight_type]), nodes_to_exclude=[n.name for n in keep],
            calibrate_method=getattr(oq.CalibrationMethod, METHODS[calibrate]), extra_options=extra)
    except PassError:
        raise
    except Exception as e:
        raise PassError(f"{who}: onnxruntime quantize_static failed: {qdq.first_line(e)}") from e
    out = onnx.load(str(tmp))
    qdq.compact_qdq_names(out)
    src = onnx.load(str(fp32_path), load_external_data=False)
    qdq.save(out, out_path, metadata_from=src)
    tmp.unlink(missing_ok=True)
    return {"preprocess": pre_step, "float_nodes": keep, "head": head, "calibration_stride": stride}

