"""Search candidates as recipes, run through an executor and cached per folder like sweep points.

:func:`candidate_recipe` turns a proposal into a recipe mapping (the pass replaced, a recovery of
the given length); :func:`run_candidate` is the module-level task executors pickle; :func:`run_many`
reads cached rows back (``sweep-key.txt``) and runs the rest on the search's executor.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Callable

from compress.search.config import SearchConfig


def finetune_steps(ft: dict | None, recipe, batch_default: int = 16) -> int | None:
    """Optimiser steps of the recipe's recovery (epochs x batches of its data), None without one."""
    if not ft:
        return None
    if ft.get("steps"):
        return int(ft["steps"])
    from compress.passes.finetune import FinetuneConfig
    from compress.runner import load_data

    cfg = FinetuneConfig(**ft)
    data = load_data(cfg.data) if cfg.data is not None else load_data(recipe.data.calibration)
    n = len(data) if data is not None else 0
    if cfg.samples:
        n = min(n, cfg.samples)
    return max(1, (cfg.epochs or 1) * math.ceil(n / cfg.batch_size))


def candidate_recipe(raw: dict, index: int, prune: dict, *, name: str, threads: int, steps: int | None,
                     min_agreement: float, task: str) -> dict:
    """The recipe mapping of one candidate: ``prune`` in place of the pass, recovery of ``steps`` steps."""
    out = copy.deepcopy(raw)
    p = copy.deepcopy(prune)
    if p.get("finetune") and steps is not None:
        ft = {k: v for k, v in p["finetune"].items() if k != "epochs"}
        ft["steps"] = int(steps)
        p["finetune"] = ft
    out["passes"][index] = p
    out["name"] = name
    out.setdefault("benchmark", {})
    out["benchmark"] = {**(out.get("benchmark") or {}), "threads": threads}
    fid = dict(out.get("fidelity") or {})
    fid["min_top1_agreement" if task == "classify" else "min_agreement_map50"] = min_agreement
    out["fidelity"] = fid
    return out


def run_candidate(item: dict) -> dict:
    """Run one candidate recipe into its folder, write its cache key; return its summary row."""
    from compress import recipe as R
    from compress.api import run
    from compress.sweep import KEY_FILE, summarize

    out = Path(item["dir"])
    recipe = R.validate(item["recipe"], source=item["name"])
    report = run(recipe, out, force=out.exists(), quiet=True, threads=item["threads"])
    if (out / "report.json").is_file():
        (out / KEY_FILE).write_text(item["key"] + "\n")
    return summarize(report)


def _cached_row(folder: Path, key: str) -> dict | None:
    from compress.sweep import KEY_FILE, summarize

    try:
        if (folder / KEY_FILE).read_text().strip() == key:
            return summarize(json.loads((folder / "report.json").read_text()))
    except (OSError, ValueError):
        return None
    return None


def run_many(items: list[dict], cfg: SearchConfig, say: Callable[[str], None],
              runner: Callable[[dict], dict] | None) -> list[dict]:
    """Every item's summary row (cached ones read back; others through the executor)."""
    from compress.sweep import input_key
    from compress import recipe as R

    rows: list[dict | None] = [None] * len(items)
    todo = []
    for i, it in enumerate(items):
        it["key"] = input_key(R.validate(it["recipe"], source=it["name"]))
        cached = _cached_row(Path(it["dir"]), it["key"])
        if cached is not None:
            rows[i] = {**cached, "cached": True}
        else:
            todo.append(i)
    if todo:
        say(f"search: running {len(todo)} of {len(items)} ({len(items) - len(todo)} cached) "
            f"on the {cfg.executor} executor")
        if runner is not None:
            results = ((k, _safe(runner, items[i])) for k, i in enumerate(todo))
            for k, res in results:
                rows[todo[k]] = res if isinstance(res, dict) else {"error": _one_line(res)}
        else:
            from compress.executors import get_executor

            with get_executor(cfg.executor, address=cfg.ray_address, workers=cfg.workers) as ex:
                for k, res in ex.map(run_candidate, [items[i] for i in todo], threads=cfg.threads):
                    if isinstance(res, BaseException) and not isinstance(res, Exception):
                        raise res
                    rows[todo[k]] = res if isinstance(res, dict) else {"error": _one_line(res)}
    return [dict(r or {}, cached=bool((r or {}).get("cached"))) for r in rows]


def _safe(fn, item):
    try:
        return fn(item)
    except Exception as e:  # a candidate that fails is a row with its error, the search goes on
        return e


def _one_line(e) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:300]


# -- the search -------------------------------------------------------------------------------------
