"""The one training loop of every model family (GAN, Zero-DCE, ESRGAN).

A trainer object supplies the model-specific parts (``Trainer``); this loop owns the contract of
docs/INTERFACES.md once: resume from the newest complete checkpoint (weights, optimisers, RNG, the
trainer's own JSON state such as ADA's p, the best-snapshot record), one ``should_stop`` check per
step (then a final checkpoint and status "stopped"), ``stats.jsonl`` ticks, sample grids,
TensorBoard through Accelerate's tracker API, quality probes at every checkpoint with best-snapshot
bookkeeping, and ``DivergenceError`` on a non-finite loss.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medgan import rundir
from medgan.callbacks import Callbacks
from medgan.checkpoint import BEST, latest_checkpoint, load_checkpoint, save_checkpoint
from medgan.config import TrainConfig

log = logging.getLogger("medgan.train")


class Trainer(Protocol):
    """What a model family gives the loop.

    Optional hooks, looked up with ``hasattr`` (a trainer without them keeps the defaults):
    - ``tick_alerts(row) -> list[str]``: problems seen in a stats row (said in the log and the row);
    - ``resume_modules() -> dict[str, Module]``: exported modules to load back on resume (the EMA);
    - ``state_dict() -> dict`` / ``load_state_dict(dict)``: JSON loop state kept in the checkpoint;
    - ``probe(step) -> dict | None``: quality probes at a checkpoint; a dict with a ``score`` (higher is
      better) makes the loop keep the best snapshot, and ``alerts`` (list of str) are logged as warnings.
    """

    cfg: TrainConfig
    acc: Any
    batch: int
    world: int

    def train_step(self, step: int) -> dict[str, float]: ...

    def exports(self) -> dict[str, torch.nn.Module]: ...

    def sample(self, path: Path) -> None: ...


class _Tracker:
    """TensorBoard through accelerate's tracker API (main process only), or nothing."""

    def __init__(self, acc, cfg: TrainConfig):
        self.acc, self.on = acc, bool(cfg.tensorboard and acc.log_with)
        if self.on:
            hp = {k: v for k, v in cfg.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}
            acc.init_trackers("tensorboard", config=hp)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.on:
            self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                          and math.isfinite(v)}, step=step)

    def image(self, tag: str, png: Path, step: int) -> None:
        """Log the PNG a trainer's `sample` wrote (any trainer: the file is the interface)."""
        if self.on and png.is_file() and self.acc.is_main_process:
            from PIL import Image

            with Image.open(png) as im:
                arr = np.asarray(im.convert("RGB"))  # [H, W, 3] uint8
            self.acc.get_tracker("tensorboard").log_images({tag: arr}, step=step, dataformats="HWC")


def _save(tr: Trainer, run_dir: Path, step: int, callbacks: Callbacks, notes: dict, best: "_Best") -> Path:
    cfg = tr.cfg
    extra = {"model": cfg.model, "seed": cfg.seed, **notes,
             "loop": tr.state_dict() if hasattr(tr, "state_dict") else {}, "best": best.record}
    path = save_checkpoint(tr.acc, run_dir, step, extra, cfg.keep_checkpoints, exports=tr.exports(), config=cfg,
                           protect=best.steps)
    if tr.acc.is_main_process:
        callbacks.on_checkpoint(step, path)
    return path


def _resume(tr: Trainer, run_dir: Path) -> tuple[int, dict | None]:
    """Load the newest complete checkpoint into `tr`; returns (its step, the best record it carried)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0, None
    modules = tr.resume_modules() if hasattr(tr, "resume_modules") else {}
    meta = load_checkpoint(tr.acc, ckpt, tr.cfg.model, modules=modules)
    if hasattr(tr, "load_state_dict") and meta.get("loop"):
        tr.load_state_dict(meta["loop"])
    return int(meta["step"]), meta.get("best")


class _Best:
    """The best-scoring probed checkpoint so far, {"step", "score", "probes"}.

    It travels in every checkpoint's extra.json (so a resumed run, on any host, knows it) and is
    written to RUN/best.json for readers (the worker stores it beside the checkpoints; `generate
    --checkpoint best` reads it). Its checkpoint is never pruned."""

    def __init__(self, run_dir: Path, record: dict | None):
        self.path, self.record = Path(run_dir) / BEST, record

    @property
    def steps(self) -> set[int]:
        return {int(self.record["step"])} if self.record else set()

    def offer(self, step: int, probes: dict) -> bool:
        """Keep `step` if its probe score beats the best so far; write best.json. True if kept."""
        score = probes.get("score")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            return False
        if self.record is not None and score <= self.record["score"]:
            return False
        self.record = {"step": int(step), "score": float(score), "probes": probes}
        rundir.write_json(self.path, self.record)
        return True


def _probe(tr: Trainer, step: int, best: _Best, run_dir: Path, tracker: _Tracker) -> None:
    """Run the trainer's probes (main rank only: they touch no collective) and record them."""
    if not tr.acc.is_main_process or not hasattr(tr, "probe"):
        return
    probes = tr.probe(step)
    if not probes:
        return
    alerts = list(probes.pop("alerts", []))
    is_best = best.offer(step, probes)
    for msg in alerts:
        log.warning("step %d: %s", step, msg)
    row = {"step": step, "total": tr.cfg.steps, "kind": "probe", "alerts": alerts,
           "best_step": best.record["step"] if best.record else None,
           **{f"probe/{k}": v for k, v in probes.items()}}
    rundir.append_stats(run_dir, row)
    tracker.scalars({f"probe/{k}": v for k, v in probes.items()}, step)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in probes.items()}
    log.info("step %d: probes %s%s", step, shown, " (best so far)" if is_best else "")


def run_training(tr: Trainer, run_dir: Path, callbacks: Callbacks, notes: dict[str, str] | None = None) -> dict:
    """Drive ``tr`` from its newest checkpoint to ``cfg.steps``; returns the result.json content.

    ``notes`` (e.g. why a loss term is off) go into the first stats row and the checkpoints.
    """
    cfg, acc = tr.cfg, tr.acc
    run_dir = Path(run_dir)
    notes = dict(notes or {})
    if acc.is_main_process:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    step, best_record = _resume(tr, run_dir)
    start = step
    best, tracker = _Best(run_dir, best_record), _Tracker(acc, cfg)
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
            alerts = tr.tick_alerts(row) if hasattr(tr, "tick_alerts") else []
            if alerts:
                row["alerts"] = alerts
                for msg in alerts:
                    log.warning("step %d: %s", step, msg)
            rundir.append_stats(run_dir, row)
            tracker.scalars(row, step)
            callbacks.on_progress(step, cfg.steps, row)
        if acc.is_main_process and (step % cfg.sample_every == 0 or step == cfg.steps):
            grid = run_dir / "samples" / f"step-{step:06d}.png"
            tr.sample(grid)
            tracker.image("samples", grid, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped:
            if not stopped:  # a stop (SIGTERM, preemption) checkpoints at once; probes would delay it
                _probe(tr, step, best, run_dir, tracker)
            _save(tr, run_dir, step, callbacks, notes, best)
            last_saved = step
        if stopped:
            break
    if last_saved != step:
        _save(tr, run_dir, step, callbacks, notes, best)
    early = stopped and step < cfg.steps
    result = {"status": "stopped" if early else "completed", "step": step,
              "reason": "stop requested" if early else None}
    if best.record:
        result["best_step"] = best.record["step"]
    if acc.is_main_process:
        # the train.py entry point writes result.json only on failure; success is ours
        rundir.write_result(run_dir, **result)
    return result
