"""The GAN trainer (dcgan / cgan): a `medgan.loop.Trainer`, driven by the one training loop.

One step: D on real+fake (hinge or non-saturating loss; lazy R1 on the real half every `r1_every`
steps), then G through D on the same fakes (plus the mask-coupling terms, medgan.coupling), then the
EMA generator. D sees both halves through the same augmentation: DiffAugment's fixed policy and/or
ADA, whose probability p follows the r_t overfitting heuristic (medgan.diffaug.AdaState). Every
random draw of step t on rank r (batch indices, noise, augmentation) comes from a generator seeded
by (seed, t, r), and the checkpoint holds G, D, EMA, both optimisers, the scaler and ADA's state, so
N steps + resume + N steps equals 2N straight.

Diagnostics in every stats row: D's mean logits on real and fake, ADA's p and r_t, gradient norms of
G and D, the share of lesion-class fakes whose mask is non-empty; a dying mask channel, a
discriminator that wins outright or one that gives no signal are said in the log and the row as they
happen; and at every checkpoint the quality probes of medgan.probes.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from medgan import rundir
from medgan.callbacks import Callbacks
from medgan.config import TrainConfig
from medgan.coupling import coupling_loss, fit_segmenter, image_follows_mask, lesion_weight
from medgan.data import ImageDataset, training_dataset
from medgan.diffaug import AdaState, ada_augment, diff_augment
from medgan.errors import DataError
from medgan.grids import sample_grid
from medgan.loop import run_training
from medgan.losses import d_loss, g_loss, r1_penalty
from medgan.models import build_discriminator, build_generator

log = logging.getLogger("medgan.train")
EMA_NAME = "generator_ema"
SEGMENTER_NAME = "mask_segmenter"
GRID_COLS = 6
_SAMPLE_STREAM = 7  # generator stream id of the fixed sample-grid noise
MASK_DEAD_RATIO = 0.5  # a mask channel is "dead" when lesion-class fakes have masks < half as often as reals


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


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


class GanTrainer:
    """Networks, optimisers, augmentation state and one training step. Built after the Accelerator exists."""

    def __init__(self, cfg: TrainConfig, accelerator, data: ImageDataset):
        self.cfg, self.acc, self.data = cfg, accelerator, data
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch = max(1, cfg.batch_size // self.world)  # cfg.batch_size is the global batch
        dev = accelerator.device
        # joint tensor [N, C(+1), S, S]: the mask channel (in [-1, 1]) rides along with the image
        x = data.images if not cfg.with_masks else torch.cat([data.images, data.masks * 2 - 1], 1)
        self.x, self.y = x.contiguous(), data.labels.clone()
        self.x_dev = self.x.to(dev) if self.x.numel() * 4 < 2**30 else None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        g, d = build_generator(cfg), build_discriminator(cfg)
        self.lesion_classes, self.real_mask_share = self._lesion_classes()
        if getattr(g, "uses_bank", False):  # mask first: the lesion-class masks of the run (medgan.models.cgan)
            g.set_mask_bank(data.masks[self.lesion_classes[self.y]], self.lesion_classes)
        self.ema = copy.deepcopy(g).eval().requires_grad_(False).to(dev)
        betas = (0.5, 0.999) if cfg.model == "dcgan" else (0.0, 0.999)  # DCGAN paper / SNGAN-BigGAN
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=betas)
        self.g, self.d, self.opt_g, self.opt_d = accelerator.prepare(g, d, opt_g, opt_d)
        self.ada = AdaState(cfg.ada_p, cfg.ada_target, cfg.ada_kimg, cfg.ada_interval, cfg.ada)
        self.seg, self.seg_stats = None, {}
        if cfg.with_masks and cfg.mask_coupling == "segmenter":
            self.seg, self.seg_stats = fit_segmenter(data.images, data.masks, cfg.seed, cfg.mask_segmenter_steps,
                                                     device=dev)
            self.pos_weight = lesion_weight(data.masks)
        self.alerting: dict[str, bool] = {}  # which tick alerts are on (said once per change)
        self.last_r1 = torch.zeros(())
        self.probes = None
        if cfg.probes and accelerator.is_main_process:
            from medgan.probes import Probes

            try:
                self.probes = Probes(cfg, data, device=dev)
            except DataError as e:  # too few real images to train judges on: train anyway, say so once
                log.warning("quality probes off for this run: %s (no best snapshot; use --checkpoint last)", e)

    def _lesion_classes(self) -> tuple[torch.Tensor, float]:
        """Classes whose real images mostly carry a non-empty mask [K] bool, and that share among them."""
        k = self.cfg.num_classes
        if not self.cfg.with_masks:
            return torch.zeros(k, dtype=torch.bool), 0.0
        nonempty = (self.data.masks.flatten(1).amax(1) > 0.5).float()  # [N]
        share = torch.zeros(k).index_add_(0, self.y, nonempty) / torch.bincount(self.y, minlength=k).clamp(min=1)
        lesion = share >= 0.5
        return lesion, float(share[lesion].mean()) if lesion.any() else 0.0

    # ------------------------------------------------------------------ one step

    def _batch(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x), (self.batch,), generator=gen)  # sampling with replacement
        dev = self.acc.device
        real = self.x_dev[idx.to(dev)] if self.x_dev is not None else self.x[idx].to(dev)  # [B, C(+1), S, S]
        z = torch.randn(self.batch, self.cfg.z_dim, generator=gen).to(dev)  # [B, z_dim]
        return real, self.y[idx].to(dev), z

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """What D sees: DiffAugment's policy, then ADA at the current p (both differentiable)."""
        cfg = self.cfg
        if cfg.diffaug:
            x = diff_augment(x, cfg.diffaug, gen, cfg.channels)
        if cfg.ada or cfg.ada_p > 0:
            x = ada_augment(x, self.ada.p, cfg.ada_ops, gen, cfg.channels)
        return x

    def train_step(self, step: int) -> dict[str, float]:
        """One D update and one G update; returns this rank's losses and diagnostics as floats."""
        cfg, acc, c = self.cfg, self.acc, self.cfg.channels
        gen = rundir.step_generator(cfg.seed, step, self.rank)
        real, y, z = self._batch(gen)
        with acc.autocast():
            raw = self.g(z, y, logits=True)  # [B, C(+1), S, S] pre-tanh
        fake = torch.tanh(raw)
        # --- D: real and fake in one forward (one SN pass, one DDP reduction); lazy R1 on the real half
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
        self.opt_d.zero_grad(set_to_none=True)
        real_in = real.detach().requires_grad_(do_r1)
        both = self._augment(torch.cat([real_in, fake.detach().to(real.dtype)]), gen)  # [2B, ...]
        with acc.autocast():
            logits = self.d(both, torch.cat([y, y])).float()  # [2B]
        lr_, lf = logits[: self.batch], logits[self.batch:]
        loss_d = d_loss(lr_, lf, cfg.loss)
        out = {"loss_d": loss_d.detach(), "d_real": lr_.detach().mean(), "d_fake": lf.detach().mean()}
        self.ada.accumulate(lr_)
        if do_r1:
            r1 = r1_penalty(lr_, real_in)
            loss_d = loss_d + 0.5 * cfg.r1_gamma * cfg.r1_every * r1  # lazy: weight x interval (StyleGAN2)
            self.last_r1 = r1.detach()
        if cfg.r1_gamma > 0:
            out["r1"] = self.last_r1  # the latest penalty (lazy R1 computes it every r1_every steps)
        acc.backward(loss_d)
        out["grad_d"] = _grad_norm(self.d.parameters())
        self.opt_d.step()
        # --- G: D's gradients here are local scratch (no_sync) and cleared before the next D step
        self.opt_g.zero_grad(set_to_none=True)
        with acc.no_sync(self.d):
            with acc.autocast():
                loss_g = g_loss(self.d(self._augment(fake, gen), y).float(), cfg.loss)
            out["loss_g_adv"] = loss_g.detach()
            if self.seg is not None:
                if cfg.masks_from_bank:  # the mask is given: the image follows it
                    coupling, parts = image_follows_mask(fake[:, :c], (raw[:, c:] > 0).float(), self.seg,
                                                         self.pos_weight)
                else:  # the mask follows the image
                    coupling, parts = coupling_loss(raw[:, c:], fake[:, :c], self.seg, self.pos_weight)
                loss_g = loss_g + cfg.mask_weight * coupling
                out.update(parts)
            acc.backward(loss_g)
        out["grad_g"] = _grad_norm(self.g.parameters())
        self.opt_g.step()
        out["loss_g"] = loss_g.detach()
        if cfg.with_masks:
            out.update(self._mask_stats(fake[:, c:].detach(), y))
        self.update_ema(step)
        self.ada.adjust(step, self._reduce_sum)
        out["ada_p"] = torch.tensor(self.ada.p)
        if self.ada.rt == self.ada.rt:  # not NaN: defined after the first interval
            out["ada_rt"] = torch.tensor(self.ada.rt)
        return {k: float(v) for k, v in out.items()}

    def _mask_stats(self, mask: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """mask_nonempty: share of lesion-class fakes with any mask pixel; mask_px: mask pixel share."""
        on = (mask.flatten(1) > 0).any(1).float()  # [B]
        lesion = self.lesion_classes.to(y.device)[y]
        out = {"mask_px": (mask > 0).float().mean()}
        if lesion.any():
            out["mask_nonempty"] = on[lesion].mean()
        return out

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        return self.acc.reduce(t.to(self.acc.device), reduction="sum").cpu()

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """EMA of G's weights; the decay ramps up (step+1)/(step+10) so short runs still move."""
        decay = min(self.cfg.ema_decay, (step + 1) / (step + 10))
        g = self.acc.unwrap_model(self.g)
        for pe, p in zip(self.ema.parameters(), g.parameters()):
            pe.lerp_(p.detach().to(pe.dtype), 1.0 - decay)
        for be, b in zip(self.ema.buffers(), g.buffers()):
            be.copy_(b)  # BN running statistics follow G directly

    # ------------------------------------------------------------------ the loop's hooks

    def _conditions(self, row: dict) -> dict[str, tuple[bool, str]]:
        """Named problems a stats row can show: (present?, what to say)."""
        out = {}
        share = row.get("mask_nonempty")
        if share is not None and self.real_mask_share > 0:
            out["mask channel dead"] = (share < MASK_DEAD_RATIO * self.real_mask_share,
                                        f"{share:.0%} of lesion-class fakes have a mask pixel "
                                        f"(real: {self.real_mask_share:.0%})")
        gap = row["d_real"] - row["d_fake"]
        if self.cfg.loss == "hinge":
            out["discriminator wins outright"] = (row["loss_d"] < 1e-3, f"hinge margins met on every sample "
                                                  f"(D(real) {row['d_real']:.2f}, D(fake) {row['d_fake']:.2f}): "
                                                  "D gets no gradient; raise ADA/augmentation or R1")
        out["discriminator gives no signal"] = (abs(gap) < 0.05 and abs(row["d_real"]) < 0.1,
                                                f"D(real) {row['d_real']:.3f} ~ D(fake) {row['d_fake']:.3f} ~ 0")
        return out

    def tick_alerts(self, row: dict) -> list[str]:
        """Said once when a problem appears in the stats rows (and once when it is gone)."""
        msgs = []
        for name, (present, detail) in self._conditions(row).items():
            if present != self.alerting.get(name, False):
                self.alerting[name] = present
                msgs.append(f"{name}: {detail}" if present else f"cleared: {name}: {detail}")
        return msgs

    def exports(self) -> dict[str, torch.nn.Module]:
        out = {EMA_NAME: self.ema, "generator": self.g}
        if self.seg is not None:
            out[SEGMENTER_NAME] = self.seg
        return out

    def resume_modules(self) -> dict[str, torch.nn.Module]:
        # the segmenter comes back from the checkpoint too: a refit on another device may differ in the last bit
        return {EMA_NAME: self.ema, **({SEGMENTER_NAME: self.seg} if self.seg is not None else {})}

    def state_dict(self) -> dict:
        return {"ada": self.ada.state_dict(), "alerting": dict(self.alerting)}

    def load_state_dict(self, state: dict) -> None:
        self.ada.load_state_dict(state["ada"])
        self.alerting = dict(state.get("alerting", {}))

    def probe(self, step: int) -> dict | None:
        return self.probes(self.ema, step) if self.probes is not None else None

    @torch.no_grad()
    def sample(self, path: Path) -> None:
        """Real images beside EMA samples on fixed noise, one row per class, masks overlaid (medgan.grids)."""
        cfg, dev = self.cfg, self.acc.device
        gen = rundir.step_generator(cfg.seed, 0, 0, _SAMPLE_STREAM)
        z = torch.randn(cfg.num_classes * GRID_COLS, cfg.z_dim, generator=gen).to(dev)
        y = torch.arange(cfg.num_classes).repeat_interleave(GRID_COLS).to(dev)
        fake = self.ema(z, y).float().clamp(-1, 1).cpu()  # [K*cols, C(+1), S, S]
        sample_grid(path, self.x, self.y, fake, y.cpu(), cfg.channels, GRID_COLS,
                           self.data.class_names, caption=f"{path.stem}")


def train_gan(cfg: TrainConfig, run_dir: Path, data_dir: Path | None = None,
              callbacks: Callbacks | None = None) -> dict:
    """Train a dcgan/cgan run in `run_dir` (resuming if it holds a checkpoint); returns result.json."""
    callbacks = callbacks or Callbacks()
    run_dir = Path(run_dir)
    prev_det = torch.are_deterministic_algorithms_enabled()
    acc = rundir.make_accelerator(cfg, run_dir)
    try:
        trainer = GanTrainer(cfg, acc, load_training_data(cfg, data_dir))
        notes = {f"segmenter/{k}": round(v, 6) for k, v in trainer.seg_stats.items()}
        result = run_training(trainer, run_dir, callbacks, notes)
        del trainer
        rundir.finish_accelerator(acc)
        return result
    finally:
        torch.use_deterministic_algorithms(prev_det)
