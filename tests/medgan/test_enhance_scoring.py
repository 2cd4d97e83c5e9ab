"""Scoring conventions of enhance_dataset: low light on the image's own channels, SR on Y with a border crop;
every row names what it was scored on, beside the baseline scored the same way."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from skimage import data, util

from medgan import metrics as M
from medgan.config import EnhanceConfig
from medgan.data import read_image
from medgan.enhance import enhance_dataset, scoring
from medgan.enhance.pairs import DarkenSpec, make_lowlight_pair, make_sr_pair
from medgan.pngio import write_png

LOWLIGHT = ["lime", "gamma", "he", "clahe"]


def _ct() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    a = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32)
    return (a - a.min()) / (a.max() - a.min())


def _pairs(tmp: Path, kind: str) -> tuple[list[Path], list[Path]]:
    """An RGB (retina, a colour scene) and a grey (head CT, 16-bit) pair, as files."""
    imgs = {"retina": util.img_as_float32(data.retina()[::6, ::6]), "ct": _ct()}
    ins, refs = [], []
    for i, (name, img) in enumerate(imgs.items()):
        if kind == "sr":
            low, ref = make_sr_pair(img, 2)
        else:
            low, ref = make_lowlight_pair(img, DarkenSpec(exposure=0.1, photons=20000, read_sigma=5e-4, seed=i))
        depth = 16 if name == "ct" else 8
        write_png(tmp / "in" / f"{name}.png", low, depth)
        write_png(tmp / "ref" / f"{name}.png", ref, depth)
        ins.append(tmp / "in" / f"{name}.png")
        refs.append(tmp / "ref" / f"{name}.png")
    return ins, refs


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["file"]: r for r in csv.DictReader(open(out / "metrics.csv"))}


def _img(path: Path) -> np.ndarray:
    return read_image(path).frame(0)


@pytest.mark.parametrize("method", LOWLIGHT)
def test_lowlight_is_scored_on_the_images_own_channels(tmp_path: Path, method: str) -> None:
    ins, refs = _pairs(tmp_path, "dark")
    cfg = EnhanceConfig(method=method)
    summary = enhance_dataset(cfg, ins, tmp_path / "o", references=refs)
    assert summary["scoring"] == scoring(cfg) and summary["scoring"]["channels"] == "own"
    assert summary["scoring"]["crop_border"] == 0 and "RGB as RGB" in summary["scoring"]["convention"]
    rows = _rows(tmp_path / "o")
    for src, ref in zip(ins, refs):
        row = rows[src.name]
        out, want = _img(tmp_path / "o" / "images" / src.name), _img(ref)
        assert row["scored_on"] == ("rgb" if want.ndim == 3 else "grey")
        # the CSV's score is the RGB (or grey) score of the written image, and the input's the same way
        assert float(row["psnr"]) == pytest.approx(M.psnr(out, want).item(), abs=0.05)
        assert float(row["ssim"]) == pytest.approx(M.ssim(out, want).item(), abs=2e-3)
        assert float(row["input_psnr"]) == pytest.approx(M.psnr(_img(src), want).item(), abs=1e-3)
        if want.ndim == 3:  # control: the luma score would differ, so the test can tell them apart
            assert abs(M.psnr(out, want, y_channel=True).item() - float(row["psnr"])) > 0.1
    assert summary["input_psnr"]["mean"] == pytest.approx(np.mean([float(r["input_psnr"]) for r in rows.values()]))


@pytest.mark.parametrize("method", ["bicubic"])
def test_sr_is_scored_on_y_with_border_crop(tmp_path: Path, method: str) -> None:
    ins, refs = _pairs(tmp_path, "sr")
    cfg = EnhanceConfig(method=method, scale=2)
    summary = enhance_dataset(cfg, ins, tmp_path / "o", references=refs)
    assert summary["scoring"]["channels"] == "y" and summary["scoring"]["crop_border"] == 2
    rows = _rows(tmp_path / "o")
    for src, ref in zip(ins, refs):
        out, want = _img(tmp_path / "o" / "images" / src.name), _img(ref)
        row = rows[src.name]
        assert row["scored_on"] == ("y/crop2" if want.ndim == 3 else "grey/crop2")
        assert float(row["psnr"]) == pytest.approx(M.psnr(out, want, y_channel=True, crop_border=2).item(), abs=0.05)
        # control: without the crop or on RGB the number is another one
        other = M.psnr(out, want, y_channel=False, crop_border=0).item()
        assert abs(other - float(row["psnr"])) > 0.01


def test_y_channel_override_is_stated(tmp_path: Path) -> None:
    ins, refs = _pairs(tmp_path, "dark")
    cfg = EnhanceConfig(method="gamma", gamma=0.5, y_channel=True)
    summary = enhance_dataset(cfg, ins, tmp_path / "o", references=refs)
    assert summary["scoring"]["channels"] == "y" and "set by y_channel" in summary["scoring"]["convention"]
    assert _rows(tmp_path / "o")["retina.png"]["scored_on"] == "y"
    on_disk = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert on_disk["scoring"] == summary["scoring"]


def test_entropy_column_is_at_the_outputs_bit_depth(tmp_path: Path) -> None:
    from skimage.measure import shannon_entropy

    ins, refs = _pairs(tmp_path, "dark")
    enhance_dataset(EnhanceConfig(method="gamma", gamma=0.5), ins, tmp_path / "o", references=refs)
    rows = _rows(tmp_path / "o")
    for name, depth in (("ct.png", 16), ("retina.png", 8)):
        out = _img(tmp_path / "o" / "images" / name)
        ints = np.round(out * (2**depth - 1)).astype(np.uint16 if depth == 16 else np.uint8)
        assert float(rows[name]["entropy"]) == pytest.approx(shannon_entropy(ints), abs=1e-4)
