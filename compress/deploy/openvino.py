"""Target ``openvino``: OpenVINO IR (``.xml`` + ``.bin``) via ``openvino.convert_model``.

fp32 stays fp32 (no fp16 weight compression, inference precision pinned to f32 so a CPU
with bf16 does not silently change the numbers); the int8 QDQ model becomes OpenVINO's
FakeQuantize int8. Run in OpenVINO's CPU plugin: one stream, a fixed ``threads`` count, core
pinning off: on a shared machine pinning to busy cores costs more than it saves (pruned digitdet,
1 thread: 3.97 ms pinned vs 1.67-1.91 ms unpinned, same process, measured 2026-11-30). The f32
hint matters too: OpenVINO's default here is bf16 (0.95 ms, but boxes moved by up to 0.66 px
against f32 on one image): a speed-up the check never saw, so it is not taken silently.
"""

from __future__ import annotations

from pathlib import Path

from compress.deploy.base import Artifact, BuildContext, DeployError, Runner, Target

OV_LOAD = '''import openvino as ov


def load(path, threads):
    cfg = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
           "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    req = ov.Core().compile_model(str(path), "CPU", cfg).create_infer_request()
    return lambda x: req.infer({0: x})[0].copy()
'''


def cpu_config(threads: int) -> dict:
    return {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoTarget(Target):
    name = "openvino"
    extra = "openvino"
    packages = ("openvino",)

    def build(self, artifact: Artifact, out_dir: Path, ctx: BuildContext) -> list[Path]:
        import openvino as ov

        xml = Path(out_dir) / f"model_{artifact.name}.xml"
        try:
            model = ov.convert_model(str(artifact.onnx))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as e:
            raise DeployError(f"openvino: conversion of {artifact.name} failed: "
                              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from e
        return [xml, xml.with_suffix(".bin")]

    def session(self, files: list[Path], threads: int) -> Runner:
        import openvino as ov

        compiled = ov.Core().compile_model(str(files[0]), "CPU", cpu_config(threads))
        req = compiled.create_infer_request()
        port = compiled.input(0)
        shape = [int(d) for d in port.get_shape()]
        return Runner(lambda x: req.infer({0: x})[0].copy(), port.get_any_name(), shape)

    def infer_script(self) -> str:
        return OV_LOAD

    def version(self) -> str:
        import openvino

        return openvino.get_version()
