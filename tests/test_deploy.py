"""Deployment targets: each installed runtime builds, checks and times the fp32 and int8 models,
`select: fastest_passing` picks per target, and every bundle's infer.py reproduces the check.

One tiny run (built-in digitdet, int8 PTQ on 16 calibration images, 12 validation images) is
shared by the module; targets whose runtime is missing are skipped with the reason.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress import recipe as R
from compress.cli import main
from compress.deploy import DeployError, get_target
from compress.deploy.core import _select
from compress.deploy.cpu import emulation_note, int8_settings
from compress.errors import RecipeError

ROOT = Path(__file__).parents[1]
ALL = ["onnxruntime", "ort-mobile", "openvino", "ncnn"]
INSTALLED = [t for t in ALL if get_target(t).available()]

TINY = {
    "name": "tiny-deploy",
    "model": {"builtin": "digitdet"},
    "data": {"calibration": {"builtin": "digits-det", "split": "calib", "samples": 16},
             "validation": {"builtin": "digits-det", "split": "val", "samples": 12}},
    "passes": [{"type": "quantize.ptq", "backend": "onnxruntime"}],
    "fidelity": {"overlays": 0},
    "benchmark": {"runs": 5, "warmup": 1, "threads": 1},
    "deploy": {"targets": INSTALLED},
}


def target_param(name):
    why = f"{name} runtime not installed: pip install -e '.[{get_target(name).extra}]'"
    return pytest.param(name, marks=pytest.mark.skipif(name not in INSTALLED, reason=why))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_torch_thread):
    from compress import api

    out = tmp_path_factory.mktemp("deploy") / "run"
    api.run(R.validate(TINY), out, quiet=True)
    return out


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_run_keeps_fp32_and_measures_every_target(run_dir):
    rep = report_of(run_dir)
    assert rep["files"]["fp32_onnx"] == "model_fp32.onnx" and (run_dir / "model_fp32.onnx").is_file()
    assert (run_dir / "model_fp32.onnx").stat().st_size > 2 * (run_dir / "model.onnx").stat().st_size  # fp32 vs int8
    dep = rep["deploy"]
    assert set(INSTALLED) <= set(dep) and dep["settings"]["targets"] == INSTALLED
    assert dep["baseline"]["onnxruntime/original"]["latency_ms"] > 0
    for t in INSTALLED:
        rows = dep[t]["artifacts"]
        if t == "ncnn":  # converted from the torch model by pnnx; ncnn int8 needs ncnn's own tools
            assert set(rows) == {"fp32"} and "ncnn2int8" in dep[t]["skipped"]["int8"]
        else:
            assert set(rows) == {"fp32", "int8"}, t
        for name, r in rows.items():
            assert sum((run_dir / f).stat().st_size for f in r["files"]) == r["bytes"] > 0
            assert r["latency_ms"] > 0 and r["speedup_vs_ort_original"] > 0
        assert rows["fp32"]["agreement_map50"] >= 0.99 and rows["fp32"]["matched_recall"] >= 0.99, t
        if "int8" in rows:
            assert rows["int8"]["passed"] is True, (t, rows["int8"])
            assert rows["int8"]["score_drift"] > rows["fp32"]["score_drift"], t  # int8 really is another model
        # fastest_passing: the selected artifact passes and no passing artifact is faster
        sel = dep[t]["selected"]
        assert rows[sel]["passed"]
        assert all(rows[sel]["latency_ms"] <= r["latency_ms"] for r in rows.values() if r["passed"])
        assert dep[t]["reason"].endswith(f"kept {sel}" if len(rows) > 1 else "the only artifact built for this target")
    assert "| target | artifact |" in (run_dir / "deploy" / "summary.md").read_text()
    sp = dep["speedup"]
    assert [s["to"] for s in sp["stages"]] == ["fp32", "int8"]
    assert sp["total"] == pytest.approx(sp["stages"][0]["speedup"] * sp["stages"][1]["speedup"], rel=0.01)
    assert any(n.startswith("ONNX Runtime speed-up over the original") for n in rep["notes"])


@pytest.mark.parametrize("target", [target_param(t) for t in ALL])
def test_infer_py_reproduces_the_check_from_the_bundle_alone(run_dir, tmp_path, target):
    bundle = tmp_path / target
    shutil.copytree(run_dir / "deploy" / target, bundle)  # nothing else of the run comes along
    info = json.loads((bundle / "deploy.json").read_text())
    assert info["preprocess"]["pad_value"] == 114 and info["input"]["shape"] == [1, 3, 128, 128]
    assert info["class_names"] == [str(i) for i in range(10)] and info["check"]["conf"] == 0.25
    assert info["selected"] == report_of(run_dir)["deploy"][target]["selected"]
    weights = ROOT / "compress" / "zoo" / "weights" / "digitdet.pt"
    assert info["source"]["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "licence" not in info  # digitdet is this project's own architecture
    for name, art in info["artifacts"].items():
        want = art["example_detections"]
        assert want, (target, name)  # the example image has detections to reproduce
        proc = subprocess.run([sys.executable, "infer.py", "example.png", "--model", art["file"]], cwd=bundle,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout)
        assert [d["class"] for d in got] == [d["class"] for d in want], (target, name)
        assert np.allclose([d["box"] for d in got], [d["box"] for d in want], atol=0.02), (target, name)
        assert np.allclose([d["score"] for d in got], [d["score"] for d in want], atol=2e-4), (target, name)


def test_bundle_examples_match_the_torch_model(run_dir):
    """The fp32 example detections are the original's (what the check compared), not just self-consistent."""
    from compress.fidelity import predict_torch
    from compress.models import load_model
    from PIL import Image

    adapter, model = load_model(R.validate(TINY).model)
    info = json.loads((run_dir / "deploy" / INSTALLED[0] / "deploy.json").read_text())
    image = np.asarray(Image.open(run_dir / "deploy" / INSTALLED[0] / "example.png").convert("RGB"))
    ref = predict_torch(adapter, model, [image], 0.25, 0.7).results[0]
    got = info["artifacts"]["fp32"]["example_detections"]
    assert len(got) == len(ref) > 0
    assert np.allclose([d["box"] for d in got], ref.boxes, atol=0.05)


def test_select_fastest_passing():
    fast_fp32 = {"fp32": {"passed": True, "latency_ms": 2.0}, "int8": {"passed": True, "latency_ms": 2.3}}
    sel, why = _select(fast_fp32, "fastest_passing", "pruned fp32")
    assert sel == "fp32" and why.startswith("int8 not faster than pruned fp32 on this CPU") and "kept fp32" in why
    fast_int8 = {"fp32": {"passed": True, "latency_ms": 2.0}, "int8": {"passed": True, "latency_ms": 1.0}}
    assert _select(fast_int8, "fastest_passing", "fp32")[0] == "int8"
    broken = {"fp32": {"passed": True, "latency_ms": 2.0},
              "int8": {"passed": False, "latency_ms": 1.0, "failures": ["agreement_map50 0.50 < 0.90"]}}
    sel, why = _select(broken, "fastest_passing", "fp32")
    assert sel == "fp32" and "int8 failed the fidelity check (agreement_map50 0.50 < 0.90)" in why
    none = {k: {**v, "passed": False} for k, v in fast_int8.items()}
    assert _select(none, "fastest_passing", "fp32")[0] is None
    assert _select(fast_int8, "all", "fp32")[0] is None


AVX2 = {"arch": "x86_64", "has_vnni": False, "avx2": True}
VNNI = {"arch": "x86_64", "has_vnni": True, "avx2": True}


def test_cpu_profiles_choose_int8_settings_for_the_board():
    assert int8_settings("x86-avx2", VNNI)["reduce_range"] is True
    assert int8_settings("x86-vnni", AVX2)["reduce_range"] is False
    assert int8_settings("arm64", AVX2)["reduce_range"] is False
    assert int8_settings("host", AVX2)["reduce_range"] is True and int8_settings("host", VNNI)["reduce_range"] is False
    assert all(int8_settings(c, AVX2)["format"] == "QDQ" for c in ("host", "x86-avx2", "x86-vnni", "arm64"))
    assert "cannot emulate" in emulation_note("x86-vnni", AVX2)
    assert "does not transfer" in emulation_note("arm64", AVX2)
    assert emulation_note("x86-vnni", VNNI) is None and emulation_note("host", AVX2) is None


def test_recipe_deploy_section_is_validated():
    ok = R.load(ROOT / "recipes/digitdet-deploy.yaml")
    assert ok.deploy.targets == ALL and ok.deploy.select == "fastest_passing"
    assert "deploy" in ok.to_dict()
    plain = R.validate({k: v for k, v in TINY.items() if k != "deploy"})
    assert "deploy" not in plain.to_dict()  # recipes without deploy keep their digest
    for bad, where in (({"target": ["onnxruntime"]}, "deploy.target"), ({"targets": ["tensorrt"]}, "deploy.targets"),
                       ({"targets": ["openvino", "openvino"]}, "listed twice"), ({"cpu": "riscv"}, "deploy.cpu")):
        with pytest.raises(RecipeError, match=where.replace(".", r"\.")):
            R.validate({**TINY, "deploy": bad})


def test_missing_runtime_names_the_extra(monkeypatch, run_dir, capsys):
    import compress.deploy.base as base

    real = base.importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(DeployError, match=r"needs openvino: pip install -e '\.\[openvino\]'"):
        get_target("openvino").require()
    before = (run_dir / "report.json").read_text()
    assert main(["deploy", str(run_dir), "--target", "openvino", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install -e '.[openvino]'" in err
    assert (run_dir / "report.json").read_text() == before  # nothing touched


def test_deploy_command_on_an_existing_run_with_a_board_profile(run_dir, tmp_path, capsys):
    from compress.runtime.cpu import cpu_features

    host = cpu_features()
    if host["arch"] not in ("x86_64", "AMD64"):
        pytest.skip("the profile switch below is written for x86 hosts")
    board = "x86-avx2" if host["has_vnni"] else "x86-vnni"  # the one whose reduce_range differs from the host's
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["deploy", str(run), "--target", "onnxruntime", "--cpu", board, "--select", "all", "--quiet"]) == 0
    dep = report_of(run)["deploy"]
    assert "deploy" in capsys.readouterr().out
    redo = dep["settings"]["requantized"]
    assert redo["reduce_range"] is (board == "x86-avx2") and redo["was"] is (not redo["reduce_range"])
    assert (run / redo["file"]).is_file() and dep["onnxruntime"]["artifacts"]["int8"]["source_onnx"] == redo["file"]
    assert dep["onnxruntime"]["selected"] is None and dep["onnxruntime"]["reason"].startswith("select: all")
    if board == "x86-vnni":
        assert any("cannot emulate" in n for n in dep["notes"])
    for t in INSTALLED:  # targets not redeployed keep their earlier entries
        assert t in dep


def test_deploy_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["deploy", str(tmp_path), "--target", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a run folder" in err


def test_run_with_a_missing_runtime_fails_before_the_passes(monkeypatch, tmp_path, capsys):
    import yaml

    import compress.deploy.base as base
    import compress.models as models

    real = base.importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**TINY, "deploy": {"targets": ["onnxruntime", "openvino"]}}))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install -e '.[openvino]'" in err
    assert not out.exists()
