"""Board CPU profiles (``deploy.cpu``): int8 settings for the board, and what the host can emulate.

| profile  | reduce_range | why |
|----------|--------------|-----|
| x86-avx2 | on  | u8 x s8 products go through VPMADDUBSW's saturating int16 sum (see compress.quant.safety) |
| x86-vnni | off | VNNI accumulates in int32: full 8-bit weights are safe |
| arm64    | off | NEON / dot-product kernels have no saturating int16 step |
| host     | as compress.quant.safety decides for this machine |

Every profile uses per-channel weights and the QDQ format: QDQ is what OpenVINO, the ORT
mobile/NNAPI/XNNPACK paths and ORT's CPU kernels all read (QOperator only suits ORT's CPU
provider), and per-channel scales cost nothing at run time on any of these boards.
"""

from __future__ import annotations

import platform

PROFILES = {
    "x86-avx2": {"arch": "x86_64", "has_vnni": False, "reduce_range": True,
                 "reason": "x86 AVX2 without VNNI: u8 x s8 products can saturate the int16 accumulator, "
                           "so weights use 7 bits (reduce_range)"},
    "x86-vnni": {"arch": "x86_64", "has_vnni": True, "reduce_range": False,
                 "reason": "x86 with VNNI: int32 accumulation, full 8-bit weights are safe"},
    "arm64": {"arch": "aarch64", "has_vnni": False, "reduce_range": False,
              "reason": "arm64: no saturating int16 step in the int8 kernels, full 8-bit weights"},
}


def _host() -> dict:
    from compress.runtime.cpu import cpu_features

    return cpu_features()


def _is_x86(arch: str) -> bool:
    return arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def int8_settings(cpu: str, host: dict | None = None) -> dict:
    """QDQ, per-channel, and reduce_range for the board ``cpu`` (``host``: this machine's features)."""
    if cpu == "host":
        from compress.quant.safety import decide

        safe = decide("auto", "uint8", "int8", features=host if host is not None else _host())
        rr, why = safe.reduce_range, f"host CPU: {safe.reason}"
    else:
        rr, why = PROFILES[cpu]["reduce_range"], PROFILES[cpu]["reason"]
    return {"cpu": cpu, "format": "QDQ", "per_channel": True, "activation_type": "uint8", "weight_type": "int8",
            "reduce_range": rr, "reason": why}


def emulation_note(cpu: str, host: dict | None = None) -> str | None:
    """A sentence when latency/fidelity measured on this host do not stand for the board."""
    if cpu == "host":
        return None
    host = host if host is not None else _host()
    arch = str(host.get("arch") or platform.machine())
    want = PROFILES[cpu]
    if cpu == "arm64" and _is_x86(arch):
        return (f"deploy.cpu is arm64 but this host is {arch}: latency was measured on the host and does not "
                "transfer to the board; int8 numerics differ too (re-check on the board)")
    if cpu.startswith("x86") and not _is_x86(arch):
        return f"deploy.cpu is {cpu} but this host is {arch}: latency was measured on the host, not the board"
    if want["has_vnni"] and not host.get("has_vnni"):
        return ("deploy.cpu is x86-vnni but this host has no VNNI: it cannot emulate VNNI's int32 accumulation, so "
                "the int8 model's latency and fidelity were measured on the host's AVX2 kernels (with full 8-bit "
                "weights these can saturate: the board's agreement can only be higher)")
    if not want["has_vnni"] and host.get("has_vnni"):
        return ("deploy.cpu is x86-avx2 but this host has VNNI: int8 latency was measured with VNNI kernels "
                "and is optimistic for the board")
    return None
