"""Differentiable Augmentation (Zhao et al. 2020) with explicit random generators.

Applied to real AND fake batches before D so D cannot overfit a small dataset, while G still
receives gradients through the (differentiable) transforms. All randomness is drawn from a
`torch.Generator` the caller owns (seeded per step), so a resumed run augments exactly as an
uninterrupted one. Geometric ops (translation, cutout) move the mask channel with the image;
colour ops touch only the first `image_channels` channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(shape, gen: torch.Generator, device) -> torch.Tensor:
    # draw on the CPU generator then move: identical numbers on every device
    return torch.rand(shape, generator=gen).to(device)


def color(x: torch.Tensor, gen: torch.Generator, image_channels: int) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2, RGB only) and contrast (x0.5..1.5)."""
    n = x.shape[0]
    img, rest = x[:, :image_channels], x[:, image_channels:]  # [N, C, H, W], [N, 1|0, H, W]
    img = img + (_rand((n, 1, 1, 1), gen, x.device) - 0.5)
    if image_channels > 1:
        mean = img.mean(dim=1, keepdim=True)
        img = (img - mean) * (_rand((n, 1, 1, 1), gen, x.device) * 2) + mean
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * (_rand((n, 1, 1, 1), gen, x.device) + 0.5) + mean
    return torch.cat([img, rest], dim=1)


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each sample by up to `ratio` of its size, zero padded (DiffAugment's variant)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = (_rand((n,), gen, "cpu") * (2 * sh + 1)).long() - sh
    ty = (_rand((n,), gen, "cpu") * (2 * sw + 1)).long() - sw
    tx, ty = tx.to(x.device), ty.to(x.device)
    bi, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")  # [N, H, W] each
    gx = torch.clamp(gx + tx[:, None, None] + 1, 0, h + 1)
    gy = torch.clamp(gy + ty[:, None, None] + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # [N, C, H+2, W+2]: border of zeros to sample from
    return padded.permute(0, 2, 3, 1)[bi, gx, gy].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of `ratio` x size per sample."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = (_rand((n,), gen, "cpu") * (h + (1 - ch % 2))).long().to(x.device)
    oy = (_rand((n,), gen, "cpu") * (w + (1 - cw % 2))).long().to(x.device)
    gx = torch.arange(ch, device=x.device)[None, :, None] + ox[:, None, None] - ch // 2  # [N, ch, 1]
    gy = torch.arange(cw, device=x.device)[None, None, :] + oy[:, None, None] - cw // 2  # [N, 1, cw]
    gx, gy = gx.clamp(0, h - 1).expand(n, ch, cw), gy.clamp(0, w - 1).expand(n, ch, cw)
    bi = torch.arange(n, device=x.device)[:, None, None].expand(n, ch, cw)
    keep = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    keep[bi, gx, gy] = 0
    return x * keep[:, None]


def diff_augment(x: torch.Tensor, policy: str, gen: torch.Generator, image_channels: int) -> torch.Tensor:
    """Apply the comma-separated `policy` ("color,translation,cutout") to x [N, C(+1), H, W]."""
    for op in [p for p in policy.split(",") if p]:
        if op == "color":
            x = color(x, gen, image_channels)
        elif op == "translation":
            x = translation(x, gen)
        elif op == "cutout":
            x = cutout(x, gen)
        else:
            raise ValueError(f"unknown DiffAugment op {op!r}")
    return x
