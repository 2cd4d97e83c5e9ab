"""Training of the ESRGAN-style super-resolution model through Accelerate.

Pairs are made on the fly: the clean image is the high-resolution target and its bicubic,
antialiased downsampling (``pairs.downsample``) the input. Generator loss: L1 + ``cfg.adv_weight``
(the paper's 5e-3) x the relativistic adversarial loss (0: no discriminator steps, the paper's
PSNR-oriented first stage), plus a VGG19 perceptual loss only when ``cfg.perceptual_weights`` names
a local file (no weights are ever downloaded; without one
the term is omitted and stats.jsonl says so).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from medgan import rundir
from medgan.callbacks import Callbacks
from medgan.config import TrainConfig
from medgan.loop import run_training
from medgan.enhance.pairs import clean_images, downsample, upsample_bicubic
from medgan.enhance.perceptual import VGGFeatures
from medgan.enhance.sr import GENERATOR_NAME, build_sr_discriminator, build_sr_generator, ragan_losses
from medgan.errors import DataError
from medgan.pngio import write_png

PERCEPTUAL_WEIGHT = 1.0
_SAMPLES = 4


class SRTrainer:
    """Generator, discriminator, their optimisers and one step."""

    def __init__(self, cfg: TrainConfig, accelerator, images: torch.Tensor):
        if cfg.image_size // cfg.sr_scale < 4:
            raise DataError(f"image_size {cfg.image_size} is too small for x{cfg.sr_scale} SR")
        self.cfg, self.acc = cfg, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch = max(1, cfg.batch_size // self.world)
        self.x = images  # [N, C, S, S] in [0, 1]
        torch.manual_seed(cfg.seed)
        g, d = build_sr_generator(cfg), build_sr_discriminator(cfg)
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(0.9, 0.99))
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99))
        self.g, self.d, self.opt_g, self.opt_d = accelerator.prepare(g, d, opt_g, opt_d)
        self.vgg = None
        if cfg.perceptual_weights:
            self.vgg = VGGFeatures.from_file(Path(cfg.perceptual_weights)).to(accelerator.device)

    def _pair(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = rundir.step_generator(self.cfg.seed, step, self.rank)
        idx = torch.randint(len(self.x), (self.batch,), generator=gen)
        hr = self.x[idx].to(self.acc.device)  # [B, C, S, S]
        return downsample(hr, self.cfg.sr_scale), hr  # [B, C, S/s, S/s], [B, C, S, S]

    def train_step(self, step: int) -> dict[str, float]:
        """One D update (RaGAN) and one G update (L1 + adversarial [+ perceptual]); with
        ``cfg.adv_weight == 0`` only the G update on L1 [+ perceptual] (the PSNR-oriented stage)."""
        lr, hr = self._pair(step)
        with self.acc.autocast():
            sr = self.g(lr)
        if self.cfg.adv_weight == 0:
            return self._content_step(sr, hr)
        self.opt_d.zero_grad(set_to_none=True)
        with self.acc.autocast():
            logits = self.d(torch.cat([hr, sr.detach()])).float()  # [2B]
        loss_d = ragan_losses(logits[: self.batch], logits[self.batch:], for_generator=False)
        self.acc.backward(loss_d)
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        with self.acc.no_sync(self.d):
            with self.acc.autocast():
                logits = self.d(torch.cat([hr, sr])).float()
            adv = ragan_losses(logits[: self.batch], logits[self.batch:], for_generator=True)
            loss_g, out = self._content_loss(sr, hr)
            loss_g = loss_g + self.cfg.adv_weight * adv
            out.update(loss_d=float(loss_d.detach()), adv=float(adv.detach()))
            self.acc.backward(loss_g)
        self.opt_g.step()
        out["loss_g"] = float(loss_g.detach())
        return out

    def _content_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 to the high-resolution tile, plus the perceptual term when a VGG is loaded; the logged parts."""
        l1 = F.l1_loss(sr.float(), hr)
        loss, out = l1, {"l1": float(l1.detach())}
        if self.vgg is not None:
            perc = F.l1_loss(self.vgg(sr.float()), self.vgg(hr))
            loss = loss + PERCEPTUAL_WEIGHT * perc
            out["perceptual"] = float(perc.detach())
        return loss, out

    def _content_step(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
        self.opt_g.zero_grad(set_to_none=True)
        loss_g, out = self._content_loss(sr, hr)
        self.acc.backward(loss_g)
        self.opt_g.step()
        out["loss_g"] = float(loss_g.detach())
        return out

    def exports(self) -> dict[str, torch.nn.Module]:
        return {GENERATOR_NAME: self.acc.unwrap_model(self.g)}

    @torch.no_grad()
    def sample(self, path: Path) -> None:
        """Rows: bicubic, generator, ground truth on fixed images."""
        hr = self.x[:_SAMPLES].to(self.acc.device)
        lr = downsample(hr, self.cfg.sr_scale)
        rows = [upsample_bicubic(lr, self.cfg.sr_scale), self.acc.unwrap_model(self.g)(lr).clamp(0, 1), hr]
        write_png(path, torch.cat([torch.cat(list(r.float()), dim=2) for r in rows], dim=1).cpu().numpy())


def train_esrgan(cfg: TrainConfig, run_dir: Path, data_dir: Path | None = None,
                 callbacks: Callbacks | None = None) -> dict:
    """Train an esrgan run in ``run_dir`` (resuming if it holds a checkpoint); returns result.json content."""
    if cfg.model != "esrgan":
        raise ValueError(f"train_esrgan needs model='esrgan', got {cfg.model!r}")
    callbacks = callbacks or Callbacks()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    acc = rundir.make_accelerator(cfg, run_dir)
    trainer = SRTrainer(cfg, acc, clean_images(cfg, data_dir))
    notes = {} if trainer.vgg is not None else {
        "perceptual": "omitted: cfg.perceptual_weights names no local VGG19 file"}
    result = run_training(trainer, run_dir, callbacks, notes)
    del trainer
    rundir.finish_accelerator(acc)
    return result
