"""User data loaders: YOLO folders, COCO JSON, plain image folders, and their errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from compress.data import detect_format, load_dataset, load_path
from compress.data.coco import load_coco
from compress.data.folder import load_folder
from compress.data.yolo import load_yolo, write_yolo
from compress.errors import DataError
from compress.recipe import DataSource
from compress.types import Sample


def _rgb(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _samples(n: int = 3) -> list[Sample]:
    out = []
    for i in range(n):
        boxes = np.array([[1, 2, 11, 20], [15.5, 3.25, 30, 23]], np.float32)[: i % 2 + 1]
        out.append(Sample(f"s{i}", _rgb(i), boxes=boxes, classes=np.array([2, 0], np.int64)[: len(boxes)]))
    out.append(Sample("empty", _rgb(99), boxes=np.zeros((0, 4), np.float32), classes=np.zeros(0, np.int64)))
    return out


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_yolo_round_trip(tmp_path, ext):
    written = _samples()
    root = write_yolo(written, tmp_path / "ds", ["a", "b", "c"], ext=ext)
    assert sorted(p.name for p in root.iterdir()) == ["data.yaml", "images", "labels"]
    data = load_yolo(root)
    assert data.class_names == ["a", "b", "c"] and len(data) == len(written) and data.has_labels
    for w, r in zip(written, data):
        np.testing.assert_allclose(r.boxes, w.boxes, atol=1e-3)
        np.testing.assert_array_equal(r.classes, w.classes)
        assert r.image.shape == w.image.shape
        if ext == ".png":
            np.testing.assert_array_equal(r.image, w.image)
    assert detect_format(root) == "yolo"
    assert len(load_dataset(DataSource(path=str(root), samples=2))) == 2
    with pytest.raises(DataError, match="already exists"):
        write_yolo(written, root, ["a", "b", "c"])


def test_yolo_split_subfolders_and_data_yaml(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_rgb(i)).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    val = load_yolo(root, "val")
    assert len(val) == 2 and val.class_names == ["cat", "dog"]
    np.testing.assert_allclose(val[0].boxes, [[8, 6, 24, 18]])
    assert len(load_yolo(root, "train")) == 3
    assert len(load_yolo(root, "calib")) == 3  # calibration falls back to train images
    # the same data through the yaml (a file or the yaml's folder without images/)
    assert len(load_yolo(root / "data.yaml", "val")) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    assert len(load_path(other, split="val")) == 2
    (root / "labels" / "val" / "1.txt").unlink()
    assert len(load_yolo(root, "val")[1].boxes) == 0  # image without a label file: no objects


def test_yolo_without_labels_is_unlabelled(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(_rgb(0)).save(tmp_path / "images" / "a.png")
    data = load_path(tmp_path)
    assert len(data) == 1 and data[0].boxes is None and not data.has_labels


@pytest.mark.parametrize("line, problem", [
    ("1 0.5 0.5 0.5", "expected 5 columns"),
    ("1 0.5 0.5 0.5 0.5 0.1", "expected 5 columns"),
    # out-of-range class ids / NaN / sizes <= 0 are skipped and counted: tests/test_hardening_io.py
    ("x 0.5 0.5 0.5 0.5", "not a number"),
    ("0 12 30 5 5", "normalised"),
])
def test_yolo_malformed_labels_name_file_and_line(tmp_path, line, problem):
    root = write_yolo(_samples(1), tmp_path / "ds", ["a", "b", "c"], ext=".png")
    label = root / "labels" / "000000.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n\n" + line + "\n")
    with pytest.raises(DataError, match=problem) as err:
        load_yolo(root)
    assert f"{label}:3:" in str(err.value) and "\n" not in str(err.value)


def test_yolo_polygon_labels_become_boxes(tmp_path):
    root = write_yolo(_samples(1), tmp_path / "ds", ["a", "b", "c"], ext=".png")
    (root / "labels" / "000000.txt").write_text("2 0.25 0.25 0.75 0.25 0.5 0.75\n")
    np.testing.assert_allclose(load_yolo(root)[0].boxes, [[8, 6, 24, 18]])


def _coco(tmp_path, split_dir="images"):
    img_dir = tmp_path / split_dir
    img_dir.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_rgb(i, 40, 50)).save(img_dir / f"im{i}.jpg")
    ann = {
        "images": [{"id": 10 + i, "file_name": f"im{i}.jpg", "width": 50, "height": 40} for i in range(3)],
        "categories": [{"id": 7, "name": "truck"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5, 5, 30, 10], "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [40, 30, 20, 20], "iscrowd": 0},
        ],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps(ann))
    return path


def test_coco_json(tmp_path):
    ann = _coco(tmp_path)
    data = load_coco(ann)
    assert data.class_names == ["person", "car", "truck"]  # sorted by category id
    assert len(data) == 3 and data.has_labels
    np.testing.assert_allclose(data[0].boxes, [[1, 2, 11, 22], [5, 5, 35, 15]])
    np.testing.assert_array_equal(data[0].classes, [0, 2])
    np.testing.assert_allclose(data[1].boxes, [[40, 30, 50, 40]])  # crowd dropped, box clipped
    np.testing.assert_array_equal(data[1].classes, [1])
    assert len(data[2].boxes) == 0
    # the folder is detected as COCO; class names given by the model map categories by name
    assert detect_format(tmp_path) == "coco"
    mapped = load_dataset(DataSource(path=str(tmp_path), samples=1), class_names=["car", "truck", "person", "bus"])
    assert len(mapped) == 1 and mapped.class_names == ["car", "truck", "person", "bus"]
    np.testing.assert_array_equal(mapped[0].classes, [2, 1])


def test_coco_images_in_split_folder_and_bad_json(tmp_path):
    ann = _coco(tmp_path, split_dir="val")
    assert len(load_path(ann)) == 3
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read COCO JSON"):
        load_coco(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "nowhere.jpg"}], "annotations": []}))
    with pytest.raises(DataError, match="cannot find image 'nowhere.jpg'"):
        load_coco(bad)


def test_image_folder_sorted_recursive_and_limited(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.bmp"):
        Image.fromarray(_rgb(len(name))).save(tmp_path / name)
    (tmp_path / "notes.md").write_text("not an image")
    data = load_folder(tmp_path)
    assert [p.split("/")[-1] for p in (s.path for s in data)] == ["a.jpg", "b.png", "c.bmp"]
    assert not data.has_labels and data[0].boxes is None
    assert detect_format(tmp_path) == "folder"
    limited = load_dataset(DataSource(path=str(tmp_path), samples=2))
    assert [s.path for s in limited] == [s.path for s in data][:2]


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    Image.fromarray(_rgb(0)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = tmp_path / "c.png"
    Image.fromarray(_rgb(1, 64, 64)).save(good)
    (tmp_path / "d.png").write_bytes(good.read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning) as record:
        data = load_folder(tmp_path)
    messages = [str(w.message) for w in record]
    assert any("b.jpg" in m for m in messages) and any("d.png" in m for m in messages)
    assert [s.path.split("/")[-1] for s in data] == ["a.png", "c.png"]
    assert [p.split("/")[-1] for p, _ in data.skipped] == ["b.jpg", "d.png"]
    assert all("unreadable" in reason for _, reason in data.skipped)
    # samples counts readable images: the first N good ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [s.path.split("/")[-1] for s in load_folder(tmp_path, samples=2)] == ["a.png", "c.png"]


def test_every_image_unreadable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 1 images could be read") as err:
            load_dataset(DataSource(path=str(tmp_path)))
    assert str(tmp_path) in str(err.value)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no images found") as err:
        load_dataset(DataSource(path=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(DataSource(path=str(tmp_path), format="yolo"))
    missing = tmp_path / "nope"
    for fmt in ("auto", "yolo", "coco", "folder"):
        with pytest.raises(DataError, match="data folder not found") as err:
            load_dataset(DataSource(path=str(missing), format=fmt))
        assert str(missing) in str(err.value)


def test_grayscale_rgba_palette_and_16bit_become_rgb(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(gray, "L").save(tmp_path / "a_gray.png")
    rgba = np.dstack([_rgb(3, 12, 10), np.full((12, 10), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_rgba.png")
    Image.fromarray(_rgb(4, 12, 10)).convert("P", palette=Image.ADAPTIVE, colors=8).save(tmp_path / "c_pal.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "d_16.png")
    data = load_folder(tmp_path)
    for s in data:
        assert s.image.shape == (12, 10, 3) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(data[0].image, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(data[1].image, rgba[:, :, :3])
    assert len(np.unique(data[2].image.reshape(-1, 3), axis=0)) <= 8
    np.testing.assert_allclose(data[3].image[:, :, 0], gray, atol=1)


def test_importing_the_data_package_stays_light():
    import subprocess
    import sys

    code = "import sys, compress.data; print('sklearn' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
