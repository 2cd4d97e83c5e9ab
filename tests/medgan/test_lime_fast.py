"""Reduced-resolution LIME (solve on a smaller grid, guided upsampling) against the exact full-resolution solve."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data, util

from medgan import metrics as M
from medgan.enhance.lime import auto_reduce, estimate_illumination, guided_upsample, lime_enhance
from medgan.enhance.pairs import DarkenSpec, darken


def _scene(name: str, h: int = 270, w: int = 480) -> np.ndarray:
    src = util.img_as_float32(getattr(data, name)())
    src = src if src.ndim == 3 else np.stack([src] * 3, -1)
    return darken(cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA), DarkenSpec(exposure=0.1, photons=5000,
                                                                                    seed=0))


@pytest.mark.parametrize("name", ["astronaut", "camera", "retina", "coffee"])
def test_half_resolution_solve_is_within_35_db_of_the_exact_solve(name: str, one_thread) -> None:
    img = _scene(name)
    exact, p_exact = lime_enhance(img, gamma=0.8, solver="exact")
    half, p_half = lime_enhance(img, gamma=0.8, reduce=2)
    assert p_half["reduce"] == 2 and p_half["solve_shape"] == [135, 240] and p_exact["reduce"] == 1
    assert M.psnr(half, exact).item() >= 35.0
    # control: the same reduction without the alpha / f rescaling is a different problem, and misses the bar
    t_hat = torch.from_numpy(np.ascontiguousarray(img.max(2)))
    wrong, _ = estimate_illumination(t_hat, alpha=0.3, sigma=4.0, reduce=2)  # = alpha 0.15 at half size
    x = torch.from_numpy(img).permute(2, 0, 1)
    wrong_img = (x / wrong.clamp(1e-3, 1) ** 0.8).clamp(0, 1).permute(1, 2, 0).numpy()
    assert M.psnr(wrong_img, exact).item() < M.psnr(half, exact).item() - 3


def test_guided_upsampling_keeps_edges() -> None:
    """Upsampling a downsampled exact map with the full-resolution guide beats plain bilinear upsampling."""
    img = _scene("camera")
    t_hat = torch.from_numpy(np.ascontiguousarray(img.max(2)))
    t, _ = estimate_illumination(t_hat, solver="exact")
    small = torch.nn.functional.interpolate(t_hat[None, None], size=(135, 240), mode="area")[0, 0]
    ts = torch.nn.functional.interpolate(t[None, None], size=(135, 240), mode="area")[0, 0]
    guided = guided_upsample(small, ts, t_hat)
    bilinear = torch.nn.functional.interpolate(ts[None, None], size=t.shape, mode="bilinear")[0, 0]
    x = torch.from_numpy(img).permute(2, 0, 1)

    def enhanced(m: torch.Tensor) -> torch.Tensor:
        return (x / m.clamp(1e-3, 1) ** 0.8).clamp(0, 1)

    g, b = M.psnr(enhanced(guided), enhanced(t)).item(), M.psnr(enhanced(bilinear), enhanced(t)).item()
    assert g > b + 1, (g, b)  # measured 54.3 vs 52.0 dB


def test_auto_reduce_and_bad_values() -> None:
    assert auto_reduce((512, 512)) == 1 and auto_reduce((1080, 1920)) == 2 and auto_reduce((2160, 3840)) == 2 and auto_reduce((4320, 7680)) == 4
    img = _scene("camera", 64, 80)
    small, p = lime_enhance(img, gamma=0.8)  # below a megapixel: full resolution
    assert p["reduce"] == 1
    for bad in (0, 5, -2, 2.5, True):
        with pytest.raises(ValueError, match="reduce"):
            lime_enhance(img, gamma=0.8, reduce=bad)
    tiny = _scene("camera", 12, 12)  # too small to reduce: solved at full size
    assert lime_enhance(tiny, gamma=0.8, reduce=2)[1]["reduce"] == 1


def test_grey_and_odd_sizes() -> None:
    grey = _scene("camera", 271, 481)[..., 0]  # odd sizes; reduction is for large frames (auto: > 1 MP)
    exact, _ = lime_enhance(grey, gamma=0.8, solver="exact")
    half, _ = lime_enhance(grey, gamma=0.8, reduce=2)
    assert half.shape == grey.shape and M.psnr(half, exact).item() >= 35.0
