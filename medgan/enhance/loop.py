"""The training loop shared by the enhancement models (zerodce, esrgan).

Same contract as the GAN loop (docs/INTERFACES.md): resume from the newest complete
checkpoint, one ``should_stop`` check per step (then a final checkpoint and status
"stopped"), ``stats.jsonl`` ticks, sample images, ``DivergenceError`` on a non-finite loss.
A trainer object supplies the model-specific parts (see ``Trainer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from medgan import rundir
from medgan.callbacks import Callbacks
from medgan.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from medgan.config import TrainConfig
from medgan.data import training_dataset


class Trainer(Protocol):
    cfg: TrainConfig
    acc: Any
    batch: int
    world: int

    def train_step(self, step: int) -> dict[str, float]: ...

    def exports(self) -> dict[str, torch.nn.Module]: ...

    def sample(self, path: Path) -> None: ...


def clean_images(cfg: TrainConfig, data_dir: Path | None) -> torch.Tensor:
    """Training images ``[N, C, S, S]`` in [0, 1]: a folder, else the bundled phantom."""
    ds = training_dataset(cfg, data_dir)
    return ((ds.images + 1) / 2).clamp(0, 1).contiguous()


def _save(tr: Trainer, run_dir: Path, step: int, callbacks: Callbacks, notes: dict) -> Path:
    cfg = tr.cfg
    path = save_checkpoint(tr.acc, run_dir, step, {"model": cfg.model, "seed": cfg.seed, **notes},
                           cfg.keep_checkpoints, exports=tr.exports(), config=cfg)
    if tr.acc.is_main_process:
        callbacks.on_checkpoint(step, path)
    return path


def run_training(tr: Trainer, run_dir: Path, callbacks: Callbacks, notes: dict[str, str] | None = None) -> dict:
    """Drive ``tr`` from its newest checkpoint to ``cfg.steps``; returns the result.json content.

    ``notes`` (e.g. why a loss term is off) go into the first stats row and the checkpoints.
    """
    cfg, acc = tr.cfg, tr.acc
    notes = dict(notes or {})
    if acc.is_main_process:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    ckpt = latest_checkpoint(run_dir)
    step = start = int(load_checkpoint(acc, ckpt, cfg.model)["step"]) if ckpt else 0
    last_saved, stopped, ticker, first = (start if start else -1), False, rundir.Ticker(), True
    while step < cfg.steps:
        losses = tr.train_step(step)
        stopped, losses = rundir.agree(acc, callbacks.should_stop(), losses)
        step += 1
        rundir.check_finite(losses, step)
        ticker.add(tr.batch * tr.world)
        if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps or stopped):
            row: dict[str, Any] = {"step": step, "total": cfg.steps, **ticker.tick(),
                                   **{k: round(v, 6) for k, v in losses.items()}}
            if first:
                row.update(notes)
                first = False
            rundir.append_stats(run_dir, row)
            callbacks.on_progress(step, cfg.steps, row)
        if acc.is_main_process and (step % cfg.sample_every == 0 or step == cfg.steps):
            tr.sample(run_dir / "samples" / f"step-{step:06d}.png")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped:
            _save(tr, run_dir, step, callbacks, notes)
            last_saved = step
        if stopped:
            break
    if last_saved != step:
        _save(tr, run_dir, step, callbacks, notes)
    early = stopped and step < cfg.steps
    result = {"status": "stopped" if early else "completed", "step": step,
              "reason": "stop requested" if early else None}
    if acc.is_main_process:
        # the train.py entry point writes result.json only on failure; success is ours (as gan_loop)
        rundir.write_result(run_dir, **result)
    return result
