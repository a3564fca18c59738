"""Bad input: one line on stderr naming the problem, a non-zero exit, nothing half-written."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.cli import main

ROOT = Path(__file__).parents[1]
RECIPE = str(ROOT / "recipes" / "digitdet-export.yaml")


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(err: str, needle: str):
    lines = [l for l in err.splitlines() if not l.startswith("compress: warning:")]
    assert len(lines) == 1, err
    assert needle in lines[0], err
    assert "Traceback" not in err


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_missing_recipe(capsys, tmp_path):
    code, err = run_cli(capsys, "run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "nope.yaml: recipe not found")


def test_missing_checkpoint(capsys, tmp_path):
    code, err = run_cli(capsys, "run", RECIPE, "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "missing.pt: checkpoint not found")
    assert not (tmp_path / "o").exists()


def test_unreadable_checkpoint(capsys, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    code, err = run_cli(capsys, "run", RECIPE, "--model", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "garbage.pt: not a readable checkpoint")


def test_untrusted_pickle_is_refused(capsys, tmp_path):
    p = tmp_path / "full.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), p)  # a full module: needs unpickling code
    code, err = run_cli(capsys, "run", RECIPE, "--model", str(p), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "refusing to unpickle")
    assert "--trust-checkpoint" in err


def test_unknown_pass_type(capsys, tmp_path):
    r = write(tmp_path, "r.yaml", "name: x\nmodel: {builtin: digitdet}\npasses:\n  - type: prune.bogus\n")
    code, err = run_cli(capsys, "run", r, "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "r.yaml: passes[0].type: unknown pass type 'prune.bogus'")


def test_wrong_field_type(capsys, tmp_path):
    r = write(tmp_path, "r.yaml", "name: x\nmodel: {builtin: digitdet}\nfidelity: {min_agreement_map50: high}\n")
    code, err = run_cli(capsys, "run", r, "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "r.yaml: fidelity.min_agreement_map50: Input should be a valid number")


def test_value_out_of_range(capsys, tmp_path):
    code, err = run_cli(capsys, "run", RECIPE, "--set", "fidelity.conf=1.5", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "fidelity.conf: Input should be less than 1 (got 1.5)")


def test_empty_data_folder(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, "run", RECIPE, "--data", str(empty), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "empty")
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, "run", RECIPE, "--out", str(out))
    assert code == 2
    assert_one_line(err, "exists; use --force")
    assert (out / "keep.txt").read_text() == "mine"


def test_check_requires_existing_onnx(capsys, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    code, err = run_cli(capsys, "check", str(tmp_path / "m.onnx"), "--reference", "digitdet", "--data", str(d))
    assert code == 2
    assert_one_line(err, "m.onnx: ONNX file not found")


def test_subprocess_no_traceback_unless_debug(tmp_path):
    cmd = [sys.executable, "-m", "compress", "run", str(tmp_path / "nope.yaml")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"compress: {tmp_path / 'nope.yaml'}: recipe not found"
    p = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr
