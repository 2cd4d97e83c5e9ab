"""Training entry point: `train()` for the worker and `python -m medgan.train` under accelerate.

Exit codes of the module entry point: 0 completed or stopped (SIGTERM), 2 bad data,
3 divergence, 4 checkpoint problem, 1 anything else. result.json is written in every case.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from medgan.callbacks import Callbacks
from medgan.config import TrainConfig
from medgan.errors import CheckpointError, DataError, DivergenceError, MedganError

EXIT_CODES = {DataError: 2, DivergenceError: 3, CheckpointError: 4}


def train(cfg: TrainConfig, run_dir: Path, data_dir: Path | None = None,
          callbacks: Callbacks | None = None) -> dict:
    """Train `cfg.model` in `run_dir` (resuming from its newest complete checkpoint).

    `data_dir=None` trains on the bundled phantom `cfg.phantom`. Returns the result.json
    content. Raises DataError, DivergenceError or CheckpointError.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model in ("dcgan", "cgan"):
        from medgan.gan_loop import train_gan

        return train_gan(cfg, run_dir, data_dir, callbacks)
    if cfg.model == "zerodce":
        from medgan.enhance.train_zerodce import train_zerodce

        return train_zerodce(cfg, run_dir, data_dir, callbacks)
    if cfg.model == "esrgan":
        from medgan.enhance.train_sr import train_esrgan

        return train_esrgan(cfg, run_dir, data_dir, callbacks)
    raise ValueError(f"unknown model {cfg.model!r}")


def _is_main_rank() -> bool:
    # set by accelerate launch / torchrun; absent in a plain single process
    return int(os.environ.get("RANK", "0")) == 0


class _StopFlag:
    """SIGTERM/SIGINT handler: ask the loop to stop at the next step (it then checkpoints)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True

    def __bool__(self) -> bool:
        return self.requested


def main(argv: list[str] | None = None) -> int:
    """CLI: --config RUN/config.json --run-dir RUN [--data DIR]. Returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m medgan.train", description=__doc__)
    ap.add_argument("--config", type=Path, required=True, help="TrainConfig JSON file")
    ap.add_argument("--run-dir", type=Path, required=True, help="run directory (outputs, checkpoints)")
    ap.add_argument("--data", type=Path, default=None, help="dataset directory (default: phantom)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flag = _StopFlag()
    signal.signal(signal.SIGTERM, flag)
    signal.signal(signal.SIGINT, flag)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        cfg = TrainConfig.model_validate_json(args.config.read_text())
    except (OSError, ValueError) as exc:
        return _fail(args.run_dir, 0, f"invalid config {args.config}: {exc}", 2)
    try:
        result = train(cfg, args.run_dir, args.data, Callbacks(should_stop=lambda: bool(flag)))
    except MedganError as exc:
        code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
        return _fail(args.run_dir, _last_step(args.run_dir), f"{type(exc).__name__}: {exc}", code)
    except Exception as exc:  # unexpected: keep the traceback in the log, the reason in result.json
        traceback.print_exc()
        return _fail(args.run_dir, _last_step(args.run_dir), f"{type(exc).__name__}: {exc}", 1)
    print(f"medgan.train: {result['status']} at step {result['step']}", file=sys.stderr)
    return 0


def _last_step(run_dir: Path) -> int:
    from medgan.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return int(ckpt.name.split("-")[1]) if ckpt else 0


def _fail(run_dir: Path, step: int, reason: str, code: int) -> int:
    from medgan.rundir import write_result

    print(f"medgan.train: failed: {reason}", file=sys.stderr)
    if _is_main_rank():
        write_result(run_dir, "failed", step, reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
