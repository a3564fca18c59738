"""Run reports: report.json (machine-readable) and report.md (one readable page).

``write_report`` accepts the runner's report dict; every key is optional. Console
tables for the CLI live in :mod:`compress.report.console`, detection overlays in
:mod:`compress.report.overlay`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from compress.report.console import print_profile, print_stage_table, print_summary

__all__ = ["write_report", "to_jsonable", "print_stage_table", "print_summary", "print_profile"]


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy/torch scalars -> int/float, NaN/inf -> None, paths -> str."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic
        return to_jsonable(obj.model_dump(mode="json"))
    if hasattr(obj, "tolist"):  # numpy arrays / scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def write_report(out_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` (indent 2) and ``report.md`` into ``out_dir``; return both paths."""
    from compress.atomic import atomic_write_text
    from compress.report.markdown import render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = to_jsonable(report if isinstance(report, dict) else {})
    json_path = atomic_write_text(out / "report.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    md_path = atomic_write_text(out / "report.md", render(data))
    return json_path, md_path
