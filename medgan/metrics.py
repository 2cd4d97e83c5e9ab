"""Image quality metrics, vectorised over a batch in torch.

Full-reference: MSE, PSNR, SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
population covariance). No-reference: entropy (256 bins for 8-bit, 65,536 for 16-bit), average gradient, standard deviation.

Every function takes float tensors ``[N, C, H, W]`` (or ``[C, H, W]`` / ``[H, W]``) on the
scale given by ``data_range`` (1.0 for images in [0, 1]) and returns one value per image,
shape ``[N]``. Configured the same way they agree with ``skimage.metrics`` to about 1e-6.

SR convention (``y_channel=True``): an RGB image is scored on its BT.601 luma
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1], Y in [16, 235]),
with ``crop_border`` pixels removed from each side first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "as_batch",
    "to_unit_float",
    "rgb_to_y",
    "mse",
    "psnr",
    "ssim",
    "entropy",
    "average_gradient",
    "std_dev",
    "full_reference",
    "no_reference",
    "finite_or_none",
]

# BT.601 "studio swing" luma coefficients as used by SR papers (MATLAB rgb2ycbcr).
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def to_unit_float(img: np.ndarray) -> np.ndarray:
    """Convert an integer or float image to float32 in [0, 1] (integers by their dtype's maximum)."""
    if img.dtype == np.bool_:
        return img.astype(np.float32)
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def as_batch(img: Any) -> torch.Tensor:
    """Return a float tensor ``[N, C, H, W]``.

    numpy arrays are read as ``[H, W]`` or channels-last ``[H, W, C]`` and scaled to [0, 1]
    (integers by their dtype's maximum); tensors are read as ``[H, W]``, ``[C, H, W]`` or
    ``[N, C, H, W]`` and left on their scale.
    """
    if isinstance(img, np.ndarray):
        arr = to_unit_float(img)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.ndim == 2:
            return t[None, None]  # [1, 1, H, W]
        if t.ndim == 3:
            return t.permute(2, 0, 1)[None]  # [1, C, H, W]
        raise ValueError(f"expected a 2-D or 3-D array, got shape {arr.shape}")
    t = torch.as_tensor(img)
    if not t.is_floating_point():
        t = t.float()
    if t.ndim == 2:
        return t[None, None]
    if t.ndim == 3:
        return t[None]
    if t.ndim == 4:
        return t
    raise ValueError(f"expected 2-4 dimensions, got shape {tuple(t.shape)}")


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``[N, 3, H, W]`` RGB in [0, 1]: ``[N, 1, H, W]`` in [16/255, 235/255]."""
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {x.shape[1]}")
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = _Y_OFFSET + _Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b  # [N, 1, H, W] in [16, 235]
    return y / 255.0


def _prepare(
    x: Any, y: Any | None, crop_border: int, y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch, optionally convert to Y and crop the border of one or two images consistently."""
    xb = as_batch(x)
    yb = None if y is None else as_batch(y).to(xb.device)
    if yb is not None and xb.shape != yb.shape:
        raise ValueError(f"shape mismatch: {tuple(xb.shape)} vs {tuple(yb.shape)}")
    # float64 keeps SSIM's variance terms (E[x^2] - E[x]^2) accurate on large images.
    dtype = torch.float64 if xb.device.type == "cpu" else torch.float32
    xb = xb.to(dtype)
    yb = None if yb is None else yb.to(dtype)
    if y_channel and xb.shape[1] == 3:
        xb = rgb_to_y(xb)
        yb = None if yb is None else rgb_to_y(yb)
    if crop_border < 0:
        raise ValueError("crop_border must be >= 0")
    if crop_border:
        c = crop_border
        if xb.shape[-1] <= 2 * c or xb.shape[-2] <= 2 * c:
            raise ValueError(f"crop_border {c} leaves nothing of a {tuple(xb.shape[-2:])} image")
        xb = xb[..., c:-c, c:-c]
        yb = None if yb is None else yb[..., c:-c, c:-c]
    return xb, yb


def mse(x: Any, ref: Any, *, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Mean squared error per image, ``[N]``."""
    a, b = _prepare(x, ref, crop_border, y_channel)
    return ((a - b) ** 2).flatten(1).mean(1)


def psnr(
    x: Any, ref: Any, *, data_range: float = 1.0, crop_border: int = 0, y_channel: bool = False
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, ``[N]`` (inf for identical images)."""
    err = mse(x, ref, crop_border=crop_border, y_channel=y_channel)
    return 10.0 * torch.log10(data_range**2 / err)


def _gaussian_kernel(sigma: float, win_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian, ``[win_size]``; the same taps scipy's gaussian_filter uses."""
    r = win_size // 2
    xs = torch.arange(-r, r + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (xs / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable depthwise filtering without padding: ``[M, 1, H, W] -> [M, 1, H-w+1, W-w+1]``.

    skimage crops ``(win-1)//2`` pixels from the SSIM map before averaging, so only windows
    fully inside the image count; a 'valid' convolution computes exactly those. On the CPU,
    OpenCV's separable filter is ~40x faster than conv2d for these single-channel maps.
    """
    w = k.numel()
    r = w // 2
    if x.device.type == "cpu":
        import cv2

        kk = k.numpy()
        maps = x.numpy()
        out = np.stack([cv2.sepFilter2D(m[0], -1, kk, kk, borderType=cv2.BORDER_REFLECT_101)[r:-r, r:-r]
                        for m in maps])  # [M, H-w+1, W-w+1]
        return torch.from_numpy(out)[:, None]
    x = F.conv2d(x, k.view(1, 1, w, 1))
    return F.conv2d(x, k.view(1, 1, 1, w))


def ssim(
    x: Any,
    ref: Any,
    *,
    data_range: float = 1.0,
    crop_border: int = 0,
    y_channel: bool = False,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (mean over pixels and channels), ``[N]``.

    Equals ``skimage.metrics.structural_similarity(x, ref, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=...)``.
    """
    if win_size % 2 == 0 or win_size < 3:
        raise ValueError("win_size must be odd and >= 3")
    a, b = _prepare(x, ref, crop_border, y_channel)
    n, c, h, w = a.shape
    if h < win_size or w < win_size:
        raise ValueError(f"image {h}x{w} is smaller than the {win_size}x{win_size} SSIM window")
    k = _gaussian_kernel(sigma, win_size, a.dtype, a.device)
    # Filter all five moment maps in one call: [5 * N * C, 1, H, W].
    stack = torch.cat([a, b, a * a, b * b, a * b], 0).reshape(5 * n * c, 1, h, w)
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter_valid(stack, k).reshape(5, n, c, h - win_size + 1, -1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)  # [N]


def _quantise(x: torch.Tensor, data_range: float, levels: int) -> torch.Tensor:
    """Round to ``levels`` grey levels (``round(x / range * (levels - 1))``): ``[N, ...] -> int64``.

    For 256 levels this is skimage's ``img_as_ubyte`` of a float image; for an integer image
    scaled by its dtype's maximum (``to_unit_float``) it gives back the stored integers exactly.
    """
    q = torch.round(torch.clamp(x.double() / data_range, 0.0, 1.0) * (levels - 1))
    return q.to(torch.int64)


def _bits_of(x: Any, bits: int | None) -> int:
    """Bit depth of the histogram: ``bits`` if given, else an integer array's own (8 for floats)."""
    if bits is None:
        integer = isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer)
        bits = min(16, np.iinfo(x.dtype).bits) if integer else 8
    if isinstance(bits, bool) or bits not in range(1, 17):
        raise ValueError(f"bits must be an integer in [1, 16], got {bits!r}")
    return int(bits)


def entropy(x: Any, *, data_range: float = 1.0, bits: int | None = None) -> torch.Tensor:
    """Shannon entropy in bits of each image's ``2**bits``-level histogram (all channels), ``[N]``.

    ``bits``: the image's bit depth. Default: an integer numpy array's own (uint8: 8, uint16: 16),
    8 for float images. Equals ``skimage.measure.shannon_entropy`` of the integer values at that
    depth: ``shannon_entropy(img_as_ubyte(img))`` for 8 bits, ``shannon_entropy(u16)`` for a
    16-bit image ``u16`` (skimage counts unique values, so no bins are merged).
    """
    levels = 1 << _bits_of(x, bits)
    xb = as_batch(x)
    n = xb.shape[0]
    q = _quantise(xb, data_range, levels).flatten(1)  # [N, P]
    offsets = torch.arange(n, device=q.device)[:, None] * levels
    hist = torch.bincount((q + offsets).flatten(), minlength=n * levels).reshape(n, levels).double()
    p = hist / hist.sum(1, keepdim=True)
    logp = torch.where(p > 0, torch.log2(p), torch.zeros_like(p))
    return -(p * logp).sum(1)


def average_gradient(x: Any) -> torch.Tensor:
    """Average gradient ``mean(sqrt((dx^2 + dy^2) / 2))`` over forward differences, ``[N]``.

    A common no-reference sharpness score in enhancement papers; on the image's own scale.
    """
    xb = as_batch(x).double()
    dx = xb[..., :-1, 1:] - xb[..., :-1, :-1]  # [N, C, H-1, W-1]
    dy = xb[..., 1:, :-1] - xb[..., :-1, :-1]
    return torch.sqrt((dx * dx + dy * dy) / 2.0).flatten(1).mean(1)


def std_dev(x: Any) -> torch.Tensor:
    """Population standard deviation of each image's pixels (a contrast score), ``[N]``."""
    return as_batch(x).double().flatten(1).std(1, unbiased=False)


def full_reference(
    x: Any, ref: Any, *, crop_border: int = 0, y_channel: bool = False
) -> dict[str, torch.Tensor]:
    """PSNR, SSIM and MSE of images in [0, 1] against a reference: ``{name: [N]}``."""
    kw = dict(crop_border=crop_border, y_channel=y_channel)
    return {"psnr": psnr(x, ref, **kw), "ssim": ssim(x, ref, **kw), "mse": mse(x, ref, **kw)}


def no_reference(x: Any, *, bits: int | None = None) -> dict[str, torch.Tensor]:
    """Entropy (at ``bits`` depth, see ``entropy``), average gradient and standard deviation of
    images in [0, 1]: ``{name: [N]}``."""
    return {"entropy": entropy(x, bits=bits), "avg_gradient": average_gradient(x), "std": std_dev(x)}


def finite_or_none(v: float) -> float | None:
    """JSON-friendly scalar: inf/nan (e.g. PSNR of identical images) become None."""
    return v if math.isfinite(v) else None
