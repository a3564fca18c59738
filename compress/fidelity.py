"""The fidelity check: does the exported ONNX model still do what the original did?

The original torch model and the exported ONNX model (in ONNX Runtime on the CPU)
see the same preprocessed validation images. Detectors are compared by agreement
(the original's confident detections as pseudo ground truth), classifiers by top-1
agreement; with labels, true mAP / accuracy of both are reported too.

Classifier adapters' ``decode`` returns one 1-D ``np.ndarray`` of class *logits* per
image (before any softmax; a model that ends in a softmax gives probabilities, which the
metrics recognise and never soften twice). Classifiers are compared by top-1 / top-5
agreement, KL(reference || compressed) and drift; when the reference itself is degenerate
(top-1 tied on most images, or one class winning everywhere) the verdict is "not
measurable" with the reason, never a pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from compress.errors import DataError
from compress.types import Dataset, Detections

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from compress.models.base import Adapter
    from compress.recipe import FidelityConfig

# (recipe threshold, metric, comparison) checked for each task
_DETECT_CHECKS = [("min_agreement_map50", "agreement_map50", ">="),
                  ("min_agreement_map50_95", "agreement_map50_95", ">="),
                  ("min_matched_recall", "matched_recall", ">="),
                  ("max_score_drift", "score_drift", "<=")]
_CLASSIFY_CHECKS = [("min_top1_agreement", "top1_agreement", ">="),
                    ("min_top5_agreement", "top5_agreement", ">="),
                    ("max_kl", "kl_divergence", "<=")]
_DETECT_KEYS = ["agreement_map50", "agreement_map50_95", "matched_recall", "matched_precision", "score_drift"]
_CLASSIFY_KEYS = ["top1_agreement", "top5_agreement", "kl_divergence", "logit_drift", "prob_drift",
                  "reference_margin"]


class Predictions(NamedTuple):
    results: list  # per image: Detections (detect) or a 1-D score array (classify)
    logits: np.ndarray | None  # (N, C) class scores for classifiers, None for detectors


def _chunks(items: list, size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


def _finish(adapter: "Adapter", results: list) -> Predictions:
    if adapter.task != "classify":
        return Predictions(results, None)
    rows = [np.asarray(r, np.float32).reshape(-1) for r in results]
    logits = np.stack(rows) if rows else np.zeros((0, len(adapter.class_names)), np.float32)
    return Predictions(list(logits), logits)


def predict_torch(adapter: "Adapter", model: "nn.Module", images: list[np.ndarray], conf: float,
                  iou: float, batch: int = 32) -> Predictions:
    """Run the torch model (eval mode, no grad) on RGB images and decode its output."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    results: list = []
    try:
        with torch.no_grad():
            for chunk in _chunks(images, batch):
                x, metas = adapter.preprocess(chunk)
                out = adapter.forward(model, x.to(device))
                results.extend(adapter.decode(out.detach().float().cpu(), metas, conf, iou))
    finally:
        model.train(was_training)
    return _finish(adapter, results)


def predict_onnx(adapter: "Adapter", onnx_path_or_session, images: list[np.ndarray], conf: float,
                 iou: float, batch: int = 32, threads: int = 2) -> Predictions:
    """Run an ONNX model in ONNX Runtime (CPU, ``threads`` intra-op threads) and decode it.

    A model exported with a fixed batch size is fed batches of exactly that size
    (image by image for a fixed batch of 1; the last batch is padded).
    """
    sess = onnx_path_or_session
    if isinstance(sess, (str, os.PathLike)):
        from compress.runtime.session import make_session

        sess = make_session(sess, threads=threads)
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    results: list = []
    for chunk in _chunks(images, fixed or batch):
        x, metas = adapter.preprocess(chunk)
        arr = x.detach().cpu().numpy().astype(dtype)
        n = len(arr)
        if fixed and n < fixed:
            arr = np.concatenate([arr, np.repeat(arr[-1:], fixed - n, axis=0)])
        out = np.asarray(sess.run([out_name], {inp.name: arr})[0])[:n].astype(np.float32)
        results.extend(adapter.decode(out, metas, conf, iou))
    return _finish(adapter, results)


@dataclass
class FidelityResult:
    """What the fidelity check found; ``to_dict()`` is the report's "fidelity" section."""

    task: str
    measurable: bool
    reason: str | None
    passed: bool
    failures: list[str]
    thresholds: dict[str, float]
    images: int
    metrics: dict[str, Any]  # agreement metrics (detect) or top-1 agreement and drift (classify)
    original_metrics: dict[str, Any]  # map50/map50_95 or accuracy vs labels (None without labels)
    compressed_metrics: dict[str, Any]
    settings: dict[str, float] = field(default_factory=dict)  # conf, eval_conf, iou
    collapsed: bool = False
    notes: list[str] = field(default_factory=list)  # plain-language findings for the report
    lost_class_names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # the validation images used, in order
    # detections with score >= conf (what was compared; for overlays)
    reference_detections: list[Detections] = field(default_factory=list)
    compressed_detections: list[Detections] = field(default_factory=list)
    reference_logits: np.ndarray | None = None
    compressed_logits: np.ndarray | None = None

    def to_dict(self) -> dict:
        m = self.metrics
        if self.task == "classify":
            d = {"task": self.task, **{k: m.get(k) for k in _CLASSIFY_KEYS}}
        else:
            d = {"task": self.task, **{k: m.get(k) for k in _DETECT_KEYS}, "lost_classes": list(self.lost_class_names)}
        d.update({"measurable": self.measurable, "reason": self.reason, "passed": self.passed,
                  "failures": list(self.failures), "thresholds": dict(self.thresholds), "images": self.images,
                  "collapsed": self.collapsed, "counts": dict(m.get("counts") or {}),
                  "settings": dict(self.settings)})
        delta = {k: self.compressed_metrics[k] - v for k, v in self.original_metrics.items()
                 if k != "reason" and v is not None and self.compressed_metrics.get(k) is not None}
        d["labelled_delta"] = delta or None
        return d


def _fmt_pair(value: float, limit: float) -> tuple[str, str]:
    """Both numbers with the fewest decimals (>= 2) that tell them apart."""
    for digits in (2, 3, 4, 6):
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if a != b:
            return a, b
    return repr(value), repr(limit)


def _judge(metrics: dict, cfg: "FidelityConfig", checks) -> tuple[dict, list[str]]:
    thresholds, failures = {}, []
    for key, name, op in checks:
        limit = getattr(cfg, key, None)
        if limit is None:
            continue
        thresholds[key] = limit
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} not measured (needed {op} {limit:.2f})")
            continue
        ok = value >= limit if op == ">=" else value <= limit
        if not ok:
            v, t = _fmt_pair(value, limit)
            failures.append(f"{name} {v} {'<' if op == '>=' else '>'} {t}")
    return thresholds, failures


def _labels_detect(data: Dataset) -> list[Detections] | None:
    if not data.samples or any(s.boxes is None for s in data.samples):
        return None
    out = []
    for s in data.samples:
        boxes = np.asarray(s.boxes, np.float32).reshape(-1, 4)
        classes = np.asarray(s.classes if s.classes is not None else np.zeros(len(boxes)), np.int64)
        out.append(Detections(boxes, np.ones(len(boxes), np.float32), classes))
    return out


def _check_detect(adapter, ref: Predictions, cmp: Predictions, data: Dataset, cfg) -> FidelityResult:
    from compress.metrics.detection import agreement, coco_map

    nc = len(adapter.class_names)
    metrics = agreement(ref.results, cmp.results, num_classes=nc, conf=cfg.conf)
    names = [adapter.class_names[c] if 0 <= c < nc else str(c) for c in metrics["lost_classes"]]
    thresholds, failures = _judge(metrics, cfg, _DETECT_CHECKS)
    notes = []
    counts = metrics["counts"]
    collapsed = False
    if not metrics["measurable"]:
        failures = [f"not measurable: {metrics['reason']}"]
        notes.append(f"Fidelity could not be measured: {metrics['reason']}.")
    elif counts["compressed_detections"] == 0:
        collapsed = True
        n_any = sum(len(r) for r in cmp.results)
        best = max((float(r.scores.max()) for r in cmp.results if len(r)), default=None)
        what = ("makes no detections at all" if n_any == 0 else
                f"makes no detection with score >= {cfg.conf:g} (its highest score is {best:.3f})")
        notes.append(f"The compressed model has collapsed: it {what} on the {len(data)} validation images, "
                     f"while the original makes {counts['reference_detections']}.")
        # ranking-based mAP can stay high when every score shrinks: a collapse always fails
        failures.append(f"collapsed: no detections with score >= {cfg.conf:g} "
                        f"(original: {counts['reference_detections']})")
    if names:
        notes.append("The compressed model never detects class(es) the original detects: " + ", ".join(names) + ".")

    truths = _labels_detect(data)
    if truths is not None:
        original, compressed = coco_map(ref.results, truths, nc), coco_map(cmp.results, truths, nc)
    else:
        missing = {"map50": None, "map50_95": None, "reason": "the validation data has no labels"}
        original, compressed = dict(missing), dict(missing)
    return FidelityResult(
        task="detect", measurable=metrics["measurable"], reason=metrics["reason"],
        passed=metrics["measurable"] and not failures, failures=failures, thresholds=thresholds,
        images=len(data), metrics=metrics, original_metrics=original, compressed_metrics=compressed,
        collapsed=collapsed, notes=notes, lost_class_names=names,
        reference_detections=[r.above(cfg.conf) for r in ref.results],
        compressed_detections=[r.above(cfg.conf) for r in cmp.results])


def _check_classify(adapter, ref: Predictions, cmp: Predictions, data: Dataset, cfg) -> FidelityResult:
    from compress.metrics import classification as cm

    margins = cm.top1_margins(ref.logits)
    metrics = {"top1_agreement": cm.top1_agreement(ref.logits, cmp.logits),
               "top5_agreement": cm.topk_agreement(ref.logits, cmp.logits, 5),
               "kl_divergence": cm.kl_divergence(ref.logits, cmp.logits),
               "logit_drift": cm.logit_drift(ref.logits, cmp.logits),
               "prob_drift": cm.prob_drift(ref.logits, cmp.logits),
               "reference_margin": float(np.median(margins)) if len(margins) else None,
               "counts": {"images": len(data)}}
    thresholds, failures = _judge(metrics, cfg, _CLASSIFY_CHECKS)
    reason = cm.degenerate_reason(ref.logits, adapter.class_names)
    notes = []
    if reason is not None:
        failures = [f"not measurable: {reason}"]
        notes.append(f"Fidelity could not be measured: {reason}.")
    if data.samples and all(s.label is not None for s in data.samples):
        labels = [s.label for s in data.samples]
        original = {"accuracy": cm.accuracy(ref.logits, labels), "reason": None}
        compressed = {"accuracy": cm.accuracy(cmp.logits, labels), "reason": None}
    else:
        original = {"accuracy": None, "reason": "the validation data has no labels"}
        compressed = dict(original)
    return FidelityResult(
        task="classify", measurable=reason is None, reason=reason, passed=reason is None and not failures,
        failures=failures, thresholds=thresholds, images=len(data), metrics=metrics, original_metrics=original,
        compressed_metrics=compressed, notes=notes, reference_logits=ref.logits, compressed_logits=cmp.logits)


def compare(adapter: "Adapter", ref: Predictions, cmp: Predictions, data: Dataset,
            cfg: "FidelityConfig") -> FidelityResult:
    """Judge two recorded predictions of the same images (``data.head(cfg.samples)``), e.g. two
    stages of a run, with the same evaluator and thresholds as :func:`check`."""
    data = data.head(cfg.samples)
    judge = _check_classify if adapter.task == "classify" else _check_detect
    result = judge(adapter, ref, cmp, data, cfg)
    result.settings = {"conf": cfg.conf, "eval_conf": cfg.eval_conf, "iou": cfg.iou}
    result.paths = [s.path for s in data.samples]
    return result


def check(adapter: "Adapter", reference: "nn.Module", onnx_path, data: Dataset, cfg: "FidelityConfig", *,
          threads: int = 2) -> FidelityResult:
    """Compare the exported ONNX model with the original torch model on validation images.

    ``onnx_path`` may also be an ONNX Runtime session. ``passed`` is True only when the
    comparison is measurable and every threshold configured in ``cfg`` holds.
    """
    data = data.head(cfg.samples)
    if len(data) == 0:
        raise DataError("fidelity check: the validation data has no images")
    images = [s.image for s in data.samples]
    ref = predict_torch(adapter, reference, images, cfg.eval_conf, cfg.iou)
    cmp = predict_onnx(adapter, onnx_path, images, cfg.eval_conf, cfg.iou, threads=threads)
    if adapter.task == "classify":
        result = _check_classify(adapter, ref, cmp, data, cfg)
    else:
        result = _check_detect(adapter, ref, cmp, data, cfg)
    result.settings = {"conf": cfg.conf, "eval_conf": cfg.eval_conf, "iou": cfg.iou}
    result.paths = [s.path for s in data.samples]
    return result
