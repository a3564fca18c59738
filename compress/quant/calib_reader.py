"""Calibration images -> the tensors every int8 backend calibrates on.

The images go through ``adapter.preprocess`` (letterbox, /255, NCHW), exactly what the
fidelity check and deployment feed the model, one image per batch (exported graphs
have a fixed batch of 1). :class:`ImageCalibrationReader` hands them to ONNX
Runtime's calibrators; NNCF and torch.ao take the same list.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from compress.errors import PassError
from compress.types import Dataset

DEFAULT_SAMPLES = 300
MIN_SAMPLES = 8

log = logging.getLogger("compress")


def pick_images(data: Dataset | None, requested: int | None, who: str, minimum: int = MIN_SAMPLES,
                default: int = DEFAULT_SAMPLES) -> tuple[list[np.ndarray], dict]:
    """The first ``requested`` calibration images (``default`` or all there are when omitted).

    Fewer images than an explicit ``requested`` -> a warning with both counts; fewer
    than ``minimum`` -> PassError saying how many are needed. Returns the images and
    a report dict (``requested``, ``available``, ``used``).
    """
    available = 0 if data is None else len(data)
    if available < minimum:
        raise PassError(f"{who}: needs at least {minimum} calibration images, got {available} "
                        "(set data.calibration in the recipe or pass --calib DIR)")
    want = requested if requested is not None else default
    used = min(want, available)
    if requested is not None and available < requested:
        msg = f"{who}: {requested} calibration images requested but only {available} available; using {available}"
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    images = [s.image for s in data.samples[:used]]
    return images, {"requested": want, "available": available, "used": used}


def preprocess_batches(adapter, images: list[np.ndarray], batch: int = 1) -> list[np.ndarray]:
    """Images -> float32 NCHW arrays of ``batch`` images each (the adapter's preprocessing)."""
    out = []
    for i in range(0, len(images), batch):
        x, _ = adapter.preprocess(images[i:i + batch])
        arr = np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32))
        if arr.ndim != 4 or arr.shape[1] != 3:
            raise PassError(f"calibration: the adapter's preprocessing gives shape {list(arr.shape)}; "
                            "int8 calibration needs (N, 3, H, W)")
        out.append(arr)
    return out


def calibration_reader(input_name: str, batches: list[np.ndarray]):
    """An ONNX Runtime ``CalibrationDataReader`` over preprocessed batches.

    Supports ``rewind`` and ``set_range`` (ORT's strided calibration, which merges
    statistics every few images instead of holding every activation of every image).
    """
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        def __init__(self):
            self.start, self.end, self.i = 0, len(batches), 0

        def get_next(self):
            if self.start + self.i >= self.end:
                return None
            self.i += 1
            return {input_name: batches[self.start + self.i - 1]}

        def rewind(self):
            self.i = 0

        def set_range(self, start_index: int, end_index: int):
            self.start, self.end, self.i = start_index, min(end_index, len(batches)), 0

        def __len__(self):
            return len(batches)

    return ImageCalibrationReader()
