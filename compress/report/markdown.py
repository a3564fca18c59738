"""report.md: one readable page per run, rendered from the report dict.

Every key is optional; sections whose data is missing are left out. Pass sections
and unknown keys are rendered generically (scalars as a key/value table, mappings of
name -> number as two-column tables, lists of mappings as tables).
"""

from __future__ import annotations

from typing import Any

from compress.report.fmt import FIDELITY, FIDELITY_KEYS, fidelity_rows, fmt, fmt_big, is_number, metric_rows, verdict

_KNOWN = {"recipe", "model", "data", "stages", "passes", "original", "compressed", "ratios", "fidelity",
          "notes", "files", "environment", "out_dir", "stage_fidelity", "conditions", "passes_peak_memory_mb"}
_MAX_ROWS = 200  # long per-layer tables are cut, with a line saying how many rows were left out


def _cell(v: Any) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table (cells already strings are kept, others formatted)."""
    if not rows:
        return []
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows[:_MAX_ROWS]:
        out.append("| " + " | ".join(c.replace("|", "\\|") if isinstance(c, str) else _cell(c) for c in r) + " |")
    if len(rows) > _MAX_ROWS:
        out.append(f"\n({len(rows) - _MAX_ROWS} more rows in report.json)")
    return out + [""]


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool)) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) or x is None for x in v))


def generic(d: Any, level: int = 3) -> list[str]:
    """Render any JSON-like value readably."""
    if not isinstance(d, dict):
        if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
            keys = list(dict.fromkeys(k for x in d for k in x))
            return table(keys, [[x.get(k) for k in keys] for x in d])
        return [fmt(d), ""]
    lines = table(["key", "value"], [[k, v] for k, v in d.items() if _scalar(v)])
    for k, v in d.items():
        if _scalar(v):
            continue
        lines.append(f"{'#' * min(level + 1, 6)} {k}")
        lines.append("")
        if isinstance(v, dict) and v and all(_scalar(x) for x in v.values()):
            lines += table(["name", "value"], [[n, x] for n, x in v.items()])
        else:
            lines += generic(v, level + 1)
    return lines


def _overview(report: dict) -> list[str]:
    rows = metric_rows(report)
    if not rows:
        return []
    return ["## Original vs compressed", "",
            "Ratio = original / compressed (above 1: smaller or faster); "
            "scores show compressed minus original.", "",
            *table(["", "original", "compressed", "ratio / change"], [list(r) for r in rows])]


def _fidelity(report: dict) -> list[str]:
    fid = report.get("fidelity")
    if not isinstance(fid, dict) or not fid:
        return []
    names = (report.get("model") or {}).get("class_names")
    v = verdict(report)
    lines = [f"## Fidelity{': ' + v if v else ''}", "",
             "The exported ONNX model run in ONNX Runtime, compared with the original model's outputs.", ""]
    lines += table(["check", "value", "threshold"], [list(r) for r in fidelity_rows(fid, names)])
    failures = fid.get("failures") or []
    if failures:
        lines += ["Failed:", "", *[f"- {f}" for f in failures], ""]
    if fid.get("lost_at"):
        lines += [f"Agreement {fid['lost_at']} (see the per-stage table).", ""]
    rest = {k: x for k, x in fid.items() if k not in FIDELITY_KEYS and k not in ("ref_dets", "cmp_dets", "lost_at")}
    shown = {t for key, _, t in FIDELITY if key in fid}
    thresholds = {k: x for k, x in (fid.get("thresholds") or {}).items() if x is not None and k not in shown}
    if thresholds:
        rest["other thresholds"] = thresholds
    if rest:
        lines += generic(rest, 2)
    return lines


def _stage_fidelity(report: dict) -> list[str]:
    rows = [r for r in report.get("stage_fidelity") or [] if isinstance(r, dict)]
    if not rows:
        return []
    keys = list(dict.fromkeys(k for r in rows for k in (r.get("vs_original") or {})
                              if k not in ("measurable", "reason")))
    if not keys:
        return []
    main = keys[0]
    header = ["stage", "runtime", *[f"{k} vs original" for k in keys], f"{main} vs previous stage"]
    body = []
    for r in rows:
        orig, prev = r.get("vs_original") or {}, r.get("vs_previous") or {}
        body.append([r.get("stage"), r.get("runtime"), *[orig.get(k) for k in keys],
                     f"{fmt(prev.get(main))} (vs {r.get('previous')})"])
    return ["## Fidelity per stage", "",
            "Each stage's outputs on the validation images compared with the original's and with the "
            "stage before (torch stages run in torch, the export and ONNX passes in ONNX Runtime).", "",
            *table(header, body)]


def _stages(report: dict) -> list[str]:
    stages = report.get("stages") or []
    rows = [[s.get("name"), s.get("seconds"), fmt_big(s.get("params")), fmt_big(s.get("macs"))]
            for s in stages if isinstance(s, dict)]
    return ["## Stages", "", *table(["stage", "seconds", "params", "MACs"], rows)] if rows else []


def _passes(report: dict) -> list[str]:
    passes = report.get("passes") or {}
    lines = []
    for label, section in passes.items():
        lines += [f"### {label}", "", *generic(section, 3)]
    return ["## Passes", "", *lines] if lines else []


def _data(report: dict) -> list[str]:
    data = report.get("data") or {}
    rows, skipped = [], []
    for role, d in data.items():
        if not isinstance(d, dict):
            continue
        sk = d.get("skipped") or []
        rows.append([role, d.get("images"), d.get("labelled"), len(sk) if isinstance(sk, list) else sk,
                     d.get("root") or d.get("source") or d.get("path"), d.get("split")])
        for item in sk if isinstance(sk, list) else []:
            if isinstance(item, dict):
                path, why = item.get("path"), item.get("reason")
            else:
                path, why = (list(item) + ["", ""])[:2]
            skipped.append(f"- `{path}`: {why}")
    if not rows:
        return []
    lines = ["## Data", "", *table(["set", "images", "labelled", "skipped", "source", "split"], rows)]
    if skipped:
        lines += ["Skipped files:", "", *skipped[:50]]
        if len(skipped) > 50:
            lines.append(f"- ... and {len(skipped) - 50} more (see report.json)")
        lines.append("")
    return lines


def _files(report: dict) -> list[str]:
    files = report.get("files") or {}
    overlays = files.get("overlays") or []
    lines = []
    others = [(k, v) for k, v in files.items() if k != "overlays" and isinstance(v, str)]
    if others:
        lines += ["## Files", "", *[f"- {k}: [{v}]({v})" for k, v in others], ""]
    if overlays:
        lines += ["## Detections: original (left) vs compressed (right)", ""]
        lines += [f"![{p}]({p})" for p in overlays] + [""]
    return lines


def _environment(report: dict) -> list[str]:
    env = report.get("environment")
    if not isinstance(env, dict) or not env:
        return []
    flat = {}
    for k, v in env.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{n}": x for n, x in v.items()})
        else:
            flat[k] = v
    return ["## Environment", "", *table(["key", "value"], [[k, v] for k, v in flat.items()])]


def _conditions(report: dict) -> list[str]:
    """Peak memory and the conditions the latency figures were measured under."""
    cond = report.get("conditions")
    orig, comp = report.get("original") or {}, report.get("compressed") or {}
    lines = []
    mem = [("peak inference memory (MB, separate process, minus the bare runtime)",
            orig.get("peak_memory_mb"), comp.get("peak_memory_mb"))]
    if any(v is not None for _, *vals in mem for v in vals):
        lines += ["## Memory", "", *table(["", "original", "compressed"], [list(r) for r in mem])]
    if report.get("passes_peak_memory_mb") is not None:
        lines += [f"Peak resident memory of this run's process through the passes (fine-tune included) and "
                  f"export: {fmt(report['passes_peak_memory_mb'])} MB.", ""]
    if isinstance(cond, dict) and cond:
        head = ["## Measurement conditions", ""]
        if cond.get("possibly_throttled"):
            head += [f"**Possibly throttled**: {cond.get('throttle_reason')}; compare the latencies with care.", ""]
        lines += head + table(["key", "value"], [[k, v] for k, v in cond.items() if k != "throttle_reason"])
    return lines


def render(report: dict) -> str:
    """The whole report.md text."""
    recipe = report.get("recipe") or {}
    model = report.get("model") or {}
    v = verdict(report)
    title = f"# compress: {recipe.get('name', 'run')}" + (f" - {v}" if v else "")
    lines = [title, ""]
    facts = []
    if recipe.get("digest"):
        facts.append(f"recipe digest `{recipe['digest']}`")
    if model:
        bits = [str(model[k]) for k in ("adapter", "task") if model.get(k)]
        if model.get("class_names"):
            bits.append(f"{len(model['class_names'])} classes")
        if is_number(model.get("imgsz")):
            bits.append(f"input {model['imgsz']}px")
        facts.append("model " + ", ".join(bits))
    if facts:
        text = "; ".join(facts)
        lines += [text[0].upper() + text[1:] + ".", ""]
    lines += _overview(report) + _fidelity(report) + _stage_fidelity(report) + _stages(report) + _passes(report)
    notes = [n for n in report.get("notes") or [] if n]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    lines += _data(report) + _files(report)
    for key in report:
        if key not in _KNOWN and report[key] not in (None, {}, []):
            lines += [f"## {key}", "", *generic(report[key], 2)]
    lines += _conditions(report) + _environment(report)
    return "\n".join(lines).rstrip() + "\n"
