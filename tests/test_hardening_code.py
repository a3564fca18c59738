"""No code runs from data: model yamls, checkpoint dicts, pickles and garbage files (issue 8).

Every attack writes a marker file if its payload runs; the marker must never appear.
"""

from __future__ import annotations

import copy
import glob
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from compress.cli import main
from compress.errors import ModelLoadError
from compress.models import load_model
from compress.models.checkpoint import read_checkpoint
from compress.recipe import ModelSpec

ROOT = Path(__file__).parents[1]
ARCH_FILE = str(ROOT / "tests" / "assets" / "generic_arch.py")
NAMES10 = [str(i) for i in range(10)]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("compress: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def touch_payload(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


# -- a malicious pickle / garbage as the checkpoint ------------------------------------------
class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_naming_the_object(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Evil(marker)}, evil)
    code, err = run_cli(capsys, "run", ROOT / "recipes" / "digitdet-export.yaml", "--model", evil,
                        "--out", tmp_path / "out")
    line = one_line(err)
    assert code == 2
    assert re.search(r"refusing to unpickle (posix|nt|os)\.system", line), line
    assert "--trust-checkpoint" in line and "weights_only" not in line, line
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, expected", [
    (b"model: yolov8n\nthis is a text file\n", "a text file"),
    (bytes(range(256)) * 8, "not a readable checkpoint"),
    (None, "not a readable checkpoint"),  # a truncated real checkpoint
    (b"", "an empty file"),
])
def test_text_garbage_or_truncated_checkpoint_is_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"w": torch.arange(1000.0)}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg and "weights_only" not in msg, msg


def test_text_file_as_checkpoint_exits_2(capsys, tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    code, err = run_cli(capsys, "run", ROOT / "recipes" / "digitdet-export.yaml", "--model", path,
                        "--out", tmp_path / "out")
    assert code == 2 and "a text file, not a torch checkpoint" in one_line(err)


# -- generic checkpoints: arch only from the user ---------------------------------------------
def _generic_ckpt(tmp_path, arch: str) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generic_arch_h", ARCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    path = tmp_path / "generic.pt"
    torch.save({"adapter": "generic", "arch": arch, "task": "classify", "class_names": NAMES10, "imgsz": 32,
                "state_dict": mod.tiny_classifier(10).state_dict()}, path)
    return path


def test_generic_checkpoint_arch_is_not_imported_on_its_own_say_so(tmp_path):
    marker = tmp_path / "imported"
    evil = tmp_path / "evil_arch.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef f(num_classes=10): pass\n")
    path = _generic_ckpt(tmp_path, f"{evil}:f")
    with pytest.raises(ModelLoadError, match="pass --arch") as err:
        load_model(ModelSpec(checkpoint=str(path)))
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="pass --arch"):
        load_model(ModelSpec(checkpoint=str(path), adapter="generic"))
    assert not marker.exists()


def test_generic_checkpoint_loads_when_the_user_names_the_arch(tmp_path):
    arch = f"{ARCH_FILE}:tiny_classifier"
    path = _generic_ckpt(tmp_path, arch)
    adapter, model = load_model(ModelSpec(checkpoint=str(path), arch=arch))
    assert adapter.arch == arch and adapter.class_names == NAMES10
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# -- Ultralytics model yamls ------------------------------------------------------------------
ultra = pytest.mark.yolo


def _guard():
    pytest.importorskip("ultralytics")
    from compress.models import yaml_guard

    return yaml_guard


def _v8_dict() -> dict:
    from ultralytics.nn.tasks import yaml_model_load

    return yaml_model_load("yolov8n.yaml")


@ultra
def test_every_detection_yaml_ultralytics_ships_passes_the_guard():
    guard = _guard()
    import ultralytics

    shipped = sorted(glob.glob(str(Path(ultralytics.__file__).parent / "cfg" / "models" / "**" / "*.yaml"),
                               recursive=True))
    assert len(shipped) > 40
    refused = {}
    for f in shipped:
        try:
            guard.read_model_yaml(f)
        except ModelLoadError as e:
            refused[Path(f).name] = str(e)
    # the only refusal: a classifier built from torchvision (TorchVision may download weights)
    assert set(refused) <= {"yolo11-cls-resnet18.yaml"}, refused
    assert all("TorchVision" in m for m in refused.values())
    for name in ("yolov3-tinyu", "yolov5nu", "yolov5n-p6", "yolov6n", "yolov8n", "yolov8n-p2", "yolov8n-p6",
                 "yolov9t", "yolov10n", "yolo11n", "yolo12n", "yolo26n", "yolo26n-p2", "yolo26n-p6"):
        d = guard.read_model_yaml(f"{name}.yaml")  # resolved as Ultralytics resolves shipped names
        assert d["backbone"] and d["head"]


@ultra
@pytest.mark.parametrize("mutate, field", [
    (lambda d, p: d.update(activation=p), "'activation'"),
    (lambda d, p: d.update(activation=f"nn.ReLU({p})"), "'activation'"),
    (lambda d, p: d.update(activation="nn.Module.__subclasses__()"), "'activation'"),
    (lambda d, p: d.update(activation="torch.nn.modules.activation.ReLU()"), "'activation'"),
    (lambda d, p: d.update(activation="nn.LeakyReLU(negative_slope=(lambda: 0)())"), "'activation'"),
    (lambda d, p: d["backbone"][0].__setitem__(2, p), "backbone[0] module"),
    (lambda d, p: d["backbone"][0].__setitem__(2, "DetectionModel"), "backbone[0] module"),
    (lambda d, p: d["head"][0].__setitem__(2, "torchvision.ops.DeformConv2d"), "head[0] module"),
    (lambda d, p: d["head"][0][3].append(p), "head[0] args[3]"),
    (lambda d, p: d["head"][0][3].__setitem__(0, "d"), "head[0] args[0]"),
    (lambda d, p: d["head"][0].__setitem__(3, [[p]]), "head[0] args[0][0]"),
    (lambda d, p: d.update(nc=10 ** 9), "'nc'"),
    (lambda d, p: d["backbone"][2].__setitem__(1, 10 ** 6), "backbone[2] repeats"),
    (lambda d, p: d.update(yaml_file=object()), "'yaml_file'"),
])
def test_guard_refuses_payloads_naming_the_field(tmp_path, mutate, field):
    guard = _guard()
    d = _v8_dict()
    marker = tmp_path / "pwned"
    mutate(d, touch_payload(marker))
    with pytest.raises(ModelLoadError) as err:
        guard.check_model_yaml(d, "evil")
    msg = str(err.value)
    assert msg.startswith(f"evil: model yaml {field}"), msg
    assert "\n" not in msg and len(msg) < 400
    assert not marker.exists()


@ultra
@pytest.mark.parametrize("act", ["nn.SiLU()", "torch.nn.ReLU()", "nn.LeakyReLU(0.1)", "nn.LeakyReLU(-0.1, True)",
                                 "nn.Hardswish(inplace=True)", None])
def test_guard_accepts_plain_activations(act):
    guard = _guard()
    d = _v8_dict()
    d["activation"] = act
    assert guard.check_model_yaml(d) is d


@ultra
def test_evil_yaml_from_a_recipe_does_not_run(capsys, tmp_path):
    marker = tmp_path / "pwned"
    d = {k: v for k, v in _v8_dict().items() if k not in ("scale", "yaml_file")}
    d["activation"] = touch_payload(marker)
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump(d))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "evil", "model": {"builtin": str(evil), "adapter": "ultralytics", "imgsz": 64},
        "data": {"calibration": {"builtin": "digits-det", "split": "calib", "samples": 2},
                 "validation": {"builtin": "digits-det", "split": "val", "samples": 2}},
        "passes": []}))
    code, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    line = one_line(err)
    assert code == 2 and "model yaml 'activation': refused" in line and str(evil) in line, line
    assert not marker.exists() and not (tmp_path / "out").exists()

    # the same file without the payload builds (the guard is not what fails)
    d["activation"] = "nn.SiLU()"
    evil.write_text(yaml.safe_dump(d))
    adapter, model = load_model(ModelSpec(builtin=str(evil), adapter="ultralytics", imgsz=64))
    assert model(torch.zeros(1, 3, 64, 64)).shape[1] == 4 + d["nc"]


@ultra
def test_evil_yaml_inside_a_weights_only_checkpoint_does_not_run(capsys, tmp_path):
    pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    adapter, model = load_model(ModelSpec(builtin="yolov8n.yaml", class_names=["a", "b"], imgsz=64))
    ckpt = adapter.checkpoint(model)
    good = tmp_path / "good.pt"
    torch.save(ckpt, good)
    assert load_model(ModelSpec(checkpoint=str(good)))[0].class_names == ["a", "b"]  # the format loads

    marker = tmp_path / "pwned"
    for i, payload in enumerate((touch_payload(marker), f"nn.SiLU({touch_payload(marker)})")):
        bad = copy.deepcopy(ckpt)
        bad["yaml"]["activation"] = payload
        path = tmp_path / f"evil{i}.pt"
        torch.save(bad, path)
        code, err = run_cli(capsys, "run", ROOT / "recipes" / "digitdet-export.yaml", "--model", path,
                            "--out", tmp_path / f"out{i}")
        line = one_line(err)
        assert code == 2 and f"{path}: model yaml 'activation': refused" in line, line
        assert not (tmp_path / f"out{i}").exists()
    assert not marker.exists()

    bad = copy.deepcopy(ckpt)
    bad["yaml"] = "https://example.com/evil.yaml"  # a path/URL instead of the dict: never fetched
    torch.save(bad, tmp_path / "url.pt")
    with pytest.raises(ModelLoadError, match="must be a mapping"):
        load_model(ModelSpec(checkpoint=str(tmp_path / "url.pt")))


@ultra
def test_model_yaml_urls_are_refused():
    guard = _guard()
    with pytest.raises(ModelLoadError, match="local files only"):
        guard.read_model_yaml("https://example.com/yolov8n.yaml")
