"""The `compress` command. Thin: parse arguments, call the API, print, map errors to exit codes."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from pathlib import Path

from compress import __version__
from compress.errors import EXIT_FIDELITY, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, CompressError

# OSErrors that are the user's environment (exit 2, one line), not a bug in compress
_ENV_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of usage text plus the error."""

    def error(self, message):
        from compress.yamlio import clip

        self.exit(2, f"{self.prog}: error: {clip(message, 300)} (see --help)\n")


def _bounded(kind, lo, hi, lo_open: bool = False):
    """An argparse type: ``kind`` (int or float) in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                             f"(got {text[:40]!r})") from None
        if not (lo < value if lo_open else lo <= value) or not value <= hi:
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo} and <= {hi} (got {text[:40]})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


THREADS = _bounded(int, 1, 256)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _model_args(p: argparse.ArgumentParser, flag: str = "--model") -> None:
    if flag == "--reference":
        p.add_argument(flag, dest="model", metavar="PATH", required=True,
                       help="the original model the ONNX file is compared with: its checkpoint (.pt) or a "
                            "built-in name (digitdet, lenet5, yolov8n.yaml)")
    else:
        p.add_argument(flag, dest="model", metavar="PATH",
                       help="checkpoint to compress (.pt), replacing the recipe's model; a built-in name "
                            "(digitdet, lenet5, yolov8n.yaml) also works")
    p.add_argument("--adapter", help="model family of the checkpoint: digitdet, lenet5, ultralytics, generic")
    p.add_argument("--arch", metavar="MODULE:FACTORY", help="builds the architecture for a plain state_dict")
    p.add_argument("--task", choices=["detect", "classify"], help="what the model does (generic adapter)")
    p.add_argument("--names", metavar="A,B,...|N|FILE",
                   help="class names: comma-separated, a count N (0..N-1), or a data.yaml / text file "
                        "(generic adapter)")
    p.add_argument("--imgsz", type=_bounded(int, 8, 8192), metavar="PX", help="square input size (generic adapter)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full pickled checkpoints (can run code: only for files you trust)")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="your data: validation from its val split, calibration from its calib/train split "
                        "(never the scored images; one folder is split in two), fine-tuning from its train split")
    p.add_argument("--calib", metavar="DIR", help="calibration (and fine-tuning, without a train split) images")


def _fidelity_args(p: argparse.ArgumentParser) -> None:
    """One flag per fidelity threshold / setting of the recipe's ``fidelity`` section ("none" turns one off)."""
    from compress.recipe import FidelityConfig

    for name, field in FidelityConfig.model_fields.items():
        if name in ("samples", "overlays"):
            continue
        p.add_argument("--" + name.replace("_", "-"), dest=f"fid_{name}", type=_threshold, metavar="X",
                       help=f"fidelity.{name} (default {field.default})")


_OFF = "off"  # a threshold turned off on the command line (argparse's None means "not given")


def _threshold(text: str):
    if text.strip().lower() in ("none", "null", "off"):
        return _OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none' (got {text[:40]!r})") from None


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="compress", description="Compress a PyTorch vision model into a checked ONNX model.")
    ap.add_argument("--version", action="version", version=f"compress {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="apply a recipe: passes, ONNX export, fidelity check, report")
    p.add_argument("recipe", help="recipe YAML file")
    _model_args(p)
    _data_args(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<recipe name>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set prune.ratio=0.6 (repeatable)")
    p.add_argument("--threads", type=THREADS,
                   help="torch and ONNX Runtime threads (default: benchmark.threads: the physical cores)")
    _common(p)

    p = sub.add_parser("sweep", help="run a recipe over a grid of values and plot the trade-off")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a field and its values, e.g. --set prune.ratio=0.5,0.6,0.7 (several give a grid)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default runs/<recipe name>-sweep)")
    p.add_argument("--force", action="store_true", help="rerun points that already have results")
    _model_args(p)
    _data_args(p)
    p.add_argument("--threads", type=THREADS,
                   help="torch and ONNX Runtime threads (default: benchmark.threads: the physical cores)")
    _common(p)

    p = sub.add_parser("check", help="fidelity check of an ONNX model against a reference model")
    p.add_argument("onnx", help="the ONNX model to check (fp32 or int8, made here or elsewhere)")
    _model_args(p, "--reference")
    p.add_argument("--data", metavar="DIR", required=True, help="validation images (YOLO, COCO or plain folder)")
    p.add_argument("--samples", type=_bounded(int, 1, 1_000_000), help="use only the first N images")
    _fidelity_args(p)
    p.add_argument("--threads", type=THREADS, help="torch and ONNX Runtime threads (default: the physical cores)")
    p.add_argument("--out", metavar="DIR", help="also write report.json/report.md and overlays here")
    p.add_argument("--force", action="store_true")
    _common(p)

    p = sub.add_parser("profile", help="per-layer parameters, MACs and ONNX Runtime latency of a model")
    p.add_argument("model", help="checkpoint path or built-in name")
    p.add_argument("--adapter")
    p.add_argument("--arch", metavar="MODULE:FACTORY")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--threads", type=THREADS, help="torch and ONNX Runtime threads (default: the physical cores)")
    p.add_argument("--top", type=_bounded(int, 1, 100_000), default=20, help="show the N slowest layers")
    _common(p)

    p = sub.add_parser("validate", help="check a recipe (and --set overrides) without loading a model or data")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, as for run")
    _common(p)

    p = sub.add_parser("deploy", help="build, check and time deployment targets of an existing run folder")
    p.add_argument("run_dir", help="a folder written by `compress run`")
    p.add_argument("--target", dest="targets", action="append", metavar="NAME",
                   help="onnxruntime, ort-mobile, openvino, ncnn (repeatable; default: the recipe's deploy.targets)")
    p.add_argument("--cpu", choices=["host", "x86-avx2", "x86-vnni", "arm64"], help="the board's CPU profile")
    p.add_argument("--select", choices=["fastest_passing", "all"])
    p.add_argument("--threads", type=THREADS, help="runtime threads (default: deploy.threads, else benchmark.threads)")
    p.add_argument("--trust-checkpoint", action="store_true")
    _common(p)

    p = sub.add_parser("passes", help="list the pass types a recipe can use, with their fields")
    _common(p)

    p = sub.add_parser("data", help="data set tools: write the built-in set, keep some classes of one")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("make", help="write a built-in data set as a YOLO folder with train/val/calib splits")
    d.add_argument("name", choices=["digits-det"])
    d.add_argument("out", help="the folder to write")
    d.add_argument("--split", default="all", choices=["train", "val", "calib", "all"])
    d.add_argument("--samples", type=_bounded(int, 1, 1_000_000),
                   help="images per split (default: train 3000, val 200, calib 300)")
    d.add_argument("--imgsz", type=_bounded(int, 32, 1024), default=128)
    d.add_argument("--seed", type=_bounded(int, 0, 2**32 - 1), default=0)
    d.add_argument("--force", action="store_true", help="replace OUT if a compress command wrote it")
    _common(d)
    d = dsub.add_parser("filter", help="keep only some classes of a data set (re-indexed, empty images dropped)")
    d.add_argument("src", help="YOLO data set (a folder or its data.yaml) or COCO JSON (a .json or its folder)")
    d.add_argument("out", help="the folder to write")
    d.add_argument("--classes", required=True, metavar="A,B,...", help="class names or indices, in the new order")
    d.add_argument("--force", action="store_true", help="replace OUT if a compress command wrote it")
    _common(d)

    p = sub.add_parser("zoo", help="built-in models")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    t = zsub.add_parser("train", help="train a built-in model (digitdet, lenet5, yolov8n, yolo26n)")
    t.add_argument("name", choices=["digitdet", "lenet5", "yolov8n", "yolo26n"])
    t.add_argument("--out", metavar="PATH", help="checkpoint to write (default: the packaged weights file)")
    t.add_argument("--minutes", type=_bounded(float, 0, 10_080, lo_open=True), help="training time budget")
    t.add_argument("--seed", type=_bounded(int, 0, 2**32 - 1), default=0)
    t.add_argument("--force", action="store_true")
    _common(t)
    return ap


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
    rows = sweep(args.recipe, grid, out, force=args.force, quiet=args.quiet, base_overrides=threads, raw=raw,
                 trust_checkpoint=args.trust_checkpoint)
    failed = [r for r in rows if r.get("error")]
    if rows and len(failed) == len(rows):
        print(f"compress: sweep: no point succeeded ({len(rows)} failed; first: {failed[0]['point']}: "
              f"{failed[0]['error']}); see {out / 'sweep.md'}", file=sys.stderr)
        return EXIT_FIDELITY
    print(f"sweep: {out / 'sweep.md'}" + (f" ({len(failed)} of {len(rows)} points failed)" if failed else ""))
    return EXIT_OK


def cmd_check(args) -> int:
    from compress import api

    if not args.model:
        raise CompressError("check: --reference is required (the original checkpoint or a built-in name)")
    out = Path(args.out) if args.out else None
    if out is not None:
        from compress.atomic import ensure_writable

        ensure_writable(out, args.force)
    given = {k[4:]: (None if v == _OFF else v) for k, v in vars(args).items() if k.startswith("fid_") and v is not None}
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


def cmd_profile(args) -> int:
    from compress.models import load_model
    from compress.recipe import ModelSpec
    from compress.runtime.profile import print_profile, profile_with_memory

    from compress.runtime.threads import resolve_threads, torch_threads

    spec = ModelSpec(**_model_spec(args))
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
            "passes": cmd_passes, "zoo": cmd_zoo, "validate": cmd_validate, "data": cmd_data}


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
