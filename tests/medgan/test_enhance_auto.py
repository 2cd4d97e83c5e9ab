"""Automatic settings: noise measured on the input and capped, exposure from the white point, colours unclipped,
and the automatic LIME above every fixed gamma on held-out made pairs (never below the dark input's PSNR)."""

from __future__ import annotations

import numpy as np
import pytest

from medgan import metrics as M
from medgan.enhance import classical, scenes
from medgan.enhance.lime import DENOISE_MAX, auto_denoise, estimate_noise_sigma, lime_enhance
from medgan.enhance.pairs import DarkenSpec, make_lowlight_pair

CLIP = 254.5 / 255


def _clipped(x: np.ndarray) -> float:
    return float((x >= CLIP).any(-1).mean()) if x.ndim == 3 else float((x >= CLIP).mean())


@pytest.mark.parametrize("sigma", [0.002, 0.01, 0.03])
def test_noise_sigma_is_measured_on_the_input(sigma: float) -> None:
    rng = np.random.default_rng(0)
    clean = scenes.load_scene("camera") * 0.15 + 0.2  # a dim image, far from the clipping ends
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    est = estimate_noise_sigma(noisy)
    assert est == pytest.approx(sigma, rel=0.25, abs=0.0015)  # oracle: the noise we added
    # the strength follows the input's noise and the gain, and is capped
    assert auto_denoise(noisy, gain=2.0) >= auto_denoise(noisy, gain=1.0)
    assert auto_denoise(noisy, gain=1000.0) == DENOISE_MAX


def test_clean_input_is_not_denoised() -> None:
    clean = scenes.load_scene("camera") * 0.3
    assert auto_denoise(clean) == 0.0
    noisy, _ = make_lowlight_pair(scenes.load_scene("camera"), DarkenSpec(exposure=0.1, photons=400, seed=0))
    assert 0.0 < auto_denoise(noisy) <= DENOISE_MAX  # control: the pair maker's shot noise is found


@pytest.mark.parametrize("scene", ["astronaut", "coffee", "CT_small.dcm", "RG1_UNCR.dcm"])
def test_exposure_gain_recovers_the_darkening(scene: str) -> None:
    img = scenes.load_scene(scene)
    for spec in scenes.HELD_OUT:
        dark, _ = make_lowlight_pair(img, spec)
        true = spec.exposure ** (-1 / spec.gamma)
        assert classical.auto_exposure_gain(dark) == pytest.approx(true, rel=0.3)
    assert classical.auto_exposure_gain(img) < 1.2  # a well-exposed image is (nearly) left alone


def test_automatic_colours_do_not_clip_beyond_the_reference() -> None:
    img = scenes.load_scene("retina", 400)
    fixed_over = 0
    for spec in scenes.HELD_OUT:
        dark, ref = make_lowlight_pair(img, spec)
        auto, _ = lime_enhance(dark, gamma=None, denoise=None)
        assert _clipped(auto) <= _clipped(ref) + 0.005
        fixed, _ = lime_enhance(dark, gamma=0.8, denoise=0.0)  # the paper's fixed setting, no denoise
        fixed_over += _clipped(fixed) > _clipped(ref) + 0.005
    assert fixed_over >= 3  # control: the paper's fixed gamma does clip the fundus


def test_automatic_lime_beats_every_fixed_gamma_on_held_out_pairs(one_thread) -> None:
    pairs = scenes.pairs(scenes.HELD_OUT[::2], ("astronaut", "retina", "moon", "CT_small.dcm", "shepp_logan_phantom"))
    auto = np.array([M.psnr(lime_enhance(p.dark, gamma=None, denoise=None)[0], p.ref).item() for p in pairs])
    dark = np.array([M.psnr(p.dark, p.ref).item() for p in pairs])
    assert (auto > dark).all(), [p.name for p, a, d in zip(pairs, auto, dark) if a <= d]
    for g in (0.6, 0.7, 0.8, 1.0):
        fixed = np.array([M.psnr(lime_enhance(p.dark, gamma=g)[0], p.ref).item() for p in pairs])
        assert auto.mean() > fixed.mean(), (g, auto.mean(), fixed.mean())
    # control: a gamma that barely brightens scores far below (the comparison can tell settings apart)
    weak = np.array([M.psnr(lime_enhance(p.dark, gamma=0.05)[0], p.ref).item() for p in pairs])
    assert weak.mean() < auto.mean() - 3


def test_automatic_lime_never_below_the_dark_input_ssim_where_colour_noise_was_lifted(one_thread) -> None:
    # rocket and retina fell below the dark input's SSIM (up to -0.079) before the chroma was denoised.
    pairs = scenes.pairs(scenes.HELD_OUT[::2], ("rocket", "retina", "chelsea"))
    for p in pairs:
        out = lime_enhance(p.dark, gamma=None, denoise=None)[0]
        assert M.ssim(out, p.ref).item() >= M.ssim(p.dark, p.ref).item(), p.name
        assert M.psnr(out, p.ref).item() >= M.psnr(p.dark, p.ref).item(), p.name


def test_large_images_are_denoised_at_reduced_resolution(one_thread) -> None:
    import medgan.enhance.lime as L

    rng = np.random.default_rng(0)
    img = np.clip(0.1 + rng.normal(0, 0.02, (1100, 1000, 3)), 0, 1).astype(np.float32)  # > DENOISE_REDUCE_FROM
    assert img.shape[0] * img.shape[1] > L.DENOISE_REDUCE_FROM
    den = L.denoise_luma(img, 10.0, chroma=True)
    assert den.shape == (550, 500, 3) and den.dtype == np.float32  # returned at 1/2, upsampled by _recombine
    noisy, _ = lime_enhance(img, gamma=0.8, denoise=0)
    clean, params = lime_enhance(img, gamma=0.8, denoise=10.0)
    assert clean.shape == img.shape and clean.dtype == np.float32 and np.isfinite(clean).all()
    assert params["reduce"] == 2
    # control: the flat field's noise falls well below the undenoised result's
    assert clean.std() < 0.6 * noisy.std(), (clean.std(), noisy.std())
