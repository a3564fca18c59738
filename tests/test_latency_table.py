"""The per-layer latency table (compress.search.latency_table): cache key and file round trip,
predictions that reproduce the measured widths, shrink with pruning, and match a non-uniformly
pruned model's own profile; the `compress profile --latency-table` command.

Tiny: digitdet (built-in weights) at 64 px, widths (1, 0.5), 3 profiled runs, 1 thread. The
end-to-end checks are loose (the test machine is shared); the per-node checks are tight.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.errors import CompressError
from compress.search import latency_table as LT

WIDTHS = (1.0, 0.5)


def _digitdet(imgsz=64):
    from compress.models import load_model
    from compress.recipe import ModelSpec

    return load_model(ModelSpec(builtin="digitdet", imgsz=imgsz))


def _prune(model, adapter, tmp, ratio=0.5, layer_ratios=None):
    from compress.context import Context
    from compress.passes import get_pass

    cls = get_pass("prune.structured")
    p = cls(cls.Config(type="prune.structured", ratio=ratio, layer_ratios=layer_ratios or {}))
    m = copy.deepcopy(model)
    ctx = Context(adapter=adapter, reference=model, calibration=None, validation=None, work_dir=tmp, model=m)
    return p.apply(m, ctx).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    adapter, model = _digitdet()
    cache = tmp_path_factory.mktemp("lt-cache")
    table, cached = LT.cached_table(model, adapter, cache_dir=cache, threads=1, widths=WIDTHS, runs=3)
    return adapter, model, table, cached, cache


def test_cache_key_and_roundtrip(built, tmp_path):
    adapter, model, table, cached, cache = built
    assert cached is False
    key = table.key
    assert key["runtime"] == "onnxruntime" and key["threads"] == 1 and key["format"] == "fp32"
    assert key["cpu"] and key["input"] == [1, 3, 64, 64] and key["widths"] == [1.0, 0.5]
    files = list(cache.glob("*.json"))
    assert [f.name for f in files] == [LT.cache_name(key)]
    # a fine-tuned copy (same shapes, other values) shares the table; another input size does not
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1)
    again, hit = LT.cached_table(tuned, adapter, cache_dir=cache, threads=1, widths=WIDTHS, runs=3)
    assert hit is True and again.to_dict() == table.to_dict()
    assert LT.model_digest(model, [1, 3, 64, 64]) != LT.model_digest(model, [1, 3, 96, 96])
    assert LT.model_digest(model, [1, 3, 64, 64]) != LT.model_digest(_prune(model, adapter, tmp_path), [1, 3, 64, 64])
    # save / load keeps everything, predictions included
    path = table.save(tmp_path / "t.json")
    loaded = LT.LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    assert loaded.predict_ms(model, adapter) == pytest.approx(table.predict_ms(model, adapter))
    (tmp_path / "bad.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(CompressError, match="not a latency table"):
        LT.LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(CompressError, match="cannot read"):
        LT.LatencyTable.load(tmp_path / "missing.json")


def test_table_contents(built):
    _, _, table, _, _ = built
    assert table.widths == [1.0, 0.5]
    convs = {n: e for n, e in table.entries.items() if e["kind"] == "macs"}
    assert len(convs) > 30 and LT.UNMAPPED in table.entries
    for e in table.entries.values():
        assert len(e["ms"]) == 2 and all(v >= 0 for v in e["ms"])
        assert all(a <= b for a, b in zip(e["fit_ms"], e["fit_ms"][1:]))  # monotone in work
    assert convs["down2.conv"]["work"][1] < convs["down2.conv"]["work"][0]  # fewer MACs at half width
    # pruning half the channels removes kernel time overall
    assert table.measured[1]["node_sum_ms"] < table.measured[0]["node_sum_ms"]
    assert set(table.calibration) == {"median", "min"}
    text = LT.format_table(table, top=5)
    assert "w=0.5" in text and "calibration (median)" in text and "(unmapped)" in text


def test_prediction_reproduces_the_measured_widths(built, tmp_path):
    adapter, model, table, _, _ = built
    with pytest.raises(CompressError, match="adapter="):  # C2f blocks: the table holds the split-free names
        table.predict_ms(model)
    full = table.predict_ms(model, adapter)
    m0 = table.measured[0]
    half = _prune(model, adapter, tmp_path, ratio=0.5)
    for i, m in enumerate((model, half)):
        nodes = table.node_ms(m, adapter)
        exact = 0
        for name, e in table.entries.items():
            if e["work"][0] != e["work"][1] and (e["ms"][0] - e["ms"][1]) * (e["work"][0] - e["work"][1]) >= 0:
                exact += 1  # measured time grows with work: the curve passes through the measurement
                assert nodes[name] == pytest.approx(e["ms"][i], rel=1e-9, abs=1e-12), name
        assert exact > 30
        # entries whose time fell as work grew (noise) are pooled to their mean: the total stays close
        assert sum(nodes.values()) == pytest.approx(table.measured[i]["node_sum_ms"], rel=0.15)
    # the calibrated prediction is near the measured end-to-end time of the full width (loose: shared CPU)
    assert 0.5 < table.predict_ms(model, adapter, stat="min") / m0["min_ms"] < 2.0
    rows = table.breakdown(model, adapter)
    assert sum(r["ms"] for r in rows) == pytest.approx(full, rel=1e-9)
    assert rows[-1]["name"] == LT.OVERHEAD


def test_more_pruning_predicts_less(built, tmp_path):
    adapter, model, table, _, _ = built
    light = _prune(model, adapter, tmp_path, ratio=0.25)
    heavy = _prune(model, adapter, tmp_path, ratio=0.6)
    p_full, p_light, p_heavy = table.predict_ms(model, adapter), table.predict_ms(light), table.predict_ms(heavy)
    assert p_full > p_light > p_heavy
    # one layer pruned harder -> that layer (and only layers it feeds) predict less
    one = _prune(model, adapter, tmp_path, ratio=0.25, layer_ratios={"down2.conv": 0.75})
    assert table.node_ms(one)["down2.conv"] < table.node_ms(light)["down2.conv"]


def test_non_uniform_prediction_matches_its_profile(built, tmp_path):
    """A per-layer mix of ratios: the table's kernel-time sum vs the pruned model's own profile."""
    from compress.export import export_onnx
    from compress.runtime.latency import measure
    from compress.runtime.profile import onnx_node_times

    adapter, model, table, _, _ = built
    ratios = {"down2.conv": 0.7, "down3.conv": 0.2, "c2f2.cv2.conv": 0.6, "re:heads\\.0\\.cls\\.[01]\\.conv": 0.4}
    m = _prune(model, adapter, tmp_path, ratio=0.3, layer_ratios=ratios)
    path = export_onnx(m, adapter, tmp_path / "m.onnx")
    measured_nodes = sum(v["ms"] for v in onnx_node_times(path, threads=1, runs=10).values())
    predicted_nodes = sum(table.node_ms(m).values())
    # loose on purpose: a shared CI machine moves kernel times; a broken fit is off by far more
    assert abs(predicted_nodes - measured_nodes) / measured_nodes < 0.6
    e2e = measure(path, threads=1, runs=20, warmup=3)["min_ms"]
    assert 0.4 < table.predict_ms(m, stat="min") / e2e < 2.5


def test_int8_table(tmp_path):
    adapter, model = _digitdet()
    table = LT.build_table(model, adapter, threads=1, fmt="int8", widths=WIDTHS, runs=3, ptq_config={"samples": 8})
    assert table.key["format"] == "int8"
    assert table.reference["format"] == "fp32"  # the original model, as exported, timed alongside
    half = _prune(model, adapter, tmp_path, ratio=0.5)
    assert table.predict_ms(half) < table.predict_ms(model, adapter)
    # quantized convolutions keep their module scope
    assert sum(1 for e in table.entries.values() if e["kind"] == "macs") > 30


@pytest.mark.parametrize("kw, match", [({"fmt": "fp16"}, "format"), ({"widths": (1.0, 0.0)}, "widths"),
                                       ({"widths": ()}, "widths"), ({"threads": 0}, "threads"),
                                       ({"stat": "mean"}, "stat")])
def test_bad_arguments_are_one_line_errors(kw, match):
    from compress.models import load_model
    from compress.recipe import ModelSpec

    adapter, model = load_model(ModelSpec(builtin="lenet5"))
    with pytest.raises(CompressError, match=match):
        LT.build_table(model, adapter, **kw)


def test_fused_node_names_map_to_their_module():
    from compress.runtime.profile import module_of

    assert module_of("fused /fc1/Gemm", {"fc1", "fc2"}) == "fc1"


def test_cli_profile_latency_table(tmp_path, monkeypatch, capsys):
    from compress.cli import main

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    argv = ["profile", "lenet5", "--latency-table", "--widths", "1,0.5", "--runs", "3", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Latency table (fp32" in out and "w=0.5" in out and "fc1" in out and "measured now" in out
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    assert main(argv) == 0
    assert "loaded from" in capsys.readouterr().out
    assert main(["profile", "lenet5", "--latency-table", "--widths", "1,2"]) == 2
    assert "widths must be in (0, 1]" in capsys.readouterr().err


def test_block_macs_round_channels_up_to_the_kernel_block():
    from torch import nn

    x = torch.zeros(1, 40, 8, 8)
    conv, dw = nn.Conv2d(40, 40, 3, padding=1), nn.Conv2d(40, 40, 3, padding=1, groups=40)
    y = conv(x)
    assert LT.block_macs(conv, x, y, 1) == 40 * 40 * 9 * 64
    assert LT.block_macs(conv, x, y, 16) == 48 * 48 * 9 * 64  # what a 16-channel blocked kernel computes
    assert LT.block_macs(dw, x, dw(x), 16) == 48 * 1 * 9 * 64  # depthwise: one input channel per group
