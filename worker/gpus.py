"""GPU inventory of a worker, and gang leases of k cards on one host.

The Celery process never initialises CUDA, so cards are discovered with `nvidia-smi`
(or `CUDA_VISIBLE_DEVICES`), not torch. A fake inventory (`--gpus 0,1 --fake-gpus`) lets the
scheduling logic run on machines without GPUs: the leased "cards" become CPU processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass



@dataclass(frozen=True)
class Inventory:
    host: str
    cards: tuple[int, ...]
    fake: bool = False
    cpu_threads: int | None = None  # CPU threads one job may use (None: every core)

    @property
    def real(self) -> bool:
        return bool(self.cards) and not self.fake


def detect_gpus() -> list[int]:
    """Every visible card's index, without importing torch or touching CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [int(x) for x in out.split() if x.strip().isdigit()]


def parse_gpus(value: str | None) -> list[int]:
    """'0,1,3' → [0, 1, 3]; 'none' or '' → []; None or 'all' → every detected card."""
    if value is None or value.strip().lower() == "all":
        return detect_gpus()
    if value.strip().lower() in ("", "none"):
        return []
    try:
        cards = sorted({int(x) for x in value.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--gpus takes card indices like 0,1,2 (or none/all), not {value!r}") from None
    if any(c < 0 for c in cards):
        raise ValueError("GPU indices are non-negative")
    return cards
