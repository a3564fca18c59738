"""The `compress` command. Thin: parse arguments, call the API, print, map errors to exit codes."""

from __future__ import annotations

import errno
import logging
import sys
import warnings
from pathlib import Path

from compress.cli_args import OFF, build_parser
from compress.errors import EXIT_FIDELITY, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, CompressError

# OSErrors that are the user's environment (exit 2, one line), not a bug in compress
_ENV_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG}


def _model_spec(args, base: dict | None = None) -> dict:
    """--model/--adapter/--arch/--task/--names/--imgsz -> a recipe `model` mapping (over ``base``)."""
    from compress.api import model_flags

    return model_flags(base, model=args.model, adapter=args.adapter, arch=args.arch, task=getattr(args, "task", None),
                       names=getattr(args, "names", None), imgsz=getattr(args, "imgsz", None))


def _recipe_with_flags(args) -> dict:
    """The raw recipe mapping with the model and data flags applied (before --set and validation)."""
    from compress import recipe as R
    from compress.wiring import apply_data_flags

    data = R.read_yaml(args.recipe)
    if not isinstance(data, dict):
        raise CompressError(f"{args.recipe}: a recipe must be a YAML mapping")
    if any(getattr(args, k, None) for k in ("model", "adapter", "arch", "task", "names", "imgsz")):
        data["model"] = _model_spec(args, data.get("model") if isinstance(data.get("model"), dict) else None)
    data, _ = apply_data_flags(data, args.data, args.calib)
    return data


def cmd_run(args) -> int:
    from compress import api
    from compress import recipe as R

    data = R.apply_overrides(_recipe_with_flags(args), args.overrides, source=args.recipe)
    recipe = R.validate(data, source=args.recipe)
    out = Path(args.out or Path("runs") / recipe.name)
    report = api.run(recipe, out, force=args.force, trust_checkpoint=args.trust_checkpoint, quiet=args.quiet,
                     threads=args.threads)
    report["recipe"]["source"] = args.recipe
    from compress.report import print_stage_table, print_summary

    print_stage_table(report.get("stages", []))
    print_summary(report)
    return _fidelity_exit(report["fidelity"], out)


def _fidelity_exit(fid: dict, out: Path | None) -> int:
    where = f" (report: {out / 'report.md'})" if out else ""
    if fid.get("passed"):
        return EXIT_OK
    if fid.get("measurable") is False:
        print(f"compress: fidelity not measurable: {fid.get('reason')}{where}", file=sys.stderr)
    else:
        lost = f"; {fid['lost_at']}" if fid.get("lost_at") else ""
        print(f"compress: fidelity check failed: {'; '.join(fid.get('failures') or ['see report'])}{lost}{where}",
              file=sys.stderr)
    return EXIT_FIDELITY


def cmd_sweep(args) -> int:
    from compress import recipe as R
    from compress.sweep import parse_grid, sweep

    raw = _recipe_with_flags(args)
    recipe = R.validate(raw, source=args.recipe)
    grid = parse_grid(args.overrides)
    out = Path(args.out or Path("runs") / f"{recipe.name}-sweep")
    threads = [f"benchmark.threads={args.threads}"] if args.threads else []  # torch and ONNX Runtime, every point
    from functools import partial

    from compress.executors import check_executor, get_executor

    check_executor(args.executor, address=args.ray_address, workers=args.workers)  # flags fail before any work
    executor = partial(get_executor, args.executor, address=args.ray_address, workers=args.workers)
    rows = sweep(args.recipe, grid, out, force=args.force, quiet=args.quiet, base_overrides=threads, raw=raw,
                 trust_checkpoint=args.trust_checkpoint, executor=executor)  # started only if a point must run
    failed = [r for r in rows if r.get("error")]
    if rows and len(failed) == len(rows):
        print(f"compress: sweep: no point succeeded ({len(rows)} failed; first: {failed[0]['point']}: "
              f"{failed[0]['error']}); see {out / 'sweep.md'}", file=sys.stderr)
        return EXIT_FIDELITY
    print(f"sweep: {out / 'sweep.md'}" + (f" ({len(failed)} of {len(rows)} points failed)" if failed else ""))
    return EXIT_OK


def cmd_search(args) -> int:
    from compress.search.cli import run_search

    return run_search(args)


def cmd_check(args) -> int:
    from compress import api

    if not args.model:
        raise CompressError("check: --reference is required (the original checkpoint or a built-in name)")
    out = Path(args.out) if args.out else None
    if out is not None:
        from compress.atomic import ensure_writable

        ensure_writable(out, args.force)
    given = {k[4:]: (None if v == OFF else v) for k, v in vars(args).items() if k.startswith("fid_") and v is not None}
    cfg = api.fidelity_config({**given, "samples": args.samples})
    result, adapter = api.check(args.onnx, _model_spec(args), {"path": args.data, "samples": args.samples},
                                fidelity=cfg, trust_checkpoint=args.trust_checkpoint, threads=args.threads)
    report = {"recipe": {"name": f"check {Path(args.onnx).name}"}, "fidelity": result.to_dict(),
              "original": result.original_metrics, "compressed": result.compressed_metrics, "notes": []}
    if out is not None:
        _write_check_report(out, args.force, report, result, adapter, args)
    from compress.report import print_summary

    print_summary(report)
    return _fidelity_exit(report["fidelity"], out)


def _write_check_report(out, force, report, result, adapter, args) -> None:
    from compress.atomic import staged_dir
    from compress.report import write_report
    from compress.report.overlay import save_overlays
    from compress.runner import load_data
    from compress.recipe import DataSource

    data = load_data(DataSource(path=args.data, samples=args.samples))
    with staged_dir(out, force) as tmp:
        from compress.runner import overlay_items

        n = min(4, len(data))
        ref, cmp = overlay_items(result, adapter)
        paths = save_overlays(tmp / "overlays", data.samples[:n], ref[:n], cmp[:n], adapter.class_names, n=n)
        report["files"] = {"overlays": [str(Path(p).relative_to(tmp)) for p in paths]}
        write_report(tmp, report)


def _latency_table(args) -> int:
    """``compress profile MODEL-or-RECIPE --latency-table``: build (or load from the cache) and print it."""
    from compress.models import load_model
    from compress.recipe import ModelSpec
    from compress.runtime.threads import torch_threads
    from compress.search.latency_table import cache_file, cached_table, format_table

    if str(args.model).endswith((".yaml", ".yml")):  # a recipe: its model
        from compress import recipe as R

        spec = R.validate(R.read_yaml(args.model), source=args.model).model
        if getattr(args, "imgsz", None):
            spec = spec.model_copy(update={"imgsz": args.imgsz})
    else:
        spec = ModelSpec(**_model_spec(args))
    try:
        widths = [float(w) for w in str(args.widths).split(",") if w.strip()]
    except ValueError:
        raise CompressError(f"--widths: expected numbers separated by commas (got {args.widths!r})") from None
    threads = args.threads or 1
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    with torch_threads(threads):
        adapter, model = load_model(spec, trust_checkpoint=args.trust_checkpoint)
        table, cached = cached_table(model, adapter, threads=threads, fmt="int8" if args.int8 else "fp32",
                                     refresh=args.refresh, widths=widths, runs=args.runs, progress=say)
    print(format_table(table, top=args.top))
    print(f"({'loaded from' if cached else 'measured now and saved to'} {cache_file(table.key)})")
    return EXIT_OK


def cmd_profile(args) -> int:
    from compress.models import load_model
    from compress.recipe import ModelSpec
    from compress.runtime.profile import print_profile, profile_with_memory

    from compress.runtime.threads import resolve_threads, torch_threads

    if getattr(args, "latency_table", False):  # per-layer latency table (compress.search.latency_table)
        return _latency_table(args)
    spec = ModelSpec(**_model_spec(args))
    if getattr(args, "blocks", False):  # per-block old vs light-block table (compress.runtime.blocks)
        from compress.runtime.blocks import block_table, print_block_table

        threads = args.threads or 1
        with torch_threads(threads):
            adapter, model = load_model(spec, trust_checkpoint=args.trust_checkpoint)
            rows, skipped = block_table(model, adapter, args.to, args.target, runs=args.runs,
                                        runtime=args.runtime, threads=threads)
        print_block_table(rows, skipped, threads, args.runs, runtime=args.runtime)
        return EXIT_OK
    threads = resolve_threads(args.threads)
    with torch_threads(threads):
        adapter, model = load_model(spec, trust_checkpoint=args.trust_checkpoint)
        rows, mem = profile_with_memory(model, adapter, threads=threads)
    print_profile(rows, top=args.top)
    print(f"Peak inference memory: {mem['peak_mb']:.1f} MB (ONNX Runtime, {threads} thread(s), a separate process "
          f"loading and running the model, minus its {mem['baseline_mb']:.0f} MB with the runtime alone)")
    return EXIT_OK


def cmd_validate(args) -> int:
    from compress import recipe as R

    print(R.describe(R.load(args.recipe, args.overrides)))
    return EXIT_OK


def cmd_deploy(args) -> int:
    from compress.deploy import deploy_run_dir
    from compress.deploy.report import print_deploy

    section = deploy_run_dir(args.run_dir, args.targets, cpu=args.cpu, select=args.select, threads=args.threads,
                             trust_checkpoint=args.trust_checkpoint)
    print_deploy(section, section["settings"]["targets"])
    failed = [t for t in section["settings"]["targets"] if section[t]["selected"] is None
              and section["settings"]["select"] == "fastest_passing"]
    return EXIT_FIDELITY if failed else EXIT_OK


def cmd_passes(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from compress.passes import registered

    table = Table("type", "stage", "fields (default)")
    for name, cls in sorted(registered().items()):
        fields = [f"{k}={'required' if f.is_required() else f.default!r}"
                  for k, f in cls.Config.model_fields.items() if k not in ("type", "name")]
        table.add_row(name, cls.stage, ", ".join(fields))
    Console().print(table)
    return EXIT_OK


def cmd_zoo(args) -> int:
    weights = Path(__file__).parent / "zoo" / "weights"
    if args.name == "digitdet":
        from compress.zoo.train import train_digitdet as train
        out, kwargs = weights / "digitdet.pt", {"minutes": args.minutes}
    elif args.name == "lenet5":
        from compress.zoo.lenet5 import train_lenet5 as train
        out, kwargs = weights / "lenet5.pt", {}
    else:
        from compress.zoo.yolo import train_yolo_digits as train
        out, kwargs = weights / f"{args.name}-digits.pt", {"cfg": f"{args.name}.yaml"}
        kwargs.update({"minutes": args.minutes} if args.minutes else {})
    out = Path(args.out) if args.out else out
    if out.exists() and not args.force:
        raise CompressError(f"{out} exists; use --force to overwrite (or --out PATH)")
    result = train(out=out, seed=args.seed, **kwargs) if args.name.startswith("yolo") else train(out, seed=args.seed, **kwargs)
    shown = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str)) and k != "adapter"}
    print(f"{args.name}: wrote {out}: {shown}")
    return EXIT_OK


def cmd_data(args) -> int:
    from compress.data import tools

    if args.data_command == "make":
        splits = tools.SPLITS if args.split == "all" else (args.split,)
        res = tools.make_digits_det(args.out, splits, args.samples, seed=args.seed, imgsz=args.imgsz,
                                    force=args.force)
        print(f"{args.name}: wrote {res['data_yaml']} ("
              + ", ".join(f"{s} {n} images" for s, n in res["counts"].items()) + ")")
        return EXIT_OK
    res = tools.filter_classes(args.src, args.out, args.classes, force=args.force)
    print("classes: " + ", ".join(f"{name} -> {i}" for name, i in res["mapping"].items()))
    for split, st in res["splits"].items():
        print(f"{split}: kept {st['kept']} images ({st['boxes']} boxes), "
              f"dropped {st['dropped']} left without a listed class")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"wrote {res['data_yaml']}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "check": cmd_check, "profile": cmd_profile, "deploy": cmd_deploy,
            "passes": cmd_passes, "zoo": cmd_zoo, "validate": cmd_validate, "data": cmd_data,
            "search": cmd_search}


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"compress: warning: {str(message).splitlines()[0] if str(message) else category.__name__}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line usage error (exit 2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="compress: %(levelname)s: %(message)s")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warnings
            for mod in ("torch", "torch_pruning", "onnxscript", "onnx", "nncf", "sklearn", "ultralytics"):
                warnings.filterwarnings("ignore", module=mod)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
        from compress.signals import Terminated, raise_on_signals

        try:
            with raise_on_signals():  # SIGTERM/SIGINT raise, so partial outputs are cleaned up
                return COMMANDS[args.command](args)
        except Terminated as e:
            print(f"compress: terminated ({e}); partial outputs removed", file=sys.stderr)
            return e.exit_code
        except CompressError as e:
            if debug:
                raise
            print(f"compress: {' '.join(str(e).splitlines())}", file=sys.stderr)
            return e.exit_code
        except OSError as e:  # read-only or full disk, no permission: the user's environment, not a bug
            if debug:
                raise
            if e.errno not in _ENV_ERRNOS:
                return _internal_error(e)
            where = f"{e.filename}: " if e.filename else ""
            print(f"compress: {where}{e.strerror or type(e).__name__}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("compress: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # a bug, not bad input: one line unless --debug
            if debug:
                raise
            return _internal_error(e)


def _internal_error(e: Exception) -> int:
    print(f"compress: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
          "(rerun with --debug for the traceback)", file=sys.stderr)
    return EXIT_INTERNAL
