"""The per-run context handed to every pass. Created by the runner; no globals."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.models.base import Adapter
from compress.types import Dataset


@dataclass
class Context:
    adapter: Adapter
    reference: nn.Module  # frozen copy of the original model (eval, no grad)
    calibration: Dataset | None
    validation: Dataset | None
    work_dir: Path  # where passes may write files (inside the run's temporary output folder)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("compress"))
    progress: Any = None  # compress.progress.Progress (rich), or None when quiet
    model: nn.Module | None = None  # the current torch model (set before onnx-stage passes)
    report: dict[str, Any] = field(default_factory=dict)  # pass label -> its report section
    notes: list[str] = field(default_factory=list)  # plain-language findings for report.md

    def section(self, label: str) -> dict[str, Any]:
        """The report section of one pass (created on first use)."""
        return self.report.setdefault(label, {})

    def require_calibration(self, who: str, labelled: bool = False) -> Dataset:
        """The calibration data, or a clear error naming the pass that needs it."""
        from compress.errors import PassError

        data = self.calibration
        if data is None or len(data) == 0:
            raise PassError(f"{who}: needs calibration images (set data.calibration in the recipe or --calib DIR)")
        if labelled and not data.has_labels:
            raise PassError(f"{who}: needs labelled calibration images")
        return data
