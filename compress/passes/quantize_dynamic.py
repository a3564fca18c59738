"""``quantize.dynamic``: int8 weights for Linear (and LSTM) layers, activations quantized at run time.

ONNX Runtime's ``quantize_dynamic`` on the exported graph: Linear layers (exported as
Gemm, rewritten to MatMul first because ORT's dynamic int8 kernels are MatMul ones)
become DynamicQuantizeLinear + MatMulInteger with int8 weights; LSTM becomes
DynamicQuantizeLSTM. Convolutions stay float: the report counts how many of the
model's MACs are in Conv vs Linear layers, which says how much this can give. GRU has
no dynamic int8 kernel in ONNX Runtime and stays float.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import PassError
from compress.passes.base import Pass, PassConfig, register


class DynamicConfig(PassConfig):
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = False
    reduce_range: bool | Literal["auto"] = "auto"
    min_linear_fraction: float = Field(default=0.0, ge=0, le=1)  # refuse when Linear MACs are below this share


def count_macs(model, example) -> dict:
    """MACs of one forward pass by layer kind (conv / linear / recurrent), via forward hooks."""
    from torch import nn

    totals = {"conv": 0, "linear": 0, "recurrent": 0}

    def conv(m, inp, out):
        k = m.weight[0].numel()  # in_channels / groups * kernel taps
        totals["conv"] += int(out.numel()) * int(k)

    def linear(m, inp, out):
        totals["linear"] += int(out.numel()) * int(m.in_features)

    def rnn(m, inp, out):
        x = inp[0]
        steps = x.numel() // max(1, x.shape[-1])
        gates = 4 if isinstance(m, nn.LSTM) else 3 if isinstance(m, nn.GRU) else 1
        dirs = 2 if m.bidirectional else 1
        per = gates * m.hidden_size * (m.input_size + m.hidden_size)
        deeper = gates * m.hidden_size * (m.hidden_size * dirs + m.hidden_size)
        totals["recurrent"] += steps * dirs * (per + deeper * (m.num_layers - 1))

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            hooks.append(m.register_forward_hook(rnn))
    from compress.hooks import run_with_hooks

    run_with_hooks(model, example, hooks)
    return totals


@register("quantize.dynamic")
class QuantizeDynamic(Pass):
    """Dynamic int8 of Linear/LSTM layers (no calibration); convolutions stay float."""

    Config = DynamicConfig
    stage = "onnx"
    needs_calibration = False

    def check(self, model, ctx) -> None:
        from torch import nn

        kinds = (nn.Linear, nn.LSTM)
        if not any(isinstance(m, kinds) for m in model.modules()):
            raise PassError(f"{self.label}: the model has no Linear or LSTM layer; dynamic int8 quantizes only "
                            "those (use quantize.ptq for convolutions)")
        macs = count_macs(model, ctx.adapter.example_input(1))
        share = (macs["linear"] + macs["recurrent"]) / max(1, sum(macs.values()))
        if share < self.config.min_linear_fraction:
            raise PassError(f"{self.label}: only {100 * share:.1f}% of the MACs are in Linear/LSTM layers "
                            f"(min_linear_fraction {self.config.min_linear_fraction}); use quantize.ptq")

    def apply_onnx(self, onnx_path: Path, ctx) -> Path:
        import onnx
        from onnxruntime import quantization as oq
        from onnxruntime.quantization.onnx_model import ONNXModel

        from compress.quant import qdq, safety

        cfg, who = self.config, self.label
        t0 = time.perf_counter()
        fp32 = qdq.load(onnx_path)
        qdq.ensure_float(fp32, who)
        ops = qdq.op_counts(fp32)
        model = onnx.load(str(onnx_path))
        ONNXModel(model).replace_gemm_with_matmul()
        safe = safety.decide(cfg.reduce_range, "uint8", cfg.weight_type)
        out = Path(ctx.work_dir) / f"{Path(onnx_path).stem}.dynamic.onnx"
        tmp = Path(ctx.work_dir) / f"{Path(onnx_path).stem}.dynamic.tmp.onnx"
        wtype = oq.QuantType.QInt8 if cfg.weight_type == "int8" else oq.QuantType.QUInt8
        try:
            oq.quantize_dynamic(model, str(tmp), op_types_to_quantize=["MatMul", "LSTM"], per_channel=cfg.per_channel,
                                reduce_range=safe.reduce_range, weight_type=wtype,
                                extra_options={"MatMulConstBOnly": True})
        except Exception as e:
            raise PassError(f"{who}: onnxruntime quantize_dynamic failed: {qdq.first_line(e)}") from e
        result = onnx.load(str(tmp))
        qdq.drop_unused(result)
        qdq.save(result, out, metadata_from=fp32, extra={"quantization": "int8 dynamic (Linear/LSTM weights)"})
        tmp.unlink(missing_ok=True)

        done = qdq.op_counts(result)
        macs = count_macs(ctx.model if ctx.model is not None else ctx.reference, ctx.adapter.example_input(1))
        total = max(1, sum(macs.values()))
        section = ctx.section(who)
        section.update(quantized=True, weight_type=cfg.weight_type, per_channel=cfg.per_channel,
                       reduce_range=safe.reduce_range, cpu=safe.to_dict(), macs=macs,
                       quantized_ops={"MatMulInteger": done.get("MatMulInteger", 0),
                                      "DynamicQuantizeLSTM": done.get("DynamicQuantizeLSTM", 0)},
                       float_gru=ops.get("GRU", 0), conv_layers_float=ops.get("Conv", 0),
                       fp32_bytes=Path(onnx_path).stat().st_size, int8_bytes=out.stat().st_size,
                       seconds=round(time.perf_counter() - t0, 2))
        conv_pct, lin_pct = 100 * macs["conv"] / total, 100 * (macs["linear"] + macs["recurrent"]) / total
        ctx.notes.append(f"{who}: dynamic int8 covers Linear/LSTM layers only: {lin_pct:.1f}% of the MACs; "
                         f"the {conv_pct:.1f}% in convolutions stay float, so expect "
                         f"{'little' if lin_pct < 50 else 'a partial'} gain (use quantize.ptq for convolutions)")
        if ops.get("GRU"):
            ctx.notes.append(f"{who}: {ops['GRU']} GRU layer(s) stay float (ONNX Runtime has no dynamic int8 GRU)")
        if safe.reduce_range:
            ctx.notes.append(f"{who}: {safe.reason}")
        return out
