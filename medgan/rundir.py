"""Run-directory plumbing shared by every training loop (GAN, enhancement): the accelerator,
per-step random generators, stats.jsonl, result.json and cross-rank agreement on stop/NaN.

Layout and file formats are the contract in docs/INTERFACES.md.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgan.config import TrainConfig
from medgan.errors import DivergenceError


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (tmp + rename): readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def append_stats(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one progress tick to RUN/stats.jsonl."""
    with open(Path(run_dir) / "stats.jsonl", "a") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def write_result(run_dir: Path, status: str, step: int, reason: str | None = None, **extra: Any) -> dict:
    """Write RUN/result.json {"status", "step", "reason", ...} and return it."""
    result = {"status": status, "step": int(step), "reason": reason, **extra}
    write_json(Path(run_dir) / "result.json", result)
    return result


def resolve_precision(requested: str) -> str:
    """'auto' -> bf16 on CUDA devices that support it, else fp16 on CUDA, 'no' on CPU.
    Explicit fp16/bf16 on a CPU-only machine fall back to 'no' (no CPU autocast speedup)."""
    if not torch.cuda.is_available():
        return "no"
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(cfg: TrainConfig, run_dir: Path | None = None):
    """An Accelerator for `cfg` (CPU gloo when no CUDA: see PITFALLS), deterministic if asked.

    With `run_dir` and `cfg.tensorboard`, accelerate's TensorBoard tracker writes event files to
    RUN/tensorboard/ (the loop calls init_trackers). On CUDA, deterministic mode only warns about ops
    without a deterministic kernel (grid_sample's backward, used by ADA); on the CPU everything is exact.
    """
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cfg.deterministic:
        # must be set before cuBLAS initialises; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=cuda)
        torch.backends.cudnn.benchmark = False
    tracker = {}
    if run_dir is not None and cfg.tensorboard and tensorboard_available():
        tracker = {"log_with": "tensorboard", "project_dir": str(run_dir)}
    return Accelerator(cpu=not cuda, mixed_precision=resolve_precision(cfg.mixed_precision), **tracker)


def tensorboard_available() -> bool:
    """True when torch.utils.tensorboard can write event files (the `tensorboard` package is installed)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def finish_accelerator(accelerator) -> None:
    """Release everything before end_training: avoids the gloo abort at exit (PITFALLS).
    The caller drops its own references (models, optimisers) first."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """CPU generator for one (seed, step, rank, stream): data order, noise and augmentation
    of a step depend on nothing else, so a resumed run draws exactly what a straight one would."""
    s = np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))


def agree(accelerator, stop: bool, losses: dict[str, float]) -> tuple[bool, dict[str, float]]:
    """One all-reduce per step: any rank's stop request stops all; losses are averaged.

    A NaN on any rank becomes a NaN everywhere, so every rank raises together instead of
    one rank hanging in the next collective.
    """
    if accelerator.num_processes == 1:
        return stop, losses
    keys = sorted(losses)
    t = torch.tensor([float(stop)] + [losses[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="sum")
    return bool(t[0] > 0), {k: float(v) / accelerator.num_processes for k, v in zip(keys, t[1:].tolist())}


def check_finite(losses: dict[str, float], step: int) -> None:
    """Raise DivergenceError naming the first non-finite loss."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise DivergenceError(f"non-finite {name} ({value}) at step {step}")


class Ticker:
    """Throughput and wall time between progress ticks."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.images = 0

    def add(self, n: int) -> None:
        self.images += n

    def tick(self) -> dict[str, float]:
        now = time.perf_counter()
        out = {"time": round(now - self.t0, 4), "imgs_per_s": round(self.images / max(now - self.last, 1e-9), 3)}
        self.last, self.images = now, 0
        return out
