"""Progress display for runs: a rich progress bar, or nothing when quiet."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress(quiet: bool = False):
    """Yield a ``rich.progress.Progress`` (started) or None when quiet / not a terminal-capable run."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True) as p:
        yield p
