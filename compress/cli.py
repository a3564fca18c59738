"""The `compress` command. Thin: parse arguments, call the API, print, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from compress import __version__
from compress.errors import EXIT_FIDELITY, EXIT_INTERNAL, EXIT_OK, CompressError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _model_args(p: argparse.ArgumentParser, flag: str = "--model") -> None:
    p.add_argument(flag, dest="model", metavar="PATH",
                   help="checkpoint to compress (.pt); a built-in name (digitdet, lenet5, yolov8n.yaml) also works")
    p.add_argument("--adapter", help="model family of the checkpoint: digitdet, lenet5, ultralytics, generic")
    p.add_argument("--arch", metavar="MODULE:FACTORY", help="builds the architecture for a plain state_dict")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full pickled checkpoints (can run code: only for files you trust)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="compress", description="Compress a PyTorch vision model into a checked ONNX model.")
    ap.add_argument("--version", action="version", version=f"compress {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="apply a recipe: passes, ONNX export, fidelity check, report")
    p.add_argument("recipe", help="recipe YAML file")
    _model_args(p)
    p.add_argument("--data", metavar="DIR", help="images for validation (and calibration unless --calib is given)")
    p.add_argument("--calib", metavar="DIR", help="calibration images")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<recipe name>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set prune.ratio=0.6 (repeatable)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for checks and latency")
    _common(p)

    p = sub.add_parser("sweep", help="run a recipe over a grid of values and plot the trade-off")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a field and its values, e.g. --set prune.ratio=0.5,0.6,0.7 (several give a grid)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default runs/<recipe name>-sweep)")
    p.add_argument("--force", action="store_true", help="rerun points that already have results")
    _common(p)

    p = sub.add_parser("check", help="fidelity check of an ONNX model against a reference model")
    p.add_argument("onnx", help="the ONNX model to check (fp32 or int8, made here or elsewhere)")
    _model_args(p, "--reference")
    p.add_argument("--data", metavar="DIR", required=True, help="validation images (YOLO, COCO or plain folder)")
    p.add_argument("--samples", type=int, help="use only the first N images")
    p.add_argument("--conf", type=float, default=0.25, help="score above which the reference's detections count")
    p.add_argument("--min-agreement-map50", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", metavar="DIR", help="also write report.json/report.md and overlays here")
    p.add_argument("--force", action="store_true")
    _common(p)

    p = sub.add_parser("profile", help="per-layer parameters, MACs and ONNX Runtime latency of a model")
    p.add_argument("model", help="checkpoint path or built-in name")
    p.add_argument("--adapter")
    p.add_argument("--arch", metavar="MODULE:FACTORY")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=20, help="show the N slowest layers")
    _common(p)

    p = sub.add_parser("passes", help="list the pass types a recipe can use, with their fields")
    _common(p)

    p = sub.add_parser("zoo", help="built-in models")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    t = zsub.add_parser("train", help="train a built-in model (digitdet, lenet5, yolov8n)")
    t.add_argument("name", choices=["digitdet", "lenet5", "yolov8n"])
    t.add_argument("--out", metavar="PATH", help="checkpoint to write (default: the packaged weights file)")
    t.add_argument("--minutes", type=float, help="training time budget")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true")
    _common(t)
    return ap


def _model_spec(args, base: dict | None = None) -> dict:
    """--model/--adapter/--arch -> a recipe `model` mapping (keeps class names / imgsz from ``base``)."""
    from compress.models import BUILTINS

    keep = {k: v for k, v in (base or {}).items() if k in ("class_names", "imgsz", "task")}
    name = args.model
    if name in BUILTINS or (name.endswith((".yaml", ".yml")) and not Path(name).is_file()):
        spec = {"builtin": name}
    else:
        spec = {"checkpoint": name}
    for k in ("adapter", "arch"):
        if getattr(args, k, None):
            spec[k] = getattr(args, k)
    return {**keep, **spec}


def cmd_run(args) -> int:
    from compress import api
    from compress import recipe as R

    data = R.read_yaml(args.recipe)
    if not isinstance(data, dict):
        raise CompressError(f"{args.recipe}: a recipe must be a YAML mapping")
    if args.model:
        data["model"] = _model_spec(args, data.get("model") if isinstance(data.get("model"), dict) else None)
    if args.data or args.calib:
        d = dict(data.get("data") or {})
        if args.data:
            d["validation"] = {"path": args.data}
            d.setdefault("calibration", None)
            if not args.calib:
                d["calibration"] = {"path": args.data}
        if args.calib:
            d["calibration"] = {"path": args.calib}
        data["data"] = d
    data = R.apply_overrides(data, args.overrides, source=args.recipe)
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
        print(f"compress: fidelity check failed: {'; '.join(fid.get('failures') or ['see report'])}{where}",
              file=sys.stderr)
    return EXIT_FIDELITY


def cmd_sweep(args) -> int:
    from compress import recipe as R
    from compress.sweep import parse_grid, sweep

    recipe = R.load(args.recipe)
    grid = parse_grid(args.overrides)
    out = Path(args.out or Path("runs") / f"{recipe.name}-sweep")
    sweep(args.recipe, grid, out, force=args.force, quiet=args.quiet)
    print(f"sweep: {out / 'sweep.md'}")
    return EXIT_OK


def cmd_check(args) -> int:
    from compress import api
    from compress.recipe import FidelityConfig

    if not args.model:
        raise CompressError("check: --reference is required (the original checkpoint or a built-in name)")
    out = Path(args.out) if args.out else None
    if out is not None:
        from compress.atomic import ensure_writable

        ensure_writable(out, args.force)
    cfg = FidelityConfig(conf=args.conf, min_agreement_map50=args.min_agreement_map50, samples=args.samples)
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


def cmd_profile(args) -> int:
    from compress.models import load_model
    from compress.recipe import ModelSpec
    from compress.runtime.profile import print_profile, profile_model

    spec = ModelSpec(**_model_spec(args))
    adapter, model = load_model(spec, trust_checkpoint=args.trust_checkpoint)
    rows = profile_model(model, adapter, threads=args.threads, latency=True)
    print_profile(rows, top=args.top)
    return EXIT_OK


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
        out, kwargs = weights / "yolov8n-digits.pt", ({"minutes": args.minutes} if args.minutes else {})
    out = Path(args.out) if args.out else out
    if out.exists() and not args.force:
        raise CompressError(f"{out} exists; use --force to overwrite (or --out PATH)")
    result = train(out, seed=args.seed, **kwargs) if args.name != "yolov8n" else train(out=out, seed=args.seed, **kwargs)
    shown = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str)) and k != "adapter"}
    print(f"{args.name}: wrote {out}: {shown}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "check": cmd_check, "profile": cmd_profile,
            "passes": cmd_passes, "zoo": cmd_zoo}


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"compress: warning: {str(message).splitlines()[0] if str(message) else category.__name__}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="compress: %(levelname)s: %(message)s")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warnings
            for mod in ("torch", "torch_pruning", "onnxscript", "onnx", "nncf", "sklearn", "ultralytics"):
                warnings.filterwarnings("ignore", module=mod)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            return COMMANDS[args.command](args)
        except CompressError as e:
            if debug:
                raise
            print(f"compress: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("compress: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # a bug, not bad input: one line unless --debug
            if debug:
                raise
            print(f"compress: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(rerun with --debug for the traceback)", file=sys.stderr)
            return EXIT_INTERNAL
