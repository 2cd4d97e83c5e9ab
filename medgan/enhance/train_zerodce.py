"""Training of the Zero-DCE curve estimator through Accelerate (same contract as medgan.train).

Training images are clean images darkened on the fly (``pairs.darken_batch``: random exposure,
shot and read noise, seeded by (seed, step, rank)). The paper's four losses never see the clean
image; ``cfg.reference_weight > 0`` adds an L1 term to it (the pair maker's reference), which
anchors the brightness where the exposure target E = 0.6 is wrong (black-background medical images,
bright scenes).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from medgan import rundir
from medgan.callbacks import Callbacks
from medgan.config import TrainConfig
from medgan.loop import run_training
from medgan.enhance.pairs import clean_images, darken_batch
from medgan.enhance.zerodce import EXPORT_NAME, build_dce, zerodce_losses
from medgan.pngio import write_png

_SAMPLE_STREAM = 7
_SAMPLES = 8


class ZeroDCETrainer:
    """DCE-Net, its optimiser (Adam, lr = cfg.lr_g, as the paper's 1e-4 scale) and one step."""

    def __init__(self, cfg: TrainConfig, accelerator, images: torch.Tensor):
        self.cfg, self.acc = cfg, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch = max(1, cfg.batch_size // self.world)
        self.x = images  # [N, C, S, S] in [0, 1], on the CPU
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        net = build_dce(cfg)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_g, weight_decay=1e-4)
        self.net, self.opt = accelerator.prepare(net, opt)

    def _pair(self, step: int, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = rundir.step_generator(self.cfg.seed, step, self.rank, stream)
        idx = torch.randint(len(self.x), (self.batch,), generator=gen)
        clean = self.x[idx]
        return darken_batch(clean, gen).to(self.acc.device), clean.to(self.acc.device)  # [B, C, S, S] each

    def _dark_batch(self, step: int, stream: int = 0) -> torch.Tensor:
        return self._pair(step, stream)[0]

    def train_step(self, step: int) -> dict[str, float]:
        """One Adam step on the four zero-reference losses (+ the reference L1); returns them as floats."""
        dark, clean = self._pair(step)
        self.opt.zero_grad(set_to_none=True)
        with self.acc.autocast():
            enhanced, curves = self.net(dark)
        parts = zerodce_losses(dark, enhanced.float(), curves.float())
        if self.cfg.reference_weight > 0:
            parts["ref"] = F.l1_loss(enhanced.float(), clean)
            parts["loss"] = parts["loss"] + self.cfg.reference_weight * parts["ref"]
        self.acc.backward(parts["loss"])
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 0.1)  # the paper's gradient clip
        self.opt.step()
        return {k: float(v.detach()) for k, v in parts.items()}

    def exports(self) -> dict[str, torch.nn.Module]:
        return {EXPORT_NAME: self.acc.unwrap_model(self.net)}

    @torch.no_grad()
    def sample(self, path: Path) -> None:
        """Two rows: fixed darkened inputs and their enhancement."""
        dark = self._dark_batch(0, _SAMPLE_STREAM)[:_SAMPLES]
        out, _ = self.acc.unwrap_model(self.net)(dark)
        rows = [torch.cat(list(t.float().clamp(0, 1)), dim=2) for t in (dark, out)]  # [C, S, k*S]
        write_png(path, torch.cat(rows, dim=1).cpu().numpy())


def train_zerodce(cfg: TrainConfig, run_dir: Path, data_dir: Path | None = None,
                  callbacks: Callbacks | None = None) -> dict:
    """Train a zerodce run in ``run_dir`` (resuming if it holds a checkpoint); returns result.json content."""
    if cfg.model != "zerodce":
        raise ValueError(f"train_zerodce needs model='zerodce', got {cfg.model!r}")
    callbacks = callbacks or Callbacks()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    acc = rundir.make_accelerator(cfg, run_dir)
    trainer = ZeroDCETrainer(cfg, acc, clean_images(cfg, data_dir))
    result = run_training(trainer, run_dir, callbacks)
    del trainer
    rundir.finish_accelerator(acc)
    return result
