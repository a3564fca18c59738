"""Target ``ort-mobile``: ONNX Runtime's ``.ort`` format plus the reduced-operator config.

The ``.ort`` file comes from ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed
optimisations for the board's platform: ``arm`` for arm64, ``amd64`` for x86); the
``*.required_operators_and_types.config`` file beside it is what a reduced-size ORT build
(``build.sh --include_ops_by_config``) needs to run exactly this model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import shutil
import tempfile
from pathlib import Path

from compress.deploy.base import Artifact, BuildContext, DeployError
from compress.deploy.onnxruntime import OnnxRuntimeTarget


def target_platform(cpu: str) -> str:
    if cpu == "arm64":
        return "arm"
    if cpu.startswith("x86"):
        return "amd64"
    return "arm" if platform.machine().lower() in ("arm64", "aarch64") else "amd64"


class OrtMobileTarget(OnnxRuntimeTarget):
    """Runs in ONNX Runtime like ``onnxruntime`` (same session, script and version); builds ``.ort`` files."""

    name = "ort-mobile"
    extra = "ort-mobile"  # the converter ships with onnxruntime; the extra adds flatbuffers
    packages = ("onnxruntime", "flatbuffers")

    def build(self, artifact: Artifact, out_dir: Path, ctx: BuildContext) -> list[Path]:
        from onnxruntime.capi._pybind_state import set_default_logger_severity as set_severity
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        stem = f"model_{artifact.name}"
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in" / f"{stem}.onnx"
            src.parent.mkdir()
            shutil.copyfile(artifact.onnx, src)
            log = io.StringIO()
            quiet = logging.getLogger("ort_format_model.utils")
            level = quiet.level
            try:
                quiet.setLevel(logging.WARNING)
                set_severity(3)  # the NCHWc notice: see notes() below
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    convert_onnx_models_to_ort(src, output_dir=Path(tmp) / "out",
                                               optimization_styles=[OptimizationStyle.Fixed],
                                               target_platform=target_platform(ctx.cpu),
                                               enable_type_reduction=True)
            except Exception as e:
                raise DeployError(f"ort-mobile: conversion of {artifact.name} failed: "
                                  f"{(str(e).splitlines() or [type(e).__name__])[0]}") from e
            finally:
                quiet.setLevel(level)
                set_severity(2)
            ort_file = next((Path(tmp) / "out").glob("*.ort"), None)
            config = next((Path(tmp) / "out").glob("*.config"), None)
            if ort_file is None:
                raise DeployError(f"ort-mobile: the converter wrote no .ort file for {artifact.name}")
            files = [Path(out_dir) / f"{stem}.ort"]
            shutil.copyfile(ort_file, files[0])
            if config is not None:
                files.append(Path(out_dir) / f"{stem}.required_operators_and_types.config")
                shutil.copyfile(config, files[1])
        return files

    def notes(self, cpu: str) -> list[str]:
        if target_platform(cpu) == "amd64":
            return ["ort-mobile: the .ort files are optimized for amd64 (ORT's NCHWc layout kernels) and run on "
                    "x86 CPUs only; set deploy.cpu: arm64 for an ARM board"]
        return []

