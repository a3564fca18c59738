"""The built-in detection set "digits-det": real handwritten digits pasted on real photos.

Each image (``imgsz`` x ``imgsz`` RGB uint8) is a random crop of one of scikit-learn's bundled
sample photos (``load_sample_images``: flipped, rotated by 90 degrees, colour-jittered) with 1-6
handwritten digits from ``load_digits`` pasted on it. A digit is upscaled smoothly (bicubic +
Gaussian blur), slightly rotated and stretched, scaled to 14-48 px of ink height and painted in a
colour that contrasts with the mean of the photo under it. Boxes are exact: the tight box of the
pasted ink (its alpha is exactly zero outside the box). Digits of the three splits come from the
disjoint train/val/calib parts of :func:`compress.data.digits.split_indices`.

Everything is seeded: image ``i`` of a written split uses ``default_rng([seed, split code, i])``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from compress.data.digits import CLASS_NAMES, load_raw, split_indices
from compress.errors import DataError
from compress.types import Sample

VERSION = 1  # bump whenever the rendering changes: it names the cache folder
SPLIT_CODES = {"train": 0, "val": 1, "calib": 2}
TRAIN_SIZE = 3000  # images in the cached "train" folder
MIN_INK, MAX_INK = 14, 48  # ink height in pixels at imgsz=128 (scaled with imgsz)
_HIRES = 64  # digits are prepared at this resolution, then resized per sample
_ALPHA_LO, _ALPHA_HI = 0.30, 0.60  # mask values mapped to alpha 0..1 (crisp edge, zero outside)
_MAX_OVERLAP = 0.1  # intersection / smaller box area allowed between two digits
_MIN_CONTRAST = 100.0  # |luma(ink) - mean luma(background)| on a 0..255 scale


@lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    out = tuple(np.asarray(im, np.uint8) for im in load_sample_images().images)
    for a in out:
        a.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def _hires_masks() -> np.ndarray:
    """All 1,797 digits as smooth (64, 64) float32 ink masks in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    images, _ = load_raw()
    up = np.stack([np.asarray(Image.fromarray(d).resize((_HIRES, _HIRES), Image.BICUBIC)) for d in images])
    up = gaussian_filter(up.astype(np.float32), sigma=(0, _HIRES / 32, _HIRES / 32))
    out = np.clip(up / np.maximum(up.max(axis=(1, 2), keepdims=True), 1e-6), 0.0, 1.0).astype(np.float32)
    out.setflags(write=False)
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _tight(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) exclusive bounds of the non-zero part of ``mask``."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class Rendered:
    """A generated image with what went into it (for tests and debugging)."""

    sample: Sample
    digit_ids: list[int] = field(default_factory=list)  # indices into load_digits, per object
    alphas: list[np.ndarray] = field(default_factory=list)  # per object: alpha patch inside its box

    def mask(self, i: int) -> np.ndarray:
        """Object ``i``'s alpha over the whole image, (H, W) float32 in [0, 1]."""
        h, w = self.sample.image.shape[:2]
        x1, y1, x2, y2 = (int(v) for v in self.sample.boxes[i])
        out = np.zeros((h, w), np.float32)
        out[y1:y2, x1:x2] = self.alphas[i]
        return out


class DigitsDetGenerator:
    """Random detection images for one split; ``sample(rng)`` is a pure function of ``rng``."""

    def __init__(self, split: str = "train", seed: int = 0, imgsz: int = 128):
        if split not in SPLIT_CODES:
            raise DataError(f"unknown digits-det split '{split}' (known: {', '.join(SPLIT_CODES)})")
        if imgsz < 32:
            raise DataError(f"digits-det: imgsz must be >= 32 (got {imgsz})")
        self.split, self.seed, self.imgsz = split, seed, imgsz
        self.digit_ids = split_indices(split)
        self.class_names = list(CLASS_NAMES)
        self._classes = load_raw()[1]
        self._masks = _hires_masks()
        self._backgrounds = _backgrounds()
        self._count = 0

    # ---- public -----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Sample:
        """A fresh random image with its boxes (xyxy pixels) and classes."""
        return self.render(rng).sample

    def sample_at(self, index: int) -> Sample:
        """Image ``index`` of this split (what :func:`write_split` writes)."""
        return self.render(self.rng_at(index), name=f"{index:05d}").sample

    def rng_at(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])

    def render(self, rng: np.random.Generator, name: str | None = None) -> Rendered:
        """Like :meth:`sample`, also returning the digits used and each object's alpha mask."""
        size = self.imgsz
        canvas = self._background(rng)
        n_objects = int(rng.integers(1, 7))
        boxes, classes, ids, alphas = [], [], [], []
        for _ in range(n_objects):
            did = int(rng.choice(self.digit_ids))
            alpha = self._digit_alpha(did, rng)
            h, w = alpha.shape
            spot = self._place(w, h, boxes, rng)
            if spot is None:
                continue
            x, y = spot
            region = canvas[y:y + h, x:x + w]
            ink = self._ink_colour(region, rng)
            a = alpha[:, :, None]
            canvas[y:y + h, x:x + w] = region * (1.0 - a) + ink * a
            boxes.append((x, y, x + w, y + h))
            classes.append(int(self._classes[did]))
            ids.append(did)
            alphas.append(alpha)
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0.0, 4.0))
        image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        if name is None:
            self._count += 1
            name = f"online-{self._count:06d}"
        sample = Sample(f"digits-det/{self.split}/{name}", image,
                        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                        classes=np.asarray(classes, np.int64))
        return Rendered(sample, ids, alphas)

    # ---- pieces -----------------------------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        photo = self._backgrounds[int(rng.integers(len(self._backgrounds)))]
        ph, pw = photo.shape[:2]
        side = int(rng.integers(min(96, ph), min(ph, pw) + 1))
        y0, x0 = int(rng.integers(0, ph - side + 1)), int(rng.integers(0, pw - side + 1))
        crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((self.imgsz, self.imgsz), Image.BILINEAR)
        arr = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        if rng.random() < 0.3:
            arr = arr[::-1]
        arr = np.rot90(arr, int(rng.integers(4)))
        if rng.random() < 0.3:
            arr = arr[:, :, rng.permutation(3)]
        if rng.random() < 0.15:
            arr = np.repeat(_luma(arr)[:, :, None], 3, axis=2)
        mean = arr.mean()
        arr = (arr - mean) * rng.uniform(0.6, 1.2) + mean * rng.uniform(0.6, 1.4)
        return np.ascontiguousarray(np.clip(arr, 0, 255), np.float32)

    def _digit_alpha(self, did: int, rng: np.random.Generator) -> np.ndarray:
        """The digit's alpha, cropped to its ink, at a random size, slant and aspect."""
        im = Image.fromarray(self._masks[did])
        angle = rng.uniform(-12.0, 12.0)
        if abs(angle) > 0.5:
            im = im.rotate(angle, Image.BICUBIC, expand=True)
        m = np.clip(np.asarray(im, np.float32), 0.0, 1.0)
        x1, y1, x2, y2 = _tight(m > _ALPHA_LO)
        m = m[y1:y2, x1:x2]
        scale = self.imgsz / 128
        ink_h = rng.uniform(MIN_INK, MAX_INK) * scale
        ink_w = ink_h * (m.shape[1] / m.shape[0]) * rng.uniform(0.8, 1.25)
        w = int(np.clip(round(ink_w), 3, self.imgsz // 2))
        h = int(np.clip(round(ink_h), 3, self.imgsz // 2))
        r = np.asarray(Image.fromarray(m).resize((w, h), Image.BILINEAR), np.float32)
        alpha = np.clip((r - _ALPHA_LO) / (_ALPHA_HI - _ALPHA_LO), 0.0, 1.0)
        box = _tight(alpha > 0)
        if box is None:  # cannot happen for real digits; keep a visible blob rather than fail
            alpha = np.ones((h, w), np.float32)
            box = (0, 0, w, h)
        x1, y1, x2, y2 = box
        return alpha[y1:y2, x1:x2]

    def _place(self, w: int, h: int, boxes: list, rng: np.random.Generator):
        for _ in range(30):
            x = int(rng.integers(0, self.imgsz - w + 1))
            y = int(rng.integers(0, self.imgsz - h + 1))
            ok = True
            for bx1, by1, bx2, by2 in boxes:
                iw = min(x + w, bx2) - max(x, bx1)
                ih = min(y + h, by2) - max(y, by1)
                if iw > 0 and ih > 0 and iw * ih > _MAX_OVERLAP * min(w * h, (bx2 - bx1) * (by2 - by1)):
                    ok = False
                    break
            if ok:
                return x, y
        return None

    def _ink_colour(self, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        bg = float(_luma(region.reshape(-1, 3).mean(0)))
        candidates = rng.uniform(0, 255, (16, 3)).astype(np.float32)
        good = np.flatnonzero(np.abs(_luma(candidates) - bg) >= _MIN_CONTRAST)
        if len(good):
            return candidates[good[0]]
        return np.full(3, 0.0 if bg > 127.5 else 255.0, np.float32)


def write_split(split: str, n: int, root: str | Path, *, seed: int = 0, imgsz: int = 128,
                ext: str = ".jpg", quality: int = 90, overwrite: bool = False) -> Path:
    """Write images 0..n-1 of ``split`` as a YOLO folder (atomically); returns ``root``."""
    from compress.data.yolo import write_yolo

    gen = DigitsDetGenerator(split, seed=seed, imgsz=imgsz)
    samples = (gen.sample_at(i) for i in range(n))
    return write_yolo(samples, root, CLASS_NAMES, ext=ext, quality=quality,
                      stems=[f"{split}_{i:05d}" for i in range(n)], overwrite=overwrite)


def cache_root() -> Path:
    """``$COMPRESS_CACHE`` or ``~/.cache/compress``."""
    env = os.environ.get("COMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compress"


def shipped_root() -> Path:
    """The sample folders shipped in the repository (``calibration/digits-det``)."""
    return Path(__file__).resolve().parents[2] / "calibration" / "digits-det"


def split_folder(split: str, n: int | None = None) -> Path:
    """A YOLO folder holding ``split``: the shipped one for val/calib, else generated into the cache.

    The cache folder is written once (temp dir + rename, so concurrent first uses are safe).
    """
    if split not in SPLIT_CODES:
        raise DataError(f"unknown digits-det split '{split}' (known: {', '.join(SPLIT_CODES)})")
    shipped = shipped_root() / split
    if split != "train" and (shipped / "data.yaml").is_file():
        return shipped
    n = n or {"train": TRAIN_SIZE, "val": 200, "calib": 300}[split]
    root = cache_root() / f"digits-det-v{VERSION}" / f"{split}-{n}"
    if not (root / "data.yaml").is_file():
        try:
            write_split(split, n, root)
        except (DataError, OSError):
            if not (root / "data.yaml").is_file():  # lost a race to another process: fine
                raise
    return root
