"""Paired data for scoring: realistic low-light versions and low-resolution versions of clean images.

Low light follows the usual camera model (as in low-light benchmarks built by synthesis):
an inverse gamma takes the display image back towards linear light, an exposure factor
darkens it, Poisson shot noise (photon count ~ exposure) and Gaussian read noise are added,
and the display gamma is applied again. Everything is seeded.

Images are ``[H, W]`` or ``[H, W, C]`` float in [0, 1] (numpy); downsampling also accepts
``[N, C, H, W]`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DarkenSpec:
    """How to darken: ``exposure`` scales linear light; noise is in [0, 1] units of the sensor."""

    gamma: float = 2.2  # display gamma undone before darkening
    exposure: float = 0.15
    photons: float = 400.0  # photon count of a full-scale pixel at exposure 1 (shot noise)
    read_sigma: float = 0.004  # Gaussian read noise
    seed: int = 0

    def __post_init__(self) -> None:
        vals = (self.gamma, self.exposure, self.photons, self.read_sigma)
        if not all(np.isfinite(v) for v in vals):
            raise ValueError(f"DarkenSpec values must be finite, got {vals}")
        if self.gamma <= 0 or not 0 < self.exposure <= 1:
            raise ValueError("gamma must be > 0 and exposure in (0, 1]")
        if self.photons <= 0 or self.read_sigma < 0:
            raise ValueError("photons must be > 0 and read_sigma >= 0")


def darken(img: np.ndarray, spec: DarkenSpec = DarkenSpec()) -> np.ndarray:
    """A low-light version of ``img`` (same shape, float32 in [0, 1]) under ``spec``; seeded."""
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or infinite values")
    rng = np.random.default_rng(spec.seed)
    linear = np.clip(img.astype(np.float64), 0, 1) ** spec.gamma
    signal = linear * spec.exposure
    # Shot noise: photon counts are Poisson with mean proportional to the collected light.
    scale = spec.photons
    noisy = rng.poisson(signal * scale) / scale
    noisy = noisy + rng.normal(0.0, spec.read_sigma, size=noisy.shape)
    return (np.clip(noisy, 0, 1) ** (1.0 / spec.gamma)).astype(np.float32)


def downsample(x: np.ndarray | torch.Tensor, scale: int) -> np.ndarray | torch.Tensor:
    """Bicubic, antialiased downsampling by an integer factor (the SR degradation).

    numpy ``[H, W(, C)]`` -> numpy; tensor ``[N, C, H, W]`` -> tensor. H and W are first
    cropped to multiples of ``scale`` so that low and high resolution align exactly.
    """
    if scale < 1:
        raise ValueError("scale must be >= 1")
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if is_np else x
    if is_np:
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]  # [1, C, H, W]
    h, w = (t.shape[-2] // scale) * scale, (t.shape[-1] // scale) * scale
    t = t[..., :h, :w]
    lr = F.interpolate(t, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                       align_corners=False).clamp(0, 1)
    if not is_np:
        return lr
    out = lr[0].permute(1, 2, 0).numpy()
    return out[..., 0] if np.asarray(x).ndim == 2 else out


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop ``[H, W(, C)]`` so both sides are multiples of ``scale`` (the SR reference)."""
    h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
    return img[:h, :w]


def upsample_bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic SR baseline: ``[N, C, h, w] -> [N, C, h*scale, w*scale]`` clamped to [0, 1]."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def make_lowlight_pair(img: np.ndarray, spec: DarkenSpec = DarkenSpec()) -> tuple[np.ndarray, np.ndarray]:
    """``(dark, reference)`` for enhancement scoring."""
    ref = np.clip(img.astype(np.float32), 0, 1)
    return darken(ref, spec), ref


def make_sr_pair(img: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(low_res, reference)`` for SR scoring; the reference is cropped to a multiple of ``scale``."""
    ref = crop_to_multiple(np.clip(img.astype(np.float32), 0, 1), scale)
    return downsample(ref, scale), ref


def darken_batch(x: torch.Tensor, gen: torch.Generator, exposure: tuple[float, float] = (0.05, 0.4),
                 spec: DarkenSpec = DarkenSpec()) -> torch.Tensor:
    """``darken`` for a training batch ``[N, C, H, W]`` in [0, 1], one random exposure per image.

    All randomness comes from the CPU generator ``gen`` so a step is reproducible.
    """
    n = x.shape[0]
    lo, hi = exposure
    expo = lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)  # [N, 1, 1, 1]
    linear = x.detach().cpu().clamp(0, 1) ** spec.gamma * expo
    noisy = torch.poisson(linear * spec.photons, generator=gen) / spec.photons
    noisy = noisy + spec.read_sigma * torch.randn(noisy.shape, generator=gen)
    return (noisy.clamp(0, 1) ** (1.0 / spec.gamma)).to(x.device)


def clean_images(cfg, data_dir) -> torch.Tensor:
    """Training images ``[N, C, S, S]`` in [0, 1] of an enhancement run (TrainConfig ``cfg``): a folder
    ``data_dir``, else the bundled phantom. The trainers darken / downsample them on the fly."""
    from medgan.data import training_dataset

    ds = training_dataset(cfg, data_dir)
    return ((ds.images + 1) / 2).clamp(0, 1).contiguous()
