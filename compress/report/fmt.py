"""Number formatting and the rows both report.md and the console show.

Ratios follow the runner's convention: ``original / compressed``, so above 1 means
smaller or faster. Accuracy-like metrics show the change (compressed - original).
"""

from __future__ import annotations

import math
from typing import Any

# (key, label, kind): kind "count" -> ratio, "ms" -> ratio (speed-up, or MB saved), "score" -> difference
METRICS = [
    ("params", "params", "count"),
    ("macs", "MACs", "count"),
    ("onnx_bytes", "ONNX bytes", "count"),
    ("latency_ms", "latency median (ms)", "ms"),
    ("latency_p90_ms", "latency p90 (ms)", "ms"),
    ("peak_memory_mb", "peak inference memory (MB)", "ms"),
    ("map50", "mAP50", "score"),
    ("map50_95", "mAP50-95", "score"),
    ("accuracy", "top-1 accuracy", "score"),
]
_RATIO_KEYS = {"params": "params", "macs": "macs", "onnx_bytes": "onnx_bytes", "latency_ms": "latency"}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def human(v: float) -> str:
    """1234567 -> '1.23 M'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {unit}"
    return f"{v:g}"


def fmt(v: Any) -> str:
    """A value as report text: ints with thousands separators, floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if v == int(v) and abs(v) >= 1e4:
            return f"{int(v):,}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, set)):
        return ", ".join(fmt(x) for x in v) if v else "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items())
    return str(v)


def fmt_big(v: Any) -> str:
    """Exact count plus a short form: '12,345,678 (12.3 M)'."""
    if is_number(v) and abs(v) >= 1e4:
        return f"{fmt(v)} ({human(v)})"
    return fmt(v)


def ratio(orig: Any, comp: Any) -> float | None:
    return orig / comp if is_number(orig) and is_number(comp) and comp != 0 else None


def metric_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(label, original, compressed, change) for every metric either side reports."""
    orig = report.get("original") or {}
    comp = report.get("compressed") or {}
    given = report.get("ratios") or {}
    rows = []
    for key, label, kind in METRICS:
        a, b = orig.get(key), comp.get(key)
        if a is None and b is None:
            continue
        if kind == "score":
            change = f"{b - a:+.4f}" if is_number(a) and is_number(b) else "-"
        else:
            r = given.get(_RATIO_KEYS.get(key, ""))
            r = r if is_number(r) else ratio(a, b)
            change = f"{r:.2f}x" if r is not None else "-"
        show = fmt_big if kind == "count" else fmt
        rows.append((label, show(a), show(b), change))
    return rows


def verdict(report: dict) -> str | None:
    """'PASS', 'FAIL', or None when no fidelity check result is in the report."""
    fid = report.get("fidelity")
    if not isinstance(fid, dict):
        return None
    if isinstance(fid.get("passed"), bool):
        return "PASS" if fid["passed"] else "FAIL"
    if "failures" in fid:
        return "FAIL" if fid["failures"] else "PASS"
    return None


# fidelity metric key -> (label, threshold key)
FIDELITY = [
    ("agreement_map50", "agreement mAP50", "min_agreement_map50"),
    ("agreement_map50_95", "agreement mAP50-95", "min_agreement_map50_95"),
    ("matched_recall", "matched recall", "min_matched_recall"),
    ("matched_precision", "matched precision", None),
    ("score_drift", "mean score drift", "max_score_drift"),
    ("top1_agreement", "top-1 agreement", "min_top1_agreement"),
    ("top5_agreement", "top-5 agreement", "min_top5_agreement"),
    ("kl_divergence", "KL(original || compressed)", "max_kl"),
    ("reference_margin", "original's median top-1 margin", None),
    ("logit_drift", "logit drift", None),
    ("prob_drift", "probability drift", None),
    ("lost_classes", "lost classes", None),
]


def fidelity_rows(fid: dict, class_names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(label, value, threshold) for the fidelity metrics present in ``fid``."""
    thresholds = fid.get("thresholds") or {}
    rows = []
    for key, label, tkey in FIDELITY:
        if key not in fid:
            continue
        value = fid[key]
        if key == "lost_classes" and isinstance(value, list) and class_names:
            value = [class_names[i] if isinstance(i, int) and 0 <= i < len(class_names) else i for i in value]
        t = thresholds.get(tkey) if tkey else None
        bound = "" if t is None else (f"<= {fmt(t)}" if tkey.startswith("max") else f">= {fmt(t)}")
        rows.append((label, fmt(value), bound))
    return rows


FIDELITY_KEYS = {k for k, _, _ in FIDELITY} | {"thresholds", "failures", "passed"}
