"""Metrics against scikit-image on real images (skimage.data, pydicom test files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, metrics as skm, measure, util

from medgan import metrics as M


def _dicom(name: str) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    a = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def _images() -> dict[str, np.ndarray]:
    return {
        "retina": util.img_as_float(data.retina()[200:456:2, 300:556:2]),  # RGB crop
        "cell": util.img_as_float(data.cell()[:200, :240]),
        "camera": util.img_as_float(data.camera()[::2, ::2]),
        "ct": _dicom("CT_small.dcm"),
        "mr": _dicom("MR_small.dcm"),
    }


def _noisy(img: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)


@pytest.mark.parametrize("name", ["retina", "cell", "camera", "ct", "mr"])
def test_full_reference_matches_skimage(name: str) -> None:
    ref = _images()[name]
    x = _noisy(ref, 1)
    ch = -1 if ref.ndim == 3 else None
    want_ssim = skm.structural_similarity(x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1.0, channel_axis=ch)
    want_psnr = skm.peak_signal_noise_ratio(ref, x, data_range=1.0)
    want_mse = skm.mean_squared_error(ref, x)
    tx = M.as_batch(torch.from_numpy(x).permute(*((2, 0, 1) if ch else (0, 1))))
    tr = M.as_batch(torch.from_numpy(ref).permute(*((2, 0, 1) if ch else (0, 1))))
    assert abs(M.ssim(tx, tr).item() - want_ssim) < 1e-3
    assert abs(M.psnr(tx, tr).item() - want_psnr) < 1e-3
    assert abs(M.mse(tx, tr).item() - want_mse) < 1e-6


def test_y_channel_and_crop_match_manual_skimage() -> None:
    ref = _images()["retina"]
    x = _noisy(ref, 2)
    crop = 4

    def y_of(a: np.ndarray) -> np.ndarray:  # the SR papers' BT.601 luma, scaled back to [0, 1]
        return (16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0

    yx, yr = y_of(x)[crop:-crop, crop:-crop], y_of(ref)[crop:-crop, crop:-crop]
    want_ssim = skm.structural_similarity(yx, yr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1.0)
    want_psnr = skm.peak_signal_noise_ratio(yr, yx, data_range=1.0)
    assert abs(M.ssim(x, ref, y_channel=True, crop_border=crop).item() - want_ssim) < 1e-3
    assert abs(M.psnr(x, ref, y_channel=True, crop_border=crop).item() - want_psnr) < 1e-3


def test_batch_equals_single_images() -> None:
    imgs = _images()
    refs = torch.stack([M.as_batch(imgs[k][:64, :64])[0] for k in ("cell", "camera", "ct")])  # [3, 1, 64, 64]
    xs = torch.stack([M.as_batch(_noisy(imgs[k][:64, :64], 3))[0] for k in ("cell", "camera", "ct")])
    batched = M.ssim(xs, refs)
    singles = torch.cat([M.ssim(xs[i], refs[i]) for i in range(3)])
    assert batched.shape == (3,)
    assert torch.allclose(batched, singles, atol=1e-9)


@pytest.mark.parametrize("name", ["cell", "retina", "ct"])
def test_no_reference_metrics(name: str) -> None:
    img = _images()[name]
    u8 = util.img_as_ubyte(img)
    assert abs(M.entropy(img).item() - measure.shannon_entropy(u8)) < 1e-3
    f = img.astype(np.float64)
    dx, dy = np.diff(f, axis=1)[:-1], np.diff(f, axis=0)[:, :-1]
    ag = np.sqrt((dx**2 + dy**2) / 2).mean()
    assert abs(M.average_gradient(img).item() - ag) < 1e-5
    assert abs(M.std_dev(img).item() - f.std()) < 1e-5


def test_identical_images_and_errors() -> None:
    img = _images()["camera"]
    assert M.ssim(img, img).item() == pytest.approx(1.0, abs=1e-9)
    assert M.psnr(img, img).item() == float("inf")
    with pytest.raises(ValueError, match="shape mismatch"):
        M.psnr(img, img[:-1])
    with pytest.raises(ValueError, match="smaller than"):
        M.ssim(img[:8, :8], img[:8, :8])
    with pytest.raises(ValueError, match="crop_border"):
        M.psnr(img[:8, :8], img[:8, :8], crop_border=4)
