"""Progress display for runs: a rich progress bar on a terminal, plain lines otherwise, nothing when quiet.

On a terminal (stdout and stderr both TTYs) a live rich bar is drawn on stderr. When output goes to
a log file or CI, a bar cannot be drawn, so :class:`PlainProgress` prints a line per task every
10 % of its total or every 30 s, whichever comes first (and when it finishes), to stdout.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import IO


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


class PlainProgress:
    """The subset of ``rich.progress.Progress`` the runner uses, printing plain lines.

    A line is written when a task passes the next ``step`` fraction of its total, when
    ``interval`` seconds went by since its last line, when its description changes and when
    it completes. ``clock`` is injectable for tests.
    """

    def __init__(self, stream: IO[str], *, step: float = 0.10, interval: float = 30.0, clock=time.monotonic):
        self.stream, self.step, self.interval, self.clock = stream, step, interval, clock
        self._tasks: dict[int, dict] = {}
        self._next_id = 0

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_) -> int:
        tid, now = self._next_id, self.clock()
        self._next_id += 1
        self._tasks[tid] = {"description": description, "total": total, "completed": completed,
                            "start": now, "last": now, "next": self.step, "done": False}
        return tid

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **_) -> None:
        t = self._tasks.get(task_id)
        if t is None:
            return
        renamed = description is not None and description != t["description"]
        if description is not None:
            t["description"] = description
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance:
            t["completed"] += advance
        now, total_ = self.clock(), t["total"]
        frac = t["completed"] / total_ if total_ else None
        finished = frac is not None and frac >= 1.0
        crossed = frac is not None and frac + 1e-9 >= t["next"]
        if finished and t["done"]:
            return
        if renamed or crossed or finished or now - t["last"] >= self.interval:
            self._line(t, now, frac)
            t["last"], t["done"] = now, finished
            if frac is not None:
                while t["next"] <= frac + 1e-9:
                    t["next"] += self.step

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        self._tasks.pop(task_id, None)

    def _line(self, t: dict, now: float, frac: float | None) -> None:
        elapsed = now - t["start"]
        done = t["completed"]
        count = f"{done:g}/{t['total']:g} ({frac:.0%})" if frac is not None else f"{done:g}"
        left = f", ~{elapsed * (1 - frac) / frac:.0f} s left" if frac and 0 < frac < 1 else ""
        self.stream.write(f"{t['description']}: {count}, {elapsed:.0f} s{left}\n")
        self.stream.flush()


@contextlib.contextmanager
def progress(quiet: bool = False, stream: IO[str] | None = None):
    """Yield a started ``rich.progress.Progress`` on a terminal, a :class:`PlainProgress` writing to
    ``stream`` (default stdout) when stdout or stderr is not a terminal, or None when quiet."""
    if quiet:
        yield None
        return
    stream = stream if stream is not None else sys.stdout
    if not (_isatty(stream) and _isatty(sys.stderr)):
        yield PlainProgress(stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True) as p:
        yield p
