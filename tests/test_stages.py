"""Fidelity per stage: a prune + int8 run names pruning as the stage that lost agreement,
int8 vs the pruned model stays near-lossless, and the int8 drift table is left out."""

from __future__ import annotations

import json

import pytest
import yaml

from compress.cli import main
from compress.stages import blame, culprit

FAST = ["--set", "fidelity.samples=24", "--set", "benchmark.runs=3", "--set", "benchmark.warmup=1",
        "--set", "fidelity.overlays=0", "--set", "export.simplify=false", "--quiet"]


def test_prune_then_int8_blames_pruning(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "prune-int8", "model": {"builtin": "digitdet"},
        "data": {"calibration": {"builtin": "digits-det", "split": "calib", "samples": 32},
                 "validation": {"builtin": "digits-det", "split": "val"}},
        "passes": [{"type": "prune.structured", "criterion": "l2", "ratio": 0.15},  # no fine-tune: loses
                   {"type": "quantize.ptq", "backend": "onnxruntime", "samples": 32}],
    }))
    out = tmp_path / "run"
    code = main(["run", str(recipe), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 3
    rep = json.loads((out / "report.json").read_text())
    table = rep["stage_fidelity"]
    assert [r["stage"] for r in table] == ["prune.structured", "export", "quantize.ptq"]
    assert [r["runtime"] for r in table] == ["torch", "onnxruntime", "onnxruntime"]
    by = {r["stage"]: r for r in table}
    pruned = by["prune.structured"]["vs_original"]["agreement_map50"]
    int8_vs_pruned = by["quantize.ptq"]["vs_previous"]["agreement_map50"]
    export_vs_torch = by["export"]["vs_previous"]["agreement_map50"]
    assert pruned < 0.85, "pruning without fine-tuning must lose agreement for this test to mean anything"
    assert int8_vs_pruned >= 0.9 and export_vs_torch >= 0.98
    # the last row vs the original is the fidelity check itself
    assert by["quantize.ptq"]["vs_original"]["agreement_map50"] == pytest.approx(rep["fidelity"]["agreement_map50"])
    assert rep["fidelity"]["lost_at"].startswith("lost at: prune.structured (agreement_map50 ")
    assert "quantize.ptq vs export" in rep["fidelity"]["lost_at"]
    assert "lost at: prune.structured" in err
    assert "int8_drift" not in rep, "the drift table explains int8 only, and int8 did not lose it"
    md = (out / "report.md").read_text()
    assert "## Fidelity per stage" in md and "| prune.structured | torch |" in md


def test_blame_picks_the_stage_with_the_largest_own_drop():
    table = [{"stage": "a", "previous": "original", "vs_original": {"agreement_map50": 0.99},
              "vs_previous": {"agreement_map50": 0.99}},
             {"stage": "b", "previous": "a", "vs_original": {"agreement_map50": 0.7},
              "vs_previous": {"agreement_map50": 0.71}},
             {"stage": "c", "previous": "b", "vs_original": {"agreement_map50": 0.69},
              "vs_previous": {"agreement_map50": 0.97}}]
    assert culprit(table, "detect")["stage"] == "b"
    assert blame(table, "detect") == "lost at: b (agreement_map50 0.700 vs original); a vs original 0.990; c vs b 0.970"
    assert blame([], "detect") is None
