"""LIME: fast solver agrees with the exact one; enhancement helps on made low-light pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, util

from medgan import metrics as M
from medgan.enhance.lime import estimate_illumination, lime_enhance, lime_weights, system_matrix
from medgan.enhance.pairs import DarkenSpec, make_lowlight_pair


def _dicom(name: str) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    a = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


def _real(name: str) -> np.ndarray:
    if name == "retina":
        return util.img_as_float32(data.retina()[::5, ::5])  # [283, 283, 3]
    if name == "cell":
        return util.img_as_float32(data.cell()[::2, ::2])
    return _dicom({"ct": "CT_small.dcm", "mr": "MR_small.dcm"}[name])


@pytest.mark.parametrize("name", ["retina", "cell", "ct", "mr"])
def test_fast_solver_matches_exact(name: str) -> None:
    dark, _ = make_lowlight_pair(_real(name), DarkenSpec(exposure=0.2, seed=3))
    exact, p_exact = lime_enhance(dark, solver="exact", gamma=0.8)
    fast, p_fast = lime_enhance(dark, solver="fast", gamma=0.8)
    assert p_fast["solver"] == "fast" and p_exact["solver"] == "exact"
    assert fast.shape == dark.shape and fast.dtype == np.float32
    assert M.psnr(fast, exact).item() >= 35.0


def test_solution_solves_the_paper_system() -> None:
    """The fast map satisfies (I + alpha L) t = t^ to within its tolerance, checked in scipy."""
    t_hat = torch.from_numpy(_real("cell")[:96, :96].copy())
    t, stats = estimate_illumination(t_hat, alpha=0.15, solver="fast", tol=1e-5)
    wx, wy = lime_weights(t_hat, 2.0, 1e-3)
    a = system_matrix(wx.double().numpy(), wy.double().numpy(), 0.15)
    from scipy.sparse.linalg import spsolve

    ref = spsolve(a, t_hat.double().numpy().ravel()).reshape(t_hat.shape)
    assert np.abs(t.numpy() - ref).max() < 1e-3
    assert stats["levels"] >= 2
    # the refined map is smoother than the initial one (the point of the regulariser)
    assert M.average_gradient(t).item() < M.average_gradient(t_hat).item()


@pytest.mark.parametrize(("name", "gamma"), [("ct", None), ("camera", None), ("astronaut", None), ("retina", 0.8)])
def test_enhancement_beats_the_dark_input(name: str, gamma: float | None) -> None:
    if name in ("camera", "astronaut"):
        img = util.img_as_float32(getattr(data, name)()[::2, ::2])
    else:
        img = _real(name)
    dark, ref = make_lowlight_pair(img, DarkenSpec(exposure=0.1, photons=20000, read_sigma=5e-4, seed=1))
    out, params = lime_enhance(dark, gamma=gamma, denoise=None)
    if gamma is None:
        assert 0.3 <= params["gamma"] <= 1.0
    assert M.psnr(out, ref).item() > M.psnr(dark, ref).item() + 3.0
    assert M.ssim(out, ref).item() > M.ssim(dark, ref).item() + 0.05
    assert out.mean() > dark.mean()


def test_denoise_and_strength() -> None:
    dark, ref = make_lowlight_pair(_real("retina"), DarkenSpec(exposure=0.1, photons=300, read_sigma=1e-3, seed=2))
    plain, _ = lime_enhance(dark, gamma=0.8, denoise=0)
    den, p = lime_enhance(dark, gamma=0.8, denoise=None)
    assert p["denoise"] > 0  # heavy shot noise is detected
    assert M.psnr(den, ref).item() > M.psnr(plain, ref).item()
    same, _ = lime_enhance(dark, gamma=0.8, strength=0.0)
    assert np.abs(same - dark).max() < 1e-6


def test_bad_inputs() -> None:
    img = np.full((16, 16), 0.2, dtype=np.float32)
    with pytest.raises(ValueError, match="gamma"):
        lime_enhance(img, gamma=0)
    with pytest.raises(ValueError, match="strength"):
        lime_enhance(img, strength=2)
    with pytest.raises(ValueError, match="NaN"):
        lime_enhance(np.full((8, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="expected"):
        lime_enhance(np.zeros((4, 4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="solver"):
        lime_enhance(img, solver="magic")
