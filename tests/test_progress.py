"""Progress output: a rich bar on a terminal, plain lines (every 10 % or 30 s) when not a TTY."""

from __future__ import annotations

import io
import re

import pytest

from compress import progress as progress_mod
from compress.progress import PlainProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def _percentages(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\((\d+)%\)", text)]


def test_not_a_tty_prints_a_line_every_ten_percent():
    out = io.StringIO()
    with progress(stream=out) as bar:
        assert isinstance(bar, PlainProgress)
        task = bar.add_task("finetune", total=250)
        for _ in range(250):
            bar.update(task, advance=1)
        bar.update(task, advance=0)  # finished tasks print nothing more
        bar.remove_task(task)
    lines = out.getvalue().splitlines()
    assert _percentages(out.getvalue()) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert lines[0].startswith("finetune: 25/250 (10%)") and lines[-1].startswith("finetune: 250/250 (100%)")
    assert "left" in lines[0] and "left" not in lines[-1]


def test_big_steps_print_once_per_step_and_small_totals_every_step():
    out = io.StringIO()
    bar = PlainProgress(out)
    task = bar.add_task("sweep", total=3)
    for _ in range(3):
        bar.advance(task)
    assert _percentages(out.getvalue()) == [33, 67, 100]
    out2 = io.StringIO()
    bar2 = PlainProgress(out2)
    t2 = bar2.add_task("calibrate", total=100)
    bar2.update(t2, advance=35)  # jumps over 10, 20 and 30 %: one line, and the next at 40 %
    bar2.update(t2, advance=4)
    bar2.update(t2, advance=1)
    assert _percentages(out2.getvalue()) == [35, 40]


def test_slow_work_prints_every_30_seconds_between_percent_steps():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(out, clock=clock)
    task = bar.add_task("finetune", total=10_000)
    for _ in range(5):
        clock.t += 10.0
        bar.advance(task)  # 5 steps in 50 s: far below 10 %, but 30 s went by once
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: 3/10000 (0%), 30 s")
    clock.t += 31.0
    bar.advance(task)
    assert len(out.getvalue().splitlines()) == 2


def test_description_change_and_unknown_total_print_a_line():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(out, clock=clock)
    task = bar.add_task("sweep", total=None)
    bar.update(task, description="sweep ratio=0.5")
    clock.t += 40.0
    bar.update(task, advance=7)
    assert out.getvalue().splitlines() == ["sweep ratio=0.5: 0, 0 s", "sweep ratio=0.5: 7, 40 s"]


def test_quiet_yields_nothing_and_a_terminal_gets_the_rich_bar(monkeypatch):
    with progress(quiet=True, stream=io.StringIO()) as bar:
        assert bar is None
    from rich.progress import Progress

    monkeypatch.setattr(progress_mod.sys, "stderr", TTY())
    with progress(stream=TTY()) as bar:
        assert isinstance(bar, Progress)
    monkeypatch.setattr(progress_mod.sys, "stderr", io.StringIO())  # stderr redirected: no bar can be drawn
    with progress(stream=TTY()) as bar:
        assert isinstance(bar, PlainProgress)


@pytest.mark.slow
def test_a_real_finetune_prints_plain_progress_to_a_pipe(tmp_path, capsys):
    """A run whose stdout is not a terminal (pytest captures it) shows where the fine-tune is."""
    from compress.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: ft\nmodel: {builtin: lenet5}\ndata:\n  validation: {builtin: digits, split: val}\n"
                      "  calibration: {builtin: digits, split: calib}\npasses:\n"
                      "  - {type: finetune, steps: 20, batch_size: 8, loss: task,"
                      " data: {builtin: digits, split: train}}\n"
                      "fidelity: {min_top1_agreement: 0.5, overlays: 0, samples: 40}\n"
                      "benchmark: {threads: 1, warmup: 1, runs: 3}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert _percentages("\n".join(l for l in text.splitlines() if l.startswith("finetune:"))) == list(
        range(10, 101, 10))
