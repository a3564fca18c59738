"""What a run writes for an Ultralytics model loads in Ultralytics itself, offline.

One run of the shipped ``yolov8n-digits`` (structured L2 pruning, then int8) writes
original.onnx, model_fp32.onnx (when the run keeps it), model.onnx (int8) and
model.ultralytics.pt; each is loaded with ``ultralytics.YOLO`` and ``predict`` / ``val``
run on a tiny YOLO-format copy of the digits-det val split. The checkpoint also
``export``s and ``train``s (the pruned one with ``KeepArchitectureTrainer``; an unpruned
one with the plain call).
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.yolo, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

from compress import api  # noqa: E402
from compress.export import parse_imgsz, parse_names, read_metadata  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.recipe import ModelSpec, validate  # noqa: E402

IMGSZ = 128  # yolov8n-digits' input size, fixed in its ONNX files
N_VAL = 16
NAMES = {i: str(i) for i in range(10)}
ULTRA = dict(plots=False, workers=0, verbose=False, exist_ok=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """digits-det val split as a YOLO folder with data.yaml; the samples (RGB) too."""
    from compress.data import builtin_dataset
    from compress.data.yolo import write_yolo

    ds = builtin_dataset("digits-det", "val", N_VAL)
    root = write_yolo(ds.samples, tmp_path_factory.mktemp("yolo") / "digits", ds.class_names)
    return root / "data.yaml", ds.samples


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    recipe = validate({
        "name": "interop", "model": {"builtin": "yolov8n-digits", "adapter": "ultralytics"},
        "data": {"calibration": {"builtin": "digits-det", "split": "calib", "samples": 8},
                 "validation": {"builtin": "digits-det", "split": "val", "samples": 8}},
        "passes": [{"type": "prune.structured", "criterion": "l2", "ratio": 0.2, "round_to": 8},
                   {"type": "quantize.ptq", "backend": "onnxruntime"}],
        "fidelity": {"min_agreement_map50": None, "min_matched_recall": None, "overlays": 0},
        "benchmark": {"threads": 1, "warmup": 0, "runs": 1}}, "interop")
    out = tmp_path_factory.mktemp("run") / "run"
    report = api.run(recipe, out, quiet=True)
    return out, report


@pytest.fixture(scope="module")
def val_map50(run, data, tmp_path_factory):
    """Ultralytics' val mAP50 of every file the run wrote (computed once)."""
    from ultralytics import YOLO

    out, _ = run
    project = tmp_path_factory.mktemp("val")
    files = sorted(p.name for p in out.glob("*.onnx")) + ["model.ultralytics.pt"]
    res = {}
    for name in files:
        m = YOLO(str(out / name), task="detect")
        res[name] = m.val(data=str(data[0]), imgsz=IMGSZ, batch=1, project=str(project), name=name, **ULTRA).box.map50
    return res


def test_run_writes_ultralytics_files(run):
    out, report = run
    assert {"original.onnx", "model.onnx"} <= {p.name for p in out.glob("*.onnx")}
    assert report["files"]["ultralytics"] == "model.ultralytics.pt" and (out / "model.ultralytics.pt").is_file()
    assert any("KeepArchitectureTrainer" in n for n in report["notes"])  # pruned: says how to train it


@pytest.mark.parametrize("name", ["original.onnx", "model.onnx", "model_fp32.onnx"])
def test_onnx_metadata_is_ultralytics_format(run, name):
    out, report = run
    if not (out / name).is_file():
        pytest.skip(f"this run does not keep {name}")
    meta = read_metadata(out / name)
    assert ast.literal_eval(meta["names"]) == NAMES and parse_names(meta["names"]) == list(NAMES.values())
    assert ast.literal_eval(meta["imgsz"]) == [IMGSZ, IMGSZ] == parse_imgsz(meta["imgsz"])
    assert int(meta["stride"]) == 32 and int(meta["batch"]) == 1 and int(meta["channels"]) == 3
    assert meta["task"] == "detect" and ast.literal_eval(meta["end2end"]) is False
    args = ast.literal_eval(meta["args"])
    assert args["opset"] >= 17 and args["nms"] is False and args["dynamic"] is False and args["batch"] == 1
    assert args["quantize"] == (8 if name == "model.onnx" else None)  # the run's model.onnx is int8
    assert meta["author"] and meta["date"][:4].isdigit() and meta["license"] and meta["docs"] and meta["description"]
    import ultralytics

    assert meta["version"] == ultralytics.__version__
    assert meta["adapter"] == "ultralytics" and meta["compress_version"] and meta["preprocess"].startswith("letterbox")
    assert meta["recipe_hash"] == report["recipe"]["digest"]


@pytest.mark.parametrize("layout,e2e", [("ultralytics", False), ("end2end", True), ("torchvision", True)])
def test_every_adapter_writes_ultralytics_keys(layout, e2e):
    from compress.models.generic import GenericAdapter

    meta = GenericAdapter(["cat", "dog"], 64, task="detect", arch="m:f", output_layout=layout).metadata()
    assert ast.literal_eval(meta["names"]) == {0: "cat", 1: "dog"} and ast.literal_eval(meta["imgsz"]) == [64, 64]
    assert ast.literal_eval(meta["end2end"]) is e2e  # Ultralytics skips its own NMS for (B, N, 6) outputs
    assert meta["adapter"] == "generic" and meta["task"] == "detect" and int(meta["stride"]) == 32


def test_old_comma_joined_names_still_read():
    assert parse_names("a,b,c") == ["a", "b", "c"] and parse_imgsz("64") == [64, 64]
    assert parse_names("{1: 'b', 0: 'a'}") == ["a", "b"]


@pytest.mark.parametrize("name", ["original.onnx", "model.onnx", "model.ultralytics.pt"])
def test_ultralytics_predicts(run, data, name):
    from ultralytics import YOLO

    out, _ = run
    m = YOLO(str(out / name), task="detect")
    bgr = np.ascontiguousarray(data[1][0].image[..., ::-1])
    r = m.predict(bgr, imgsz=IMGSZ, verbose=False)[0]
    assert r.names == NAMES  # read back from the metadata / the checkpoint
    if name == "original.onnx":  # the shipped model detects the digits of this image
        assert len(r.boxes) > 0 and set(r.boxes.cls.int().tolist()) <= set(int(c) for c in data[1][0].classes)


def test_ultralytics_val_of_every_file(run, val_map50):
    out, report = run
    maps = val_map50
    assert maps["original.onnx"] > 0.6  # the shipped yolov8n-digits (0.85 on the whole split)
    for name, v in maps.items():
        assert 0.0 <= v <= 1.0, name
    assert maps["model.onnx"] > 0.1  # pruned 20% + int8, no recovery: lower, but it detects
    if "model_fp32.onnx" in maps:  # the same pruned weights in three files
        assert abs(maps["model.onnx"] - maps["model_fp32.onnx"]) < 0.15
        assert abs(maps["model.ultralytics.pt"] - maps["model_fp32.onnx"]) < 0.05


def test_checkpoint_layout_and_safe_load(run):
    from ultralytics.nn.tasks import DetectionModel, torch_safe_load

    out, report = run
    path = out / "model.ultralytics.pt"
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert not [g for g in unsafe if g.startswith("compress")], "the pickle must not need compress"
    ckpt, _ = torch_safe_load(str(path), safe_only=True)  # Ultralytics' allow-list loader
    assert isinstance(ckpt["model"], DetectionModel) and ckpt["ema"] is None and ckpt["optimizer"] is None
    assert ckpt["epoch"] == -1 and ckpt["train_args"]["imgsz"] == IMGSZ and ckpt["version"] and ckpt["date"]
    model = ckpt["model"]
    assert sum(p.numel() for p in model.parameters()) == report["compressed"]["params"]
    assert not any(type(m).__module__.startswith("compress") for m in model.modules())
    assert torch.load(out / "model.pt", weights_only=True)["adapter"] == "ultralytics"  # ours stays weights_only


def test_checkpoint_exports_like_the_run(run, tmp_path):
    import onnxruntime as ort
    from ultralytics import YOLO

    out, _ = run
    src = tmp_path / "m.pt"
    src.write_bytes((out / "model.ultralytics.pt").read_bytes())
    exported = YOLO(str(src)).export(format="onnx", imgsz=IMGSZ, simplify=False)
    ref = out / "model_fp32.onnx" if (out / "model_fp32.onnx").is_file() else None
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    got = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert got.shape == (1, 14, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)
    if ref is not None:  # same pruned network (fp16-stored weights): same boxes and scores
        want = ort.InferenceSession(str(ref), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        assert np.abs(got[:, 4:] - want[:, 4:]).max() < 0.02 and np.abs(got[:, :4] - want[:, :4]).max() < 1.0


def _train(path, data_yaml, project, **kw):
    from ultralytics import YOLO

    m = YOLO(str(path))
    m.train(data=str(data_yaml), epochs=1, imgsz=64, batch=16, amp=False, val=False, project=str(project),
            name="t", **ULTRA, **kw)
    best = m.trainer.best if m.trainer.best.exists() else m.trainer.last
    return YOLO(str(best)).model


def test_pruned_checkpoint_trains_keeping_its_widths(run, data, tmp_path):
    from compress.models.ultralytics_io import KeepArchitectureTrainer

    out, report = run
    trained = _train(out / "model.ultralytics.pt", data[0], tmp_path, trainer=KeepArchitectureTrainer)
    assert sum(p.numel() for p in trained.parameters()) == report["compressed"]["params"]


def test_unpruned_checkpoint_trains_with_the_plain_call(data, tmp_path):
    from compress.models.ultralytics_io import is_pruned, save_ultralytics_checkpoint

    adapter, model = load_model(ModelSpec(builtin="yolov8n-digits", adapter="ultralytics"))
    adapter.rewrite_for_pruning(model)  # split-free blocks go back to C2f in the checkpoint
    path = tmp_path / "m.pt"
    assert save_ultralytics_checkpoint(adapter, model, path) == []  # no notes: plain Ultralytics classes, unpruned
    ckpt = torch.load(path, weights_only=False)
    assert not is_pruned(ckpt["model"])
    before = {k: v.float() for k, v in ckpt["model"].state_dict().items()}
    trained = _train(path, data[0], tmp_path)  # rebuilt from the yaml: every tensor transfers
    after = trained.state_dict()
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert sum(p.numel() for p in trained.parameters()) == sum(p.numel() for p in model.parameters())


def _pruned_c2f(first: int, second: int, shortcut: bool = True, g: int = 1):
    """A split-free C2f(8, 16, n=2) whose halves were pruned to ``first`` / ``second`` channels (of 8)."""
    import torch_pruning as tp
    from ultralytics.nn.modules.block import C2f

    from compress.models.ultralytics_blocks import SplitFreeC2f

    torch.manual_seed(0)
    block = C2f(8, 16, n=2, shortcut=shortcut, g=g).eval()
    for m in block.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    sf = SplitFreeC2f(block).eval()
    drop_a, drop_b = list(range(first, 8)), list(range(second, 8))
    tp.prune_conv_out_channels(sf.cv1a.conv, drop_a)
    tp.prune_batchnorm_out_channels(sf.cv1a.bn, drop_a)
    tp.prune_conv_out_channels(sf.cv1b.conv, drop_b)
    tp.prune_batchnorm_out_channels(sf.cv1b.bn, drop_b)
    tp.prune_conv_in_channels(sf.m[0].cv1.conv, drop_b)
    cv2_drop = drop_a + [8 + i for i in drop_b]  # the final conv's input: cat(a, b, m0, m1)
    if shortcut:  # the residual couples b with every bottleneck's output
        for k, m in enumerate(sf.m):
            tp.prune_conv_out_channels(m.cv2.conv, drop_b)
            tp.prune_batchnorm_out_channels(m.cv2.bn, drop_b)
            if k:
                tp.prune_conv_in_channels(m.cv1.conv, drop_b)
            cv2_drop += [16 + 8 * k + i for i in drop_b]
    tp.prune_conv_in_channels(sf.cv2.conv, cv2_drop)
    return sf


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("first,second", [(4, 4), (2, 6), (6, 2)])
def test_split_free_block_goes_back_to_c2f(first, second, shortcut):
    from ultralytics.nn.modules.block import C2f

    from compress.models.ultralytics_io import _unsplit

    sf = _pruned_c2f(first, second, shortcut)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        want = sf(x)
        new = _unsplit(sf)
        c = max(first, second)  # the narrower half is padded with exactly-zero channels
        assert type(new) is C2f and new.c == c and new.cv1.conv.out_channels == 2 * c
        torch.testing.assert_close(new.eval()(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new.forward_split(x), want, atol=1e-5, rtol=1e-5)


def test_split_free_block_that_cannot_be_padded_is_kept():
    from compress.models.ultralytics_io import _unsplit

    assert _unsplit(_pruned_c2f(4, 4, g=2)) is not None  # equal halves: no padding needed
    assert _unsplit(_pruned_c2f(6, 2, g=2)) is None  # grouped bottleneck convs: stays split-free


def test_digitdet_onnx_validates_in_ultralytics(data, tmp_path):
    """Not only Ultralytics models: any detector exported here with the (B, 4 + nc, N) layout loads."""
    from ultralytics import YOLO

    from compress.export import export_onnx

    adapter, model = load_model(ModelSpec(builtin="digitdet"))
    path = export_onnx(model, adapter, tmp_path / "digitdet.onnx")
    assert read_metadata(path)["adapter"] == "digitdet"
    m = YOLO(str(path), task="detect")
    bgr = np.ascontiguousarray(data[1][0].image[..., ::-1])
    assert m.predict(bgr, imgsz=adapter.imgsz, verbose=False)[0].names == NAMES
    res = m.val(data=str(data[0]), imgsz=adapter.imgsz, batch=1, project=str(tmp_path), name="v", **ULTRA)
    assert res.box.map50 > 0.6  # digitdet: 0.93 on the whole split (README)
