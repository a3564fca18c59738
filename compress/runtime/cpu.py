"""What the CPU offers for fast int8 / fp32 inference (for reports and int8 advice)."""

from __future__ import annotations

import os
import platform

# report key -> flag names that mean it, as /proc/cpuinfo (x86 "flags", arm "Features") spells them
_FLAGS = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni", "avxvnni"),
    "amx": ("amx_int8", "amx_tile", "amx_bf16"),
    "dotprod": ("asimddp", "dotprod"),
    "i8mm": ("i8mm",),
}


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo text (the first processor block is enough)."""
    model, flags = "", set()
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = {f.lower() for f in value.split()}
    return model, flags


def _from_py_cpuinfo() -> tuple[str, set[str]]:
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:  # informational only: an unknown CPU just has no flags
        return "", set()
    return str(info.get("brand_raw", "")), {str(f).lower() for f in info.get("flags", [])}


def cpu_features(cpuinfo_text: str | None = None, arch: str | None = None) -> dict:
    """Architecture, model name, int8-relevant flags and ``has_vnni``.

    Reads /proc/cpuinfo (py-cpuinfo where it is missing); ``cpuinfo_text`` and
    ``arch`` override both, for tests. Every flag key is a bool.
    """
    arch = arch or platform.machine()
    source = "argument"
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo_text = f.read()
            source = "/proc/cpuinfo"
        except OSError:
            cpuinfo_text = ""
    model, flags = _parse_cpuinfo(cpuinfo_text)
    if not flags and source != "argument":
        model, flags = _from_py_cpuinfo()
        source = "py-cpuinfo"
    out: dict = {"arch": arch, "model": model or platform.processor() or "unknown",
                 "cores": os.cpu_count() or 1, "source": source}
    for key, names in _FLAGS.items():
        out[key] = any(n in flags for n in names)
    out["has_vnni"] = out["avx512_vnni"] or out["avx_vnni"]
    out["int8_accel"] = out["has_vnni"] or out["amx"] or out["dotprod"] or out["i8mm"]
    return out
