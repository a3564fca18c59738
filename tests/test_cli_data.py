"""--data / --calib fill every data slot (validation, calibration, fine-tuning) without ever
calibrating on the scored images; `compress check` / `sweep` take the model flags of `run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compress.cli import build_parser, main
from compress.types import Dataset, Sample
from compress.wiring import apply_data_flags, probe, separate

ROOT = Path(__file__).parents[1]
VAL = ROOT / "calibration/digits-det/val"
FAST = ["--set", "fidelity.samples=12", "--set", "benchmark.runs=3", "--set", "benchmark.warmup=1",
        "--set", "fidelity.overlays=0", "--quiet"]
RAW = {"name": "x", "model": {"builtin": "digitdet"},
       "data": {"calibration": {"builtin": "digits-det", "split": "calib", "samples": 64},
                "validation": {"builtin": "digits-det", "split": "val"}},
       "passes": [{"type": "prune.structured", "ratio": 0.5,
                   "finetune": {"steps": 2, "data": {"builtin": "digits-det", "split": "train", "samples": 32}}},
                  {"type": "finetune", "steps": 1}]}


def _copy_images(dst: Path, n: int, start: int = 0, labels: bool = True) -> list[Path]:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    if labels:
        (dst / "labels").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        src = VAL / "images" / f"val_{i:05d}.jpg"
        out.append(Path(shutil.copy(src, dst / "images" / src.name)))
        if labels:
            shutil.copy(VAL / "labels" / f"val_{i:05d}.txt", dst / "labels" / f"val_{i:05d}.txt")
    return out


def test_yolo_split_folders_fill_every_slot(tmp_path):
    root = tmp_path / "ds"
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    for split, start in (("train", 0), ("val", 10)):
        for i in range(start, start + 4):
            shutil.copy(VAL / "images" / f"val_{i:05d}.jpg", root / "images" / split)
    found = probe(root)
    assert found["val"] == {"path": str(root), "split": "val"}
    assert found["calib"] == {"path": str(root), "split": "calib"}  # the loader's calib -> train alias
    assert found["train"] == {"path": str(root), "split": "train"}
    raw, said = apply_data_flags(RAW, str(root), None)
    assert raw["data"]["validation"] == {"path": str(root), "split": "val"}
    assert raw["data"]["calibration"] == {"path": str(root), "split": "calib", "samples": 64}  # samples kept
    assert raw["passes"][0]["finetune"]["data"] == {"path": str(root), "split": "train", "samples": 32}
    assert raw["passes"][1]["data"] == {"path": str(root), "split": "train"}
    assert RAW["passes"][0]["finetune"]["data"]["builtin"] == "digits-det"  # the input is not modified
    assert any(s.startswith("finetune:") for s in said)
    # the report's data table names the fine-tuning split of every pass that fine-tunes
    from compress.passes import get_pass
    from compress.recipe import validate
    from compress.wiring import finetune_data

    recipe = validate(raw)
    table = finetune_data(recipe, [get_pass(c.type)(c) for c in recipe.passes],
                          {"prune.structured": {"rounds": [{"round": 1, "finetune": {"images": 4}}]}})
    assert table["finetune (prune.structured)"]["root"] == str(root)
    row = table["finetune (prune.structured)"]
    assert row["split"] == "train" and row["images"] == 4
    assert table["finetune (finetune)"]["split"] == "train"


def test_plain_split_subfolders_and_single_folder(tmp_path):
    root = tmp_path / "plain"
    for sub in ("train", "valid"):
        (root / sub).mkdir(parents=True)
        shutil.copy(VAL / "images" / "val_00000.jpg", root / sub / "a.jpg")
    found = probe(root)
    assert found["val"] == {"path": str(root / "valid")}
    assert found["calib"] == {"path": str(root / "train")} and found["train"] == {"path": str(root / "train")}

    one = tmp_path / "one"
    _copy_images(one, 6, labels=False)
    found = probe(one)
    assert found["calib"] is None and found["train"] is None
    raw, _ = apply_data_flags(RAW, str(one), None)
    assert raw["data"]["calibration"]["path"] == str(one)  # same images: the runner splits them
    assert "data" not in raw["passes"][0]["finetune"]  # fine-tunes on the (split-off) calibration set
    raw, _ = apply_data_flags(RAW, str(one), str(tmp_path / "cal"))
    assert raw["data"]["calibration"]["path"] == str(tmp_path / "cal")
    assert raw["passes"][0]["finetune"]["data"]["path"] == str(tmp_path / "cal")


def _ds(paths):
    return Dataset([Sample(str(p), np.zeros((4, 4, 3), np.uint8)) for p in paths], [])


def test_separate_never_shares_an_image(tmp_path):
    files = [str(tmp_path / f"{c}.jpg") for c in "fedcba"]
    val, cal = _ds(files), _ds(files)
    cal2, note = separate(cal, val)
    vp, cp = {s.path for s in val.samples}, {s.path for s in cal2.samples}
    assert not vp & cp and len(vp) == 3 and len(cp) == 3 and "deterministically" in note
    assert sorted(vp) == [files[i] for i in (5, 3, 1)]  # even positions of the sorted paths
    again_val, again_cal = _ds(files[::-1]), _ds(files)
    assert {s.path for s in separate(again_cal, again_val)[0].samples} == cp  # order-independent

    val, cal = _ds(files[:2]), _ds(files)
    cal2, note = separate(cal, val)
    assert [s.path for s in cal2.samples] == files[2:] and "left out 2" in note and len(val) == 2
    assert separate(_ds(files[:2]), _ds(files[2:]))[1] is None


def test_run_with_one_folder_splits_it_and_reports_every_slot(tmp_path, capsys):
    data = tmp_path / "mine"
    _copy_images(data, 16)
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "recipes/digitdet-int8.yaml"), "--data", str(data), "--out", str(out),
                 "--set", "quantize.samples=8", "--set", "fidelity.min_agreement_map50=0.5", *FAST])
    assert code in (0, 3), capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["validation"]["images"] == 8 and rep["data"]["calibration"]["images"] == 8
    assert all("deterministic" in rep["data"][k]["split"] for k in ("validation", "calibration"))
    assert any("split deterministically" in n for n in rep["notes"])
    assert rep["passes"]["quantize.ptq"]["calibration"]  # calibrated on the other half
    md = (out / "report.md").read_text()
    assert "| set | images | labelled | skipped | source | split |" in md
    assert "| calibration | 8 |" in md and "half of one image set" in md


def test_check_help_and_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check", "--help"])
    text = capsys.readouterr().out
    assert "checkpoint to compress" not in text
    for flag in ("--reference", "--task", "--names", "--imgsz", "--min-matched-recall", "--min-top1-agreement",
                 "--max-score-drift", "--arch", "--adapter", "--trust-checkpoint"):
        assert flag in text
    usage = text.split("\n\n")[0]
    assert "--reference PATH" in usage and "[--reference" not in usage  # shown as required
    assert main(["check", "m.onnx", "--data", "d"]) == 2
    assert "--reference" in capsys.readouterr().err


ARCH = '''
import torch
from torch import nn


class ColourNet(nn.Module):
    """Logits = 10 x the mean of each colour channel: a non-degenerate 3-class classifier."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.mix = nn.Conv2d(3, num_classes, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.mix(x)).flatten(1)


def colournet(num_classes=3):
    return ColourNet(num_classes)
'''


def test_check_generic_state_dict_with_model_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "colourarch.py").write_text(ARCH)
    import importlib

    mod = importlib.import_module("colourarch")
    net = mod.colournet().eval()
    with torch.no_grad():
        net.mix.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * 10)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["logits"], dynamic_axes={"images": {0: "b"}})
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(9):
        im = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        im[..., i % 3] = 220
        Image.fromarray(im).save(imgs / f"{i}.png")
    base = ["check", str(tmp_path / "m.onnx"), "--reference", str(tmp_path / "sd.pt"), "--data", str(imgs),
            "--arch", "colourarch:colournet", "--quiet"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--task" in err and "--names" in err and "--imgsz" in err
    code = main([*base, "--task", "classify", "--names", "r,g,b", "--imgsz", "32", "--min-top1-agreement", "0.99",
                 "--max-kl", "0.01"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert main([*base, "--task", "classify", "--names", "3", "--imgsz", "32", "--min-top1-agreement", "2"]) == 2
    assert "--min-top1-agreement" in capsys.readouterr().err


def test_sweep_takes_model_and_data_flags_and_fails_loudly(tmp_path, capsys, monkeypatch):
    import compress.sweep as sweep_mod

    seen = []

    def fake(recipe, out_dir, *, force, quiet, trust_checkpoint=False):
        seen.append((recipe, trust_checkpoint))
        from compress.errors import DataError

        raise DataError("no such data")

    monkeypatch.setattr(sweep_mod, "_default_runner", fake)
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(RAW))
    data = tmp_path / "d"
    _copy_images(data, 2, labels=False)
    out = tmp_path / "sw"
    code = main(["sweep", str(r), "--set", "prune.ratio=0.3,0.5", "--out", str(out), "--model", "lenet5",
                 "--data", str(data), "--trust-checkpoint", "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "no point succeeded" in err and "no such data" in err
    assert len(seen) == 2 and all(t for _, t in seen)
    rec = seen[0][0]
    assert rec.model.builtin == "lenet5" and rec.data.validation.path == str(data)
    assert not list(out.glob("*.png"))  # no empty plots
    assert (out / "sweep.csv").is_file()


def test_model_flag_keeps_the_recipes_architecture_for_a_checkpoint():
    from compress.api import model_flags

    base = {"checkpoint": "a.pt", "arch": "pkg:fn", "adapter": "generic", "task": "detect", "imgsz": 64}
    spec = model_flags(base, model="b.pt")
    assert spec == {"checkpoint": "b.pt", "arch": "pkg:fn", "adapter": "generic", "task": "detect", "imgsz": 64}
    spec = model_flags(base, model="digitdet")  # a built-in has its own architecture
    assert spec == {"builtin": "digitdet", "task": "detect", "imgsz": 64}
    assert model_flags({"builtin": "digitdet"}, model="c.pt", arch="x:y") == {"checkpoint": "c.pt", "arch": "x:y"}
