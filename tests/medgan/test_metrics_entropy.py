"""Entropy at every bit depth equals skimage.measure.shannon_entropy of the same integer values."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data, util
from skimage.measure import shannon_entropy

from medgan import metrics as M


def _u16_images() -> dict[str, np.ndarray]:
    """16-bit images of several kinds: real CT/MR values, full-range noise, few levels, the high byte only."""
    import pydicom
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    out = {}
    for name in ("CT_small.dcm", "MR_small.dcm"):
        a = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.int64)
        out[name] = (a - a.min()).astype(np.uint16)
    out["uniform"] = rng.integers(0, 65536, (97, 131), dtype=np.uint16)
    out["few_levels"] = rng.choice(np.array([0, 1, 257, 65535], dtype=np.uint16), (64, 64))
    out["low_bits_only"] = rng.integers(0, 256, (64, 64), dtype=np.uint16)  # 8-bit histogram: all in bin 0/1
    out["rgb"] = rng.integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    out["constant"] = np.full((16, 16), 4242, dtype=np.uint16)
    return out


@pytest.mark.parametrize("name", list(_u16_images()))
def test_16_bit_entropy_equals_skimage_on_the_same_values(name: str) -> None:
    u16 = _u16_images()[name]
    want = shannon_entropy(u16)
    assert M.entropy(u16).item() == pytest.approx(want, abs=1e-9)  # depth taken from the dtype
    # the same image as read by medgan.data (float in [0, 1] by its true range) with its depth given
    assert M.entropy(u16.astype(np.float64) / 65535.0, bits=16).item() == pytest.approx(want, abs=1e-9)


def test_bit_depth_matters_control() -> None:
    """A 256-bin histogram of real 16-bit data loses information: the two must differ (the old bug)."""
    u16 = _u16_images()["CT_small.dcm"]
    assert abs(M.entropy(u16, bits=8).item() - shannon_entropy(u16)) > 0.1


@pytest.mark.parametrize("name", ["camera", "retina", "cell"])
def test_8_bit_entropy_equals_skimage(name: str) -> None:
    u8 = getattr(data, name)()
    assert M.entropy(u8).item() == pytest.approx(shannon_entropy(u8), abs=1e-9)
    f = util.img_as_float(u8)
    assert M.entropy(f).item() == pytest.approx(shannon_entropy(util.img_as_ubyte(f)), abs=1e-9)


@pytest.mark.parametrize("bits", [0, 17, 8.5, True, "8"])
def test_bad_bit_depth_refused(bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        M.entropy(np.zeros((8, 8)), bits=bits)
