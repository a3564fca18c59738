"""Classifiers this project did not write: torchvision models through ``--arch torchvision.models:NAME``.

Random weights (``weights=None``, nothing downloaded) with BatchNorm statistics re-estimated
on the built-in digits images, so the reference's predictions depend on the input (not
degenerate); imgsz 32. Each model goes through the CLI as a user would: an export-only run
must agree 1.0 (top-1) and pass; a 50% structured-pruning run must prune and finish; a
constant-output classifier is reported "not measurable", never PASS.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from compress.cli import main
from compress.errors import EXIT_FIDELITY, EXIT_OK
from compress.models.batchnorm import reestimate_bn

torchvision = pytest.importorskip("torchvision")

IMGSZ = 32
MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf"]
NAMES = [str(i) for i in range(10)]


def digits_batch(split: str, n: int) -> torch.Tensor:
    from compress.data import builtin_dataset

    data = builtin_dataset("digits", split, n)  # 32x32 RGB: the generic adapter's preprocessing at imgsz 32
    x = np.stack([s.image for s in data.samples]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return torch.from_numpy(x)


@pytest.fixture(scope="module")
def train_images(one_torch_thread):
    return digits_batch("train", 64)


def checkpoint(name: str, x: torch.Tensor, path) -> str:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    torch.save(reestimate_bn(model, x).state_dict(), path)
    return str(path)


def recipe(tmp_path, ckpt: str, arch: str, passes: list, **fidelity) -> str:
    data = {
        "name": "foreign",
        "model": {"checkpoint": ckpt, "arch": arch, "task": "classify", "class_names": NAMES, "imgsz": IMGSZ},
        "data": {"calibration": {"builtin": "digits", "split": "calib", "samples": 32},
                 "validation": {"builtin": "digits", "split": "val", "samples": 48}},
        "passes": passes,
        "fidelity": {"overlays": 0, **fidelity},
        "benchmark": {"warmup": 1, "runs": 3, "threads": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run(tmp_path, ckpt, arch, passes, name="out", **fidelity) -> tuple[int, dict]:
    out = tmp_path / name
    rc = main(["run", recipe(tmp_path, ckpt, arch, passes, **fidelity), "--out", str(out), "--quiet",
               "--threads", "1"])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return rc, report


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_export_agrees_and_prune_runs(name, train_images, tmp_path, capsys):
    ckpt = checkpoint(name, train_images, tmp_path / f"{name}.pt")
    arch = f"torchvision.models:{name}"
    rc, rep = run(tmp_path, ckpt, arch, [], name="export", min_top5_agreement=0.99, max_kl=1e-3)
    fid = rep["fidelity"]
    assert rc == EXIT_OK, capsys.readouterr().err
    assert fid["measurable"] and fid["passed"] and fid["top1_agreement"] == 1.0 and fid["top5_agreement"] == 1.0
    assert fid["kl_divergence"] < 1e-6 and fid["reference_margin"] > 0

    rc, rep = run(tmp_path, ckpt, arch, [{"type": "prune.structured", "ratio": 0.5}], name="prune")
    assert rc in (EXIT_OK, EXIT_FIDELITY), capsys.readouterr().err
    section = rep["passes"]["prune.structured"]
    assert section["params_after"] < 0.6 * section["params_before"]  # really pruned, not "nothing to prune"
    cov = section["coverage"]  # per layer: requested vs effective; the classifier output left whole, with why
    assert len(cov["pruned"]) > 5 and all(0 < r["effective"] < 1 for r in cov["pruned"])
    assert cov["whole"] and all(r["reason"] for r in cov["whole"])
    fid = rep["fidelity"]
    assert fid["measurable"] and fid["top1_agreement"] is not None and fid["kl_divergence"] > 0


def test_constant_classifier_is_not_measurable(tmp_path, capsys):
    """A model whose output does not depend on the input: top-1 'agreement' 1.0, verdict not measurable."""
    ckpt = tmp_path / "const.pt"
    torch.save(ConstantNet().state_dict(), ckpt)
    rc, rep = run(tmp_path, str(ckpt), f"{__file__}:ConstantNet", [])
    fid = rep["fidelity"]
    assert rc == EXIT_FIDELITY and not fid["passed"] and not fid["measurable"]
    assert fid["top1_agreement"] == 1.0 and "predicts class" in fid["reason"]
    assert "fidelity not measurable" in capsys.readouterr().err


class ConstantNet(nn.Module):
    """A collapsed classifier: a real conv whose features are multiplied by zero, plus a fixed bias."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.linspace(0, 1, num_classes))

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
