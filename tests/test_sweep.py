"""Sweeps with a fake runner: grid expansion, caching/resume, csv/md contents, plots, Pareto front."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from compress.errors import CompressError, PassError, RecipeError
from compress.report import write_report
from compress.report.plots import pareto_front
from compress.sweep import expand, parse_grid, point_name, sweep

RECIPE = """
name: fake-sweep
model: {builtin: lenet5}
data:
  validation: {builtin: digits, split: val}
passes:
  - type: prune.structured
    criterion: l1
    ratio: 0.5
    round_to: 1
"""


class FakeRunner:
    """Writes a report like the real runner's, with numbers that follow the pruning ratio."""

    def __init__(self, fail_at: float | None = None):
        self.calls: list[Path] = []
        self.fail_at = fail_at

    def __call__(self, recipe, out_dir, *, force, quiet):
        self.calls.append(Path(out_dir))
        p = recipe.passes[0]
        if p.ratio == self.fail_at:
            raise PassError(f"prune.structured: nothing to prune at ratio {p.ratio}")
        keep = 1.0 - p.ratio
        bonus = 0.01 if p.criterion == "l2" else 0.0
        original = {"params": 1000, "macs": 20000, "onnx_bytes": 4000, "latency_ms": 2.0, "accuracy": 0.99}
        compressed = {"params": int(1000 * keep), "macs": int(20000 * keep), "onnx_bytes": int(4000 * keep),
                      "latency_ms": 2.0 * keep + 0.1, "accuracy": 0.99 - p.ratio / 2 + bonus}
        report = {"original": original, "compressed": compressed,
                  "ratios": {k: round(original[k] / compressed[k], 4) for k in ("params", "macs", "onnx_bytes")}
                  | {"latency": round(original["latency_ms"] / compressed["latency_ms"], 4)},
                  "fidelity": {"task": "classify", "top1_agreement": 1 - p.ratio / 2,
                               "passed": compressed["accuracy"] > 0.7},
                  "recipe": {"name": recipe.name, "digest": recipe.digest()}}
        write_report(out_dir, report)
        return report


@pytest.fixture()
def recipe_path(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    return p


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_parse_grid_and_product():
    grid = parse_grid(["prune.ratio=0.5,0.6,0.7", "prune.criterion=l1,l2", "prune.ignore=[a, b],[c]"])
    assert grid == {"prune.ratio": ["0.5", "0.6", "0.7"], "prune.criterion": ["l1", "l2"],
                    "prune.ignore": ["[a, b]", "[c]"]}
    points = expand({"prune.ratio": [0.5, 0.6, 0.7], "prune.criterion": ["l1", "l2"]})
    assert len(points) == 6
    assert points[0] == {"prune.ratio": "0.5", "prune.criterion": "l1"}
    assert points[1] == {"prune.ratio": "0.5", "prune.criterion": "l2"}
    assert {tuple(p.values()) for p in points} == {(r, c) for r in ("0.5", "0.6", "0.7") for c in ("l1", "l2")}
    assert point_name(points[3]) == "prune.ratio=0.6,prune.criterion=l2"
    assert "/" not in point_name({"data.validation.path": "a/b"})


@pytest.mark.parametrize("bad", [["prune.ratio"], ["=0.5"], ["prune.ratio=0.5,,0.6"],
                                 ["prune.ratio=0.5", "prune.ratio=0.6"]])
def test_parse_grid_rejects(bad):
    with pytest.raises(RecipeError):
        parse_grid(bad)


def test_bad_point_fails_before_any_run(recipe_path, tmp_path):
    runner = FakeRunner()
    with pytest.raises(RecipeError, match="ratio"):
        sweep(recipe_path, {"prune.ratio": [0.5, 1.5]}, tmp_path / "s", runner=runner, quiet=True, plots=False)
    assert runner.calls == []
    with pytest.raises(RecipeError):
        sweep(recipe_path, {}, tmp_path / "s", runner=runner, quiet=True, plots=False)


def test_cache_and_resume(recipe_path, tmp_path):
    out = tmp_path / "sweep"
    grid = {"prune.ratio": [0.5, 0.6, 0.7], "prune.criterion": ["l1", "l2"]}
    runner = FakeRunner()
    rows = sweep(recipe_path, grid, out, runner=runner, quiet=True, plots=False)
    assert len(runner.calls) == 6 and len(rows) == 6
    assert sorted(p.name for p in runner.calls) == sorted(point_name(p) for p in expand(grid))

    again = FakeRunner()
    rows2 = sweep(recipe_path, grid, out, runner=again, quiet=True, plots=False)
    assert again.calls == []  # every point cached
    assert [r["params"] for r in rows2] == [r["params"] for r in rows]

    (out / "prune.ratio=0.6,prune.criterion=l2" / "report.json").unlink()
    resumed = FakeRunner()
    sweep(recipe_path, grid, out, runner=resumed, quiet=True, plots=False)
    assert [p.name for p in resumed.calls] == ["prune.ratio=0.6,prune.criterion=l2"]

    forced = FakeRunner()
    sweep(recipe_path, grid, out, runner=forced, quiet=True, force=True, plots=False)
    assert len(forced.calls) == 6


def test_changed_recipe_is_rerun(recipe_path, tmp_path):
    out = tmp_path / "sweep"
    sweep(recipe_path, {"prune.ratio": [0.5, 0.6]}, out, runner=FakeRunner(), quiet=True, plots=False)
    runner = FakeRunner()  # same folders, different base override -> different digest
    sweep(recipe_path, {"prune.ratio": [0.5, 0.6]}, out, runner=runner, quiet=True, plots=False,
          base_overrides=["fidelity.samples=8"])
    assert len(runner.calls) == 2


def test_csv_md_and_plots(recipe_path, tmp_path):
    out = tmp_path / "sweep"
    ratios = [0.5, 0.6, 0.7]
    rows = sweep(recipe_path, {"prune.ratio": ratios}, out, runner=FakeRunner(), quiet=True)
    table = _csv(out / "sweep.csv")
    assert [float(r["prune.ratio"]) for r in table] == ratios
    for r, ratio in zip(table, ratios):
        keep = 1 - ratio
        assert int(r["params"]) == int(1000 * keep)
        assert float(r["params_x"]) == pytest.approx(1000 / int(1000 * keep), rel=1e-3)
        assert float(r["speedup"]) == pytest.approx(2.0 / (2.0 * keep + 0.1), rel=1e-3)
        assert float(r["accuracy"]) == pytest.approx(0.99 - ratio / 2)
        assert float(r["top1_agreement"]) == pytest.approx(1 - ratio / 2)
        fps = 1000 / (2.0 * keep + 0.1)
        assert float(r["accuracy_x_fps"]) == pytest.approx((0.99 - ratio / 2) * fps, rel=1e-6)
        assert r["passed"] == str((0.99 - ratio / 2) > 0.7)
        assert r["agreement_map50"] == "" and r["error"] == ""
    assert all(r["pareto"] == "True" for r in table)  # faster always means less accurate here
    assert rows[0]["point"] == "prune.ratio=0.5"

    md = (out / "sweep.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| prune.ratio | params")
    assert len(lines) == 2 + 1 + len(ratios)  # header, rule, original, points
    assert "| original |" in lines[2] and "| 0.6 | 400 |" in lines[4]
    data = json.loads((out / "sweep.json").read_text())
    assert data["keys"] == ["prune.ratio"] and len(data["rows"]) == 3

    for name in ("quality", "latency", "size", "pareto"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name}.png)" in md


def test_failed_point_is_recorded_and_sweep_goes_on(recipe_path, tmp_path):
    out = tmp_path / "sweep"
    rows = sweep(recipe_path, {"prune.ratio": [0.5, 0.9]}, out, runner=FakeRunner(fail_at=0.9), quiet=True,
                 plots=False)
    assert rows[0]["error"] is None and rows[0]["params"] == 500
    assert "nothing to prune" in rows[1]["error"] and rows[1]["params"] is None
    table = _csv(out / "sweep.csv")
    assert "nothing to prune" in table[1]["error"] and table[1]["pareto"] == "False"


def test_pareto_front_hand_made():
    # (latency, quality): b dominates d (faster and better); e ties a on latency but is worse;
    # f is missing its quality; c is slowest but best.
    latency = [1.0, 2.0, 3.0, 2.5, 1.0, 0.5]
    quality = [0.80, 0.90, 0.95, 0.85, 0.70, None]
    assert pareto_front(latency, quality) == [True, True, True, False, False, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # equal points do not dominate each other
    assert pareto_front([], []) == []


def test_cache_key_follows_checkpoint_and_data_content(tmp_path):
    """Same paths, changed contents: a changed checkpoint or data set recomputes; unchanged is cached."""
    import os

    ckpt, data = tmp_path / "m.pt", tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "images" / "a.jpg").write_bytes(b"x" * 10)
    label = data / "labels" / "a.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n")
    ckpt.write_bytes(b"weights-1")
    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.replace("model: {builtin: lenet5}", f"model: {{checkpoint: {ckpt}}}")
                 .replace("validation: {builtin: digits, split: val}", f"validation: {{path: {data}}}"))
    out, grid = tmp_path / "sweep", {"prune.ratio": [0.5]}

    def calls():
        runner = FakeRunner()
        sweep(r, grid, out, runner=runner, quiet=True, plots=False)
        return len(runner.calls)

    assert calls() == 1 and calls() == 0
    assert (out / "prune.ratio=0.5" / "sweep-key.txt").is_file()
    st = ckpt.stat()
    ckpt.write_bytes(b"weights-2")  # same size, same mtime: only the content differs
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert calls() == 1 and calls() == 0
    st = label.stat()
    label.write_text("1 0.5 0.5 0.2 0.2\n")  # a changed label, same size and mtime
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert calls() == 1 and calls() == 0
    (data / "images" / "b.jpg").write_bytes(b"y" * 10)  # one more image
    assert calls() == 1 and calls() == 0


def test_no_plots_when_every_point_failed(recipe_path, tmp_path):
    out = tmp_path / "sweep"
    rows = sweep(recipe_path, {"prune.ratio": [0.9]}, out, runner=FakeRunner(fail_at=0.9), quiet=True)
    assert rows[0]["error"] and (out / "sweep.csv").is_file()
    assert not list(out.glob("*.png"))


def test_sweep_refuses_a_folder_it_did_not_write_and_marks_its_own(recipe_path, tmp_path):
    from compress.atomic import is_compress_output

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(CompressError, match="not a compress output"):
        sweep(recipe_path, {"prune.ratio": [0.5]}, foreign, runner=FakeRunner(), quiet=True, plots=False)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]

    out = tmp_path / "s"
    sweep(recipe_path, {"prune.ratio": [0.5]}, out, runner=FakeRunner(), quiet=True, plots=False)
    assert is_compress_output(out)
    sweep(recipe_path, {"prune.ratio": [0.5]}, out, runner=FakeRunner(), quiet=True, plots=False)  # its own: fine
