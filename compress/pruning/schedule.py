"""How many channels a layer keeps: the per-round ratio schedule and ``round_to`` rounding."""

from __future__ import annotations

import math


def linear(ratio: float, steps: int) -> list[float]:
    """Cumulative target ratio after each of ``steps`` rounds (index 0 = before pruning).

    Same contract as torch-pruning's ``iterative_pruning_ratio_scheduler``:
    ``linear(0.5, 5) == [0, 0.1, 0.2, 0.3, 0.4, 0.5]``.
    """
    return [ratio * i / steps for i in range(steps + 1)]


def rounded_keep(current: int, keep: int, round_to: int | None, mode: str = "nearest") -> int:
    """Channels kept after rounding ``keep`` to a multiple of ``round_to``.

    ``mode="nearest"`` rounds to the nearest multiple (halves up), never below ``round_to``
    and never above ``current``, so ``round_to`` is also the minimum width of a pruned layer
    (ratio 0.3 of 16 channels keeps 8: 0.5 removed). ``mode="down"`` rounds the *removed*
    count down (keeps the next multiple up), so a layer never loses more than asked (ratio
    0.3 of 16 keeps all 16). A layer narrower than ``round_to`` is left as it is.
    Without ``round_to`` the plain count is returned (it may be 0: the caller refuses that).
    """
    if not round_to or round_to <= 1:
        return max(0, min(keep, current)) if round_to is None else max(1, min(keep, current))
    if current < round_to:
        return current
    if mode == "down":
        k = math.ceil(keep / round_to) * round_to
        return current if k >= current else max(round_to, k)
    k = int(math.floor(keep / round_to + 0.5)) * round_to
    return max(round_to, min(k, current - current % round_to))


def planned_keep(initial: int, current: int, ratio: float, round_to: int | None, mode: str = "nearest") -> int:
    """Channels a layer keeps at cumulative ``ratio`` (as torch-pruning counts, then rounded)."""
    return rounded_keep(current, int(initial * (1 - ratio)), round_to, mode)
