"""The executor interface, and what every executor does around one item (threads, working directory)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from compress.errors import CompressError


class ExecutorError(CompressError):
    """An executor cannot start or reach its workers (missing extra, bad address, too few CPUs)."""


class TaskError(Exception):
    """Stands in for an exception raised in a worker that could not be sent back as itself."""


def per_item(threads: int | Sequence[int], n: int) -> list[int]:
    """``threads`` (one count for all, or one per item) as a list of ``n`` counts >= 1."""
    counts = [int(threads)] * n if isinstance(threads, int) else [int(t) for t in threads]
    if len(counts) != n:
        raise ValueError(f"threads: expected {n} counts, got {len(counts)}")
    if any(t < 1 for t in counts):
        raise ExecutorError(f"threads must be >= 1 (got {min(counts)})")
    return counts


def call_item(fn: Callable[[Any], Any], item: Any, threads: int, cwd: str | None = None) -> Any:
    """``fn(item)`` with torch on ``threads`` intra-op threads and, when given, ``cwd`` as working directory.

    ONNX Runtime sessions take their thread count from the caller (``make_session(threads=)``);
    ``OMP_NUM_THREADS`` is left to the executor (Ray sets it per task to the task's CPUs).
    """
    from compress.runtime.threads import torch_threads

    old = os.getcwd() if cwd else None
    if cwd:
        try:
            os.chdir(cwd)
        except OSError:
            raise ExecutorError(f"working directory {cwd} does not exist on this worker: the data and the "
                                "output folder must be on a filesystem every node shares") from None
    try:
        with torch_threads(threads):
            return fn(item)
    finally:
        if old:
            os.chdir(old)


class Executor(ABC):
    """Runs a module-level function over items; yields ``(index, result_or_exception)`` as each finishes.

    An exception raised inside ``fn`` is yielded in place of its result, never raised;
    ``KeyboardInterrupt`` and other non-``Exception`` signals still stop the map.
    """

    name: str = ""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
            threads: int | Sequence[int] = 1) -> Iterator[tuple[int, Any]]:
        """``fn(item)`` for every item, each with ``threads`` CPU threads (one count, or one per item)."""

    def close(self) -> None:
        """Release what the executor started (nothing for the local one)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
