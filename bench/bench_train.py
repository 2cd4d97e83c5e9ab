"""Conditional GAN training throughput: train() (accelerate, callbacks, stats, samples,
checkpoints) against a plain PyTorch loop of the same networks, losses, augmentation and
EMA in the same process. ratio = train() imgs/s / plain imgs/s (target >= 0.95)."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from medgan.callbacks import Callbacks
from medgan.config import PhantomSpec, TrainConfig
from medgan.data import phantom_dataset
from medgan.diffaug import diff_augment
from medgan.losses import d_loss, g_loss
from medgan.models import build_discriminator, build_generator
from medgan.train import train


def _cfg(steps: int) -> TrainConfig:
    return TrainConfig(model="cgan", image_size=32, base_channels=16, z_dim=64, batch_size=32, steps=steps,
                       checkpoint_every=max(1, steps // 2), sample_every=max(1, steps // 2), log_every=10,
                       probes=False, phantom=PhantomSpec(count=256, size=32))


def plain_loop(cfg: TrainConfig) -> float:
    """The same algorithm without the framework; returns wall seconds including data setup."""
    t0 = time.perf_counter()
    data = phantom_dataset(cfg.phantom, cfg.image_size)
    torch.manual_seed(cfg.seed)
    g, d = build_generator(cfg), build_discriminator(cfg)
    ema = copy.deepcopy(g).eval().requires_grad_(False)
    og = torch.optim.Adam(g.parameters(), cfg.lr_g, betas=(0.0, 0.999))
    od = torch.optim.Adam(d.parameters(), cfg.lr_d, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(0)
    for step in range(cfg.steps):
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        real, y = data.images[idx], data.labels[idx]
        fake = g(torch.randn(cfg.batch_size, cfg.z_dim, generator=gen), y)
        od.zero_grad(set_to_none=True)
        logits = d(diff_augment(torch.cat([real, fake.detach()]), cfg.diffaug, gen, 1), torch.cat([y, y]))
        d_loss(logits[: cfg.batch_size], logits[cfg.batch_size:], cfg.loss).backward()
        od.step()
        og.zero_grad(set_to_none=True)
        g_loss(d(diff_augment(fake, cfg.diffaug, gen, 1), y), cfg.loss).backward()
        og.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), g.parameters()):
                pe.lerp_(p, 1 - cfg.ema_decay)
    return time.perf_counter() - t0


def framework(cfg: TrainConfig) -> float:
    """train() wall seconds including accelerator and data setup."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, Path(tmp), callbacks=Callbacks())
        return time.perf_counter() - t0


def _compare(cfg: TrainConfig, repeats: int) -> tuple[float, float]:
    plain, fw = [], []
    for _ in range(repeats):  # alternate so a shared machine's load hits both sides alike
        plain.append(plain_loop(cfg))
        fw.append(framework(cfg))
    return min(plain), min(fw)


def run(quick: bool = False) -> list[dict]:
    """Rows: train() imgs/s vs the plain loop (same process, alternating, best of 3), for a short run with
    frequent checkpoints (fixed costs dominate) and, in full mode, a longer run at a usual cadence."""
    plain_loop(_cfg(2)), framework(_cfg(2))  # warm-up: imports, allocator, accelerate state
    runs = [(20 if quick else 100, None)] + ([] if quick else [(600, 300)])
    rows = []
    for steps, every in runs:
        cfg = _cfg(steps)
        if every:
            cfg = cfg.model_copy(update={"checkpoint_every": every, "sample_every": every})
        t_plain, t_fw = _compare(cfg, 3 if steps <= 100 else 2)
        n = steps * cfg.batch_size
        rows.append({"name": f"cgan_train_32px_{steps}_steps", "value": round(n / t_fw, 2), "unit": "imgs/s",
                     "baseline": round(n / t_plain, 2), "ratio": round(t_plain / t_fw, 3),
                     "note": f"batch {cfg.batch_size}, base 16, CPU; train() incl. accelerator and data setup, TensorBoard, "
                             f"a checkpoint and a sample grid every {cfg.checkpoint_every} steps, stats every "
                             f"{cfg.log_every}; baseline = plain loop of the same nets/losses/DiffAugment/EMA"})
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
