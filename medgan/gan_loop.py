"""The GAN training loop (dcgan / cgan) through Accelerate.

One step: D on real+fake (hinge or non-saturating loss, optional R1), then G through D on the
same fakes, then the EMA generator. Every random draw of step t on rank r (batch indices,
noise, DiffAugment) comes from a generator seeded by (seed, t, r), and the checkpoint holds
G, D, EMA, both optimisers and the scaler, so N steps + resume + N steps equals 2N straight.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from medgan import rundir
from medgan.callbacks import Callbacks
from medgan.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from medgan.config import TrainConfig
from medgan.data import ImageDataset, training_dataset
from medgan.diffaug import diff_augment
from medgan.errors import DataError
from medgan.losses import d_loss, g_loss, r1_penalty
from medgan.models import build_discriminator, build_generator
from medgan.pngio import write_png

EMA_NAME = "generator_ema"
GRID_COLS = 8
_SAMPLE_STREAM = 7  # generator stream id of the fixed sample-grid noise


def load_training_data(cfg: TrainConfig, data_dir: Path | None) -> ImageDataset:
    """The dataset of a run, checked against the config (classes, masks). Raises DataError."""
    ds = training_dataset(cfg, data_dir)
    if cfg.num_classes == 1:
        ds.labels = torch.zeros_like(ds.labels)  # unconditional: one class
    elif ds.num_classes > cfg.num_classes:
        raise DataError(f"dataset has {ds.num_classes} classes {ds.class_names} but num_classes={cfg.num_classes}")
    if cfg.with_masks and ds.masks is None:
        raise DataError("with_masks=True but the dataset has no masks (masks/<stem>.png or <stem>_mask.png)")
    return ds


class GanTrainer:
    """Networks, optimisers and one training step. Built after the Accelerator exists."""

    def __init__(self, cfg: TrainConfig, accelerator, data: ImageDataset):
        self.cfg, self.acc = cfg, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch = max(1, cfg.batch_size // self.world)  # cfg.batch_size is the global batch
        # joint tensor [N, C(+1), S, S]: the mask channel (in [-1, 1]) rides along with the image
        x = data.images if not cfg.with_masks else torch.cat([data.images, data.masks * 2 - 1], 1)
        self.x, self.y = x.contiguous(), data.labels.clone()
        self.x_dev = self.x.to(accelerator.device) if self.x.numel() * 4 < 2**30 else None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        g, d = build_generator(cfg), build_discriminator(cfg)
        self.ema = copy.deepcopy(g).eval().requires_grad_(False).to(accelerator.device)
        betas = (0.5, 0.999) if cfg.model == "dcgan" else (0.0, 0.999)  # DCGAN paper / SNGAN-BigGAN
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=betas)
        self.g, self.d, self.opt_g, self.opt_d = accelerator.prepare(g, d, opt_g, opt_d)

    def _batch(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x), (self.batch,), generator=gen)  # sampling with replacement
        dev = self.acc.device
        real = self.x_dev[idx.to(dev)] if self.x_dev is not None else self.x[idx].to(dev)  # [B, C(+1), S, S]
        z = torch.randn(self.batch, self.cfg.z_dim, generator=gen).to(dev)  # [B, z_dim]
        return real, self.y[idx].to(dev), z

    def train_step(self, step: int) -> dict[str, float]:
        """One D update and one G update; returns this rank's losses as floats."""
        cfg, acc = self.cfg, self.acc
        gen = rundir.step_generator(cfg.seed, step, self.rank)
        real, y, z = self._batch(gen)
        c = cfg.channels
        with acc.autocast():
            fake = self.g(z, y)  # [B, C(+1), S, S]; fakes share the real batch's labels
        # --- D: real and fake in one forward (one BN/SN pass, one DDP reduction)
        self.opt_d.zero_grad(set_to_none=True)
        real_in = real.detach().requires_grad_(cfg.r1_gamma > 0)
        both = torch.cat([real_in, fake.detach().to(real.dtype)])  # [2B, ...]
        if cfg.diffaug:
            both = diff_augment(both, cfg.diffaug, gen, c)
        with acc.autocast():
            logits = self.d(both, torch.cat([y, y])).float()  # [2B]
        loss_d = d_loss(logits[: self.batch], logits[self.batch:], cfg.loss)
        out = {"loss_d": loss_d.detach(), "d_real": logits[: self.batch].detach().mean(),
               "d_fake": logits[self.batch:].detach().mean()}
        if cfg.r1_gamma > 0:
            r1 = r1_penalty(logits[: self.batch], real_in)
            loss_d = loss_d + 0.5 * cfg.r1_gamma * r1
            out["r1"] = r1.detach()
        acc.backward(loss_d)
        self.opt_d.step()
        # --- G: D's gradients here are local scratch (no_sync) and cleared before the next D step
        self.opt_g.zero_grad(set_to_none=True)
        with acc.no_sync(self.d):
            aug = diff_augment(fake, cfg.diffaug, gen, c) if cfg.diffaug else fake
            with acc.autocast():
                loss_g = g_loss(self.d(aug, y).float(), cfg.loss)
            acc.backward(loss_g)
        self.opt_g.step()
        out["loss_g"] = loss_g.detach()
        self.update_ema(step)
        return {k: float(v) for k, v in out.items()}

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """EMA of G's weights; the decay ramps up (step+1)/(step+10) so short runs still move."""
        decay = min(self.cfg.ema_decay, (step + 1) / (step + 10))
        g = self.acc.unwrap_model(self.g)
        for pe, p in zip(self.ema.parameters(), g.parameters()):
            pe.lerp_(p.detach().to(pe.dtype), 1.0 - decay)
        for be, b in zip(self.ema.buffers(), g.buffers()):
            be.copy_(b)  # BN running statistics follow G directly

    @torch.no_grad()
    def sample_grid(self, path: Path) -> None:
        """EMA samples on fixed noise: one row per class (plus a mask row per class)."""
        cfg, dev = self.cfg, self.acc.device
        gen = rundir.step_generator(cfg.seed, 0, 0, _SAMPLE_STREAM)
        z = torch.randn(cfg.num_classes * GRID_COLS, cfg.z_dim, generator=gen).to(dev)
        y = torch.arange(cfg.num_classes).repeat_interleave(GRID_COLS).to(dev)
        out = (self.ema(z, y).float().clamp(-1, 1) + 1) / 2  # [K*8, C(+1), S, S] in [0, 1]
        rows = []
        for k in range(cfg.num_classes):
            part = out[k * GRID_COLS:(k + 1) * GRID_COLS]
            rows.append(torch.cat(list(part[:, : cfg.channels]), dim=2))  # [C, S, 8S]
            if cfg.with_masks:
                rows.append(torch.cat(list(part[:, cfg.channels:]), dim=2).expand(cfg.channels, -1, -1))
        write_png(path, torch.cat(rows, dim=1).cpu().numpy())  # [C, rows*S, 8S]


def _resume(trainer: GanTrainer, run_dir: Path) -> int:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0
    meta = load_checkpoint(trainer.acc, ckpt, trainer.cfg.model, modules={EMA_NAME: trainer.ema})
    return int(meta["step"])


def _save(trainer: GanTrainer, run_dir: Path, step: int, callbacks: Callbacks) -> Path:
    cfg = trainer.cfg
    path = save_checkpoint(trainer.acc, run_dir, step, {"model": cfg.model, "seed": cfg.seed}, cfg.keep_checkpoints,
                           exports={EMA_NAME: trainer.ema, "generator": trainer.g}, config=cfg)
    if trainer.acc.is_main_process:
        callbacks.on_checkpoint(step, path)
    return path


def _tick(trainer: GanTrainer, run_dir: Path, step: int, losses: dict, ticker, callbacks: Callbacks) -> None:
    if not trainer.acc.is_main_process:
        return
    row: dict[str, Any] = {"step": step, "total": trainer.cfg.steps, **ticker.tick(),
                           **{k: round(v, 6) for k, v in losses.items()}}
    rundir.append_stats(run_dir, row)
    callbacks.on_progress(step, trainer.cfg.steps, row)


def train_gan(cfg: TrainConfig, run_dir: Path, data_dir: Path | None = None,
              callbacks: Callbacks | None = None) -> dict:
    """Train a dcgan/cgan run in `run_dir` (resuming if it holds a checkpoint); returns result.json."""
    callbacks = callbacks or Callbacks()
    run_dir = Path(run_dir)
    prev_det = torch.are_deterministic_algorithms_enabled()
    acc = rundir.make_accelerator(cfg)
    try:
        data = load_training_data(cfg, data_dir)
        if acc.is_main_process:
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
        trainer = GanTrainer(cfg, acc, data)
        step = start = _resume(trainer, run_dir)
        last_saved, stopped, ticker = start if start else -1, False, rundir.Ticker()
        while step < cfg.steps:
            losses = trainer.train_step(step)
            stopped, losses = rundir.agree(acc, callbacks.should_stop(), losses)
            step += 1
            rundir.check_finite(losses, step)
            ticker.add(trainer.batch * trainer.world)
            if step % cfg.log_every == 0 or step == cfg.steps or stopped:
                _tick(trainer, run_dir, step, losses, ticker, callbacks)
            if acc.is_main_process and (step % cfg.sample_every == 0 or step == cfg.steps):
                trainer.sample_grid(run_dir / "samples" / f"step-{step:06d}.png")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped:
                _save(trainer, run_dir, step, callbacks)
                last_saved = step
            if stopped:
                break
        if last_saved != step:  # e.g. resumed a finished run, or steps == start
            _save(trainer, run_dir, step, callbacks)
        result = {"status": "stopped" if stopped and step < cfg.steps else "completed", "step": step, "reason": None}
        if stopped and step < cfg.steps:
            result["reason"] = "stop requested"
        if acc.is_main_process:
            rundir.write_result(run_dir, **result)
        del trainer, data
        rundir.finish_accelerator(acc)
        return result
    finally:
        torch.use_deterministic_algorithms(prev_det)

