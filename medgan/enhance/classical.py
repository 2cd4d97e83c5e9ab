"""Classical enhancement baselines: gamma, histogram equalisation and CLAHE on the luma.

Images are ``[H, W]`` grey or ``[H, W, 3]`` RGB, float in [0, 1]. Colour images are
equalised on their luma only, and the chroma is kept by scaling R, G, B by the luma ratio,
so hues do not shift.
"""

from __future__ import annotations

import numpy as np
from skimage import exposure

from medgan.enhance.knobs import check

_EPS = 1e-6


def _check(img: np.ndarray) -> np.ndarray:
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"expected [H, W] or [H, W, 3], got {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or infinite values")
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def luma(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``[H, W]`` of ``[H, W, 3]`` RGB (a grey image is returned as is)."""
    if img.ndim == 2:
        return img
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _with_luma(img: np.ndarray, new_luma: np.ndarray) -> np.ndarray:
    """Replace the luma of ``img`` by ``new_luma`` keeping chromaticity (ratio scaling)."""
    if img.ndim == 2:
        return np.clip(new_luma, 0, 1).astype(np.float32)
    ratio = new_luma / (luma(img) + _EPS)  # [H, W]
    return np.clip(img * ratio[..., None], 0, 1).astype(np.float32)


def auto_gamma_value(img: np.ndarray, target: float = 0.45) -> float:
    """The gamma that maps the image's mean luma to ``target``: ``mean^g = target``."""
    m = float(np.clip(luma(_check(img)).mean(), 1e-4, 1 - 1e-4))
    return float(np.clip(np.log(target) / np.log(m), 0.1, 10.0))


def gamma_correct(img: np.ndarray, gamma: float | None = None) -> tuple[np.ndarray, dict]:
    """``out = img ** gamma`` (gamma < 1 brightens); ``None``: from the mean brightness."""
    g = check("gamma", gamma, optional=True)
    x = _check(img)
    g = auto_gamma_value(x) if g is None else g
    return np.power(x, g).astype(np.float32), {"gamma": round(g, 4)}


def hist_equalize(img: np.ndarray, nbins: int = 256) -> tuple[np.ndarray, dict]:
    """Global histogram equalisation of the luma (skimage.exposure.equalize_hist)."""
    x = _check(img)
    y = exposure.equalize_hist(luma(x), nbins=nbins)
    return _with_luma(x, y), {"nbins": nbins}


def clahe(img: np.ndarray, clip_limit: float = 0.01, kernel_size: int | None = None
          ) -> tuple[np.ndarray, dict]:
    """Contrast-limited adaptive histogram equalisation of the luma (skimage.exposure.equalize_adapthist)."""
    clip_limit = check("clip_limit", clip_limit)
    x = _check(img)
    y = exposure.equalize_adapthist(luma(x), clip_limit=clip_limit, kernel_size=kernel_size)
    return _with_luma(x, y), {"clip_limit": clip_limit}
