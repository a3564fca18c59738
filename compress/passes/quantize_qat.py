"""``quantize.qat``: quantization-aware fine-tuning, ending in a QDQ int8 ONNX file.

Hand-over: this is an *onnx-stage* pass that exports itself. It takes the final torch
model (``ctx.model``), folds BatchNorm, wraps every Conv/Linear outside the decode tail
with torch.ao fake-quant modules (``get_default_qat_qconfig(engine)``: per-channel or
per-tensor weights as the engine says, per-tensor activations), initialises their
ranges on the calibration images, fine-tunes with ``run_finetune(fake_quant=True)``
(task loss with labels, distillation from the reference without), freezes the
quantizers and exports QuantizeLinear/DequantizeLinear (opset >= 13) with int8 weight
initializers. Doing the export here (rather than returning a fake-quant torch model
to the runner's export) keeps the weights 8-bit in the file and the decode tail float,
and lets later passes see an ordinary ONNX file.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register
from compress.passes.finetune import FinetuneConfig


class QatConfig(FinetuneConfig, PassConfig):
    engine: Literal["x86", "qnnpack"] = "x86"
    protect_head: bool = True
    ignore: list[str] = []  # Conv/Linear module names, class names or re:<regex> to keep float
    calib_samples: int | None = Field(default=None, ge=1, le=100_000)  # images that set the initial ranges (64 when omitted)


@register("quantize.qat")
class QuantizeQAT(Pass):
    """Fake-quant fine-tuning of ctx.model, exported as a QDQ int8 ONNX file."""

    Config = QatConfig
    stage = "onnx"
    needs_calibration = True

    def check(self, model, ctx) -> None:
        from compress.passes.finetune import check_finetune
        from compress.passes.quantize_ptq import check_common
        from compress.quant.backends.torch_ao import check_engine

        check_engine(self.config.engine, self.label)
        check_common(self, model, ctx, self.config.calib_samples)
        check_finetune(ctx, self.config, self.label)

    def apply_onnx(self, onnx_path: Path, ctx) -> Path:
        import torch

        from compress.passes.finetune import run_finetune
        from compress.passes.quantize_ptq import record_float_nodes
        from compress.quant import head as headmod
        from compress.quant import qdq, safety
        from compress.quant.backends import torch_ao
        from compress.quant.calib_reader import pick_images, preprocess_batches

        cfg, who = self.config, self.label
        t0 = time.perf_counter()
        if ctx.model is None:
            raise PassError(f"{who}: needs the torch model (ctx.model is not set)")
        fp32 = qdq.load(onnx_path)
        qdq.ensure_float(fp32, who)
        qdq.image_input(fp32, who)
        images, counts = pick_images(ctx.calibration, cfg.calib_samples, who, default=64)
        batches = preprocess_batches(ctx.adapter, images)

        model = copy.deepcopy(ctx.model).eval()
        folded_bn = torch_ao.fold_batchnorm(model, torch.from_numpy(batches[0]))
        keep, head = headmod.float_nodes(fp32, cfg.protect_head, [], who, ctx.adapter.task)
        skip = torch_ao.tail_modules(model, fp32, [n.name for n in keep])
        skip |= torch_ao.match_modules(model, cfg.ignore, who)
        safe = safety.decide("auto", "uint8", "int8", remedy="activations use 0..127 (reduce_range)")
        act, weight, desc = torch_ao.qconfig(cfg.engine, qat=True, safe_activations=safe.reduce_range)
        wrapped = torch_ao.insert_quantizers(model, skip, act, weight)
        torch_ao.calibrate(model, batches)  # ranges start from the data, not from zero

        section = ctx.section(who)
        train_report: dict = {}
        run_finetune(model, ctx, cfg, fake_quant=True, report=train_report, label=who)
        torch_ao.freeze(model)
        out = Path(ctx.work_dir) / f"{Path(onnx_path).stem}.qat.onnx"
        opset = max((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), default=17)
        facts = torch_ao.export_qdq(model, ctx.adapter, out, opset, fp32, who,
                                    extra={"quantization": f"int8 QAT QDQ (torch.ao {cfg.engine})"})

        section.update(quantized=True, backend="torch", **desc, calibration=counts, folded_batchnorm=folded_bn,
                       wrapped_layers=len(wrapped), float_layers=sorted(skip), finetune=train_report,
                       cpu=safe.to_dict(), **facts)
        if safe.reduce_range:
            ctx.notes.append(f"{who}: {safe.reason}")
        record_float_nodes(section, ctx, who, keep, head, cfg.protect_head, ctx.adapter.task)
        fp32_bytes, int8_bytes = Path(onnx_path).stat().st_size, out.stat().st_size
        section.update(qdq=qdq.qdq_summary(qdq.load(out)), fp32_bytes=fp32_bytes, int8_bytes=int8_bytes,
                       size_ratio=round(fp32_bytes / max(1, int8_bytes), 2),
                       seconds=round(time.perf_counter() - t0, 2))
        return out
