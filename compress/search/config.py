"""What ``compress search`` is asked for (pydantic, unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import CompressError


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_speedup: float | None = Field(default=None, gt=1, le=1000)  # vs the fp32 ONNX original
    target_latency_ms: float | None = Field(default=None, gt=0, le=1e6)
    min_agreement: float = Field(default=0.90, gt=0, le=1)  # agreement mAP50 (top-1 agreement: classifiers)
    seed: int = Field(default=0, ge=0, lt=2**32)
    budget_min: float = Field(default=30.0, gt=0, le=100_000)  # wall time; proposals stop at 30% of it
    trials: int = Field(default=40, ge=1, le=10_000)  # Optuna proposals (dry-run prune + predicted scores)
    candidates: int = Field(default=3, ge=1, le=100)  # the best K get a short recovery
    threads: int = Field(default=1, ge=1, le=256)  # latency table, measured latency and every run
    short_fraction: float = Field(default=0.2, gt=0, le=1)  # short recovery = this share of the recipe's steps
    calib_images: int = Field(default=32, ge=1, le=10_000)  # images for the predicted loss
    stages: int = Field(default=4, ge=1, le=16)  # per-stage multipliers (knobs = 1 + stages)
    table_runs: int = Field(default=20, ge=1, le=10_000)
    # aim this fraction below the target latency: the table's calibration error and the run-to-run
    # noise of one measurement are a few % each, and a winner predicted exactly at the target
    # measured 2.45-2.60x for a 2.5x target
    margin: float = Field(default=0.1, ge=0, le=0.5)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    workers: int | None = None

    @model_validator(mode="after")
    def _one_target(self):
        if (self.target_speedup is None) == (self.target_latency_ms is None):
            raise ValueError("give exactly one of --target-speedup and --target-latency-ms")
        return self


def make_config(**fields) -> SearchConfig:
    """:class:`SearchConfig` from keyword values; a bad value is a one-line CompressError naming the flag."""
    try:
        return SearchConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "search"
        msg = err["msg"].removeprefix("Value error, ")
        raise CompressError(f"search: {msg}" if not err.get("loc") else
                            f"search: {flag}: {msg} (got {err.get('input')!r})") from None
