"""Deployment targets: the right file for the board, checked in the runtime that will run it.

One module per target, registered by name and imported only when used (each runtime is an
optional extra). :func:`after_check` is the runner's hook; :func:`deploy_run_dir` redeploys
an existing run folder (``compress deploy RUN_DIR --target ...``).
"""

from __future__ import annotations

import importlib

from compress.deploy.base import Artifact, DeployError, Runner, Target

__all__ = ["TARGETS", "get_target", "Artifact", "DeployError", "Runner", "Target", "after_check",
           "deploy_run_dir", "preflight"]

# name -> "module:class"; modules are imported lazily
TARGETS = {
    "onnxruntime": "compress.deploy.onnxruntime:OnnxRuntimeTarget",
    "ort-mobile": "compress.deploy.ort_mobile:OrtMobileTarget",
    "openvino": "compress.deploy.openvino:OpenVinoTarget",
    "ncnn": "compress.deploy.ncnn:NcnnTarget",
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise DeployError(f"unknown deploy target '{name}' (known: {', '.join(TARGETS)})")
    module, cls = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def preflight(cfg) -> None:
    """Before a run touches anything: every target the recipe's ``deploy`` names is known and installed."""
    if cfg is None:
        return
    for name in cfg.targets:
        get_target(name).require()


def after_check(recipe, ctx, out_dir, report: dict, threads: int | None = None) -> None:
    """Runner hook (after the fidelity check): keep the fp32 ONNX, deploy when the recipe asks."""
    from compress.deploy.core import after_check as _run

    _run(recipe, ctx, out_dir, report, threads)


def deploy_run_dir(*args, **kwargs) -> dict:
    from compress.deploy.core import deploy_run_dir as _run

    return _run(*args, **kwargs)
