"""``quantize.ptq``: static int8 post-training quantization of the exported ONNX model.

Backends: ``onnxruntime`` (quantize_static, QDQ), ``nncf`` (nncf.quantize on the ONNX
graph) and ``torch`` (torch.ao observers per engine, exported as QDQ). All three keep a
detector's decode tail float (``protect_head``), calibrate on the same preprocessed
images, refuse an already-quantized model, and pick the overflow-safe setting on x86
CPUs without VNNI. The pass never claims a speed-up: the runner measures latency.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register

_ONLY = {  # option -> the backends it applies to
    "calibrate": ("onnxruntime", "torch"), "percentile": ("onnxruntime",), "per_channel": ("onnxruntime",),
    "activation_type": ("onnxruntime",), "weight_type": ("onnxruntime",), "reduce_range": ("onnxruntime",),
    "preset": ("nncf",), "fast_bias_correction": ("nncf",), "engine": ("torch",),
}


class PtqConfig(PassConfig):
    backend: Literal["onnxruntime", "nncf", "torch"] = "onnxruntime"
    samples: int | None = Field(default=None, ge=1, le=100_000)  # calibration images (300 or all when omitted)
    protect_head: bool = True  # keep a detector's decode tail float
    # more layers to keep float: ONNX node names, op types or re:<regex> (backend torch: module names/types)
    ignore: list[str] = []
    diagnose: int = Field(default=0, ge=0, le=1000)  # report the N layers whose int8 activations drift most
    # how activation ranges are found: onnxruntime minmax (default) | entropy | percentile;
    # torch: histogram (the engine's default observer) | minmax (much faster)
    calibrate: Literal["minmax", "entropy", "percentile", "histogram"] | None = None
    # onnxruntime
    percentile: float = Field(default=99.999, gt=90, le=100)
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool | Literal["auto"] = "auto"
    # nncf
    preset: Literal["performance", "mixed"] = "performance"
    fast_bias_correction: bool = True
    # torch
    engine: Literal["x86", "qnnpack"] = "x86"

    @model_validator(mode="after")
    def _backend_options(self):
        # a field at its default is not a request (a resolved recipe lists every field)
        changed = {n for n in self.model_fields_set if getattr(self, n) != type(self).model_fields[n].default}
        for name in sorted(changed):
            allowed = _ONLY.get(name)
            if allowed and self.backend not in allowed:
                raise ValueError(f"'{name}' applies to backend {' / '.join(allowed)}, not '{self.backend}'")
        if "percentile" in changed and self.calibrate != "percentile":
            raise ValueError("'percentile' needs calibrate: percentile")
        allowed = {"onnxruntime": ("minmax", "entropy", "percentile"), "torch": ("histogram", "minmax")}
        if self.calibrate is not None and self.calibrate not in allowed.get(self.backend, ()):
            raise ValueError(f"calibrate '{self.calibrate}' is not available with backend '{self.backend}' "
                             f"(choose {' / '.join(allowed.get(self.backend, ()))})")
        return self


def check_common(pass_: Pass, model, ctx, requested: int | None) -> None:
    """Checks every int8 pass shares: enough calibration images and a 3-channel image input."""
    from compress.quant.calib_reader import pick_images

    pick_images(ctx.calibration, requested, pass_.label)
    x = ctx.adapter.example_input(1)
    if x.ndim != 4 or x.shape[1] != 3:
        raise PassError(f"{pass_.label}: the model takes input of shape {list(x.shape)}; int8 calibration "
                        "needs a 3-channel image input (N, 3, H, W)")


def record_float_nodes(section: dict, ctx, label: str, float_nodes, head, protect_head: bool, task: str) -> None:
    """Report which nodes stayed float and why (section + one plain-language note)."""
    from compress.quant.head import summarize

    section["final_convs"] = list(head.final_convs)
    section["float_nodes"] = [n.to_dict() for n in float_nodes]
    if task != "detect":
        return
    if not protect_head:
        ctx.notes.append(f"{label}: protect_head is off, so the detector's decode tail (box arithmetic, "
                         "sigmoid scores, the boxes+scores Concat) is quantized too; if fidelity fails, "
                         "turn protect_head back on")
    elif float_nodes:
        ctx.notes.append(f"{label}: kept {len(float_nodes)} decode-tail node(s) float: {summarize(float_nodes)}")
    else:
        ctx.notes.append(f"{label}: found no decode tail after the final convolutions; everything was quantized")


@register("quantize.ptq")
class QuantizePTQ(Pass):
    """Static int8 of the exported ONNX model, calibrated on the calibration images."""

    Config = PtqConfig
    stage = "onnx"
    needs_calibration = True

    def check(self, model, ctx) -> None:
        cfg = self.config
        if cfg.backend == "nncf":
            from compress.quant.backends import nncf as nncf_backend

            if not nncf_backend.available():
                raise PassError(f"{self.label}: backend 'nncf' needs the nncf package: pip install nncf")
        if cfg.backend == "torch":
            from compress.quant.backends.torch_ao import check_engine

            check_engine(cfg.engine, self.label)
        check_common(self, model, ctx, cfg.samples)

    def apply_onnx(self, onnx_path: Path, ctx) -> Path:
        from compress.quant import qdq, safety
        from compress.quant.calib_reader import pick_images, preprocess_batches

        cfg, who = self.config, self.label
        t0 = time.perf_counter()
        fp32 = qdq.load(onnx_path)
        qdq.ensure_float(fp32, who)
        input_name, _ = qdq.image_input(fp32, who)
        images, counts = pick_images(ctx.calibration, cfg.samples, who)
        batches = preprocess_batches(ctx.adapter, images)
        out = Path(ctx.work_dir) / f"{Path(onnx_path).stem}.int8.onnx"
        task = ctx.adapter.task
        section = ctx.section(self.label)
        section.update(quantized=True, backend=cfg.backend, calibration=counts, protect_head=cfg.protect_head)

        if cfg.backend == "onnxruntime":
            from compress.quant.backends import ort

            safe = safety.decide(cfg.reduce_range, cfg.activation_type, cfg.weight_type)
            facts = ort.quantize(Path(onnx_path), out, input_name, batches, work_dir=Path(ctx.work_dir),
                                 per_channel=cfg.per_channel, calibrate=cfg.calibrate or "minmax",
                                 percentile=cfg.percentile,
                                 activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                                 reduce_range=safe.reduce_range, protect_head=cfg.protect_head, ignore=cfg.ignore,
                                 task=task, who=who)
            section.update(calibrate=cfg.calibrate or "minmax", per_channel=cfg.per_channel, format="QDQ",
                           activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                           reduce_range=safe.reduce_range, preprocess=facts["preprocess"])
        elif cfg.backend == "nncf":
            from compress.quant.backends import nncf as nncf_backend

            safe = safety.decide("auto", "uint8", "int8", remedy="NNCF's overflow fix halves the weight range")
            facts = nncf_backend.quantize(Path(onnx_path), out, input_name, batches, preset=cfg.preset,
                                          fast_bias_correction=cfg.fast_bias_correction,
                                          overflow_fix=safe.reduce_range, protect_head=cfg.protect_head,
                                          ignore=cfg.ignore, task=task, who=who)
            section.update(preset=cfg.preset, fast_bias_correction=cfg.fast_bias_correction,
                           overflow_fix="enable" if safe.reduce_range else "disable")
        else:
            safe = safety.decide("auto", "uint8", "int8", remedy="activations use 0..127 (reduce_range)")
            facts = self._torch(Path(onnx_path), fp32, out, batches, ctx, safe.reduce_range)
            section.update(**facts.pop("qconfig"))
        section["cpu"] = safe.to_dict()
        if safe.reduce_range:
            ctx.notes.append(f"{who}: {safe.reason}")
        record_float_nodes(section, ctx, who, facts["float_nodes"], facts["head"], cfg.protect_head, task)
        result = qdq.load(out)
        qdq.save(result, out, extra={"quantization": f"int8 static QDQ ({cfg.backend}), {len(images)} calibration "
                                                     f"images, decode tail {'float' if cfg.protect_head else 'int8'}"})
        if cfg.diagnose:
            from compress.quant.drift import describe, diagnose_drift

            rows = diagnose_drift(onnx_path, out, ctx.adapter, images[:8], k=cfg.diagnose)
            section["drift"] = rows
            ctx.notes.append(f"{who}: largest int8 activation drift: {describe(rows)}")
        fp32_bytes, int8_bytes = Path(onnx_path).stat().st_size, out.stat().st_size
        section.update(qdq=qdq.qdq_summary(result), fp32_bytes=fp32_bytes, int8_bytes=int8_bytes,
                       size_ratio=round(fp32_bytes / max(1, int8_bytes), 2),
                       seconds=round(time.perf_counter() - t0, 2),
                       latency="not claimed here: see the report's latency measurement")
        return out

    def _torch(self, onnx_path: Path, fp32, out: Path, batches, ctx, safe_acts: bool) -> dict:
        """torch.ao observers on a copy of ctx.model, calibrated, frozen and exported as QDQ."""
        import torch

        from compress.quant import head as headmod
        from compress.quant.backends import torch_ao

        cfg, who = self.config, self.label
        if ctx.model is None:
            raise PassError(f"{who}: backend 'torch' needs the torch model (ctx.model is not set)")
        model = copy.deepcopy(ctx.model).eval()
        torch_ao.fold_batchnorm(model, torch.from_numpy(batches[0]))
        keep, head = headmod.float_nodes(fp32, cfg.protect_head, [], who, ctx.adapter.task)
        skip = torch_ao.tail_modules(model, fp32, [n.name for n in keep])
        skip |= torch_ao.match_modules(model, cfg.ignore, who)
        act, weight, desc = torch_ao.qconfig(cfg.engine, qat=False, safe_activations=safe_acts,
                                             observer=cfg.calibrate or "histogram")
        wrapped = torch_ao.insert_quantizers(model, skip, act, weight)
        torch_ao.calibrate(model, batches)
        torch_ao.freeze(model)
        opset = max((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), default=17)
        facts = torch_ao.export_qdq(model, ctx.adapter, out, opset, fp32, who)
        return {"float_nodes": keep, "head": head, "qconfig": {**desc, "wrapped_layers": len(wrapped),
                                                                "float_layers": sorted(skip), **facts}}
