"""The deploy section as a table: target x artifact, agreement, latency, ratio, size."""

from __future__ import annotations

META = ("settings", "baseline", "speedup", "notes")


def rows(section: dict, only: list[str] | None = None) -> list[list[str]]:
    out = []
    for target, entry in section.items():
        if target in META or not isinstance(entry, dict) or (only and target not in only):
            continue
        for name, r in entry.get("artifacts", {}).items():
            agree = r.get("agreement_map50", r.get("top1_agreement"))
            out.append([target, name + (" *" if entry.get("selected") == name else ""),
                        "-" if agree is None else f"{agree:.3f}", f"{r['latency_ms']:.2f}",
                        f"{r['speedup_vs_ort_original']:.2f}x",
                        "-" if r.get("speedup_vs_ort_fp32") is None else f"{r['speedup_vs_ort_fp32']:.2f}x",
                        f"{r['bytes'] / 1e6:.2f}", "PASS" if r.get("passed") else "FAIL"])
    return out


HEADER = ["target", "artifact", "agreement mAP50", "latency ms", "vs ORT original", "vs ORT fp32", "MB", "check"]


def markdown(section: dict) -> str:
    base = section.get("baseline", {}).get("onnxruntime/original", {})
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(section)]
    if base:
        lines.append(f"\nORT fp32 original: {base['latency_ms']:.2f} ms, {base['bytes'] / 1e6:.2f} MB; "
                     "* = selected")
    return "\n".join(lines) + "\n"


def print_deploy(section: dict, only: list[str] | None = None) -> None:
    """The table of ``only`` these targets (default: all) and the notes."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*HEADER, title="deploy (latency: median, same process, interleaved)")
    for r in rows(section, only):
        table.add_row(*r)
    con = Console()
    con.print(table)
    for n in section.get("notes", []):
        con.print(f"- {n}", highlight=False)
