"""ONNX Runtime helpers: sessions, side-by-side latency, per-layer profile, CPU features.

Submodules are imported directly (``compress.runtime.latency``); this package
imports nothing so ``import compress`` stays light.
"""
