"""What ``compress search`` writes: recipe.yaml (the winner), candidates.csv/.md, search.json, search.png."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

COLUMNS = ["candidate", "knobs", "predicted_ms", "measured_ms", "predicted_speedup", "speedup", "latency_error",
           "agreement", "macs_ratio", "efficiency", "distortion", "status"]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, dict):
        return " ".join(f"{k}={x:g}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def rows_of(result: dict) -> list[dict]:
    """The candidates, then the winner's full run (named ``<candidate> full``)."""
    w = dict(result["winner"], candidate=f"{result['winner']['candidate']} (full recovery)")
    return [*result["candidates"], w]


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows_of(result):
        w.writerow({k: _cell(r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def to_markdown(result: dict) -> str:
    t = result["target"]
    head = ["candidate", "knobs", "predicted ms", "measured ms", "predicted / measured speed-up", "agreement",
            "MACs ratio", "efficiency", "status"]
    lines = [f"# Search of {result['recipe']}", "",
             f"Target: {'%gx' % t['speedup'] if t['speedup'] else ''} {t['latency_ms']:.3f} ms "
             f"(fp32 original {result['original_fp32_ms']:.3f} ms, {result['config']['threads']} thread(s)), "
             f"agreement >= {t['min_agreement']:g}; table: {result['table']['how']}; "
             f"{result['trials']} proposals; short recovery {result['short_steps']} steps, full "
             f"{result['full_steps']}. Status: **{result['status']}**.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows_of(result):
        sp = f"{_cell(r.get('predicted_speedup'))}x / {_cell(r.get('speedup'))}x"
        lines.append("| " + " | ".join([r["candidate"], _cell(r.get("knobs")), _cell(r.get("predicted_ms")),
                                         _cell(r.get("measured_ms")), sp, _cell(r.get("agreement")),
                                         _cell(r.get("macs_ratio")), _cell(r.get("efficiency")),
                                         (r.get("error") or r.get("status") or "")]) + " |")
    lines += ["", "efficiency = measured speed-up / MACs ratio (1.0: the latency falls as fast as the arithmetic).",
              *[f"- {n}" for n in result["notes"]], "", "![search](search.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path | None:
    """Predicted vs measured speed-up, and agreement vs measured speed-up, with the target lines."""
    rows = [r for r in rows_of(result) if r.get("speedup") is not None]
    if not rows:
        return None
    from matplotlib.figure import Figure

    from compress.atomic import atomic_path

    fig = Figure(figsize=(10, 4.2), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.14, wspace=0.28)
    a, b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    meas = [r["speedup"] for r in rows]
    pred = [r.get("predicted_speedup") or 0 for r in rows]
    hi = max(meas + pred) * 1.1
    a.plot([0, hi], [0, hi], color="gray", lw=0.8, label="predicted = measured")
    a.scatter(pred, meas)
    a.set(xlabel="predicted speed-up", ylabel="measured speed-up", title="latency table vs measurement")
    tgt = result["original_fp32_ms"] / result["target"]["latency_ms"]
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.axvline(tgt, color="tab:red", ls="--", lw=0.8, label=f"target {tgt:.2f}x") if ax is b else \
            ax.axhline(tgt, color="tab:red", ls="--", lw=0.8, label=f"target {tgt:.2f}x")
    b.scatter(meas, [r.get("agreement") or 0 for r in rows])
    for r in rows:
        b.annotate(r["candidate"].replace("c-", "")[:8] + ("*" if "full" in r["candidate"] else ""),
                   (r["speedup"], r.get("agreement") or 0), fontsize=7)
    b.axhline(result["target"]["min_agreement"], color="tab:green", ls="--", lw=0.8, label="min agreement")
    b.set(xlabel="measured speed-up vs fp32 original", ylabel="agreement", title="agreement vs speed-up (* full)")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def recipe_text(result: dict, recipe: dict) -> str:
    """The winner as a recipe, with a header comment saying how it was found."""
    import yaml

    w, t = result["winner"], result["target"]
    head = [
        f"# Found by `compress search` on {result['date']}: {result.get('command') or result['recipe']}",
        f"# seed {result['seed']}, target {'%gx vs the fp32 ONNX original' % t['speedup'] if t['speedup'] else ''}"
        f" ({t['latency_ms']:.3f} ms; original {result['original_fp32_ms']:.3f} ms, "
        f"{result['config']['threads']} thread(s)), min agreement {t['min_agreement']:g}.",
        f"# Winner {w['candidate']} of {len(result['candidates'])} candidates ({result['trials']} proposals): "
        f"knobs {_cell(w.get('knobs'))}.",
        f"# Predicted {_cell(w.get('predicted_ms'))} ms ({_cell(w.get('predicted_speedup'))}x); measured in its run "
        f"{_cell(w.get('measured_ms'))} ms ({_cell(w.get('speedup'))}x, interleaved with the original), "
        f"agreement {_cell(w.get('agreement'))}, MACs {_cell(w.get('macs_ratio'))}x fewer.",
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe, sort_keys=False, width=110)


def write_outputs(out_dir: Path, result: dict, recipe: dict) -> dict[str, Path]:
    from compress.atomic import atomic_write_text
    from compress.report import to_jsonable

    paths = {"recipe": atomic_write_text(out_dir / "recipe.yaml", recipe_text(result, recipe)),
             "csv": atomic_write_text(out_dir / "candidates.csv", to_csv(result)),
             "md": atomic_write_text(out_dir / "candidates.md", to_markdown(result)),
             "json": atomic_write_text(out_dir / "search.json", json.dumps(to_jsonable(result), indent=2))}
    png = plot(result, out_dir / "search.png")
    if png:
        paths["plot"] = png
    return paths
