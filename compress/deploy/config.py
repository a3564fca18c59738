"""The recipe's ``deploy:`` section (pydantic, unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TargetName = Literal["onnxruntime", "ort-mobile", "openvino", "ncnn"]
CpuProfile = Literal["host", "x86-avx2", "x86-vnni", "arm64"]


class DeployConfig(BaseModel):
    """Which runtimes to build for, how to pick the shipped artifact, and for which CPU."""

    model_config = ConfigDict(extra="forbid")

    targets: list[TargetName] = Field(default_factory=lambda: ["onnxruntime"], min_length=1)
    # fastest_passing: per target, the fastest artifact that passes the fidelity thresholds;
    # all: keep every artifact, select none
    select: Literal["fastest_passing", "all"] = "fastest_passing"
    cpu: CpuProfile = "host"  # the board: decides int8 settings; latency is always measured on this host
    threads: int | None = Field(default=None, ge=1, le=256)  # runtime threads (default: benchmark.threads)
    runs: int | None = Field(default=None, ge=1, le=100_000)  # timed runs per artifact (default: benchmark.runs)
    bundle: bool = True  # write deploy.json, infer.py and an example image per target

    @field_validator("targets")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({t for t in v if v.count(t) > 1})
        if dup:
            raise ValueError(f"target(s) listed twice: {', '.join(dup)}")
        return v
