"""The default executor: one item after another, in this process, no Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from compress.executors.base import Executor, call_item, per_item


class LocalExecutor(Executor):
    """In-process and sequential; each item runs with its own torch thread count (restored after)."""

    name = "local"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
            threads: int | Sequence[int] = 1) -> Iterator[tuple[int, Any]]:
        items = list(items)
        for i, (item, n) in enumerate(zip(items, per_item(threads, len(items)))):
            try:
                result = call_item(fn, item, n)
            except Exception as e:  # yielded, not raised; KeyboardInterrupt / Terminated still stop the map
                result = e
            yield i, result
