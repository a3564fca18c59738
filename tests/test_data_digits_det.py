"""The built-in data sets: deterministic, disjoint splits, exact boxes, shipped samples that reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from compress.data import builtin_dataset, digits_det
from compress.data.digits import CLASS_NAMES, load_raw, split_indices
from compress.data.digits_det import DigitsDetGenerator, shipped_root
from compress.errors import DataError


def _luma(rgb):
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_digit_splits_are_disjoint_and_cover_all():
    parts = {s: set(split_indices(s).tolist()) for s in ("train", "val", "calib")}
    assert not parts["train"] & parts["val"]
    assert not parts["train"] & parts["calib"]
    assert not parts["val"] & parts["calib"]
    assert len(parts["train"]) + len(parts["val"]) + len(parts["calib"]) == len(load_raw()[1]) == 1797
    assert len(parts["train"]) == 1257 and len(parts["val"]) == len(parts["calib"]) == 270
    # stratified: every class in every split
    y = load_raw()[1]
    for s in parts:
        assert set(y[sorted(parts[s])].tolist()) == set(range(10))


def test_generator_only_uses_its_own_digits():
    for split in ("train", "val", "calib"):
        gen = DigitsDetGenerator(split)
        pool = set(split_indices(split).tolist())
        rng = np.random.default_rng(1)
        used = [d for _ in range(20) for d in gen.render(rng).digit_ids]
        assert used and set(used) <= pool


def test_generator_is_deterministic():
    gen = DigitsDetGenerator("train", seed=3)
    a = gen.sample(np.random.default_rng(42))
    b = DigitsDetGenerator("train", seed=3).sample(np.random.default_rng(42))
    c = gen.sample(np.random.default_rng(43))
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128, 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert not np.array_equal(a.image, c.image)
    s1, s2 = gen.sample_at(5), DigitsDetGenerator("train", seed=3).sample_at(5)
    np.testing.assert_array_equal(s1.image, s2.image)
    assert not np.array_equal(s1.image, DigitsDetGenerator("train", seed=4).sample_at(5).image)


def test_boxes_inside_image_and_tight_around_ink():
    gen = DigitsDetGenerator("val")
    rng = np.random.default_rng(0)
    contrasts, counts = [], []
    for _ in range(30):
        r = gen.render(rng)
        s = r.sample
        counts.append(len(s.boxes))
        assert s.boxes.shape == (len(s.classes), 4) and len(r.digit_ids) == len(s.classes)
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2:] <= 128).all()
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all()
        heights = s.boxes[:, 3] - s.boxes[:, 1]
        assert ((heights >= 13) & (heights <= 49)).all()
        assert np.array_equal(s.classes, load_raw()[1][r.digit_ids])
        for i, box in enumerate(s.boxes):
            mask = r.mask(i)
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(int(v) for v in box)
            x1, y1, x2, y2 = (int(v) for v in box)
            inside = mask[y1:y2, x1:x2]
            patch = _luma(s.image[y1:y2, x1:x2].astype(np.float32))
            if (inside == 1).any() and (inside == 0).any():
                contrasts.append(abs(patch[inside == 1].mean() - patch[inside == 0].mean()))
    assert min(counts) >= 1 and max(counts) <= 6 and np.mean(counts) > 2
    assert np.median(contrasts) > 60  # ink stands out from the photo under it


def test_shipped_samples_load_and_reproduce():
    val = builtin_dataset("digits-det", "val")
    calib = builtin_dataset("digits-det", "calib")
    assert len(val) == 200 and len(calib) == 300
    assert val.class_names == CLASS_NAMES and val.has_labels and not val.skipped
    assert len(builtin_dataset("digits-det", "calib", samples=16)) == 16
    size = sum(p.stat().st_size for p in shipped_root().rglob("*") if p.is_file())
    assert size < 6_000_000
    for split, data in (("val", val), ("calib", calib)):
        gen = DigitsDetGenerator(split)
        for i in (0, 17, len(data) - 1):
            fresh = gen.sample_at(i)
            assert data[i].path.endswith(f"{split}_{i:05d}.jpg")
            np.testing.assert_allclose(data[i].boxes, fresh.boxes, atol=1e-4)
            np.testing.assert_array_equal(data[i].classes, fresh.classes)
            # JPEG q90 without chroma subsampling stays close to the rendered pixels
            diff = np.abs(data[i].image.astype(int) - fresh.image.astype(int)).mean()
            assert diff < 6


def test_train_split_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(digits_det, "TRAIN_SIZE", 5)
    data = builtin_dataset("digits-det", "train")
    folder = tmp_path / f"digits-det-v{digits_det.VERSION}" / "train-5"
    assert len(data) == 5 and (folder / "data.yaml").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["train-5"]  # no temp folder left behind
    stamp = (folder / "data.yaml").stat().st_mtime_ns
    again = builtin_dataset("digits-det", "train", samples=3)
    assert len(again) == 3 and (folder / "data.yaml").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again[0].classes, DigitsDetGenerator("train").sample_at(0).classes)


def test_digits_classification():
    train = builtin_dataset("digits", "train")
    val = builtin_dataset("digits", "val")
    calib = builtin_dataset("digits", "calib", samples=10)
    assert (len(train), len(val), len(calib)) == (1257, 270, 10)
    s = val[0]
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert s.label == int(load_raw()[1][split_indices("val")[0]])
    assert s.image.max() > 200 and s.image.min() < 20
    assert val.has_labels and val.class_names == CLASS_NAMES
    paths = [{x.path.rsplit("/", 1)[1] for x in d} for d in (train, val, builtin_dataset("digits", "calib"))]
    assert not paths[0] & paths[1] and not paths[0] & paths[2] and not paths[1] & paths[2]


def test_unknown_builtin_and_split():
    with pytest.raises(DataError, match="unknown built-in data set 'nope'"):
        builtin_dataset("nope", "val")
    with pytest.raises(DataError, match="unknown"):
        builtin_dataset("digits", "test")
    with pytest.raises(DataError, match="unknown digits-det split"):
        DigitsDetGenerator("test")
