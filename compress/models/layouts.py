"""Output layouts of generic detectors: small decoders registered by name.

A layout says what a detector's forward returns, turns it into the one tensor that is
exported to ONNX, checks it on load and decodes that tensor (from torch or from ONNX
Runtime) into per-image :class:`~compress.types.Detections` in original-image pixels.

=============  ===================================================  ==============================
name           the model returns (eval mode)                        exported tensor / decode
=============  ===================================================  ==============================
ultralytics    ``(B, 4 + nc, N)``: cx cy w h (input pixels), nc     the same; class-aware NMS
               sigmoid class scores per candidate
end2end        ``(B, N, 6)``: x1 y1 x2 y2 score class (input         the same; no NMS (the model's
               pixels), already NMS'd or NMS-free; score-0 rows     own), top ``max_det`` by score
               are padding
torchvision    ``list`` of ``{"boxes", "scores", "labels"}`` dicts   flattened to ``(B, N, 6)``
               (torchvision detection models)                       (padded with score-0 rows),
                                                                    then decoded as ``end2end``
=============  ===================================================  ==============================

``model.decode: module:fn`` (or ``file.py:fn``) instead of a layout: ``fn(output)`` gets the
model's first output as a torch tensor (also for the ONNX model) and returns ``(B, N, 6)``
like ``end2end``; it runs outside the exported graph, so it may do its own NMS.

torchvision's labels are used as class indices as they are: for models whose label 0 is
the background, make ``class_names[0]`` the background's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

LAYOUTS = ("ultralytics", "end2end", "torchvision")
DEFAULT = "ultralytics"


def describe(out: Any) -> str:
    """A short type/shape description of a model output: ``Tensor(1, 7, 64)``, ``tuple(Tensor(..), list[3])``."""
    import torch

    if isinstance(out, torch.Tensor):
        return f"Tensor{tuple(out.shape)}"
    if isinstance(out, np.ndarray):
        return f"ndarray{tuple(out.shape)}"
    if isinstance(out, dict):
        inner = ", ".join(f"{k}: {describe(v)}" for k, v in list(out.items())[:4])
        return "dict(" + inner + (", ..." if len(out) > 4 else "") + ")"
    if isinstance(out, (list, tuple)):
        kind = type(out).__name__
        if len(out) > 3:
            return f"{kind}[{len(out)}] of {describe(out[0])}"
        return f"{kind}(" + ", ".join(describe(o) for o in out) + ")"
    return type(out).__name__


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) and out and not isinstance(out[0], dict) else out


def _is_dict_list(out) -> bool:
    return isinstance(out, (list, tuple)) and len(out) > 0 and all(isinstance(o, dict) for o in out)


@dataclass
class Layout:
    """How one output layout is exported, checked and decoded."""

    name: str
    expected: str  # the contract in words, for error messages
    to_tensor: Callable[[Any], Any]  # model output -> the exported tensor
    problem: Callable[[Any, int], str | None]  # (raw model output, nc) -> what is wrong, or None
    decode: Callable  # (tensor, metas, conf, iou, max_det) -> list[Detections]

    def check(self, out, nc: int) -> str | None:
        """None when ``out`` (the raw model output) fits; else one line naming seen vs expected."""
        why = self.problem(out, nc)
        if why is None:
            return None
        hint = _guess(out, nc, self.name)
        return (f"the model returns {describe(out)}; detect models with output_layout '{self.name}' "
                f"must return {self.expected.format(nc4=4 + nc, nc=nc)} ({why})" + (f"; {hint}" if hint else ""))


def _guess(out, nc: int, current: str) -> str | None:
    import torch

    first = _first(out)
    if current != "torchvision" and _is_dict_list(out):
        return "it looks like torchvision's list of dicts: set model.output_layout: torchvision"
    if isinstance(first, torch.Tensor) and first.dim() == 3:
        if current != "end2end" and first.shape[2] == 6 and first.shape[1] != 4 + nc:
            return "it looks like (B, N, 6) boxes + score + class: set model.output_layout: end2end"
        if current == "ultralytics" and first.shape[2] == 4 + nc:
            return "it looks transposed, (B, N, 4+nc): transpose it in the model (x.transpose(1, 2))"
        if current != "ultralytics" and first.shape[1] == 4 + nc:
            return "it looks like the Ultralytics layout: set model.output_layout: ultralytics"
    return "or give model.decode: module:fn that turns the output into (B, N, 6)"


# -- ultralytics ---------------------------------------------------------------------------------
def _ultra_problem(out, nc):
    import torch

    t = _first(out)
    if not isinstance(t, torch.Tensor):
        return f"the first output is {describe(t)}, not a tensor"
    if t.dim() != 3 or t.shape[1] != 4 + nc:
        return f"{nc} class names give 4+nc = {4 + nc} rows"
    return None


def _ultra_decode(output, metas, conf, iou=0.7, max_det=300):
    from compress.models.detect import decode_yolo

    return decode_yolo(output, metas, conf, iou, max_det)


# -- end2end ---------------------------------------------------------------------------------------
def _e2e_problem(out, nc):
    import torch

    t = _first(out)
    if not isinstance(t, torch.Tensor):
        return f"the first output is {describe(t)}, not a tensor"
    if t.dim() != 3 or t.shape[2] != 6:
        return "x1 y1 x2 y2 score class per row"
    return None


def decode_end2end(output, metas, conf, iou=0.7, max_det=300):
    """``(B, N, 6)`` rows x1 y1 x2 y2 score class (input pixels) -> per-image Detections (no NMS)."""
    import torch

    from compress.types import Detections

    out = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output)
    out = out.detach().float().cpu()
    results = []
    for b, meta in enumerate(metas):
        rows = out[b]
        rows = rows[rows[:, 4] >= conf]
        if rows.numel() == 0:
            results.append(Detections.empty())
            continue
        rows = rows[rows[:, 4].argsort(descending=True, stable=True)[:max_det]]
        boxes = rows[:, :4].clone()
        if meta is not None:
            boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - meta.pad_x) / meta.scale).clamp(0, meta.width)
            boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - meta.pad_y) / meta.scale).clamp(0, meta.height)
        results.append(Detections(boxes.numpy().astype(np.float32), rows[:, 4].numpy().astype(np.float32),
                                  rows[:, 5].round().numpy().astype(np.int64)))
    return results


# -- torchvision -----------------------------------------------------------------------------------
def _tv_problem(out, nc):
    if not _is_dict_list(out):
        return "one dict per image"
    missing = {"boxes", "scores", "labels"} - set(out[0])
    if missing:
        return f"its dicts lack {', '.join(sorted(missing))}"
    return None


def flatten_torchvision(out):
    """``[{boxes (N,4), scores (N,), labels (N,)}, ...]`` -> ``(B, max N, 6)``, padded with zero rows."""
    import torch

    if not _is_dict_list(out):
        return out  # already flat (e.g. an ONNX output): leave it to the decoder
    rows = [torch.cat([d["boxes"].float(), d["scores"].float()[:, None], d["labels"].float()[:, None]], 1)
            for d in out]
    if len(rows) == 1:  # batch 1 (the export): no padding, N stays the model's own
        return rows[0][None]
    n = max(r.shape[0] for r in rows)
    return torch.stack([torch.cat([r, r.new_zeros(n - r.shape[0], 6)]) for r in rows])


_REGISTRY = {
    "ultralytics": Layout("ultralytics", "(B, 4+nc, N) = (B, {nc4}, N): cx cy w h + {nc} class scores",
                          _first, _ultra_problem, _ultra_decode),
    "end2end": Layout("end2end", "(B, N, 6): x1 y1 x2 y2 score class", _first, _e2e_problem, decode_end2end),
    "torchvision": Layout("torchvision", "a list of {{boxes, scores, labels}} dicts, one per image",
                          flatten_torchvision, _tv_problem, decode_end2end),
}


def get_layout(name: str | None = None, decode: str | None = None) -> Layout:
    """The layout named ``name`` (default ``ultralytics``), or one around the user's ``decode`` function."""
    from compress.errors import ModelLoadError

    if decode:
        return _user_layout(decode)
    name = name or DEFAULT
    if name not in _REGISTRY:
        raise ModelLoadError(f"unknown output_layout '{name}' (known: {', '.join(LAYOUTS)})")
    return _REGISTRY[name]


def _user_layout(spec: str) -> Layout:
    import torch

    from compress.errors import ModelLoadError
    from compress.models.generic import resolve_callable

    fn = resolve_callable(spec, what="model.decode")

    def run(output):
        t = torch.as_tensor(np.asarray(output)) if not isinstance(output, torch.Tensor) else output
        try:
            rows = fn(t)
        except Exception as e:
            raise ModelLoadError(f"model.decode {spec}: raised {type(e).__name__}: {e}") from e
        rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
        if rows.dim() != 3 or rows.shape[2] != 6:
            raise ModelLoadError(f"model.decode {spec}: returned {describe(rows)}; it must return (B, N, 6): "
                                 "x1 y1 x2 y2 score class")
        return rows

    def problem(out, nc):
        first = _first(out)
        if not isinstance(first, torch.Tensor):
            return f"the first output is {describe(first)}, not a tensor"
        run(first)
        return None

    def decode(output, metas, conf, iou=0.7, max_det=300):
        return decode_end2end(run(output), metas, conf, iou, max_det)

    return Layout(f"decode {spec}", "a tensor that model.decode turns into (B, N, 6)", _first, problem, decode)
