"""CPU awareness for int8: when uint8 x int8 products can overflow, and what to do.

On x86 without VNNI, ONNX Runtime's u8s8 kernels multiply with ``VPMADDUBSW``, which
adds two uint8 x int8 products into a *saturating* int16: 255 * 127 * 2 = 64770 does
not fit in 32767, so large activations times large weights clip silently. VNNI
(AVX512-VNNI, AVX-VNNI) accumulates in int32 and ARM dot-product instructions have no
such step. The safe setting on the risky CPUs is 7-bit weights (``reduce_range``):
255 * 63 * 2 = 32130 fits. Nothing here claims a speed-up; the runner measures latency.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Int8Safety:
    arch: str
    has_avx2: bool
    has_avx512: bool
    has_vnni: bool
    has_dotprod: bool
    reduce_range: bool
    reason: str

    def to_dict(self) -> dict:
        return {"arch": self.arch, "avx2": self.has_avx2, "avx512": self.has_avx512, "vnni": self.has_vnni,
                "arm_dotprod": self.has_dotprod, "reduce_range": self.reduce_range, "reason": self.reason}


def cpu_flags(cpuinfo_text: str | None = None, arch: str | None = None) -> dict:
    """The CPU features from ``compress.runtime.cpu.cpu_features`` (text/arch override, for tests)."""
    from compress.runtime.cpu import cpu_features

    return cpu_features(cpuinfo_text, arch)


def _is_x86(arch: str) -> bool:
    return arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def decide(requested: bool | str = "auto", activation_type: str = "uint8", weight_type: str = "int8",
           features: dict | None = None, remedy: str = "weights use 7 bits (reduce_range)") -> Int8Safety:
    """Choose the overflow-safe setting (``reduce_range``) for this CPU and say why.

    ``requested`` True/False is honoured (the reason notes a risky override); "auto"
    turns it on exactly when activations are uint8, weights int8 and the CPU is x86
    without VNNI. ``remedy`` names what the backend does about it, for the reason text.
    """
    f = features if features is not None else cpu_flags()
    arch = str(f.get("arch", ""))
    x86 = _is_x86(arch)
    vnni = bool(f.get("has_vnni"))
    risky = x86 and not vnni and activation_type == "uint8" and weight_type == "int8"
    if requested == "auto":
        on = risky
        if risky:
            why = ("x86 CPU without VNNI: uint8 x int8 products can saturate the int16 accumulator "
                   f"(VPMADDUBSW), so {remedy}")
        elif x86 and vnni:
            why = "x86 CPU with VNNI: int32 accumulation, full 8-bit weights are safe"
        elif not x86:
            why = f"{arch or 'non-x86'} CPU: no u8s8 int16 saturation, full 8-bit weights"
        else:
            why = f"{activation_type} activations x {weight_type} weights do not use the saturating u8s8 path"
    else:
        on = bool(requested)
        why = f"set in the recipe ({remedy}: {'on' if on else 'off'})"
        if risky and not on:
            why += " (off on an x86 CPU without VNNI: u8s8 products may saturate; check fidelity)"
    return Int8Safety(arch, bool(f.get("avx2")), bool(f.get("avx512f")), vnni, bool(f.get("dotprod")), on, why)
