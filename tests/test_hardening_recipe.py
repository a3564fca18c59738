"""Hostile recipes and flags (issue 8): one stderr line and exit 2, fast, nothing written.

Alias bombs, duplicate keys, non-UTF-8 / UTF-16 / binary files, deep nesting, output
names that escape ``runs/``, counts beyond their bounds, ``check --samples 0`` and an
output folder on a read-only or full disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress import recipe as R
from compress import yamlio
from compress.cli import main
from compress.errors import RecipeError

ROOT = Path(__file__).parents[1]
EXPORT = ROOT / "recipes" / "digitdet-export.yaml"
PRUNE_INT8 = ROOT / "recipes" / "digitdet-prune50-int8.yaml"  # prune.structured + finetune + quantize.ptq
QAT = ROOT / "recipes" / "digitdet-qat.yaml"  # quantize.qat with steps


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, needle: str = "") -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert needle in lines[0], err
    return lines[0]


def bad(capsys, *argv, needle: str = "") -> str:
    code, _, err = cli(capsys, *argv)
    assert code == 2, err
    return one_line(err, needle)


def alias_bomb(levels: int = 9) -> str:
    """The classic "billion laughs": 9 levels of 9 aliases expand to 9**9 strings."""
    lines = ["name: bomb", "model: {builtin: digitdet}", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    lines += [f"fidelity: {{samples: *a{levels}}}"]
    return "\n".join(lines) + "\n"


# -- YAML ------------------------------------------------------------------------------------

def test_alias_bomb_is_rejected_fast(capsys, tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(alias_bomb())
    assert len(p.read_text().splitlines()) <= 15
    t = time.perf_counter()
    line = bad(capsys, "validate", p, needle="bomb.yaml: line 3: YAML anchor &a0 is not supported")
    assert time.perf_counter() - t < 5
    assert len(line) < 300


def test_alias_without_anchor_is_refused_too():
    with pytest.raises(RecipeError, match=r"line 2: YAML alias \*x is not supported"):
        yamlio.loads("a: 1\nb: *x\n", "r.yaml", RecipeError)


@pytest.mark.parametrize("text, needle", [
    ("name: a\nmodel: {builtin: digitdet}\nfidelity: {min_agreement_map50: 0.9}\nfidelity: {min_agreement_map50: 0}\n",
     "line 4: duplicate key 'fidelity' (first at line 3)"),
    ("name: a\nmodel: {builtin: digitdet, builtin: lenet5}\n", "line 2: duplicate key 'builtin' (first at line 2)"),
    ("name: a\nname: b\nmodel: {builtin: digitdet}\n", "line 2: duplicate key 'name' (first at line 1)"),
])
def test_duplicate_keys_are_refused(capsys, tmp_path, text, needle):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    bad(capsys, "validate", p, needle=f"dup.yaml: {needle}")


@pytest.mark.parametrize("data, needle", [
    (EXPORT.read_bytes() + "# caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset"),
    (EXPORT.read_text().encode("utf-16"), "UTF-16/32 text; save it as UTF-8"),
    (EXPORT.read_text().encode("utf-16-le"), "a binary file, not YAML text"),  # no BOM: NUL bytes
    (bytes(range(256)) * 8, "a binary file"),
    (b"\x1fname: x\n", "character #x001f at offset 0 is not allowed"),
    (b"\x89PNG\r\n\x1a\n" + b"\xff" * 64, "not UTF-8 text"),
])
def test_non_utf8_text_is_refused(capsys, tmp_path, data, needle):
    p = tmp_path / "enc.yaml"
    p.write_bytes(data)
    bad(capsys, "validate", p, needle=needle)


def test_utf8_with_bom_is_fine(capsys, tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + EXPORT.read_bytes())
    code, out, _ = cli(capsys, "validate", p)
    assert code == 0 and out.startswith("ok: digitdet-export")


@pytest.mark.parametrize("body", [
    "fidelity: " + "[" * 1000 + "]" * 1000,  # flow style
    "".join(" " * i + f"k{i}:\n" for i in range(1000)),  # block style
])
def test_nesting_1000_deep_is_refused(capsys, tmp_path, body):
    p = tmp_path / "deep.yaml"
    p.write_text("name: x\nmodel: {builtin: digitdet}\n" + body + "\n")
    bad(capsys, "validate", p, needle=f"nested more than {yamlio.MAX_DEPTH} levels deep")


def test_too_large_file_is_refused(capsys, tmp_path):
    p = tmp_path / "big.yaml"
    p.write_bytes(EXPORT.read_bytes() + b"#" * (yamlio.MAX_BYTES + 1))
    bad(capsys, "validate", p, needle="larger than 4 MiB")


@pytest.mark.parametrize("extra", [
    "x" * 100_000 + ": 1\n",  # a huge unknown key
    "seed: '" + "9" * 100_000 + "'\n",  # a huge wrong value
    "seed: " + "9" * 10_000 + "\n",  # an integer Python refuses to parse
    "passes: [{type: '" + "p" * 100_000 + "'}]\n",  # a huge pass type
])
def test_messages_quote_at_most_a_few_hundred_characters(capsys, tmp_path, extra):
    p = tmp_path / "huge.yaml"
    p.write_text(EXPORT.read_text().replace("passes: []\n", "") + extra)
    line = bad(capsys, "validate", p)
    assert len(line) < 600, line[:700]


def test_pydantic_got_repr_is_clipped():
    with pytest.raises(RecipeError) as e:
        R.validate({"name": "a", "model": {"builtin": "digitdet"}, "benchmark": {"runs": "r" * 50_000}}, "r.yaml")
    msg = str(e.value)
    assert "benchmark.runs" in msg and "(50002 chars)" in msg and len(msg) < 400


# -- the output name -------------------------------------------------------------------------

@pytest.mark.parametrize("name, needle", [
    ("../../x", "must not contain a path separator"),
    ("''", "must not be empty"),
    ("/abs", "must not contain a path separator"),
    ("/tmp/evil", "must not contain a path separator"),
    ("a\\\\b", "must not contain a path separator"),
    ("..", "must not contain '..'"),
    ("a..b", "must not contain '..'"),
    (".", "use 1-100 letters"),
    (".hidden", "use 1-100 letters"),
    ("-rf", "use 1-100 letters"),
    ("a b", "use 1-100 letters"),
    ('"a\\tb"', "use 1-100 letters"),
    ("x" * 101, "use 1-100 letters"),
    ("123", "Input should be a valid string"),
])
def test_name_attacks_are_refused(capsys, name, needle):
    bad(capsys, "validate", EXPORT, "--set", f"name={name}", needle=f"digitdet-export.yaml: name: {needle}")


def test_run_with_escaping_name_touches_nothing(capsys, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep")
    monkeypatch.chdir(work)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    bad(capsys, "run", EXPORT, "--set", "name=../../../x", "--force", needle="name: must not contain")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "x" / "precious.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["digitdet-prune50-int8", "a", "run.v2_final+int8", "prune.ratio=0.5,steps=1", "X" * 100])
def test_ordinary_names_are_accepted(name):
    assert R.validate({"name": name, "model": {"builtin": "digitdet"}}).name == name


# -- bounds ----------------------------------------------------------------------------------

# (recipe, field to --set, largest accepted value, first refused value, where the error points)
BOUNDS = [
    (EXPORT, "benchmark.runs", 100_000, 100_001, "benchmark.runs"),
    (EXPORT, "benchmark.warmup", 10_000, 10_001, "benchmark.warmup"),
    (EXPORT, "benchmark.threads", 256, 257, "benchmark.threads"),
    (EXPORT, "seed", 2**32 - 1, 2**32, "seed"),
    (EXPORT, "fidelity.samples", 1_000_000, 1_000_001, "fidelity.samples"),
    (EXPORT, "fidelity.overlays", 100, 101, "fidelity.overlays"),
    (EXPORT, "data.validation.samples", 1_000_000, 1_000_001, "data.validation.samples"),
    (EXPORT, "model.imgsz", 8192, 8193, "model.imgsz"),
    (PRUNE_INT8, "prune.steps", 100, 101, "passes[0].steps"),
    (PRUNE_INT8, "prune.calib_samples", 100_000, 100_001, "passes[0].calib_samples"),
    (PRUNE_INT8, "prune.n_init", 100, 101, "passes[0].n_init"),
    (PRUNE_INT8, "prune.round_to", 1024, 1025, "passes[0].round_to"),
    (PRUNE_INT8, "prune.finetune.epochs", 1000, 1001, "passes[0].finetune.epochs"),
    (PRUNE_INT8, "prune.finetune.batch_size", 4096, 4097, "passes[0].finetune.batch_size"),
    (PRUNE_INT8, "prune.finetune.samples", 1_000_000, 1_000_001, "passes[0].finetune.samples"),
    (PRUNE_INT8, "prune.finetune.eval_batches", 10_000, 10_001, "passes[0].finetune.eval_batches"),
    (PRUNE_INT8, "prune.finetune.base_lr", 10, 10.5, "passes[0].finetune.base_lr"),
    (PRUNE_INT8, "prune.finetune.lr_scale", 100, 101, "passes[0].finetune.lr_scale"),
    (PRUNE_INT8, "prune.finetune.weight_decay", 10, 11, "passes[0].finetune.weight_decay"),
    (PRUNE_INT8, "prune.finetune.grad_clip", 1e6, 2e6, "passes[0].finetune.grad_clip"),
    (PRUNE_INT8, "prune.finetune.data.samples", 1_000_000, 1_000_001, "passes[0].finetune.data.samples"),
    (PRUNE_INT8, "quantize.samples", 100_000, 100_001, "passes[1].samples"),
    (PRUNE_INT8, "quantize.diagnose", 1000, 1001, "passes[1].diagnose"),
    (QAT, "quantize.steps", 1_000_000, 1_000_001, "passes[0].steps"),
    (QAT, "quantize.calib_samples", 100_000, 100_001, "passes[0].calib_samples"),
]


@pytest.mark.parametrize("recipe, field, ok, too_big, where", BOUNDS, ids=[f"{b[1]}" for b in BOUNDS])
def test_every_count_has_an_upper_bound(capsys, recipe, field, ok, too_big, where):
    code, out, err = cli(capsys, "validate", recipe, "--set", f"{field}={ok}")
    assert code == 0 and out.startswith("ok: "), err
    line = bad(capsys, "validate", recipe, "--set", f"{field}={too_big}", needle=f"{recipe.name}: {where}: ")
    assert "less than" in line, line


@pytest.mark.parametrize("field, value", [("seed", -1), ("benchmark.runs", 0), ("benchmark.threads", 0),
                                          ("prune.finetune.base_lr", ".inf"), ("prune.finetune.base_lr", ".nan")])
def test_lower_bounds_and_non_finite_values(capsys, field, value):
    bad(capsys, "validate", PRUNE_INT8, "--set", f"{field}={value}", needle=field.split(".")[-1])


def test_list_bounds():
    base = {"name": "a", "model": {"builtin": "digitdet"}}
    with pytest.raises(RecipeError, match=r"passes: at most 100 passes \(got 101\)"):
        R.validate({**base, "passes": [{"type": "finetune"}] * 101})
    with pytest.raises(RecipeError, match="model.class_names: List should have at most 100000 items"):
        R.validate({**base, "model": {"builtin": "digitdet", "class_names": ["c"] * 100_001}})
    assert len(R.validate({**base, "passes": [{"type": "finetune"}] * 100}).passes) == 100


@pytest.mark.parametrize("argv, needle", [
    (["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--samples", "0"], "argument --samples: must be >= 1"),
    (["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--samples", "1000001"], "<= 1000000"),
    (["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--threads", "0"], "argument --threads: must be >= 1"),
    (["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--conf", "1.5"], "--conf"),
    (["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--min-agreement-map50", "-1"],
     "--min-agreement-map50"),
    (["run", str(EXPORT), "--threads", "257"], "argument --threads: must be >= 1 and <= 256 (got 257)"),
    (["run", str(EXPORT), "--threads", "1e9"], "argument --threads: expected an integer"),
    (["profile", "digitdet", "--threads", "1000000000"], "argument --threads"),
    (["profile", "digitdet", "--top", "0"], "argument --top"),
    (["zoo", "train", "lenet5", "--seed", "-1"], "argument --seed: must be >= 0"),
    (["zoo", "train", "lenet5", "--seed", str(2**32)], "argument --seed"),
    (["zoo", "train", "lenet5", "--minutes", "0"], "argument --minutes: must be > 0"),
    (["validate"], "the following arguments are required: recipe"),
])
def test_cli_flag_bounds(capsys, argv, needle):
    bad(capsys, *argv, needle=needle)


def test_cli_flag_bounds_accept_their_limits():
    from compress.cli import build_parser

    p = build_parser()
    a = p.parse_args(["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--samples", "1", "--threads", "256"])
    assert (a.samples, a.threads) == (1, 256)
    assert p.parse_args(["check", "m.onnx", "--reference", "digitdet", "--data", ".", "--samples", "1000000"]).samples
    assert p.parse_args(["zoo", "train", "lenet5", "--seed", str(2**32 - 1)]).seed == 2**32 - 1


# -- overrides that point at the wrong kind of thing -----------------------------------------

@pytest.mark.parametrize("passes, sets, needle", [
    ("oops", ["passes.0.ratio=1"], "'passes' in"),
    ("[1]", ["passes.0.ratio=1"], "the target in"),
    ("[]", ["passes.²=1"], "no pass with that index"),
    ("[]", ["passes." + "9" * 5000 + "=1"], "no pass with that index"),
    ("[]", ["export.opset.x=1"], "'opset' is not a mapping"),
    ("[]", ["passes=[]"], "no pass with that index"),
])
def test_odd_overrides_are_input_errors(capsys, tmp_path, passes, sets, needle):
    p = tmp_path / "r.yaml"
    p.write_text(EXPORT.read_text().replace("passes: []", f"passes: {passes}"))
    line = bad(capsys, "validate", p, *[a for s in sets for a in ("--set", s)], needle=needle)
    assert len(line) < 400


# -- validate --------------------------------------------------------------------------------

def test_validate_prints_name_and_pass_count(capsys):
    code, out, err = cli(capsys, "validate", PRUNE_INT8, "--set", "prune.ratio=0.6")
    assert (code, out, err) == (0, "ok: digitdet-prune50-int8 (2 passes)\n", "")
    bad(capsys, "validate", PRUNE_INT8, "--set", "prune.ratio=1.5", needle="passes[0].ratio: Input should be less than 1")


def test_validate_loads_no_model_and_no_torch():
    code = (f"import sys, time; t = time.perf_counter(); from compress.cli import main; "
            f"rc = main(['validate', {str(PRUNE_INT8)!r}]); dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'sklearn') if m in sys.modules]; "
            "print(rc, heavy, round(dt, 3), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    rc, heavy = p.stderr.split()[0], p.stderr.split("[")[1].split("]")[0]
    assert p.stdout == "ok: digitdet-prune50-int8 (2 passes)\n", p.stderr
    assert rc == "0" and heavy == "", p.stderr


# -- read-only / full disk -------------------------------------------------------------------

@pytest.mark.parametrize("code, text", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device"),
                                        (errno.EACCES, "Permission denied")])
def test_unwritable_output_parent_is_one_line(capsys, tmp_path, monkeypatch, code, text):
    parent = tmp_path / "ro"
    parent.mkdir()
    real_mkdir = os.mkdir

    def refuse(path, *a, **k):
        if str(path).startswith(str(parent)):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", refuse)
    line = bad(capsys, "run", EXPORT, "--set", "fidelity.samples=8", "--out", str(parent / "sub" / "out"),
               needle=os.strerror(code))
    assert line.startswith(f"compress: {parent / 'sub'}")
    assert list(parent.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_output_parent_for_real(capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        bad(capsys, "run", EXPORT, "--set", "fidelity.samples=8", "--out", str(parent / "out"), needle="Permission denied")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_data_yaml_uses_the_same_loader(tmp_path):
    from compress.data.yolo import read_names
    from compress.errors import DataError

    y = tmp_path / "data.yaml"
    y.write_text("names: [a, b]\nnames: [c]\n")
    with pytest.raises(DataError, match="line 2: duplicate key 'names'"):
        read_names(y)
    y.write_text(alias_bomb())
    t = time.perf_counter()
    with pytest.raises(DataError, match="YAML anchor"):
        read_names(y)
    assert time.perf_counter() - t < 5


def _sysfs_refuses_mkdir() -> bool:
    probe = Path("/sys/compress-write-probe")
    try:
        probe.mkdir()
    except OSError as e:
        return e.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
    probe.rmdir()
    return False


@pytest.mark.skipif(not Path("/sys").is_dir() or not _sysfs_refuses_mkdir(), reason="needs a file system that refuses mkdir")
def test_output_on_a_file_system_that_refuses_writes(capsys):
    line = bad(capsys, "run", EXPORT, "--set", "fidelity.samples=8", "--out", "/sys/compress-test/out")
    assert line.startswith("compress: /sys/compress-test: "), line
