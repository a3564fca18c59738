"""A detector this project did not write: ``recipes/custom-detector/pyramid_detector.py``.

One backbone + head shared over an image pyramid (every layer called twice), end-to-end
``(B, N, 6)`` rows (``output_layout: end2end``), random weights with BatchNorm statistics
re-estimated on digits-det images. Through the CLI, with the shipped recipe: the fp32
export agrees 1.0, 50% structured pruning prunes (the shared head does not protect the
backbone) and fine-tunes with the box/score distillation, int8 PTQ passes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from compress.cli import main
from compress.errors import EXIT_FIDELITY, EXIT_OK, PassError
from compress.models.batchnorm import reestimate_bn

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "custom-detector" / "recipe.yaml"  # prune 50% + distill + int8
INT8 = ROOT / "recipes" / "custom-detector" / "int8.yaml"
ARCH_FILE = ROOT / "recipes" / "custom-detector" / "pyramid_detector.py"
ARCH = f"{ARCH_FILE}:build"
SMALL = ["--set", "data.calibration.samples=32", "--set", "data.validation.samples=24",
         "--set", "fidelity.overlays=0", "--set", "benchmark.runs=3", "--set", "benchmark.warmup=1",
         "--set", "benchmark.threads=1", "--threads", "1", "--quiet"]


def _arch():
    spec = importlib.util.spec_from_file_location("pyramid_detector_t", ARCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_torch_thread):
    from compress.data import builtin_dataset
    from compress.models.detect import preprocess_letterbox

    mod = _arch()
    torch.manual_seed(0)
    data = builtin_dataset("digits-det", "calib", 32)
    x, _ = preprocess_letterbox([s.image for s in data.samples], 128)
    path = tmp_path_factory.mktemp("det") / "pyramid.pt"
    torch.save(reestimate_bn(mod.build(10), x, batch=16).state_dict(), path)
    return str(path)


def run(tmp_path, ckpt, name, passes: list, source: Path = RECIPE) -> tuple[int, dict]:
    """A shipped recipe with ``passes`` instead of its own, on the user's checkpoint and arch."""
    data = yaml.safe_load(source.read_text())
    data["passes"] = passes
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / name
    rc = main(["run", str(recipe), "--model", ckpt, "--arch", ARCH, "--out", str(out), *SMALL])
    return rc, json.loads((out / "report.json").read_text())


def test_shared_head_is_the_only_protected_layer(ckpt):
    from compress.models import load_model
    from compress.recipe import ModelSpec

    adapter, model = load_model(ModelSpec(checkpoint=ckpt, arch=ARCH, task="detect", output_layout="end2end",
                                          class_names=[str(i) for i in range(10)], imgsz=128))
    assert adapter.protected_layers(model) == [model.head[-1]]  # not the backbone behind it
    assert adapter.metadata()["output_layout"] == "end2end"


def test_export_agrees_exactly(ckpt, tmp_path, capsys):
    rc, rep = run(tmp_path, ckpt, "export", [])
    fid = rep["fidelity"]
    assert rc == EXIT_OK, capsys.readouterr().err
    assert fid["measurable"] and fid["counts"]["reference_detections"] > 24
    assert fid["agreement_map50"] == 1.0 and fid["matched_recall"] == 1.0


def test_prune_50_prunes_the_shared_network_and_distills(ckpt, tmp_path, capsys):
    shipped = yaml.safe_load(RECIPE.read_text())["passes"][0]
    assert shipped["type"] == "prune.structured" and shipped["ratio"] == 0.5
    tune = {**shipped["finetune"], "steps": 2, "batch_size": 4}
    tune.pop("epochs", None)
    rc, rep = run(tmp_path, ckpt, "prune", [{**shipped, "finetune": tune}])
    assert rc in (EXIT_OK, EXIT_FIDELITY), capsys.readouterr().err
    section = rep["passes"]["prune.structured"]
    assert section["params_after"] < 0.4 * section["params_before"]
    assert section["channels"]["body.0.0"] == "16->8" and section["channels"]["head.0.0"] == "64->32"
    whole = {r["layer"]: r for r in section["coverage"]["whole"]}  # only the shared head's output conv
    assert [r["kind"] for r in whole.values()] == ["protected"] and len(section["coverage"]["pruned"]) > 3
    tune = section["rounds"][0]["finetune"]
    assert tune["distill"] == "detect" and tune["steps"] == 2
    assert rep["fidelity"]["measurable"]


def test_int8_ptq_passes(ckpt, tmp_path, capsys):
    rc, rep = run(tmp_path, ckpt, "int8", yaml.safe_load(INT8.read_text())["passes"], INT8)
    fid = rep["fidelity"]
    assert rc == EXIT_OK, capsys.readouterr().err
    assert fid["passed"] and fid["agreement_map50"] >= 0.9 and not fid["collapsed"]
    assert rep["passes"]["quantize.ptq"]["quantized"]


def _rows(n=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, n, 2, generator=g) * 100
    wh = 10 + torch.rand(1, n, 2, generator=g) * 30
    score = 0.3 + 0.6 * torch.rand(1, n, 1, generator=g)
    cls = torch.randint(0, 3, (1, n, 1), generator=g).float()
    return torch.cat([xy * scale, (xy + wh) * scale, score, cls], 2)


def test_detect_distill_matches_rows_and_weighs_boxes_and_scores_apart():
    from compress.passes.distill import distill_loss, resolve_mode

    nc = 3
    teacher = torch.cat([_rows(), torch.zeros(1, 3, 6)], 1)  # 3 padding rows (score 0)
    assert resolve_mode("auto", "detect", [teacher], nc) == "detect"
    assert resolve_mode("auto", "classify", [teacher], nc) == "mse"
    assert resolve_mode("detect", "detect", [teacher], nc) == "detect"  # asked for by name
    with pytest.raises(PassError, match="distill 'detect' needs one decoded detector output"):
        resolve_mode("detect", "detect", [torch.zeros(1, 7, 8, 8)], nc)
    shuffled = teacher[:, torch.randperm(8, generator=torch.Generator().manual_seed(1))]
    assert float(distill_loss("detect", [shuffled], [teacher], nc)) == pytest.approx(0.0, abs=1e-5)
    # the box term is normalised by the box size: the same relative error at 10x the pixels costs the same
    student = teacher.clone()
    student[:, :5, :4] += 3.0
    big_t, big_s = teacher.clone(), student.clone()
    big_t[..., :4] *= 10
    big_s[..., :4] *= 10
    small = float(distill_loss("detect", [student], [teacher], nc))
    assert small > 0.01 and float(distill_loss("detect", [big_s], [big_t], nc)) == pytest.approx(small, rel=1e-4)
    # a score error is not swamped by pixel-scale boxes: it counts as much as a box error does
    scored = teacher.clone()
    scored[:, :5, 4] = (scored[:, :5, 4] - 0.25).clamp(min=0.01)
    assert float(distill_loss("detect", [scored], [teacher], nc)) > 0.1 * small
    student = student.requires_grad_(True)
    distill_loss("detect", [student], [teacher], nc).backward()
    assert student.grad[:, :5, :5].abs().sum() > 0


def test_detect_distill_on_the_ultralytics_decoded_layout():
    from compress.passes.distill import distill_loss, resolve_mode

    nc, n = 3, 16
    g = torch.Generator().manual_seed(0)
    teacher = torch.cat([torch.rand(2, 2, n, generator=g) * 64, 8 + torch.rand(2, 2, n, generator=g) * 16,
                         torch.rand(2, nc, n, generator=g)], 1)
    assert resolve_mode("auto", "detect", [teacher], nc) == "detect"
    assert float(distill_loss("detect", [teacher.clone()], [teacher], nc)) == pytest.approx(0.0, abs=1e-5)
    worse = teacher.clone()
    worse[:, 4:] *= 0.5  # every score halves: the boxes are perfect, the loss must still see it
    assert float(distill_loss("detect", [worse], [teacher], nc)) > 0.05
