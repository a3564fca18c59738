"""Peak inference memory (separate process), this process's peak, and the conditions of a latency timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import CompressError
from compress.runtime import latency
from compress.runtime.conditions import Monitor, cpu_freq_mhz, governor, temperature_c
from compress.runtime.memory import (measure_peak_memory, peak_memory, peak_memory_or_note, process_peak_mb)

ROOT = Path(__file__).parents[1]


def _matmul(path: Path, n: int, m: int) -> Path:
    """y = x @ w with an (n, m) float32 weight: n * m * 4 bytes the runtime must hold."""
    w = np.random.default_rng(0).standard_normal((n, m)).astype(np.float32)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, m])
    g = helper.make_graph([helper.make_node("MatMul", ["images", "w"], ["output0"])], "g", [x], [y],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ---------------------------------------------------------------- peak memory


def test_peak_memory_grows_with_the_weights_and_excludes_the_bare_runtime(tmp_path):
    small, big = _matmul(tmp_path / "s.onnx", 16, 16), _matmul(tmp_path / "b.onnx", 2048, 4096)  # 32 MiB
    res = peak_memory({"small": small, "big": big}, threads=1, runs=3)
    assert set(res) == {"small", "big"}
    for d in res.values():
        assert d["threads"] == 1 and d["runs"] == 3
        assert d["baseline_mb"] > 10  # python + numpy + onnxruntime imported
        assert d["peak_rss_mb"] == pytest.approx(d["baseline_mb"] + d["peak_mb"], abs=0.02)
    # the bare runtime is the same for both processes, the model's own cost is not
    assert abs(res["big"]["baseline_mb"] - res["small"]["baseline_mb"]) < 8
    assert res["big"]["peak_mb"] - res["small"]["peak_mb"] > 30  # at least one copy of 32 MiB of weights
    assert res["small"]["peak_mb"] < res["big"]["peak_mb"] / 2


def test_peak_memory_errors_are_one_line(tmp_path):
    with pytest.raises(CompressError, match="ONNX file not found"):
        measure_peak_memory(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(CompressError) as e:
        measure_peak_memory(bad, threads=1, runs=1)
    assert "\n" not in str(e.value) and "model: " in str(e.value) and "ONNX Runtime cannot load" in str(e.value)
    assert "CompressError" not in str(e.value)
    notes: list[str] = []
    assert peak_memory_or_note({"original": bad}, notes, threads=1, runs=1) == {"original": None}
    assert len(notes) == 1 and notes[0].startswith("Peak memory not measured: ")
    with pytest.raises(CompressError, match="must be >= 1"):
        peak_memory({"m": bad}, threads=0)


def test_process_peak_is_in_megabytes_and_at_least_the_current_rss():
    import psutil

    now = psutil.Process().memory_info().rss / 2**20
    peak = process_peak_mb()
    assert now * 0.99 <= peak < now * 50  # KiB / bytes mix-ups are off by 1024x


# ---------------------------------------------------------------- conditions


def _sysfs(root: Path, freqs_khz: list[int], temps_mc: list[int] | None = None, governor_: str = "schedutil",
           throttles: list[int] | None = None) -> None:
    """A fake /sys with per-CPU cpufreq (and thermal zones / throttle counters when given)."""
    for i, f in enumerate(freqs_khz):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True, exist_ok=True)
        (d / "scaling_cur_freq").write_text(f"{f}\n")
        (d / "scaling_governor").write_text(f"{governor_}\n")
        (d / "cpuinfo_max_freq").write_text("2400000\n")
        if throttles is not None:
            t = root / f"sys/devices/system/cpu/cpu{i}/thermal_throttle"
            t.mkdir(parents=True, exist_ok=True)
            (t / "core_throttle_count").write_text(f"{throttles[i]}\n")
    for i, t in enumerate(temps_mc or []):
        z = root / f"sys/class/thermal/thermal_zone{i}"
        z.mkdir(parents=True, exist_ok=True)
        (z / "temp").write_text(f"{t}\n")


def test_readings_from_sysfs(tmp_path):
    _sysfs(tmp_path, [2000000, 1800000], [45000, 52500, -273000])  # a placeholder zone is ignored
    assert cpu_freq_mhz(tmp_path) == 1900.0
    assert governor(tmp_path) == "schedutil"
    assert temperature_c(tmp_path) == 52.5


def test_steady_timing_is_not_flagged(tmp_path):
    _sysfs(tmp_path, [2400000, 2400000], [50000])
    mon = Monitor(2, root=tmp_path).start()
    _sysfs(tmp_path, [2300000, 2300000], [55000])  # -4 %, +5 C: within the limits
    mon.sample()
    c = mon.finish()
    assert c["possibly_throttled"] is False and c["throttle_reason"] is None
    assert (c["threads"], c["governor"], c["freq_mhz_max"]) == (2, "schedutil", 2400.0)
    assert (c["freq_mhz_before"], c["freq_mhz_min"], c["freq_mhz_after"]) == (2400.0, 2300.0, 2300.0)
    assert (c["temperature_c_before"], c["temperature_c_after"]) == (50.0, 55.0)


def test_a_frequency_dip_during_timing_is_flagged_even_if_it_recovers(tmp_path):
    _sysfs(tmp_path, [2400000, 2400000])
    mon = Monitor(1, root=tmp_path).start()
    _sysfs(tmp_path, [1500000, 1500000])
    mon.sample()  # between rounds
    _sysfs(tmp_path, [2400000, 2400000])
    c = mon.finish()
    assert c["possibly_throttled"] is True
    assert "frequency fell 38%" in c["throttle_reason"] and "2400 -> 1500 MHz" in c["throttle_reason"]
    assert c["temperature_c_before"] is None  # no thermal zone in this fake /sys: null, no error


def test_temperature_rise_hot_cpu_and_throttle_counter_are_flagged(tmp_path):
    _sysfs(tmp_path, [2400000], [60000], throttles=[3])
    mon = Monitor(1, root=tmp_path).start()
    _sysfs(tmp_path, [2400000], [82000], throttles=[5])
    c = mon.finish()
    reasons = c["throttle_reason"]
    assert c["possibly_throttled"] is True
    assert "temperature rose 22.0 C" in reasons and "reached 80 C" in reasons and "2 thermal throttle" in reasons
    mon = Monitor(1, root=tmp_path, max_temp_rise_c=30, max_temp_c=90).start()  # thresholds are settings
    assert mon.finish()["possibly_throttled"] is False


def test_no_sensors_gives_nulls_not_errors(tmp_path):
    c = Monitor(4, root=tmp_path / "empty").start().finish()
    for k in ("governor", "freq_mhz_before", "freq_mhz_min", "freq_mhz_after", "freq_mhz_max",
              "temperature_c_before", "temperature_c_after", "throttle_reason"):
        assert c[k] is None, k
    assert c["possibly_throttled"] is False and c["threads"] == 4


def test_compare_latency_samples_between_rounds_and_attaches_conditions(tmp_path):
    a, b = _matmul(tmp_path / "a.onnx", 8, 8), _matmul(tmp_path / "b.onnx", 8, 16)
    _sysfs(tmp_path, [2400000])
    calls = []

    class Dipping(Monitor):  # the frequency drops in the middle of the timing
        def sample(self):
            calls.append("sample")
            if len(calls) == 3:
                _sysfs(tmp_path, [1200000])
            super().sample()
            _sysfs(tmp_path, [2400000])

    res = latency.compare_latency({"original": a, "compressed": b}, np.ones((1, 8), np.float32), threads=1,
                                  warmup=1, runs=20, monitor=Dipping(1, root=tmp_path))
    assert len(calls) == 9  # every 2 rounds of 20, never before the first
    for stats in res.values():
        assert stats["runs"] == 20 and stats["conditions"]["possibly_throttled"] is True
    assert res["original"]["conditions"] is res["compressed"]["conditions"]
    plain = latency.measure(a, None, threads=1, warmup=1, runs=3)  # default monitor: the real machine
    assert plain["conditions"]["threads"] == 1 and isinstance(plain["conditions"]["possibly_throttled"], bool)


# ---------------------------------------------------------------- every run's report


@pytest.mark.slow
def test_run_report_has_peak_memory_and_conditions(tmp_path):
    from compress.cli import main

    out = tmp_path / "run"
    code = main(["run", str(ROOT / "recipes/lenet5-dynamic-int8.yaml"), "--out", str(out), "--quiet",
                 "--set", "fidelity.samples=40", "--set", "benchmark.runs=5", "--set", "benchmark.warmup=1"])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    for side in ("original", "compressed"):
        assert 0 < rep[side]["peak_memory_mb"] < 500
    assert rep["passes_peak_memory_mb"] > rep["compressed"]["peak_memory_mb"]  # torch + data in this process
    cond = rep["conditions"]
    assert cond["threads"] == rep["environment"]["threads"] and cond["possibly_throttled"] in (True, False)
    md = (out / "report.md").read_text()
    assert "## Memory" in md and "## Measurement conditions" in md
    assert "## conditions" not in md  # not rendered twice by the generic renderer


def test_profile_prints_the_peak_inference_memory(capsys):
    import re

    from compress.cli import main

    assert main(["profile", "lenet5", "--threads", "1", "--top", "2"]) == 0
    m = re.search(r"Peak inference memory: ([\d.]+) MB \(ONNX Runtime, 1 thread", capsys.readouterr().out)
    assert m and 0 < float(m.group(1)) < 500
