"""enhance_dataset end to end, classical baselines and the pair maker, on real images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from skimage import data, exposure, util

from medgan import metrics as M
from medgan.config import EnhanceConfig
from medgan.enhance import enhance_dataset
from medgan.enhance.classical import clahe, gamma_correct, hist_equalize
from medgan.data import read_image as _read_image
from medgan.errors import DataError
from medgan.pngio import write_png


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """The first frame in [0, 1] and its bit depth, read as every job kind reads (medgan.data)."""
    img = _read_image(path)
    return img.frame(0), img.bit_depth
from medgan.enhance.pairs import DarkenSpec, darken, downsample, make_lowlight_pair


def _ct() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    a = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32)
    return (a - a.min()) / (a.max() - a.min())


def test_darken_is_seeded_and_realistic() -> None:
    img = util.img_as_float32(data.retina()[::8, ::8])
    a, b = darken(img, DarkenSpec(seed=4)), darken(img, DarkenSpec(seed=4))
    assert np.array_equal(a, b) and not np.array_equal(a, darken(img, DarkenSpec(seed=5)))
    assert a.mean() < 0.6 * img.mean()
    # shot noise grows with signal: residual spread is larger in brighter areas of a flat ramp
    ramp = np.tile(np.linspace(0.1, 1.0, 200, dtype=np.float32), (200, 1))
    d = darken(ramp, DarkenSpec(exposure=0.5, read_sigma=0.0, photons=200, seed=0)) ** 2.2
    assert d[:, 150:].std(0).mean() > d[:, :50].std(0).mean()
    with pytest.raises(ValueError):
        DarkenSpec(exposure=0)


def test_downsample_antialias() -> None:
    img = util.img_as_float32(data.camera())
    lr = downsample(img, 4)
    assert lr.shape == (128, 128)
    assert abs(float(lr.mean()) - float(img.mean())) < 0.01


@pytest.mark.parametrize("fn", [hist_equalize, clahe, gamma_correct])
def test_classical_methods_on_real_pairs(fn) -> None:
    for img in (util.img_as_float32(data.astronaut()[::4, ::4]), _ct()):
        dark, ref = make_lowlight_pair(img, DarkenSpec(exposure=0.1, photons=20000, read_sigma=5e-4, seed=0))
        out, params = fn(dark)
        assert out.shape == dark.shape and out.dtype == np.float32
        assert out.mean() > dark.mean()
        assert M.psnr(out, ref).item() > M.psnr(dark, ref).item()
        if fn is not hist_equalize:  # global HE stretches the noise of black backgrounds: SSIM can drop
            assert M.ssim(out, ref).item() > M.ssim(dark, ref).item()
    assert isinstance(params, dict)


def test_clahe_uses_skimage() -> None:
    img = util.img_as_float32(data.cell()[::2, ::2])
    out, _ = clahe(img, clip_limit=0.02)
    want = exposure.equalize_adapthist(img, clip_limit=0.02)
    assert np.abs(out - want).max() < 1e-5


def test_config_rejects_bad_parameters() -> None:
    with pytest.raises(ValidationError, match="gamma"):
        EnhanceConfig(gamma=0)
    with pytest.raises(ValidationError):
        EnhanceConfig(strength=1.5)
    with pytest.raises(ValidationError):
        EnhanceConfig(method="bm3d")
    with pytest.raises(ValidationError):
        EnhanceConfig(alpha=-1)


def test_enhance_dataset_scores_and_survives_corrupt_files(tmp_path: Path) -> None:
    src, refd = tmp_path / "dark", tmp_path / "ref"
    imgs = {"retina": util.img_as_float32(data.retina()[::6, ::6]), "ct": _ct(),
            "cam": util.img_as_float32(data.camera()[::4, ::4])}
    inputs, refs = [], []
    for i, (name, img) in enumerate(imgs.items()):
        dark, ref = make_lowlight_pair(img, DarkenSpec(exposure=0.1, photons=20000, read_sigma=5e-4, seed=i))
        write_png(src / f"{name}.png", dark, 16 if name == "ct" else 8)
        write_png(refd / f"{name}.png", ref, 16 if name == "ct" else 8)
        inputs.append(src / f"{name}.png")
        refs.append(refd / f"{name}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    inputs.insert(1, src / "broken.png")
    with pytest.raises(DataError, match=r"broken\.png: .*read\.on_error=skip"):  # the default refuses it by name
        enhance_dataset(EnhanceConfig(method="lime"), inputs, tmp_path / "refused", references=refs)
    progress = []
    summary = enhance_dataset(EnhanceConfig(method="lime", read={"on_error": "skip"}), inputs, tmp_path / "out",
                              references=refs, callbacks=_callbacks(progress))
    assert summary["count"] == 3 and summary["failed"] == ["broken.png"]
    assert summary["read"]["skipped"] == {"corrupt": 1} and summary["read"]["files_read"] == 3
    assert summary["params"]["gamma"]["auto"] is True and 0.3 <= summary["params"]["gamma"]["mean"] <= 1
    assert set(summary) >= {"psnr", "ssim", "entropy", "avg_gradient", "std", "method"}
    assert [p[0] for p in progress] == [1, 2, 3, 4]
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv")))
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "skipped", "ok", "ok"]
    assert "broken.png" in rows[1]["file"]
    out_ct, depth = read_image(tmp_path / "out" / "images" / "ct.png")
    assert depth == 16 and out_ct.shape == imgs["ct"].shape
    # the enhanced set beats the dark inputs on the same references
    dark_psnr = np.mean([M.psnr(read_image(p)[0], read_image(r)[0]).item() for p, r in zip(inputs[::2] + inputs[3:],
                                                                                        refs)])
    assert summary["psnr"]["mean"] > dark_psnr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["count"] == 3


def _callbacks(sink: list):
    from medgan.callbacks import Callbacks

    return Callbacks(on_progress=lambda i, n, s: sink.append((i, n, s)))


@pytest.mark.parametrize("method", ["gamma", "he", "clahe", "bicubic"])
def test_enhance_dataset_other_methods(tmp_path: Path, method: str) -> None:
    img = _ct()
    write_png(tmp_path / "in" / "ct.png", img, 16)
    summary = enhance_dataset(EnhanceConfig(method=method, scale=2), [tmp_path / "in" / "ct.png"], tmp_path / "o")
    out, _ = read_image(tmp_path / "o" / "images" / "ct.png")
    assert out.shape == ((256, 256) if method == "bicubic" else (128, 128))
    assert summary["count"] == 1 and "psnr" not in summary and summary["entropy"]["mean"] > 0
