"""Plain data types shared by datasets, adapters and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """Detections of one image in the original image's pixel coordinates."""

    boxes: np.ndarray  # (N, 4) float32, xyxy
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, conf: float) -> "Detections":
        keep = self.scores >= conf
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


@dataclass
class Sample:
    """One image with its labels, if any.

    ``boxes``/``classes`` are detection labels (xyxy pixels); ``label`` is a
    classification label. Unlabelled samples leave them as ``None``.
    """

    path: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray | None = None
    classes: np.ndarray | None = None
    label: int | None = None


@dataclass
class Dataset:
    """A list of samples plus what a report needs to know about where they came from."""

    samples: list[Sample]
    class_names: list[str]
    root: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    @property
    def has_labels(self) -> bool:
        """True when every sample carries detection boxes or a class label."""
        return bool(self.samples) and all(
            s.boxes is not None or s.label is not None for s in self.samples
        )

    def head(self, n: int | None) -> "Dataset":
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self.samples):
            return self
        return Dataset(self.samples[:n], self.class_names, self.root, self.skipped)
