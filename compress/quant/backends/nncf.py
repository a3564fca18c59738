"""Static int8 with NNCF's post-training quantization on the ONNX graph (QDQ output).

NNCF is imported here only, when this backend runs. The decode tail becomes NNCF's
``ignored_scope`` (by node name); on an x86 CPU without VNNI the overflow fix (weights
in half range, NNCF's answer to u8s8 saturation) is switched on for every layer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from compress.errors import PassError
from compress.quant import head as headmod
from compress.quant import qdq

log = logging.getLogger("compress")


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def quantize(fp32_path: Path, out_path: Path, input_name: str, batches: list[np.ndarray], *,
             preset: str = "performance", fast_bias_correction: bool = True, overflow_fix: bool = False,
             protect_head: bool = True, ignore: list[str] = (), task: str = "detect",
             who: str = "quantize.ptq") -> dict:
    """Quantize ``fp32_path`` with ``nncf.quantize`` into ``out_path``; returns report facts."""
    if not available():
        raise PassError(f"{who}: backend 'nncf' needs the nncf package: pip install nncf")
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = onnx.load(str(fp32_path))
    keep, head = headmod.float_nodes(model, protect_head, list(ignore), who, task)
    dataset = nncf.Dataset(batches, lambda x: {input_name: x})
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if overflow_fix else OverflowFix.DISABLE)
    scope = nncf.IgnoredScope(names=[n.name for n in keep], validate=False) if keep else None
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every node it skips
    try:
        out = nncf.quantize(model, dataset, preset=getattr(nncf.QuantizationPreset, preset.upper()),
                            target_device=nncf.TargetDevice.CPU, subset_size=len(batches),
                            fast_bias_correction=fast_bias_correction, ignored_scope=scope,
                            advanced_parameters=advanced)
    except Exception as e:
        raise PassError(f"{who}: nncf.quantize failed: {qdq.first_line(e)}") from e
    folded = qdq.fold_weight_quantize(out)
    qdq.compact_qdq_names(out)
    qdq.save(out, out_path, metadata_from=model)
    return {"float_nodes": keep, "head": head, "folded_weights": folded}
