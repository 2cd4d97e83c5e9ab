"""A minimal GAN as a research team writes it: plain torch + accelerate, nothing of medgan imported.

It runs anywhere (`python train.py`, `accelerate launch train.py`) and, queued with `medgan run`, gets fault
tolerance from three environment variables: it writes checkpoints to $MEDGAN_CHECKPOINT_DIR (and resumes
from the newest one it finds there: after a killed worker the job system puts the last snapshot back),
results to $MEDGAN_OUTPUT_DIR (they become the job's artifacts), and progress lines to $MEDGAN_STATS_FILE.

    medgan run --gpus 2 -- python train.py --steps 2000 --lr 2e-4
    medgan run --data ./my-pngs -- python train.py          # 16x16 grayscale crops of your PNGs

Without --data it learns bright discs on a dark background (a stand-in for lesions on a scan).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

SIZE = 16  # image side


def discs(n: int, seed: int) -> torch.Tensor:
    """[n, 1, 16, 16] in [-1, 1]: one bright disc of random centre and radius per image."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = g.uniform(4, 12, (2, n, 1, 1))
    r = g.uniform(2, 5, (n, 1, 1))
    img = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
    return torch.from_numpy(img * 2 - 1).unsqueeze(1)


def pngs(folder: Path) -> torch.Tensor:
    """Your images: every PNG under `folder`, grayscale, resized to 16x16, in [-1, 1]."""
    from PIL import Image

    files = sorted(folder.rglob("*.png"))
    if not files:
        raise SystemExit(f"no PNG files under {folder}")
    arr = [np.asarray(Image.open(f).convert("L").resize((SIZE, SIZE)), np.float32) / 127.5 - 1 for f in files]
    return torch.from_numpy(np.stack(arr)).unsqueeze(1)


class G(nn.Module):
    def __init__(self, z: int = 32):
        super().__init__()
        self.z = z
        self.net = nn.Sequential(nn.Linear(z, 64 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (64, 4, 4)),
                                 nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, z] -> [B, 1, 16, 16]
        return self.net(z)


class D(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1),
                                 nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64 * 4 * 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, 16, 16] -> [B]
        return self.net(x).squeeze(1)


def newest_checkpoint(root: Path) -> Path | None:
    done = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if root.exists() else []
    return done[-1] if done else None


def save(acc: Accelerator, root: Path, step: int) -> None:
    """Atomically: the state goes to a temporary folder that is renamed when complete, then older ones go."""
    tmp = root / f".tmp-step-{step}"
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
        tmp.rename(root / f"step-{step}")
        for old in root.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (demos, tests)")
    args = p.parse_args()

    out = Path(os.environ.get("MEDGAN_OUTPUT_DIR", "outputs"))
    ckpt = Path(os.environ.get("MEDGAN_CHECKPOINT_DIR", "checkpoints"))
    stats_path = os.environ.get("MEDGAN_STATS_FILE")
    acc = Accelerator(cpu=not torch.cuda.is_available())
    out.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed + acc.process_index)

    data_dir = os.environ.get("MEDGAN_DATA_DIR")
    real = pngs(Path(data_dir)) if data_dir else discs(2048, args.seed)
    # A small folder: smaller batches (each process gets its share), never an empty epoch.
    batch = max(2, min(args.batch_size, len(real) // acc.num_processes))
    if len(real) < 2 * acc.num_processes:
        raise SystemExit(f"{len(real)} images are too few for {acc.num_processes} process(es)")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real), batch_size=batch,
                                         shuffle=True, drop_last=True)
    g, d = G(), D()
    opt_g = torch.optim.Adam(g.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=args.lr, betas=(0.5, 0.999))
    g, d, opt_g, opt_d, loader = acc.prepare(g, d, opt_g, opt_d, loader)

    step = 0
    last = newest_checkpoint(ckpt)
    if last is not None:
        acc.load_state(str(last))
        step = json.loads((last / "meta.json").read_text())["step"]
        acc.print(f"resumed from {last.name} (step {step} of {args.steps})")
    else:
        acc.print(f"starting from scratch ({args.steps} steps, {acc.num_processes} process(es), {acc.device})")

    rows = []
    while step < args.steps:
        for (x,) in loader:
            z = torch.randn(x.shape[0], 32, device=acc.device)
            fake = g(z)
            loss_d = F.softplus(-d(x)).mean() + F.softplus(d(fake.detach())).mean()
            opt_d.zero_grad()
            acc.backward(loss_d)
            opt_d.step()
            loss_g = F.softplus(-d(fake)).mean()
            opt_g.zero_grad()
            acc.backward(loss_g)
            opt_g.step()
            step += 1
            row = {"step": step, "total": args.steps, "loss_d": round(loss_d.item(), 5), "loss_g": round(loss_g.item(), 5)}
            rows.append(row)
            if acc.is_main_process and stats_path and (step % 5 == 0 or step == args.steps):
                with open(stats_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if step % 25 == 0:
                acc.print(f"step {step}/{args.steps} loss_d {row['loss_d']:.3f} loss_g {row['loss_g']:.3f}")
            if step % args.checkpoint_every == 0 or step == args.steps:
                save(acc, ckpt, step)
            if args.step_delay:
                time.sleep(args.step_delay)
            if step >= args.steps:
                break

    if acc.is_main_process:
        from PIL import Image

        gen = acc.unwrap_model(g).eval()
        with torch.no_grad():
            grid = gen(torch.randn(64, 32, generator=torch.Generator().manual_seed(1)).to(acc.device)).cpu()
        tiles = ((grid[:, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)  # [64, 16, 16]
        Image.fromarray(tiles.reshape(8, 8, SIZE, SIZE).transpose(0, 2, 1, 3).reshape(8 * SIZE, 8 * SIZE)).save(
            out / "samples.png")
        torch.save(gen.state_dict(), out / "generator.pt")
        with open(out / "losses.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "total", "loss_d", "loss_g"])
            w.writeheader()
            w.writerows(rows)
        acc.print(f"done: {step} steps; outputs in {out}")
    # Free everything before the ranks exit (an abort at exit otherwise, about 1 run in 3: PITFALLS).
    acc.wait_for_everyone()
    del g, d, opt_g, opt_d, loader
    acc.free_memory()
    gc.collect()
    acc.end_training()


if __name__ == "__main__":
    main()
