"""The three hooks every long-running science function takes.

The worker fills them in (progress into the database, cancellation from a signal,
checkpoint upload to the store); tests and notebooks use the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def _noop_progress(step: int, total: int, stats: dict[str, Any]) -> None:
    return None


def _never() -> bool:
    return False


def _noop_checkpoint(step: int, path: Path) -> None:
    return None


@dataclass
class Callbacks:
    on_progress: Callable[[int, int, dict[str, Any]], None] = field(default=_noop_progress)
    should_stop: Callable[[], bool] = field(default=_never)
    on_checkpoint: Callable[[int, Path], None] = field(default=_noop_checkpoint)
