"""`compress data make` / `compress data filter`: complete YOLO folders that compress and Ultralytics both load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from compress.atomic import MARKER
from compress.cli import main
from compress.data.digits_det import DigitsDetGenerator
from compress.data.images import write_image
from compress.data.load import load_path
from compress.data.yolo import label_path, load_yolo, write_yolo
from compress.wiring import probe

N = 4  # images per split


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("make") / "digits"
    assert main(["data", "make", "digits-det", str(out), "--samples", str(N)]) == 0
    return out


def _label_lines(root: Path) -> dict[str, list[list[str]]]:
    return {str(p.relative_to(root)): [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
            for p in sorted(root.rglob("*.txt"))}


def test_make_writes_separate_splits_and_a_complete_data_yaml(made):
    meta = yaml.safe_load((made / "data.yaml").read_text())
    assert meta["path"] == str(made.resolve())
    assert (meta["train"], meta["val"], meta["calib"]) == ("images/train", "images/val", "images/calib")
    assert meta["nc"] == 10 and meta["names"] == [str(i) for i in range(10)]
    for split in ("train", "val", "calib"):
        assert len(list((made / "images" / split).iterdir())) == N
        assert len(list((made / "labels" / split).iterdir())) == N
    assert json.loads((made / MARKER).read_text())["state"] == "complete"
    assert not [p for p in made.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("split", ["val", "calib", "train"])
def test_make_output_loads_back_as_the_builtin_images(made, split):
    ds = load_path(made, split=split)
    assert len(ds) == N and ds.class_names == [str(i) for i in range(10)]
    gen = DigitsDetGenerator(split)
    for i, sample in enumerate(ds.samples):
        assert Path(sample.path).parent == made / "images" / split
        want = gen.sample_at(i)
        np.testing.assert_allclose(sample.boxes, want.boxes, atol=1e-3)
        assert sample.classes.tolist() == want.classes.tolist()
    # also through the data.yaml itself (its path/train/val/calib keys)
    assert [s.path for s in load_yolo(made / "data.yaml", split).samples] == [s.path for s in ds.samples]


def test_data_flag_wiring_scores_val_and_calibrates_on_calib(made):
    found = probe(made)
    assert found["val"]["split"] == "val" and found["calib"]["split"] == "calib" and found["train"]["split"] == "train"
    val = {s.path for s in load_path(made, split=found["val"]["split"]).samples}
    calib = {s.path for s in load_path(made, split=found["calib"]["split"]).samples}
    assert val and calib and not val & calib


def test_make_output_passes_ultralytics_dataset_check(made):
    pytest.importorskip("ultralytics")
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(made / "data.yaml"), autodownload=False)
    assert Path(data["val"]) == (made / "images" / "val").resolve()
    assert Path(data["train"]) == (made / "images" / "train").resolve()
    assert data["nc"] == 10 and data["names"][3] == "3"


def test_make_refuses_existing_out_and_replaces_it_with_force(made, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["data", "make", "digits-det", str(out), "--split", "val", "--samples", "2"]) == 0
    meta = yaml.safe_load((out / "data.yaml").read_text())
    assert meta["val"] == "images/val" and meta["train"] == "images/val" and "calib" not in meta
    assert not (out / "images" / "train").exists()
    capsys.readouterr()
    assert main(["data", "make", "digits-det", str(out), "--split", "calib", "--samples", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert len(list((out / "images" / "val").iterdir())) == 2  # untouched
    assert main(["data", "make", "digits-det", str(out), "--split", "calib", "--samples", "3", "--force"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["calib"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["data", "make", "digits-det", str(foreign), "--split", "val", "--samples", "1", "--force"]) == 2
    assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / "images").exists()


def test_a_moved_data_set_still_loads_in_compress(made, tmp_path):
    first, moved = tmp_path / "first", tmp_path / "moved"
    assert main(["data", "make", "digits-det", str(first), "--split", "val", "--samples", str(N)]) == 0
    first.rename(moved)
    ds = load_yolo(moved, "val")  # data.yaml's absolute path names the old place
    assert len(ds) == N and all(Path(s.path).is_relative_to(moved) for s in ds.samples)
    ds = load_yolo(moved / "data.yaml", "val")
    assert all(Path(s.path).is_relative_to(moved) for s in ds.samples)


# -- filter ------------------------------------------------------------------------------------
def _expected(src: Path, keep: list[int]) -> tuple[dict[str, list[str]], int]:
    """Independently: each source label file's kept lines (re-indexed) and the images left without any."""
    want, empty = {}, 0
    for split in ("train", "val", "calib"):
        for img in sorted((src / "images" / split).iterdir()):
            lines = [ln.split() for ln in label_path(img).read_text().splitlines() if ln.strip()]
            kept = [" ".join([str(keep.index(int(p[0]))), *p[1:]]) for p in lines if int(p[0]) in keep]
            if kept:
                want[f"{split}/{img.stem}"] = kept
            else:
                empty += 1
    return want, empty


def test_filter_keeps_reindexes_and_drops_empty_images(made, tmp_path, capsys):
    out = tmp_path / "f"
    keep = [7, 3]
    capsys.readouterr()
    assert main(["data", "filter", str(made), str(out), "--classes", "7,3"]) == 0
    printed = capsys.readouterr().out
    want, empty = _expected(made, keep)
    got = {f"{p.parent.name}/{p.stem}": p.read_text().splitlines() for p in (out / "labels").rglob("*.txt")}
    assert got == want
    assert sum(int(line.split("dropped ")[1].split()[0]) for line in printed.splitlines() if "dropped" in line) == empty
    assert "7 -> 0" in printed and "3 -> 1" in printed
    images = sorted(f"{p.parent.name}/{p.stem}" for p in (out / "images").rglob("*.jpg"))
    assert images == sorted(want)
    for key in want:  # images are copied byte for byte
        split, stem = key.split("/")
        assert (out / "images" / split / f"{stem}.jpg").read_bytes() == \
            (made / "images" / split / f"{stem}.jpg").read_bytes()
    meta = yaml.safe_load((out / "data.yaml").read_text())
    assert meta["names"] == ["7", "3"] and meta["nc"] == 2 and meta["path"] == str(out.resolve())
    ds = load_path(out, split="val")
    assert ds.class_names == ["7", "3"] and all(len(s.classes) for s in ds.samples)
    assert (out / MARKER).is_file()


def test_filter_output_passes_ultralytics_dataset_check(made, tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics.data.utils import check_det_dataset

    out = tmp_path / "f"
    assert main(["data", "filter", str(made / "data.yaml"), str(out), "--classes", "1,2,0"]) == 0
    meta = yaml.safe_load((out / "data.yaml").read_text())
    data = check_det_dataset(str(out / "data.yaml"), autodownload=False)
    assert data["nc"] == 3 and data["names"] == {0: "1", 1: "2", 2: "0"}
    assert Path(data["val"]) == (out / meta["val"]).resolve() and any((out / meta["val"]).iterdir())
    assert Path(data["train"]) == (out / meta["train"]).resolve()


def test_filter_says_when_a_split_is_left_empty(made, tmp_path, capsys):
    from compress.data.tools import filter_classes

    val_classes = {int(ln.split()[0]) for p in (made / "labels" / "val").iterdir() for ln in p.read_text().splitlines()}
    absent = [c for c in range(10) if c not in val_classes]
    if not absent:
        pytest.skip("every class occurs in the val images")
    res = filter_classes(made, tmp_path / "f", [str(absent[0])])
    assert res["splits"]["val"]["kept"] == 0 and res["splits"]["val"]["dropped"] == N
    meta = yaml.safe_load((tmp_path / "f" / "data.yaml").read_text())
    assert meta["val"] != "images/val" and "calib" not in meta or meta["calib"] == "images/calib"
    assert res["notes"] == [f"no val image holds these classes: data.yaml's val points at {meta['val']}"]


def test_filter_by_name_on_a_flat_folder_without_yaml_names(tmp_path, capsys):
    from compress.types import Sample

    img = np.full((40, 40, 3), 90, np.uint8)
    boxes = np.asarray([[2, 2, 12, 12], [20, 20, 30, 36]], np.float32)
    samples = [Sample("a", img, boxes=boxes, classes=np.asarray([0, 2])),
               Sample("b", img, boxes=boxes[:1], classes=np.asarray([1])),
               Sample("c", img, boxes=boxes[1:], classes=np.asarray([2]))]
    src = write_yolo(samples, tmp_path / "src", ["car", "person", "dog"])  # one flat split, train = val
    out = tmp_path / "out"
    assert main(["data", "filter", str(src), str(out), "--classes", "dog,car"]) == 0
    assert "dropped 1 " in capsys.readouterr().out
    meta = yaml.safe_load((out / "data.yaml").read_text())
    assert meta["train"] == meta["val"] == "images" and meta["names"] == ["dog", "car"]
    ds = load_yolo(out, "val")
    assert [s.classes.tolist() for s in ds.samples] == [[1, 0], [0]]
    np.testing.assert_allclose(ds.samples[1].boxes, boxes[1:], atol=1e-3)


def test_filter_errors_are_one_line_and_write_nothing(made, tmp_path, capsys):
    out = tmp_path / "f"
    capsys.readouterr()
    assert main(["data", "filter", str(made), str(out), "--classes", "3,car"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown class 'car'" in err and "known: 0:0" in err and "9:9" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir()]
    out.mkdir()
    (out / "x").write_text("")
    assert main(["data", "filter", str(made), str(out), "--classes", "3"]) == 2
    assert "--force" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["x"]
    plain = tmp_path / "plain"
    plain.mkdir()
    write_image(np.zeros((8, 8, 3), np.uint8), plain / "a.png")
    assert main(["data", "filter", str(plain), str(tmp_path / "g"), "--classes", "0"]) == 2
    assert "YOLO or COCO JSON" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_filter_reads_coco_json_and_writes_yolo(tmp_path, capsys):
    src = tmp_path / "coco"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), src / "images" / f"im{i}.png")
    cats = [{"id": 1, "name": "car"}, {"id": 3, "name": "person"}, {"id": 7, "name": "dog"}]
    anns = [{"id": 1, "image_id": 0, "category_id": 3, "bbox": [4, 6, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 0, "category_id": 7, "bbox": [30, 2, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 8, 8], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [10, 20, 16, 8], "iscrowd": 0}]
    images = [{"id": i, "file_name": f"im{i}.png", "width": 64, "height": 48} for i in range(3)]
    (src / "instances_val.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["data", "filter", str(src), str(out), "--classes", "person,car"]) == 0
    assert "val: kept 2 images (2 boxes), dropped 1 " in capsys.readouterr().out
    ds = load_yolo(out, "val")
    assert ds.class_names == ["person", "car"]
    assert [Path(s.path).name for s in ds.samples] == ["im0.png", "im2.png"]
    np.testing.assert_allclose(ds.samples[0].boxes, [[4, 6, 24, 36]], atol=1e-3)
    np.testing.assert_allclose(ds.samples[1].boxes, [[10, 20, 26, 28]], atol=1e-3)
    assert [s.classes.tolist() for s in ds.samples] == [[0], [1]]
    assert (out / "images" / "val" / "im2.png").read_bytes() == (src / "images" / "im2.png").read_bytes()


def test_filter_failing_midway_leaves_nothing_behind(made, tmp_path, monkeypatch):
    calls, real = [], shutil.copyfile

    def flaky(a, b, **kw):
        calls.append(a)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(a, b, **kw)

    monkeypatch.setattr("compress.data.tools.shutil.copyfile", flaky)
    out = tmp_path / "f"
    assert main(["data", "filter", str(made), str(out), "--classes", "3,7"]) == 2
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []
