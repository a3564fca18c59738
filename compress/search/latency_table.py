"""Per-layer latency model: the lookup table latency-aware pruning searches use (NetAdapt, HALP).

:func:`build_table` prunes copies of the model *uniformly* to a few keep-widths with the
project's own ``prune.structured`` pass (torch-pruning surgery; the adapter's protected
layers stay whole), exports each (and for ``fmt="int8"`` quantizes it with the
``quantize.ptq`` pass), and profiles it with ONNX Runtime's per-node profiler. Every
node's kernel time goes to the torch module its scope names
(:func:`compress.runtime.profile.module_of`); nodes with no module scope (the decode tail,
layout reorders) form one ``(unmapped)`` entry.

Each entry's time is a function of that entry's *work* — MACs for a convolution or linear
layer (from its in/out channels and output size), input + output elements for any other
module, the model's total activation elements for ``(unmapped)`` — fitted monotone
(isotonic) and piecewise linear through the measured widths, flat outside them. A candidate
with a different width per layer is predicted by computing each module's work in one
forward pass with hooks and summing. The sum of kernel times is not the end-to-end time
(session overhead, profiler overhead per node), so it is calibrated against the end-to-end
latency of the uniform variants (timed side by side, :func:`compress.runtime.latency.compare_latency`),
for the median and for the minimum, with one offset: the lowest over the widths of measured
minus summed (scale 1; load only adds time, and a least-squares scale and offset was thrown
far off by one width timed under load). The raw sums and the measurements are kept in the table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError

VERSION = 1
FORMATS = ("fp32", "int8")
STATS = ("median", "min")  # end-to-end statistics a table is calibrated to
UNMAPPED = "(unmapped)"
OVERHEAD = "(session overhead)"
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


# -- keys and work ----------------------------------------------------------------------------
def model_digest(model: nn.Module, input_shape) -> str:
    """Digest of the architecture: state_dict names, shapes and dtypes (not values) plus the input shape."""
    h = hashlib.sha256(repr(list(input_shape)).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def cpu_string() -> str:
    """The CPU a table was measured on (model name, architecture, int8 acceleration)."""
    from compress.runtime.cpu import cpu_features

    f = cpu_features()
    return f"{f['model']} ({f['arch']}{', vnni' if f['has_vnni'] else ''})"


def channel_block() -> int:
    """Channel block of ONNX Runtime's NCHWc convolutions on this CPU (16 with AVX-512, 8 with AVX2
    on x86; 1 elsewhere): a layer of 40 channels costs what one of 48 does on AVX-512."""
    from compress.runtime.cpu import cpu_features

    f = cpu_features()
    if f["arch"].lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return 1
    return 16 if f["avx512f"] else 8 if f["avx2"] else 1


def table_key(model: nn.Module, adapter, *, threads: int, fmt: str, widths, round_to: int | None = 8) -> dict:
    """What a table is valid for: one (model architecture, runtime, threads, CPU, format, widths)."""
    import onnxruntime as ort

    shape = list(adapter.example_input(1).shape)
    return {"model": model_digest(model, shape), "runtime": "onnxruntime", "runtime_version": ort.__version__,
            "threads": int(threads), "cpu": cpu_string(), "format": fmt, "input": shape,
            "widths": [float(w) for w in widths], "round_to": round_to, "channel_block": channel_block(),
            "version": VERSION}


def _elements(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (list, tuple)):
        return sum(_elements(v) for v in x)
    if isinstance(x, dict):
        return sum(_elements(v) for v in x.values())
    return 0


def _up(n: int, block: int) -> int:
    return -(-int(n) // block) * block


def block_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, block: int = 1) -> int:
    """MACs of one call per image, with a (non-grouped, non-transposed) convolution's input and
    output channels rounded up to ``block`` (what blocked kernels compute)."""
    from compress.runtime.profile import _macs

    if block <= 1 or not isinstance(module, nn.modules.conv._ConvNd) or getattr(module, "transposed", False):
        return _macs(module, inp, out)
    per = out.shape[0] if out.dim() > 1 else 1
    spatial = out.numel() // per // max(1, module.out_channels)
    cin = module.in_channels // module.groups
    cin = _up(cin, block) if module.groups == 1 else cin
    return int(spatial * _up(module.out_channels, block) * cin * math.prod(module.kernel_size))


def module_work(model: nn.Module, x: torch.Tensor, forward=None, block: int = 1) -> tuple[dict[str, float], float]:
    """``({module name: work}, total activation elements)`` from one forward pass with hooks.

    Work is MACs for convolution / linear layers (channels rounded up to ``block``, see
    :func:`block_macs`) and input + output elements for every other module; the total is the
    sum of the leaf modules' output elements (the ``(unmapped)`` axis).
    """
    work: dict[str, float] = {}
    total = [0.0]
    hooks = []

    def hook_for(name, module):
        leaf = next(module.children(), None) is None

        def hook(mod, args, output):
            if isinstance(mod, _WEIGHTED) and args and isinstance(args[0], torch.Tensor) \
                    and isinstance(output, torch.Tensor):
                w = block_macs(mod, args[0], output, block)
            else:
                w = _elements(args) + _elements(output)
            work[name] = work.get(name, 0.0) + float(w)
            if leaf:
                total[0] += _elements(output)
        return hook

    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(hook_for(name, m)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            (forward or model)(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return work, total[0]


# -- the fitted curve of one entry ------------------------------------------------------------
def _fit(work: list[float], ms: list[float]) -> tuple[list[float], list[float]]:
    """Monotone (non-decreasing) piecewise-linear curve through (work, ms): isotonic regression."""
    pts: dict[float, list[float]] = {}
    for w, t in zip(work, ms):
        pts.setdefault(float(w), []).append(float(t))
    xs = sorted(pts)
    ys = [float(np.mean(pts[x])) for x in xs]
    if len(xs) > 1:
        from sklearn.isotonic import IsotonicRegression

        ys = [float(v) for v in IsotonicRegression(increasing=True).fit_transform(xs, ys)]
    return xs, ys


def _interp(xs: list[float], ys: list[float], w: float) -> float:
    return float(np.interp(w, xs, ys))  # flat outside the measured range


@dataclass
class LatencyTable:
    """Per-module latency at a few uniform widths, and a predictor for any per-layer widths.

    ``entries[name] = {"kind": "macs" | "elements" | "total_elements", "work": [..], "ms": [..],
    "fit_work": [..], "fit_ms": [..]}`` (work and ms per measured width, same order as
    ``widths``); ``measured[i]`` is width ``widths[i]``'s end-to-end latency and node-time sum;
    ``calibration[stat]`` maps a node-time sum to end-to-end ms (``scale * sum + offset``) for
    the end-to-end statistic ``stat`` ("median" or "min"); ``stat`` is the one predictions use
    unless told otherwise.
    """

    key: dict
    widths: list[float]
    entries: dict[str, dict]
    measured: list[dict]
    calibration: dict
    stat: str = "median"
    reference: dict | None = None  # the model as given (not rewritten), fp32, timed with the variants
    conditions: dict | None = None  # of the end-to-end timing (compress.runtime.conditions)
    version: int = VERSION
    notes: list[str] = field(default_factory=list)

    # -- prediction ---------------------------------------------------------------------------
    def _work(self, model: nn.Module, adapter=None) -> tuple[dict[str, float], float]:
        if adapter is not None:
            model = adapter.rewrite_for_pruning(copy.deepcopy(model))
        names = {n for n, _ in model.named_modules()}
        missing = [n for n in self.entries if n != UNMAPPED and n not in names]
        if missing:
            hint = "" if adapter is not None else "; pass adapter= so the model is rewritten for pruning first"
            raise CompressError(f"latency table: the model has no module '{missing[0]}' "
                                f"({len(missing)} of {len(self.entries)} table entries missing){hint}")
        x = torch.zeros(self.key["input"])
        param = next(model.parameters(), None)
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        return module_work(model, x, block=int(self.key.get("channel_block", 1)))

    def node_ms(self, model: nn.Module, adapter=None) -> dict[str, float]:
        """Predicted kernel time per table entry (uncalibrated)."""
        work, total = self._work(model, adapter)
        out = {}
        for name, e in self.entries.items():
            w = total if name == UNMAPPED else work.get(name, 0.0)
            out[name] = _interp(e["fit_work"], e["fit_ms"], w)
        return out

    def _cal(self, stat: str | None) -> dict:
        stat = stat or self.stat
        if stat not in self.calibration:
            raise CompressError(f"latency table: no calibration for statistic {stat!r} "
                                f"(have {sorted(self.calibration)})")
        return self.calibration[stat]

    def calibrate(self, node_sum_ms: float, stat: str | None = None) -> float:
        c = self._cal(stat)
        return c["scale"] * node_sum_ms + c["offset"]

    def predict_ms(self, model: nn.Module, adapter=None, stat: str | None = None) -> float:
        """Predicted end-to-end latency (ms) of ``model``: the table's architecture with any widths.

        ``adapter``: apply its ``rewrite_for_pruning`` to a copy first (needed when the model is
        not rewritten yet, e.g. the unpruned original of a model with C2f blocks).
        """
        return self.calibrate(sum(self.node_ms(model, adapter).values()), stat)

    def breakdown(self, model: nn.Module, adapter=None, stat: str | None = None) -> list[dict]:
        """Rows ``{name, ms, kind}`` per entry (calibration scale applied) plus the calibration
        offset as ``(session overhead)``; the rows add up to :meth:`predict_ms`."""
        c = self._cal(stat)
        s = c["scale"]
        rows = [{"name": n, "ms": s * ms, "kind": self.entries[n]["kind"]}
                for n, ms in self.node_ms(model, adapter).items()]
        rows.append({"name": OVERHEAD, "ms": c["offset"], "kind": "constant"})
        return rows

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "latency table") -> "LatencyTable":
        if not isinstance(d, dict) or d.get("version") != VERSION:
            raise CompressError(f"{source}: not a latency table of version {VERSION}")
        try:
            return cls(**d)
        except TypeError as e:
            raise CompressError(f"{source}: not a latency table ({e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        from compress.atomic import atomic_write_text

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise CompressError(f"{path}: cannot read latency table ({type(e).__name__})") from None
        return cls.from_dict(d, str(path))


# -- building ---------------------------------------------------------------------------------
def _check_args(threads, fmt, widths, runs) -> list[float]:
    if fmt not in FORMATS:
        raise CompressError(f"latency table: format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if int(threads) < 1:
        raise CompressError(f"latency table: threads must be >= 1 (got {threads})")
    if int(runs) < 1:
        raise CompressError(f"latency table: runs must be >= 1 (got {runs})")
    ws = sorted({round(float(w), 6) for w in widths}, reverse=True)
    if not ws or any(not (0 < w <= 1) for w in ws):
        raise CompressError(f"latency table: widths must be in (0, 1] (got {list(widths)})")
    return ws


def _pruned(base: nn.Module, adapter, width: float, work_dir: Path, criterion: str, round_to: int | None):
    """A copy of ``base`` with every prunable layer at ``width`` of its channels (prune.structured)."""
    model = copy.deepcopy(base)
    if width >= 1:
        return model
    from compress.context import Context
    from compress.passes import get_pass

    cls = get_pass("prune.structured")
    p = cls(cls.Config(type="prune.structured", ratio=1 - width, criterion=criterion, round_to=round_to))
    ctx = Context(adapter=adapter, reference=base, calibration=None, validation=None, work_dir=work_dir, model=model)
    return p.apply(model, ctx).eval()


def _ptq_fields(ptq_config) -> dict:
    """``quantize.ptq`` fields from a config object or a mapping (``type`` dropped)."""
    if hasattr(ptq_config, "model_dump"):
        return ptq_config.model_dump(exclude={"type"}, exclude_unset=True)
    return {k: v for k, v in dict(ptq_config or {}).items() if k != "type"}


def _quantize(onnx_path: Path, model, adapter, calibration, ptq_config, work_dir: Path) -> Path:
    """int8 the way the ``quantize.ptq`` pass does (the pass itself, on a throw-away context)."""
    from compress.context import Context
    from compress.passes import get_pass

    cls = get_pass("quantize.ptq")
    p = cls(cls.Config(type="quantize.ptq", **({"samples": 32} | _ptq_fields(ptq_config))))
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(adapter=adapter, reference=model, calibration=calibration, validation=None, work_dir=work_dir,
                  model=model)
    p.check(model, ctx)
    return p.apply_onnx(onnx_path, ctx)


def _default_calibration(adapter, samples: int):
    from compress.data.builtin import builtin_dataset

    return builtin_dataset("digits-det" if adapter.task == "detect" else "digits", "calib", samples=samples)


def _node_ms_by_owner(paths: dict[str, Path], models: dict[str, nn.Module], threads: int,
                      runs: int) -> dict[str, dict[str, float]]:
    """Per variant, kernel ms per owning module (``(unmapped)`` for nodes without a module scope)."""
    from compress.runtime.profile import module_of, onnx_node_times_many

    out: dict[str, dict[str, float]] = {}
    for k, nodes in onnx_node_times_many(paths, threads=threads, runs=runs).items():
        names = {n for n, _ in models[k].named_modules()} - {""}
        owners = out.setdefault(k, {})
        for node, info in nodes.items():
            owner = module_of(node, names) or UNMAPPED
            owners[owner] = owners.get(owner, 0.0) + info["ms"]
    return out


def _calibration(sums: list[float], e2e: list[float]) -> dict:
    """``e2e ~ scale * sum + offset`` with scale 1 and the lowest residual over the widths as offset.

    Load on a shared machine only ever adds time, and it adds far more to an end-to-end run than
    to the per-node medians: a least-squares scale was thrown off by one slow width (2.9x) and
    even the median residual by two. ``outliers``: widths measured more than 20% off the fit.
    """
    s, e = np.asarray(sums, dtype=float), np.asarray(e2e, dtype=float)
    offset = float(np.min(e - s))
    err = 100 * (s + offset - e) / np.maximum(e, 1e-9)
    return {"scale": 1.0, "offset": offset, "fit": "lowest residual",
            "pct_error": [float(v) for v in err], "max_abs_pct_error": float(np.abs(err).max()),
            "outliers": [i for i, v in enumerate(err) if abs(v) > 20]}


def build_table(model: nn.Module, adapter, *, threads: int = 1, fmt: str = "fp32",
                widths=(1.0, 0.75, 0.5, 0.25), runs: int = 20, calibration=None, ptq_config=None,
                progress=None, criterion: str = "l2", round_to: int | None = 8,
                stat: str = "median") -> LatencyTable:
    """Measure ``model`` at uniform ``widths`` (kept fraction of every prunable layer's channels).

    ``fmt="int8"`` quantizes each variant with the ``quantize.ptq`` pass (``ptq_config``: its
    fields, default 32 calibration images from ``calibration`` or the built-in data).
    ``progress``: a callable taking one line of text. Timing runs ``runs`` times per variant
    (per-node profile and end-to-end, each interleaved over the variants) on ``threads`` ONNX
    Runtime threads. The table is calibrated to both the median and the minimum end-to-end
    time; ``stat`` picks the one predictions use by default (min resists the load of a shared
    machine, median is what reports show). ``criterion`` / ``round_to``: the uniform pruning.
    """
    from compress.export import export_onnx
    from compress.runtime.latency import compare_latency

    ws = _check_args(threads, fmt, widths, runs)
    if stat not in STATS:
        raise CompressError(f"latency table: stat must be 'median' or 'min' (got {stat!r})")
    say = progress or (lambda _msg: None)
    key = table_key(model, adapter, threads=threads, fmt=fmt, widths=ws, round_to=round_to)
    base = adapter.rewrite_for_pruning(copy.deepcopy(model)).eval()
    if fmt == "int8" and calibration is None:
        calibration = _default_calibration(adapter, int(_ptq_fields(ptq_config).get("samples") or 32))
    works, totals, paths, models = [], [], {}, {}
    with tempfile.TemporaryDirectory(prefix="compress-lt-") as tmp:
        tmp = Path(tmp)
        paths["original"] = export_onnx(copy.deepcopy(model).eval(), adapter, tmp / "original.onnx")
        for w in ws:
            say(f"latency table: width {w:g}: prune, export{', int8' if fmt == 'int8' else ''}")
            m = _pruned(base, adapter, w, tmp, criterion, round_to)
            path = export_onnx(m, adapter, tmp / f"w{round(w * 1000):04d}.onnx")
            if fmt == "int8":
                path = _quantize(path, m, adapter, calibration, ptq_config, tmp / f"q{round(w * 1000):04d}")
            paths[str(w)], models[str(w)] = path, m
            work, total = module_work(m, adapter.example_input(1), block=key["channel_block"])
            works.append(work)
            totals.append(total)
        say(f"latency table: profiling {len(ws)} variant(s) per node, then end to end with the original")
        owner_ms = _node_ms_by_owner({str(w): paths[str(w)] for w in ws}, models, threads, runs)
        timed = compare_latency(paths, threads=threads, warmup=5, runs=max(2 * runs, 20))
    owner_ms = [owner_ms[str(w)] for w in ws]
    entries = {}
    for name in sorted({n for o in owner_ms for n in o}):
        kind = "total_elements" if name == UNMAPPED else (
            "macs" if isinstance(base.get_submodule(name), _WEIGHTED) else "elements")
        work = [totals[i] if name == UNMAPPED else works[i].get(name, 0.0) for i in range(len(ws))]
        ms = [o.get(name, 0.0) for o in owner_ms]
        fx, fy = _fit(work, ms)
        entries[name] = {"kind": kind, "work": work, "ms": ms, "fit_work": fx, "fit_ms": fy}
    sums = [sum(o.values()) for o in owner_ms]
    cal = {st: _calibration(sums, [timed[str(w)][f"{st}_ms"] for w in ws]) for st in STATS}
    measured = [{"width": w, "median_ms": timed[str(w)]["median_ms"], "min_ms": timed[str(w)]["min_ms"],
                 "p90_ms": timed[str(w)]["p90_ms"], "node_sum_ms": sums[i],
                 "unmapped_ms": owner_ms[i].get(UNMAPPED, 0.0),
                 **{f"predicted_{st}_ms": c["scale"] * sums[i] + c["offset"] for st, c in cal.items()}}
                for i, w in enumerate(ws)]
    ref = timed["original"]
    table = LatencyTable(key=key, widths=ws, entries=entries, measured=measured, calibration=cal, stat=stat,
                         reference={"format": "fp32", "median_ms": ref["median_ms"],
                                    "min_ms": ref["min_ms"], "p90_ms": ref["p90_ms"]},
                         conditions=timed["original"].get("conditions"))
    for st, c in cal.items():
        if c["outliers"]:
            table.notes.append(f"end-to-end {st} of width(s) {', '.join(f'{ws[i]:g}' for i in c['outliers'])} "
                               f"off the calibration by {max(abs(c['pct_error'][i]) for i in c['outliers']):.0f}%: "
                               "a loaded machine? (predictions follow the least loaded width)")
    un = [m["unmapped_ms"] for m in measured]
    if len(un) > 1 and max(un) > 0:
        if max(un) - min(un) < 0.2 * max(un):
            how = "about constant"
        elif all(a >= b for a, b in zip(un, un[1:])):
            how = "shrinks as the width shrinks: fitted on total activation elements"
        else:
            how = "not monotone in the width: pooled by the monotone fit"
        table.notes.append(f"unmapped nodes (no module scope): {min(un):.3f}-{max(un):.3f} ms over the widths ({how})")
    return table


# -- cache ------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$COMPRESS_CACHE/latency``, else ``~/.cache/compress/latency``."""
    from compress.data.digits_det import cache_root

    return cache_root() / "latency"


def cache_name(key: dict) -> str:
    """File name of a key: readable parts plus a digest of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{key['model']}-{key['format']}-t{key['threads']}-{digest}.json"


def cache_file(key: dict, cache_dir=None) -> Path:
    """Where :func:`cached_table` keeps the table of ``key``."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / cache_name(key)


def cached_table(model: nn.Module, adapter, *, cache_dir=None, threads: int = 1, fmt: str = "fp32",
                 refresh: bool = False, **kw) -> tuple[LatencyTable, bool]:
    """The table for this key from ``cache_dir`` (built and saved when absent or ``refresh``);
    returns ``(table, loaded_from_cache)``."""
    ws = _check_args(threads, fmt, kw.get("widths", (1.0, 0.75, 0.5, 0.25)), kw.get("runs", 20))
    if kw.get("stat", "median") not in STATS:
        raise CompressError(f"latency table: stat must be 'median' or 'min' (got {kw['stat']!r})")
    key = table_key(model, adapter, threads=threads, fmt=fmt, widths=ws, round_to=kw.get("round_to", 8))
    path = cache_file(key, cache_dir)
    if path.is_file() and not refresh:
        try:
            table = LatencyTable.load(path)
            if table.key == key:
                table.stat = kw.get("stat", table.stat)  # both statistics are calibrated in every table
                return table, True
        except CompressError:
            pass  # a damaged or older cache file is rebuilt
    table = build_table(model, adapter, threads=threads, fmt=fmt, **kw)
    table.save(path)
    return table, False


# -- printing ---------------------------------------------------------------------------------
def format_table(table: LatencyTable, top: int | None = None) -> str:
    """Plain-text table: per entry, measured ms at each width (slowest at full width first)."""
    ws = table.widths
    head = f"{'module':<40} {'work':<8}" + "".join(f"{f'w={w:g}':>10}" for w in ws)
    rows = sorted(table.entries.items(), key=lambda kv: -kv[1]["ms"][0])
    shown = rows if top is None else rows[:top]
    lines = [f"Latency table ({table.key['format']}, {table.key['runtime']} {table.key.get('runtime_version', '')}, "
             f"{table.key['threads']} thread(s), {table.key['cpu']}); kernel ms per module", head, "-" * len(head)]
    kinds = {"macs": "MACs", "elements": "elems", "total_elements": "total"}
    for name, e in shown:
        lines.append(f"{name[:40]:<40} {kinds.get(e['kind'], e['kind']):<8}" + "".join(f"{v:>10.3f}" for v in e["ms"]))
    if len(shown) < len(rows):
        rest = [sum(e["ms"][i] for _, e in rows[len(shown):]) for i in range(len(ws))]
        lines.append(f"{f'({len(rows) - len(shown)} more)':<40} {'':<8}" + "".join(f"{v:>10.3f}" for v in rest))
    lines.append("-" * len(head))
    st = table.stat
    for label, k in (("sum of kernel times", "node_sum_ms"), ("measured end to end, median", "median_ms"),
                     ("measured end to end, min", "min_ms"), (f"table's prediction ({st})", f"predicted_{st}_ms")):
        lines.append(f"{label:<49}" + "".join(f"{m[k]:>10.3f}" for m in table.measured))
    c = table.calibration[st]
    lines.append(f"calibration ({st}): e2e = {c['scale']:.3f} x sum + {c['offset']:.3f} ms ({c['fit']}, "
                 f"max error on the widths {c['max_abs_pct_error']:.1f}%)")
    if table.reference:
        lines.append(f"original model (fp32, not rewritten), timed with them: "
                     f"median {table.reference['median_ms']:.3f} ms, "
                     f"min {table.reference['min_ms']:.3f} ms")
    lines += table.notes
    return "\n".join(lines)
