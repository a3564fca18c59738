"""Reading and writing image files: any mode -> RGB uint8, unreadable files skipped with a warning."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from compress.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

log = logging.getLogger("compress.data")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by path (DataError if the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if is_image(p))


def to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode (L, LA, P, RGBA, I;16, CMYK...) as (H, W, 3) uint8 RGB.

    Alpha is dropped (as OpenCV does), 16-bit images are scaled to 8 bits.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        im = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8, honouring the EXIF orientation.

    Raises OSError/ValueError for an unreadable or corrupt file (see :func:`try_read`).
    """
    with Image.open(path) as im:
        im.load()  # decode now: truncated or corrupt files fail here, not later
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def try_read(path: Path, skipped: list[tuple[str, str]]) -> np.ndarray | None:
    """``read_image`` or None; a failure is warned about and appended to ``skipped``."""
    try:
        return read_image(path)
    except Exception as e:  # any decoder failure (Pillow plugins raise many types) means: skip this file
        reason = f"unreadable image: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        warnings.warn(f"{path}: {reason}; skipped", stacklevel=3)
        log.warning("%s: %s; skipped", path, reason)
        skipped.append((str(path), reason))
        return None


def no_images_error(folder: Path, tried: int, skipped: list[tuple[str, str]]) -> DataError:
    """The one-line error for a folder that yielded no usable image."""
    if tried == 0:
        return DataError(f"{folder}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    first = skipped[0][1] if skipped else "unknown reason"
    return DataError(f"{folder}: none of the {tried} images could be read (first: {first})")


def write_image(image: np.ndarray, path: Path, quality: int = 90) -> None:
    """Write RGB uint8 as JPEG (``quality``, no chroma subsampling) or PNG, by suffix."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=quality, subsampling=0, optimize=True)
    else:
        im.save(path, optimize=True)
