"""Timing shared by the benchmarks: on a shared, noisy machine the least disturbed run is the truest."""

from __future__ import annotations

import time
from typing import Any, Callable


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """The fastest of `repeat` calls of `fn` (the least disturbed by a shared machine), and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def alternate(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each side once per round, in turn (A B A B ...), so that a burst of load on the machine hits
    both alike; returns every side's measurements (whatever each call returns: seconds, a p50...).
    The figure of a side is then its best (`min`) or, for rates, its `max`."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        # Swap the order every other round: neither side always runs first (cold caches) or last.
        names = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in names:
            out[name].append(sides[name]())
    return out
