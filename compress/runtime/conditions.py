"""The conditions a latency figure was measured under, and whether the CPU possibly throttled.

Reads what the OS exposes and nothing else: the CPU frequency and governor from
``/sys/devices/system/cpu/cpu*/cpufreq``, Intel's throttle counters from
``cpu*/thermal_throttle``, the temperature from ``/sys/class/thermal/thermal_zone*/temp`` (else
psutil's sensors). What is absent is ``None``, never an error. A timing is flagged
``possibly_throttled`` when the mean frequency of the CPUs this process runs on fell more than
``max_freq_drop`` below its value before timing, the temperature rose more than ``max_temp_rise_c``
or reached ``max_temp_c``, or a throttle counter went up.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_FREQ_DROP = 0.10  # fraction of the frequency before timing
MAX_TEMP_RISE_C = 10.0
MAX_TEMP_C = 80.0  # where e.g. a Raspberry Pi 5 starts to throttle


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _number(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _cpus(root: Path) -> list[Path]:
    """The sysfs folders of the CPUs this process may run on (all listed ones where affinity is unknown)."""
    base = root / "sys/devices/system/cpu"
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = None
    if allowed is not None and root == Path("/"):
        return [base / f"cpu{i}" for i in allowed[:64]]
    found = sorted((p for p in base.glob("cpu[0-9]*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:]))
    return found[:64]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def cpu_freq_mhz(root: str | os.PathLike = "/") -> float | None:
    """Mean current frequency (MHz) of this process's CPUs, or None where cpufreq is not exposed."""
    vals = [v / 1000.0 for c in _cpus(Path(root)) if (v := _number(c / "cpufreq/scaling_cur_freq")) is not None]
    return _mean(vals)


def governor(root: str | os.PathLike = "/") -> str | None:
    """The cpufreq governor(s) of this process's CPUs (``"performance"``; several joined by ``,``), or None."""
    found = [g for c in _cpus(Path(root)) if (g := _read(c / "cpufreq/scaling_governor"))]
    return ",".join(sorted(set(found))) or None


def _max_freq_mhz(root: Path) -> float | None:
    vals = [v / 1000.0 for c in _cpus(root) if (v := _number(c / "cpufreq/cpuinfo_max_freq")) is not None]
    return max(vals) if vals else None


def throttle_count(root: str | os.PathLike = "/") -> int | None:
    """Sum of the CPUs' thermal throttle event counters (x86 ``thermal_throttle``), or None."""
    vals = [v for c in _cpus(Path(root)) for name in ("core_throttle_count", "package_throttle_count")
            if (v := _number(c / "thermal_throttle" / name)) is not None]
    return int(sum(vals)) if vals else None


def temperature_c(root: str | os.PathLike = "/") -> float | None:
    """The hottest thermal zone (°C), else psutil's hottest sensor, else None."""
    zones = Path(root) / "sys/class/thermal"
    vals = [v / 1000.0 for z in sorted(zones.glob("thermal_zone*")) if (v := _number(z / "temp")) is not None]
    vals = [v for v in vals if -40.0 < v < 150.0]  # some zones report placeholders
    if vals:
        return round(max(vals), 1)
    if Path(root) != Path("/"):
        return None
    try:
        import psutil

        temps = [t.current for ts in (psutil.sensors_temperatures() or {}).values() for t in ts
                 if t.current is not None and -40.0 < t.current < 150.0]
    except Exception:  # not on this platform
        return None
    return round(max(temps), 1) if temps else None


def _cpu_model() -> str | None:
    try:
        from compress.runtime.cpu import cpu_features

        return cpu_features().get("model") or None
    except Exception:  # informational only
        return None


class Monitor:
    """Readings before, during (:meth:`sample`, between timed runs) and after a timing.

    ``start()`` then any number of ``sample()`` then ``finish()`` -> the ``conditions`` dict.
    """

    def __init__(self, threads: int, *, root: str | os.PathLike = "/", max_freq_drop: float = MAX_FREQ_DROP,
                 max_temp_rise_c: float = MAX_TEMP_RISE_C, max_temp_c: float = MAX_TEMP_C):
        self.threads, self.root = int(threads), Path(root)
        self.max_freq_drop, self.max_temp_rise_c, self.max_temp_c = max_freq_drop, max_temp_rise_c, max_temp_c
        self._freqs: list[float] = []
        self._before: dict = {}

    def start(self) -> "Monitor":
        self._freqs = []
        self._before = {"freq": cpu_freq_mhz(self.root), "temp": temperature_c(self.root),
                        "throttle": throttle_count(self.root)}
        if self._before["freq"] is not None:
            self._freqs.append(self._before["freq"])
        return self

    def sample(self) -> None:
        """Read the frequency once more (cheap; call it outside the timed region)."""
        f = cpu_freq_mhz(self.root)
        if f is not None:
            self._freqs.append(f)

    def finish(self) -> dict:
        f_after, t_after, n_after = cpu_freq_mhz(self.root), temperature_c(self.root), throttle_count(self.root)
        if f_after is not None:
            self._freqs.append(f_after)
        f0, t0, n0 = self._before.get("freq"), self._before.get("temp"), self._before.get("throttle")
        f_min = min(self._freqs) if self._freqs else None
        reasons = []
        if f0 and f_min is not None and f_min < f0 * (1.0 - self.max_freq_drop):
            reasons.append(f"CPU frequency fell {1 - f_min / f0:.0%} during timing ({f0:.0f} -> {f_min:.0f} MHz)")
        if t0 is not None and t_after is not None and t_after - t0 > self.max_temp_rise_c:
            reasons.append(f"temperature rose {t_after - t0:.1f} C during timing ({t0:.1f} -> {t_after:.1f} C)")
        if t_after is not None and t_after >= self.max_temp_c:
            reasons.append(f"temperature {t_after:.1f} C reached {self.max_temp_c:g} C")
        if n0 is not None and n_after is not None and n_after > n0:
            reasons.append(f"the CPU counted {n_after - n0} thermal throttle events during timing")
        return {"threads": self.threads, "cpu_model": _cpu_model(), "governor": governor(self.root),
                "freq_mhz_before": f0, "freq_mhz_min": f_min, "freq_mhz_after": f_after,
                "freq_mhz_max": _max_freq_mhz(self.root), "temperature_c_before": t0, "temperature_c_after": t_after,
                "possibly_throttled": bool(reasons), "throttle_reason": "; ".join(reasons) or None}
