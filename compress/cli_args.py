"""The `compress` command line: every subcommand's arguments (``compress.cli`` runs them)."""

from __future__ import annotations

import argparse

from compress import __version__

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


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """--executor / --ray-address / --workers: where the points run (``compress.executors.get_executor``)."""
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one point after another in this process (default); ray: each point a Ray task")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="connect to an existing Ray cluster (e.g. 10.0.0.5:6379 or ray://host:10001) instead of "
                        "starting a local one; the output folder must be on a filesystem every node shares")
    p.add_argument("--workers", type=_bounded(int, 1, 4096), metavar="N",
                   help="CPUs of the local Ray cluster (default: the physical cores); a point takes --threads of them")


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


OFF = "off"  # a threshold turned off on the command line (argparse's None means "not given")


def _threshold(text: str):
    if text.strip().lower() in ("none", "null", "off"):
        return OFF
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
    add_executor_args(p)
    _common(p)

    p = sub.add_parser("search", help="find per-layer pruning ratios that meet a latency target (compress.search)")
    p.add_argument("recipe", help="recipe with one prune.structured pass (and maybe quantize.ptq)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-speedup", type=_bounded(float, 1, 1000, lo_open=True), metavar="X",
                      help="times faster than the fp32 ONNX original (measured, --threads threads)")
    goal.add_argument("--target-latency-ms", type=_bounded(float, 0, 1e6, lo_open=True), metavar="MS")
    p.add_argument("--min-agreement", type=float, default=0.90, metavar="A",
                   help="agreement mAP50 (classifiers: top-1 agreement) the winner must keep (default 0.90)")
    p.add_argument("--out", metavar="DIR", help="search folder (default runs/<recipe name>-search)")
    p.add_argument("--seed", type=_bounded(int, 0, 2**32 - 1), default=0, help="Optuna TPE seed")
    p.add_argument("--budget-min", type=_bounded(float, 0, 100_000, lo_open=True), default=30.0, metavar="MIN",
                   help="wall-time budget: proposals stop at 30%% of it, later candidates are dropped (default 30)")
    p.add_argument("--trials", type=_bounded(int, 1, 10_000), default=40, help="proposals scored by prediction")
    p.add_argument("--candidates", type=_bounded(int, 1, 100), default=3, metavar="K",
                   help="the best K proposals get a short recovery run (default 3)")
    p.add_argument("--short-fraction", type=_bounded(float, 0, 1, lo_open=True), default=0.2, metavar="F",
                   help="short recovery = this share of the recipe's fine-tune steps (default 0.2)")
    p.add_argument("--margin", type=_bounded(float, 0, 0.5), default=0.1, metavar="F",
                   help="aim this fraction below the target latency (table error and timing noise; default 0.1)")
    p.add_argument("--table-cache", metavar="DIR", help="latency table cache (default ~/.cache/compress/latency)")
    p.add_argument("--force", action="store_true", help="recompute proposals (cached runs are still reused)")
    p.add_argument("--threads", type=THREADS, default=1,
                   help="threads of the latency table, the measurements and every run (default 1)")
    add_executor_args(p)
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
    p.add_argument("--latency-table", action="store_true",
                   help="the per-layer latency table for compress search: ms per module at uniform widths "
                        "(cached per model, runtime, threads and CPU; 1 thread unless --threads)")
    p.add_argument("--int8", action="store_true", help="--latency-table: of the int8 (quantize.ptq) models")
    p.add_argument("--widths", default="1,0.75,0.5,0.25", metavar="W,W,..",
                   help="--latency-table: kept fractions of every prunable layer's channels")
    p.add_argument("--refresh", action="store_true", help="--latency-table: measure again, ignoring the cache")
    p.add_argument("--blocks", action="store_true",
                   help="per-block torch CPU time of each block against a light replacement (--to), 1 thread "
                        "unless --threads")
    p.add_argument("--to", default="elan2", metavar="BLOCK",
                   help="--blocks: the light block (elan2, shufflenet, dwsep)")
    p.add_argument("--target", metavar="PATTERN", help="--blocks: only blocks of this class name or re:pattern "
                                                        "(default: the model's top-level blocks)")
    p.add_argument("--imgsz", type=_bounded(int, 8, 8192), metavar="PX",
                   help="square input size (e.g. 64 for a quick look at a YOLO)")
    p.add_argument("--runs", type=_bounded(int, 1, 100_000), default=30,
                   help="timed runs (--blocks: per block, old and new interleaved)")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="--blocks: time the blocks in torch (default) or each exported alone in ONNX Runtime")
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
