"""``compress search``: find per-layer pruning ratios that meet a latency target with the least loss.

1. Baseline: the fp32 ONNX original's latency (measured once, cached next to the latency table)
   and the latency table in the format the recipe ends in (int8 when it quantizes).
2. Proposals: Optuna's TPE sampler (seeded) over a global ratio and per-stage multipliers
   (:mod:`compress.search.space`); each proposal is pruned on a copy with prune.structured's own
   planning and scored by predicted latency (the table) and output distortion of the un-recovered
   copy (:mod:`compress.search.proxy`). The first proposal is the recipe's own uniform ratio.
3. The K least-distorted distinct proposals that meet the predicted target each get a real
   ``compress run`` with a short recovery, through an executor (:mod:`compress.search.candidates`), cached per candidate folder
   (``sweep-key.txt``), so a killed search resumes.
4. The candidate with the best measured agreement that meets the measured target wins and gets
   the full recipe. Predicted vs measured speed-ups above 15 % apart refresh the table once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from compress.errors import CompressError, FidelityFailed, RecipeError
from compress.search.candidates import candidate_recipe, finetune_steps, run_many
from compress.search.config import SearchConfig

REFRESH_TOLERANCE = 0.15
PROPOSAL_SHARE = 0.3  # of the wall-time budget, for the proposals
PROXY_VERSION = 2  # 2: distortion after adaptive BN; cached proposals of another version are scored again


class NoCandidate(FidelityFailed):
    """No candidate reached the agreement asked for (exit 3)."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prune_index(raw: dict, source: str) -> tuple[int, str | None]:
    """Index of the one prune.structured pass and the recipe's final format ('int8' if it quantizes)."""
    passes = raw.get("passes") or []
    idx = [i for i, p in enumerate(passes) if isinstance(p, dict) and p.get("type") == "prune.structured"]
    if len(idx) != 1:
        raise RecipeError(f"{source}: search needs exactly one prune.structured pass (found {len(idx)})")
    quant = [p.get("type") for p in passes if isinstance(p, dict) and str(p.get("type", "")).startswith("quantize.")]
    if raw["passes"][idx[0]].get("scope") == "global":
        raise RecipeError(f"{source}: search sets per-layer ratios; scope: global cannot be searched")
    return idx[0], ("int8" if quant else "fp32")


class _Scorer:
    """Dry-run prune + predicted latency + distortion for knob settings (memoised by widths)."""

    def __init__(self, model, adapter, prune_cfg, space, table, distortion, seed, base_ms):
        self.model, self.adapter, self.prune_cfg = model, adapter, prune_cfg
        self.space, self.table, self.distortion, self.seed, self.base_ms = space, table, distortion, seed, base_ms
        from compress.metrics.size import count_macs

        self.macs0 = count_macs(model, adapter.example_input(1))

    def __call__(self, knobs: dict[str, float]) -> dict:
        from compress.metrics.size import count_macs
        from compress.search.proxy import dry_run, prune_config, widths

        ratios = self.space.ratios(knobs)
        cfg = prune_config(self.prune_cfg, ratios, knobs["global"])
        pruned = dry_run(self.model, self.adapter, cfg, self.seed)
        pred = float(self.table.predict_ms(pruned))
        w = widths(pruned)
        return {"knobs": {k: round(float(v), 4) for k, v in knobs.items()}, "layer_ratios": ratios,
                "predicted_ms": round(pred, 4), "predicted_speedup": round(self.base_ms / pred, 4) if pred else None,
                "macs_ratio": round(self.macs0 / max(1, count_macs(pruned, self.adapter.example_input(1))), 4),
                "distortion": round(self.distortion(pruned), 6), "widths": _digest(w)}


def _table(model, adapter, cfg: SearchConfig, fmt: str, cache_dir: Path, calibration, ptq,
           refresh: bool = False, runs: int | None = None):
    """(table, how): the per-layer latency table of compress.search.latency_table (cached; an old or
    damaged cache file is rebuilt by ``cached_table``)."""
    from compress.search.latency_table import cached_table

    kw = {"calibration": calibration, "ptq_config": ptq} if fmt == "int8" else {}
    table, cached = cached_table(model, adapter, cache_dir=cache_dir, threads=cfg.threads, fmt=fmt,
                                 refresh=refresh, runs=runs or cfg.table_runs, **kw)
    # predict_ms takes the adapter, so even a model that is not rewritten for pruning is read right
    table = _WithAdapter(table, adapter)
    return table, ("cached" if cached else "built") + f" ({fmt}, {cfg.threads} thread(s))"


class _WithAdapter:
    """A LatencyTable predicting with the end-to-end statistic its calibration fits best.

    A table timed on a busy machine can have a useless median fit (hundreds of % error) and a
    good min fit; ``stat`` is the calibrated statistic with the smallest ``max_abs_pct_error``.
    """

    def __init__(self, table, adapter):
        self.table, self.adapter, self.key = table, adapter, table.key
        cal = getattr(table, "calibration", {}) or {}
        fits = {k: v.get("max_abs_pct_error") for k, v in cal.items() if isinstance(v, dict)}
        fits = {k: e for k, e in fits.items() if isinstance(e, (int, float))}
        self.stat = min(fits, key=fits.get) if fits else None
        self.error_pct = fits.get(self.stat) if self.stat else None

    def predict_ms(self, model) -> float:
        if self.stat is None:
            return self.table.predict_ms(model)
        return self.table.predict_ms(model, stat=self.stat)  # search models are already rewritten for pruning


def _base_latency(model, adapter, cfg: SearchConfig, cache_dir: Path, key: str) -> dict:
    """Median ms of the fp32 ONNX original (exported here), cached by ``key`` so reruns agree."""
    from compress.atomic import atomic_write_text

    path = cache_dir / "search-baselines" / f"original-fp32-{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    import tempfile

    from compress.export import export_onnx
    from compress.runtime.latency import measure

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        onnx = export_onnx(model, adapter, Path(tmp) / "original.onnx", metadata={"variant": "original"})
        st = measure(onnx, adapter.example_input(1).numpy(), threads=cfg.threads, runs=max(50, cfg.table_runs))
    info = {"median_ms": st["median_ms"], "p90_ms": st["p90_ms"], "threads": cfg.threads}
    atomic_write_text(path, json.dumps(info))
    return info


def _propose(scorer: _Scorer, space, cfg: SearchConfig, target_ms: float, uniform: float, deadline: float,
             say) -> tuple[list[dict], bool]:
    """Optuna TPE over the knobs; every trial's scores, and whether the budget stopped it early."""
    import optuna

    from compress.search.space import GLOBAL_RANGE, MULT_RANGE

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.enqueue_trial({"global": min(max(uniform, GLOBAL_RANGE[0]), GLOBAL_RANGE[1]),
                         **{f"stage{i}": 1.0 for i in range(len(space.stages))}})
    trials, stopped = [], False
    for n in range(cfg.trials):
        if n and time.monotonic() > deadline:
            stopped = True
            break
        t = study.ask()
        knobs = {"global": t.suggest_float("global", *GLOBAL_RANGE)}
        knobs.update({f"stage{i}": t.suggest_float(f"stage{i}", *MULT_RANGE) for i in range(len(space.stages))})
        row = scorer(knobs)
        row["trial"] = n
        row["feasible"] = row["predicted_ms"] <= target_ms
        # infeasible trials rank after every feasible one, closer misses first
        study.tell(t, row["distortion"] if row["feasible"] else 10.0 + row["predicted_ms"] / target_ms)
        trials.append(row)
        if (n + 1) % 10 == 0:
            say(f"search: {n + 1}/{cfg.trials} proposals, {sum(r['feasible'] for r in trials)} meet the "
                "predicted target")
    return trials, stopped


def _pick(trials: list[dict], k: int) -> list[dict]:
    """The ``k`` least-distorted feasible trials with distinct widths."""
    seen, out = set(), []
    for r in sorted((r for r in trials if r["feasible"]), key=lambda r: (r["distortion"], r["trial"])):
        if r["widths"] not in seen:
            seen.add(r["widths"])
            out.append(r)
        if len(out) == k:
            break
    return out


def search(recipe_path: str | Path, out_dir: str | Path, cfg: SearchConfig, *, raw: dict | None = None,
           force: bool = False, table_cache: str | Path | None = None, say: Callable[[str], None] = print,
           runner: Callable[[dict], dict] | None = None, command: str | None = None) -> dict:
    """Run the search; write recipe.yaml, candidates.csv/.md, search.json and search.png to ``out_dir``.

    Returns the search.json dict. Raises :class:`NoCandidate` (exit 3) when the winner's full run
    misses ``cfg.min_agreement`` (the outputs are written first). ``runner(item) -> row`` replaces the
    executor (tests).
    """
    from compress import recipe as R
    from compress.models import load_model
    from compress.runner import load_data
    from compress.runtime.threads import torch_threads
    from compress.search.proxy import Distortion
    from compress.search.space import build_space
    from compress.sweep import _claim, input_key

    t_start = time.monotonic()
    deadline = t_start + cfg.budget_min * 60.0
    source = str(recipe_path)
    raw = copy.deepcopy(raw) if raw is not None else R.read_yaml(recipe_path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping")
    recipe = R.validate(raw, source=source)
    index, fmt = _prune_index(raw, source)
    if cfg.executor != "local" or cfg.ray_address or cfg.workers:
        from compress.executors import get_executor  # bad flag combinations fail before any work

        get_executor(cfg.executor, address=cfg.ray_address, workers=cfg.workers).close()
    out_dir = Path(out_dir)
    from compress.atomic import is_compress_output

    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_compress_output(out_dir):
        _claim(out_dir)  # refuses with the sweep's one-line message, before any work
    if table_cache is None:
        from compress.search.latency_table import default_cache_dir

        table_cache = default_cache_dir()
    cache_dir = Path(table_cache)
    prune_raw = dict(raw["passes"][index])
    notes: list[str] = []

    with torch_threads(cfg.threads):
        adapter, model = load_model(recipe.model)
        model = adapter.rewrite_for_pruning(model).eval()
        calib = load_data(recipe.data.calibration) or load_data(recipe.data.validation)
        images = [s.image for s in calib.head(cfg.calib_images)]
        ptq = next((p for p in raw["passes"] if isinstance(p, dict) and p.get("type") == "quantize.ptq"), None)
        model_key = input_key(R.validate({**raw, "passes": [prune_raw]}, source=source))
        table, table_how = _table(model, adapter, cfg, fmt, cache_dir, calib, ptq)
        ref = getattr(getattr(table, "table", None), "reference", None)
        stat = getattr(table, "stat", None) or "median"
        if ref and ref.get(f"{stat}_ms"):  # the fp32 original timed with the table's variants
            base = {"median_ms": float(ref[f"{stat}_ms"]), "source": f"latency table reference ({stat})"}
            if getattr(table, "error_pct", None) is not None:
                table_how += f", predicting the {stat} (calibration error {table.error_pct:.1f} %)"
        else:
            base = _base_latency(model, adapter, cfg, cache_dir, _digest([model_key, cfg.threads]))
            base["source"] = "measured alone"
        say(f"search: fp32 original {base['median_ms']:.3f} ms ({cfg.threads} thread(s)); latency table {table_how}")
        target_ms = (base["median_ms"] / cfg.target_speedup if cfg.target_speedup else cfg.target_latency_ms)
        space = build_space(model, adapter, prune_raw.get("ignore"), cfg.stages)
        if not space.stages:
            raise RecipeError(f"{source}: no prunable layer to search over (all protected or ignored)")
        scorer = _Scorer(model, adapter, prune_raw, space, table, Distortion(model, adapter, images), recipe.seed,
                         base["median_ms"])
        most = scorer(space.extreme())
        if most["predicted_ms"] > target_ms:
            raise CompressError(
                f"search: target {_target_text(cfg)} is impossible under the latency table ({table_how}): the best "
                f"predicted speed-up is {most['predicted_speedup']:.2f}x ({most['predicted_ms']:.3f} ms vs "
                f"{target_ms:.3f} ms asked, fp32 original {base['median_ms']:.3f} ms)")
        _claim(out_dir)
        # aim below the target by the margin (never below what the table says is reachable)
        aim_ms = max(target_ms * (1.0 - cfg.margin), most["predicted_ms"])
        # proposals (cached: a resumed search reuses them)
        prop_key = _digest([model_key, cfg.seed, cfg.trials, cfg.stages, cfg.calib_images, round(aim_ms, 6),
                            table.key, getattr(table, "stat", None), space.stages, PROXY_VERSION])
        prop_path = out_dir / "proposals.json"
        trials, stopped, reused = None, False, False
        try:
            saved = json.loads(prop_path.read_text())
            if saved.get("key") == prop_key and not force:
                trials, stopped, reused = saved["trials"], saved["budget_stopped"], True
        except (OSError, ValueError, KeyError):
            pass
        if trials is None:
            trials, stopped = _propose(scorer, space, cfg, aim_ms, float(prune_raw.get("ratio", 0.5)),
                                       t_start + PROPOSAL_SHARE * cfg.budget_min * 60.0, say)
            from compress.atomic import atomic_write_text

            atomic_write_text(prop_path, json.dumps({"key": prop_key, "trials": trials, "budget_stopped": stopped}))
        if stopped:
            notes.append(f"Wall-time budget ({cfg.budget_min:g} min): proposals stopped after {len(trials)} of "
                         f"{cfg.trials}.")
        chosen = _pick(trials, cfg.candidates)
        if not chosen and cfg.margin:  # none within the margin: take those that meet the target itself
            within = [{**r, "feasible": r["predicted_ms"] <= target_ms} for r in trials]
            chosen = _pick(within, cfg.candidates)
            if chosen:
                notes.append(f"No proposal was predicted {cfg.margin:.0%} below the target; the candidates are "
                             "predicted at the target itself, so a measured miss is likely.")
        if not chosen:
            best = max(trials, key=lambda r: r["predicted_speedup"] or 0)
            raise CompressError(f"search: no proposal met the predicted target {_target_text(cfg)} in "
                                f"{len(trials)} trials (best predicted speed-up {best['predicted_speedup']:.2f}x); "
                                "try more --trials")
        say(f"search: {len(trials)} proposals{' (reused)' if reused else ''}; {len(chosen)} candidate(s) get a "
            "short recovery")

    # short recoveries
    full_steps = finetune_steps(prune_raw.get("finetune"), recipe)
    short = None if full_steps is None else max(1, round(full_steps * cfg.short_fraction))
    if time.monotonic() > deadline:
        cached_ok = [c for c in chosen if (out_dir / "candidates" / f"c-{c['widths']}" / "report.json").is_file()]
        chosen = cached_ok or chosen[:1]
        notes.append(f"Wall-time budget ({cfg.budget_min:g} min) spent before the short recoveries: "
                     f"{len(chosen)} candidate(s) kept.")
    items = []
    for c in chosen:
        cid = f"c-{c['widths']}"
        prune = _prune_of(prune_raw, c)
        items.append({"name": cid, "dir": str(out_dir / "candidates" / cid), "threads": cfg.threads,
                      "recipe": candidate_recipe(raw, index, prune, name=f"{recipe.name}-{cid}", threads=cfg.threads,
                                                 steps=short, min_agreement=cfg.min_agreement, task=adapter.task)})
    rows = run_many(items, cfg, say, runner)
    cands = [_merge(c, r, it, cfg, target_ms) for c, r, it in zip(chosen, rows, items)]

    # honest latency: predicted vs measured speed-up; refresh the table once when they differ > 15 %
    refreshed = None
    worst = max((abs(c["latency_error"]) for c in cands if c.get("latency_error") is not None), default=0.0)
    if worst > REFRESH_TOLERANCE:
        say(f"search: predicted and measured speed-ups differ by up to {worst:.0%}: rebuilding the latency table "
            f"with {cfg.table_runs * 3} runs")
        with torch_threads(cfg.threads):
            table2, how2 = _table(model, adapter, cfg, fmt, cache_dir, calib, ptq, refresh=True,
                                  runs=cfg.table_runs * 3)
            scorer.table = table2
            for c in cands:
                c["predicted_ms_before_refresh"] = c["predicted_ms"]
                again = scorer(c["knobs"])
                c["predicted_ms"], c["predicted_speedup"] = again["predicted_ms"], again["predicted_speedup"]
                c["latency_error"] = _err(c["predicted_speedup"], c.get("speedup"))
        refreshed = {"worst_error_before": round(worst, 4), "table": how2, "runs": cfg.table_runs * 3}
        notes.append(f"Predicted and measured speed-ups differed by up to {worst:.0%} (> 15 %): the latency table "
                     f"was rebuilt with {cfg.table_runs * 3} runs and the candidates re-predicted.")

    winner = _choose(cands)
    winner_prune = _prune_of(prune_raw, winner)
    full_recipe = candidate_recipe(raw, index, winner_prune, name=f"{recipe.name}-search", threads=cfg.threads,
                                   steps=None, min_agreement=cfg.min_agreement, task=adapter.task)
    if short is None:  # no recovery in the recipe: the candidate run is the full run
        final = dict(winner)
        final_dir = Path(items[cands.index(winner)]["dir"])
    else:
        say(f"search: full recovery for the winner {winner['candidate']}")
        final_dir = out_dir / "winner"
        item = {"name": "winner", "dir": str(final_dir), "threads": cfg.threads, "recipe": full_recipe}
        final = _merge(winner, run_many([item], cfg, say, runner)[0], item, cfg, target_ms)
    final["candidate"] = winner["candidate"]
    result = {
        "command": command, "recipe": source, "seed": cfg.seed, "config": cfg.model_dump(),
        "target": {"speedup": cfg.target_speedup, "latency_ms": round(target_ms, 4),
                   "aimed_ms": round(aim_ms, 4), "min_agreement": cfg.min_agreement},
        "original_fp32_ms": round(base["median_ms"], 4), "format": fmt, "table": {"how": table_how, "key": table.key},
        "table_refreshed": refreshed, "space": {"stages": space.blocks, "layers": len(space.layers)},
        "trials": len(trials), "proposals_reused": reused, "budget_stopped": stopped,
        "short_steps": short, "full_steps": full_steps, "candidates": cands, "winner": final,
        "winner_dir": str(final_dir.relative_to(out_dir)), "notes": notes, "seconds": round(time.monotonic() - t_start, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    final_ok = (final.get("agreement") or 0) >= cfg.min_agreement and not final.get("error")
    result["status"] = "pass" if final_ok and final.get("meets_target") else (
        "agreement below minimum" if not final_ok else "target missed (measured)")
    from compress.search.report import write_outputs

    write_outputs(out_dir, result, full_recipe)
    if not final_ok:
        raise NoCandidate(f"search: no candidate reached agreement {cfg.min_agreement:g}: the best, "
                          f"{winner['candidate']}, has {_fmt(final.get('agreement'))} after the full recovery "
                          f"(speed-up {_fmt(final.get('speedup'))}x); see {out_dir / 'candidates.md'}")
    return result


def _prune_of(prune_raw: dict, cand: dict) -> dict:
    from compress.search.proxy import prune_config

    return prune_config(prune_raw, cand["layer_ratios"], cand["knobs"]["global"])


def _err(pred, meas):
    return round((pred - meas) / meas, 4) if pred and meas else None


def _merge(cand: dict, row: dict, item: dict, cfg: SearchConfig, target_ms: float) -> dict:
    agreement = row.get("agreement_map50") if row.get("agreement_map50") is not None else row.get("top1_agreement")
    speedup, macs_x = row.get("speedup"), row.get("macs_x")
    meets = None
    if speedup is not None:
        meets = speedup >= cfg.target_speedup if cfg.target_speedup else (row.get("latency_ms") or 1e9) <= target_ms
    out = {"candidate": item["name"], "knobs": cand["knobs"], "layer_ratios": cand["layer_ratios"],
           "predicted_ms": cand["predicted_ms"], "predicted_speedup": cand["predicted_speedup"],
           "distortion": cand["distortion"], "measured_ms": row.get("latency_ms"), "speedup": speedup,
           "agreement": agreement, "macs_ratio": macs_x or cand.get("macs_ratio"),
           "efficiency": round(speedup / macs_x, 4) if speedup and macs_x else None,
           "meets_target": meets, "passed": row.get("passed"), "cached": row.get("cached", False),
           "error": row.get("error"), "dir": item["dir"]}
    out["latency_error"] = _err(out["predicted_speedup"], speedup)
    out["status"] = ("error" if out["error"] else "meets target" if meets else "misses target")
    return out


def _choose(cands: list[dict]) -> dict:
    """Best measured agreement among those meeting the measured target; else the fastest that ran."""
    ok = [c for c in cands if c["meets_target"] and c["agreement"] is not None]
    if ok:
        return max(ok, key=lambda c: c["agreement"])
    ran = [c for c in cands if c["speedup"] is not None]
    if ran:
        return max(ran, key=lambda c: c["speedup"])
    raise CompressError(f"search: every candidate run failed (first: {cands[0]['candidate']}: {cands[0]['error']})")


def _target_text(cfg: SearchConfig) -> str:
    return f"{cfg.target_speedup:g}x" if cfg.target_speedup else f"{cfg.target_latency_ms:g} ms"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
