"""ESRGAN-style super-resolution (Wang et al., ECCV-W 2018), written from the paper.

- Generator: residual-in-residual dense blocks (RRDB, no batch norm, residual scaling 0.2),
  nearest-neighbour upsampling + conv per factor 2 (x2 or x4).
- Discriminator: a small strided conv net scored relativistically (RaGAN, see ``ragan_losses``).
- Inference over tiles with a margin: each tile is run with ``overlap`` extra input pixels on
  every side and only its centre is kept. When the margin covers the generator's receptive
  radius (``receptive_radius``) the tiled output equals the untiled one, to float rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medgan.config import TrainConfig
from medgan.enhance.pairs import upsample_bicubic

GENERATOR_NAME = "generator"


class DenseBlock(nn.Module):
    """Residual dense block: 5 convs, each seeing all previous features; output scaled by 0.2."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, 1, 1) for i in range(5))
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            y = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(self.act(y))
        return x + 0.2 * y


class RRDB(nn.Module):
    """Three dense blocks inside one more residual (scaled by 0.2)."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(nf, gc) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    """``[N, C, h, w] -> [N, C, h*scale, w*scale]``, inputs and outputs in [0, 1]."""

    def __init__(self, channels: int = 1, scale: int = 4, nf: int = 32, nb: int = 2, gc: int | None = None):
        super().__init__()
        if scale not in (2, 4):
            raise ValueError("scale must be 2 or 4")
        gc = gc or max(8, nf // 2)
        self.scale, self.nb = scale, nb
        self.conv_first = nn.Conv2d(channels, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.ups = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(int(math.log2(scale))))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)  # [N, nf, h, w]
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.ups:
            feat = self.act(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))  # [N, nf, 2h, 2w]
        out = self.conv_last(self.act(self.conv_hr(feat)))
        # Predict a residual over bicubic so a barely trained net is already a fair upsampler.
        return out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


def receptive_radius(net: RRDBNet) -> int:
    """Input pixels on each side that can influence an output pixel (low-resolution units).

    conv_first and conv_body: 1 each; every dense block's longest path is 5 convs; the
    high-resolution convs (ups, conv_hr, conv_last) add at most one low-res pixel each;
    the bicubic skip reaches 2 low-res pixels.
    """
    return 2 + 15 * net.nb + len(net.ups) + 2


class Discriminator(nn.Module):
    """Strided conv net giving one raw score per image (the relativistic loss centres it)."""

    def __init__(self, channels: int = 1, nf: int = 32, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = nf
        for i in range(depth):
            c_out = min(nf * 2 ** (i + 1), nf * 8)
            layers += [nn.Conv2d(c, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean((2, 3))  # [N, c] global average: any input size works
        return self.head(f).squeeze(1)  # [N]


def ragan_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor, for_generator: bool) -> torch.Tensor:
    """Relativistic average GAN loss (ESRGAN eq. 1-2).

    ``D_Ra(a, b) = sigmoid(C(a) - mean C(b))``. The discriminator wants real judged more real
    than the average fake and vice versa; the generator wants the reverse.
    """
    rel_real = real_logits - fake_logits.mean()
    rel_fake = fake_logits - real_logits.mean()
    t_real = torch.zeros_like(rel_real) if for_generator else torch.ones_like(rel_real)
    bce = F.binary_cross_entropy_with_logits
    return 0.5 * (bce(rel_real, t_real) + bce(rel_fake, 1.0 - t_real))


def build_sr_generator(cfg: TrainConfig) -> RRDBNet:
    """The generator for a TrainConfig (width from ``base_channels``; a small 2-block trunk)."""
    return RRDBNet(cfg.channels, cfg.sr_scale, nf=cfg.base_channels, nb=2)


def build_sr_discriminator(cfg: TrainConfig) -> Discriminator:
    """The discriminator for a TrainConfig."""
    return Discriminator(cfg.channels, nf=cfg.base_channels)


@torch.no_grad()
def upscale_tiled(net: nn.Module, x: torch.Tensor, scale: int, tile: int = 256, overlap: int = 16) -> torch.Tensor:
    """Run ``net`` over ``[N, C, h, w]`` in ``tile`` x ``tile`` (low-res) pieces: ``[N, C, h*s, w*s]``.

    Each piece is read with ``overlap`` extra pixels on every side (clipped at the image
    border, where the untiled net sees the same zero padding) and only its centre is kept,
    so with ``overlap >= receptive_radius(net)`` tiling changes nothing.
    """
    if tile < 1 or overlap < 0:
        raise ValueError("tile must be >= 1 and overlap >= 0")
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h * scale, w * scale)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
            yb, xb = min(y1 + overlap, h), min(x1 + overlap, w)
            sr = net(x[:, :, ya:yb, xa:xb])  # [N, C, (yb-ya)*s, (xb-xa)*s]
            oy, ox = (y0 - ya) * scale, (x0 - xa) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                sr[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(np.clip(img, 0, 1), dtype=np.float32))
    return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]  # [1, C, H, W]


def _to_numpy(t: torch.Tensor, like_ndim: int) -> np.ndarray:
    out = t[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return out[..., 0] if like_ndim == 2 else out


def upscale_bicubic(img: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline on a numpy image ``[h, w(, C)] -> [h*s, w*s(, C)]``."""
    return _to_numpy(upsample_bicubic(_to_tensor(img), scale), img.ndim)


# BT.601 full-range YCbCr (JPEG's): luma for a single-channel model, chroma upsampled bicubically.
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _rgb_to_ycc(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB -> YCbCr (Y in [0, 1], Cb/Cr centred on 0)."""
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YCC.to(x), x)


def _ycc_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YCC).to(x), x)


def upscale_with(net: nn.Module, img: np.ndarray, scale: int, tile: int = 256, overlap: int = 16) -> np.ndarray:
    """Super-resolve a numpy image ``[h, w(, C)]`` with a trained generator, tiled; the output keeps the
    input's channel count. A single-channel model super-resolves an RGB image's luma (Y) and the chroma
    is upsampled bicubically (as SR is scored on Y); a 3-channel model sees a grey image as three
    equal channels and returns their mean."""
    dev = next(net.parameters()).device
    want = net.conv_first.in_channels if hasattr(net, "conv_first") else None
    x = _to_tensor(img).to(dev)  # [1, C, h, w]
    if want == 1 and x.shape[1] == 3:
        ycc = _rgb_to_ycc(x)
        y = upscale_tiled(net, ycc[:, :1], scale, tile=tile, overlap=overlap)  # [1, 1, h*s, w*s]
        chroma = F.interpolate(ycc[:, 1:], scale_factor=scale, mode="bicubic", align_corners=False)
        return _to_numpy(_ycc_to_rgb(torch.cat([y, chroma], 1)), 3)
    if want == 3 and x.shape[1] == 1:
        y = upscale_tiled(net, x.expand(-1, 3, -1, -1), scale, tile=tile, overlap=overlap)
        return _to_numpy(y.mean(1, keepdim=True), img.ndim)
    y = upscale_tiled(net, x, scale, tile=tile, overlap=overlap)
    return _to_numpy(y, img.ndim)


def load_esrgan(ckpt_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The generator of a trained esrgan run's checkpoint directory (eval mode) and its config."""
    from medgan.checkpoint import load_generator
    from medgan.errors import CheckpointError

    net, cfg = load_generator(Path(ckpt_dir), name=GENERATOR_NAME, builder=build_sr_generator, device=device)
    if cfg.model != "esrgan":
        raise CheckpointError(f"checkpoint {ckpt_dir} holds a {cfg.model!r} model, not esrgan")
    return net, cfg
