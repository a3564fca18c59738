"""Rich tables for the CLI: stage timings, the run summary, a per-layer profile."""

from __future__ import annotations

from compress.report.fmt import fidelity_rows, fmt, fmt_big, human, is_number, metric_rows, verdict


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console()


def print_stage_table(stages: list[dict], console=None) -> None:
    """One row per stage: name, seconds, params and MACs after it."""
    from rich.table import Table

    if not stages:
        return
    t = Table(title="Stages", title_justify="left")
    t.add_column("stage")
    for col in ("seconds", "params", "MACs"):
        t.add_column(col, justify="right")
    for s in stages:
        t.add_row(str(s.get("name", "?")), fmt(s.get("seconds")), fmt_big(s.get("params")), fmt_big(s.get("macs")))
    _console(console).print(t)


def print_summary(report: dict, console=None) -> None:
    """Original vs compressed, the fidelity verdict with its failures, and the notes."""
    from rich.table import Table

    con = _console(console)
    name = (report.get("recipe") or {}).get("name", "run")
    rows = metric_rows(report)
    if rows:
        t = Table(title=f"{name}: original vs compressed", title_justify="left")
        t.add_column("")
        for col in ("original", "compressed", "ratio / change"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(*r)
        con.print(t)
    fid = report.get("fidelity") if isinstance(report.get("fidelity"), dict) else {}
    frows = fidelity_rows(fid, (report.get("model") or {}).get("class_names"))
    if frows:
        t = Table(title="Fidelity (ONNX vs original)", title_justify="left")
        t.add_column("check")
        t.add_column("value", justify="right")
        t.add_column("threshold", justify="right")
        for r in frows:
            t.add_row(*r)
        con.print(t)
    v = verdict(report)
    if v:
        con.print(f"[bold {'green' if v == 'PASS' else 'red'}]{v}[/]", highlight=False)
    for f in fid.get("failures") or []:
        con.print(f"  [red]x[/] {f}", highlight=False)
    if fid.get("lost_at"):
        con.print(f"  agreement {fid['lost_at']}", highlight=False, markup=False)
    for n in report.get("notes") or []:
        con.print(f"  - {n}", highlight=False, markup=False)
    if report.get("out_dir"):
        con.print(f"report: {report['out_dir']}/report.md", highlight=False)


def print_profile(rows: list[dict], console=None, top: int | None = None) -> None:
    """The rows of ``compress.runtime.profile.profile_model`` (slowest first when timed)."""
    from rich.table import Table

    timed = any(r.get("latency_ms") is not None for r in rows)
    if timed:
        rows = sorted(rows, key=lambda r: -(r.get("latency_ms") or 0.0))
    rows = rows[:top] if top else rows
    t = Table(title="Per-layer profile", title_justify="left")
    t.add_column("layer", no_wrap=True)
    t.add_column("type", no_wrap=True)
    for col in ("params", "MACs") + (("latency ms", "share") if timed else ()):
        t.add_column(col, justify="right")
    for r in rows:
        cells = [str(r.get("name")), str(r.get("type"))]
        cells += [human(r[k]) if is_number(r.get(k)) else "-" for k in ("params", "macs")]
        if timed:
            share = r.get("latency_share")
            cells += [fmt(r.get("latency_ms")), f"{share:.1%}" if isinstance(share, float) else "-"]
        t.add_row(*cells)
    _console(console).print(t)
