"""Sweep plots (matplotlib, Agg, no pyplot state): quality, latency and size against the
swept value, and the Pareto front of quality against latency.

Rows are the dicts :func:`compress.sweep.sweep` returns. The x axis is the first swept key
whose values are all numbers (else the points in order, labelled); the other swept keys,
if any, split the rows into one line per combination.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_QUALITY = [("agreement_map50", "agreement mAP50"), ("agreement_map50_95", "agreement mAP50-95"),
            ("top1_agreement", "top-1 agreement"), ("map50", "true mAP50"), ("accuracy", "top-1 accuracy")]


def _num(v: Any) -> float | None:
    try:
        return float(v) if v is not None and not isinstance(v, bool) and str(v) != "" else None
    except (TypeError, ValueError):
        return None


def pareto_front(latency: list[float | None], quality: list[float | None]) -> list[bool]:
    """Which points no other point beats on both axes (lower latency, higher quality).

    A point is dominated when another is at least as fast and at least as good, and
    strictly better in one. Points missing either value are never on the front.
    """
    pts = [(_num(x), _num(y)) for x, y in zip(latency, quality)]
    flags = []
    for i, (xi, yi) in enumerate(pts):
        if xi is None or yi is None:
            flags.append(False)
            continue
        dominated = any(xj is not None and yj is not None and xj <= xi and yj >= yi and (xj < xi or yj > yi)
                        for j, (xj, yj) in enumerate(pts) if j != i)
        flags.append(not dominated)
    return flags


def _varying(rows: list[dict], keys: list[str]) -> list[str]:
    """The swept keys that take more than one value (all keys when none does)."""
    return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1] or list(keys)


def _x_axis(rows: list[dict], keys: list[str]) -> tuple[str | None, list[str]]:
    """(numeric x key or None, the keys that split rows into series); fixed keys are ignored."""
    keys = _varying(rows, keys)
    for k in keys:
        if rows and all(_num(r.get(k)) is not None for r in rows):
            return k, [g for g in keys if g != k]
    return None, list(keys)


def _series(rows: list[dict], x_key: str | None, group_keys: list[str]):
    """[(label, [x], [row])] sorted by x; x is the row index when no key is numeric."""
    groups: dict[str, list[tuple[float, dict]]] = {}
    for i, r in enumerate(rows):
        label = ", ".join(f"{k}={r.get(k)}" for k in group_keys) if x_key else ""
        x = _num(r.get(x_key)) if x_key else float(i)
        groups.setdefault(label, []).append((x, r))
    return [(label, [x for x, _ in sorted(items, key=lambda t: t[0])], [r for _, r in sorted(items, key=lambda t: t[0])])
            for label, items in groups.items()]


def _figure(title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.2)  # fixed: no layout engine redraws
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:
    from compress.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def _finish(fig, ax, rows, x_key, path: Path, *, legend: bool = True) -> Path:
    if x_key:
        ax.set_xlabel(x_key)
    else:
        ax.set_xticks(range(len(rows)), [r.get("point", str(i)) for i, r in enumerate(rows)], rotation=30,
                      ha="right", fontsize=7)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _line(ax, series, key: str, label: str, style: str = "o-", scale=None) -> bool:
    drawn = False
    for group, xs, rs in series:
        pts = [(x, _num(r.get(key))) for x, r in zip(xs, rs)]
        pts = [(x, (scale(y) if scale else y)) for x, y in pts if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{label} {group}".strip())
            drawn = True
    return drawn


def plot_quality(rows, keys, path: Path, baseline: dict | None = None) -> Path:
    """Agreement with the original and the true metric (mAP50 / accuracy) against the swept value."""
    x_key, groups = _x_axis(rows, keys)
    series = _series(rows, x_key, groups)
    fig, ax = _figure("Quality vs " + (x_key or "point"))
    for key, label in _QUALITY:
        _line(ax, series, key, label)
        if baseline and key in ("map50", "accuracy") and _num(baseline.get(key)) is not None:
            ax.axhline(_num(baseline[key]), ls="--", color="grey", lw=1, label=f"original {label}")
    ax.set_ylabel("score")
    return _finish(fig, ax, rows, x_key, path)


def plot_latency(rows, keys, path: Path, baseline: dict | None = None) -> Path:
    """Median ONNX Runtime latency of the compressed model against the swept value."""
    x_key, groups = _x_axis(rows, keys)
    fig, ax = _figure("CPU latency vs " + (x_key or "point"))
    _line(ax, _series(rows, x_key, groups), "latency_ms", "compressed")
    if baseline and _num(baseline.get("latency_ms")) is not None:
        ax.axhline(_num(baseline["latency_ms"]), ls="--", color="grey", lw=1, label="original")
    ax.set_ylabel("median latency (ms)")
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, rows, x_key, path)


def plot_size(rows, keys, path: Path, baseline: dict | None = None) -> Path:
    """Params and MACs left, as a fraction of the original, against the swept value."""
    x_key, groups = _x_axis(rows, keys)
    series = _series(rows, x_key, groups)
    fig, ax = _figure("Size vs " + (x_key or "point"))
    inv = lambda v: 1.0 / v if v else None  # noqa: E731  (report ratios are original / compressed)
    _line(ax, series, "params_x", "params", "o-", scale=inv)
    _line(ax, series, "macs_x", "MACs", "s--", scale=inv)
    ax.set_ylabel("fraction of the original")
    ax.set_ylim(0, 1.05)
    return _finish(fig, ax, rows, x_key, path)


def plot_pareto(rows, keys, path: Path, baseline: dict | None = None) -> Path:
    """Quality against latency for every point; the Pareto-optimal points are highlighted."""
    fig, ax = _figure("Quality vs latency (Pareto front highlighted)")
    lat = [_num(r.get("latency_ms")) for r in rows]
    qual = [_num(r.get("quality")) for r in rows]
    front = pareto_front(lat, qual)
    pts = [(x, y, r, f) for x, y, r, f in zip(lat, qual, rows, front) if x is not None and y is not None]
    dominated = [p for p in pts if not p[3]]
    if dominated:
        ax.scatter([p[0] for p in dominated], [p[1] for p in dominated], c="tab:grey", label="dominated")
    best = sorted((p for p in pts if p[3]), key=lambda p: p[0])
    ax.plot([p[0] for p in best], [p[1] for p in best], "o-", c="tab:red", ms=8, label="Pareto front")
    shown = _varying(rows, keys)
    for x, y, r, _ in pts:
        ax.annotate(", ".join(f"{k}={r.get(k)}" for k in shown) or str(r.get("point", "")), (x, y), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    if baseline:
        bq = next((_num(baseline.get(k)) for k in ("map50", "accuracy") if _num(baseline.get(k)) is not None), None)
        if bq is not None and _num(baseline.get("latency_ms")) is not None:
            ax.scatter([_num(baseline["latency_ms"])], [bq], marker="*", s=140, c="black", label="original")
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel("quality (true metric, else agreement)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


PLOTS = {"quality": plot_quality, "latency": plot_latency, "size": plot_size, "pareto": plot_pareto}


def plot_sweep(rows: list[dict], keys: list[str], out_dir: str | Path, *,
               baseline: dict | None = None) -> dict[str, Path]:
    """Write ``quality.png``, ``latency.png``, ``size.png`` and ``pareto.png``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {name: fn(rows, keys, out / f"{name}.png", baseline=baseline) for name, fn in PLOTS.items()}
