"""Sweeps: run one recipe over a grid of ``--set`` values and tabulate/plot the trade-off.

    sweep("recipes/digitdet-prune-sweep.yaml", {"prune.ratio": [0.5, 0.6, 0.7]}, "runs/sweep")

Every grid point is one ordinary run in its own sub-folder named after its overrides
(``prune.ratio=0.6``). Points are cached: a point is not run again when its ``sweep-key.txt``
holds the same :func:`input_key` -- the resolved recipe, the content hash of the checkpoint
(and of an architecture or model-yaml file) and the listing of every data folder (paths,
sizes, modification times, and the content of label files) -- so an interrupted sweep
resumes where it stopped, and a changed checkpoint or data set at the same path recomputes.
The sweep folder gets ``sweep.csv``, ``sweep.md``, ``sweep.json`` and the plots of
:mod:`compress.report.plots`.

Each point that is not cached is one task of an executor (:mod:`compress.executors`): ``local``
runs them one after another in this process, ``ray`` runs them as Ray tasks, each with the
point's thread count as its CPUs. Rows come back in grid order whatever order the points
finish in, and each point writes its own folder and cache key, so a killed sweep resumes on
any executor.

Size and speed ratios follow the report's convention: ``original / compressed`` (above 1
means smaller or faster). ``quality`` is the true metric when labels exist (mAP50 for
detectors, top-1 accuracy for classifiers), else the agreement with the original;
``accuracy_x_fps`` is quality times frames per second of the compressed ONNX model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError, RecipeError

if TYPE_CHECKING:
    from compress.executors import Executor

METRIC_COLUMNS = ["params", "macs", "onnx_bytes", "latency_ms", "params_x", "macs_x", "onnx_bytes_x", "speedup",
                  "agreement_map50", "agreement_map50_95", "top1_agreement", "map50", "accuracy", "quality",
                  "accuracy_x_fps", "pareto", "passed", "error"]
_MD_COLUMNS = ["params", "macs", "latency_ms", "params_x", "macs_x", "speedup", "agreement_map50",
               "top1_agreement", "map50", "accuracy", "accuracy_x_fps", "pareto", "passed", "error"]


# -- the grid -------------------------------------------------------------------------------
def _split_values(raw: str) -> list[str]:
    """``0.5,0.6`` -> ['0.5', '0.6']; commas inside [...] or {...} do not split (YAML lists)."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_grid(items: Iterable[str]) -> dict[str, list[str]]:
    """``["prune.ratio=0.5,0.6", "prune.criterion=l1,l2"]`` -> {key: [values]} (the CLI's ``--set``)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item}: expected key=value1,value2,...")
        if key in grid:
            raise RecipeError(f"--set {key}: given twice; list all its values in one --set")
        values = _split_values(raw)
        if any(v == "" for v in values):
            raise RecipeError(f"--set {item}: empty value in the list")
        grid[key] = values
    return grid


def _fmt_value(v: Any) -> str:
    """A grid value as ``--set`` text (YAML): strings as given, others as JSON (a YAML subset)."""
    return v if isinstance(v, str) else json.dumps(v)


def expand(grid: dict[str, Sequence[Any]]) -> list[dict[str, str]]:
    """Every combination of the grid's values (itertools.product), in the grid's key order."""
    if not grid:
        raise RecipeError("sweep: the grid is empty; give at least one --set key=v1,v2,...")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise RecipeError(f"sweep: {key}: expected a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, (_fmt_value(v) for v in combo))) for combo in itertools.product(*grid.values())]


def point_name(point: dict[str, str]) -> str:
    """Folder name of a grid point, e.g. ``prune.ratio=0.6,prune.steps=1`` (path-safe)."""
    name = ",".join(f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)[:200]


# -- one report -> one row --------------------------------------------------------------------
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summarize(report: dict) -> dict[str, Any]:
    """The sweep columns of one run's report dict (missing values are None)."""
    comp, ratios, fid = report.get("compressed") or {}, report.get("ratios") or {}, report.get("fidelity") or {}
    row = {k: comp.get(k) for k in ("params", "macs", "onnx_bytes", "latency_ms", "map50", "accuracy")}
    row.update(params_x=ratios.get("params"), macs_x=ratios.get("macs"), onnx_bytes_x=ratios.get("onnx_bytes"),
               speedup=ratios.get("latency"))
    row.update({k: fid.get(k) for k in ("agreement_map50", "agreement_map50_95", "top1_agreement")})
    row["passed"] = fid.get("passed")
    quality = next((_num(row[k]) for k in ("map50", "accuracy", "agreement_map50", "top1_agreement")
                    if _num(row[k]) is not None), None)
    latency = _num(row["latency_ms"])
    row["quality"] = quality
    row["accuracy_x_fps"] = quality * 1000.0 / latency if quality is not None and latency else None
    return row


# -- the cache key -----------------------------------------------------------------------------
KEY_FILE = "sweep-key.txt"
_LABEL_SUFFIXES = {".txt", ".json", ".yaml", ".yml", ".csv", ".xml"}  # hashed by content, not only stat
_MAX_FILES = 200_000


def _file_hash(path: Path, memo: dict) -> str:
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        memo[k] = h.hexdigest()
    return memo[k]


def _listing_hash(path: Path, memo: dict) -> str:
    """Hash of a data path: every file's relative path, size and mtime; label files by content."""
    h = hashlib.sha256()
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    for q in files[:_MAX_FILES]:
        st = q.stat()
        rel = q.name if q == path else str(q.relative_to(path))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if q.suffix.lower() in _LABEL_SUFFIXES and st.st_size <= 1 << 20:
            h.update(_file_hash(q, memo).encode())
    h.update(f"{len(files)}".encode())
    return h.hexdigest()


def _data_paths(node: Any) -> list[str]:
    """Every ``path`` of a DataSource-shaped mapping in a resolved recipe dict."""
    out = []
    if isinstance(node, dict):
        if isinstance(node.get("path"), str) and "format" in node:
            out.append(node["path"])
        for v in node.values():
            out += _data_paths(v)
    elif isinstance(node, list):
        for v in node:
            out += _data_paths(v)
    return out


def input_key(recipe, memo: dict | None = None) -> str:
    """What a point's result depends on: recipe digest + checkpoint content + data listings."""
    memo = {} if memo is None else memo
    h = hashlib.sha256(recipe.digest().encode())
    spec = recipe.model
    files = [spec.checkpoint, spec.builtin, (spec.arch or "").rsplit(":", 1)[0] or None]
    for f in files:
        if f and Path(f).is_file():
            h.update(f"model:{f}:{_file_hash(Path(f), memo)}".encode())
        elif spec.checkpoint and f == spec.checkpoint:
            h.update(b"model:missing")
    for d in sorted(set(_data_paths(recipe.to_dict()))):
        h.update(f"data:{d}:{_listing_hash(Path(d), memo)}".encode())
    return h.hexdigest()[:32]


def _cached_key(point_dir: Path) -> str | None:
    try:
        return (point_dir / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


# -- the sweep --------------------------------------------------------------------------------
def _default_runner(recipe, out_dir: Path, *, force: bool, quiet: bool, trust_checkpoint: bool = False) -> dict:
    from compress.api import run

    return run(recipe, out_dir, force=force, quiet=quiet, trust_checkpoint=trust_checkpoint)


def _claim(out_dir: Path) -> None:
    """Create and mark the sweep folder; refuse a non-empty folder that no compress command wrote."""
    from compress.atomic import is_compress_output, mark_output

    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_compress_output(out_dir):
        raise CompressError(f"{out_dir} exists and is not a compress output (no .compress-run marker); "
                            "choose another --out")
    mark_output(out_dir)


@dataclass(frozen=True)
class PointJob:
    """One grid point to run: everything :func:`run_point` needs, picklable (it may travel to a Ray worker)."""

    recipe: Any
    point_dir: Path
    key: str
    force: bool
    runner: Callable[..., dict] | None = None
    trust_checkpoint: bool = False


def run_point(job: PointJob) -> dict:
    """Run one point into its folder and record its cache key next to its report; return the report.

    Module-level so an executor can send it to another process; the key is written by the task
    itself, so a point that finished is cached even if the sweep is killed before it hears back.
    """
    runner = job.runner or _default_runner
    kwargs = {"trust_checkpoint": True} if job.trust_checkpoint else {}
    report = runner(job.recipe, job.point_dir, force=job.force or job.point_dir.exists(), quiet=True, **kwargs)
    if (job.point_dir / "report.json").is_file():
        (job.point_dir / KEY_FILE).write_text(job.key + "\n")
    return report


def _error_text(e: BaseException) -> str:
    """A failed point's ``error`` cell: a CompressError's first line; anything else names its type."""
    from compress.executors.base import TaskError

    first = (str(e).splitlines() or [""])[0]
    if isinstance(e, CompressError):
        return first or type(e).__name__
    if isinstance(e, TaskError) and first:  # already "WorkerCrashedError: ..." (what happened on the worker)
        return f"{first} (unexpected error in this point)"
    return f"{type(e).__name__}: {first} (unexpected error in this point)" if first else \
        f"{type(e).__name__} (unexpected error in this point)"


def sweep(recipe_path: str | Path, grid: dict[str, Sequence[Any]], out_dir: str | Path, *, force: bool = False,
          base_overrides: Sequence[str] = (), runner: Callable[..., dict] | None = None,
          quiet: bool = False, plots: bool = True, raw: dict | None = None,
          trust_checkpoint: bool = False,
          executor: Executor | Callable[[], Executor] | None = None) -> list[dict[str, Any]]:
    """Run ``recipe_path`` at every point of ``grid``; write sweep.csv/.md/.json and plots into ``out_dir``.

    ``base_overrides`` (``key=value``) apply to every point; ``raw`` is the recipe mapping to use
    instead of reading ``recipe_path`` (e.g. with the CLI's --model/--data applied). ``runner(recipe,
    point_dir, force=, quiet=) -> report`` defaults to :func:`compress.api.run`. Every point that is
    not cached is one task of ``executor``, with the point's ``benchmark.threads`` (default: the
    physical cores) as its thread count: an :class:`~compress.executors.Executor` the caller closes,
    or a zero-argument factory called only once every point validated and some point must run (and
    closed here), or None for the in-process local executor. Rows come back in grid order whatever
    order the tasks finish in. A point that fails gets a row with its ``error`` and the sweep goes on (a
    ``CompressError`` as its message, any other exception named by its type). No plots are drawn
    when no point succeeded; ``force`` reruns cached points; ``plots=False`` skips the PNGs.
    Returns the rows (one dict per point, swept keys first).
    """
    from compress import recipe as recipe_mod
    from compress.progress import progress
    from compress.runtime.threads import resolve_threads

    out_dir = Path(out_dir)
    points = expand(grid)
    # validate every point's recipe before running any, so a typo fails at once
    def resolve(point):
        sets = [*base_overrides, *(f"{k}={v}" for k, v in point.items())]
        if raw is None:
            return recipe_mod.load(recipe_path, sets)
        return recipe_mod.validate(recipe_mod.apply_overrides(raw, sets, source=str(recipe_path)), str(recipe_path))

    recipes = [resolve(p) for p in points]
    names = [point_name(p) for p in points]
    memo: dict = {}
    _claim(out_dir)
    reports: list[dict | None] = [None] * len(points)
    errors: list[str | None] = [None] * len(points)
    todo: list[tuple[int, PointJob]] = []
    for i, (name, recipe) in enumerate(zip(names, recipes)):
        point_dir = out_dir.absolute() / name  # the same folder for a worker in another working directory
        try:
            key = input_key(recipe, memo)
            if not force and (point_dir / "report.json").is_file() and _cached_key(point_dir) == key:
                reports[i] = json.loads((point_dir / "report.json").read_text())
            else:
                todo.append((i, PointJob(recipe, point_dir, key, force, runner, trust_checkpoint)))
        except CompressError as e:
            errors[i] = _error_text(e)
    with progress(quiet) as bar:
        task = bar.add_task("sweep", total=len(points), completed=len(points) - len(todo)) \
            if bar is not None else None
        if todo:
            from compress.executors import Executor
            from compress.executors.local import LocalExecutor

            own = not isinstance(executor, Executor)
            if own:
                executor = LocalExecutor() if executor is None else executor()
            try:
                threads = [resolve_threads(job.recipe.benchmark.threads) for _, job in todo]
                for j, result in executor.map(run_point, [job for _, job in todo], threads=threads):
                    i = todo[j][0]
                    if isinstance(result, BaseException):
                        errors[i] = _error_text(result)
                    else:
                        reports[i] = result
                    if bar is not None:
                        bar.update(task, advance=1, description=f"sweep {names[i]}")
            finally:
                if own:
                    executor.close()
    rows, baseline = [], None
    for point, name, report, error in zip(points, names, reports, errors):
        report = report or {}
        baseline = baseline or report.get("original")
        rows.append({"point": name, **point, **summarize(report), "error": error})
    mark_pareto(rows)
    ok = any(not r.get("error") for r in rows)
    write_outputs(rows, list(grid), out_dir, baseline=baseline, recipe=str(recipe_path), plots=plots and ok)
    return rows


def mark_pareto(rows: list[dict]) -> None:
    """Set each row's ``pareto`` flag: not dominated in (lower latency, higher quality)."""
    from compress.report.plots import pareto_front

    flags = pareto_front([_num(r.get("latency_ms")) for r in rows], [_num(r.get("quality")) for r in rows])
    for row, flag in zip(rows, flags):
        row["pareto"] = flag


# -- outputs ----------------------------------------------------------------------------------
def to_csv(rows: list[dict], keys: list[str]) -> str:
    """CSV text: the swept keys, then :data:`METRIC_COLUMNS` (empty cells for missing values)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*keys, *METRIC_COLUMNS], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in w.fieldnames})
    return buf.getvalue()


def _md_cell(key: str, v: Any) -> str:
    from compress.report.fmt import fmt

    if v is None:
        return "-"
    if key.endswith("_x") or key == "speedup":
        return f"{v:.2f}x"
    if isinstance(v, float) and key == "latency_ms":
        return f"{v:.4g}"
    if isinstance(v, float) and key == "accuracy_x_fps":
        return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
    return fmt(v).replace("|", "/")


def to_markdown(rows: list[dict], keys: list[str], baseline: dict | None = None) -> str:
    """A markdown table of the sweep (columns with no value in any row are left out)."""
    cols = [c for c in _MD_COLUMNS if any(r.get(c) is not None for r in rows)]
    head = [*keys, *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if baseline:
        cells = ["original"] + [""] * (len(keys) - 1) + [_md_cell(c, baseline.get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        lines.append("| " + " | ".join([str(r.get(k, "")) for k in keys] + [_md_cell(c, r.get(c)) for c in cols])
                     + " |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], keys: list[str], out_dir: Path, *, baseline: dict | None = None,
                  recipe: str = "", plots: bool = True) -> dict[str, Path]:
    """Write sweep.csv, sweep.md, sweep.json and (unless ``plots`` is False) the plots; return their paths."""
    from compress.atomic import atomic_write_text
    from compress.report import to_jsonable
    from compress.report.plots import plot_sweep

    images = plot_sweep(rows, keys, out_dir, baseline=baseline) if plots else {}
    title = f"# Sweep of {recipe}\n\n" if recipe else ""
    links = "".join(f"\n![{name}]({p.name})\n" for name, p in images.items())
    paths = {"csv": atomic_write_text(out_dir / "sweep.csv", to_csv(rows, keys)),
             "md": atomic_write_text(out_dir / "sweep.md", title + to_markdown(rows, keys, baseline) + links),
             "json": atomic_write_text(out_dir / "sweep.json", json.dumps(
                 to_jsonable({"recipe": recipe, "keys": keys, "baseline": baseline, "rows": rows}), indent=2))}
    return {**paths, **images}
