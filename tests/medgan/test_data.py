"""The one reader on real files: PNG 8/16-bit, RGB, TIFF, DICOM (modality + VOI LUT, MONOCHROME1), NIfTI,
npz; labels, masks, skip reports; format by content. Enhance and train must read a file identically."""

from __future__ import annotations

import os
import shutil
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medgan.config import EnhanceConfig
from medgan.data import ReadPolicy, load_dataset, read_image
from medgan.data.report import ReadError
from medgan.errors import DataError

# pydicom's and pydicom-data's real files: CT without a window, MR with one, two MONOCHROME1 chest
# radiographs, a rescaled MR, a windowed head CT (centre 40, width 100).
DICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm", "693_UNCR.dcm"]


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr, mode=mode).save(path)


def pydicom_view(path) -> np.ndarray:
    """The oracle: pydicom's own modality and VOI LUTs, mapped by the windowing's output range, MONOCHROME1
    inverted; without a VOI, the modality values' min..max."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        out = apply_voi_lut(values, ds, index=0)
        bits = int(ds.BitsStored)
        lo, hi = (0, 2 ** bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            lo, hi = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept), hi * float(ds.RescaleSlope) + float(
                ds.RescaleIntercept)
        x = (out - lo) / (hi - lo)
    else:
        x = (values - values.min()) / (values.max() - values.min())
    x = np.clip(x, 0, 1)
    return 1 - x if ds.PhotometricInterpretation == "MONOCHROME1" else x


@pytest.mark.parametrize("name", DICOM_FILES)
def test_dicom_matches_pydicom_voi_lut_and_enhance_reads_as_train(tmp_path, name):
    from medgan.enhance import _frames

    path = get_testdata_file(name)
    oracle = pydicom_view(path)
    img = read_image(path)
    assert img.format == "dicom" and len(img) == 1
    assert np.abs(img.frame(0) - oracle).max() < 1e-5, img.scaling
    # enhance's loading (colour kept) and train's loading (load_dataset at native size) agree exactly
    (stem, enh, depth), = _frames(__import__("pathlib").Path(path), EnhanceConfig(method="gamma"))
    assert depth == 16 and np.array_equal(enh, img.frame(0))
    shutil.copy(path, tmp_path / "scan.dcm")
    side = min(img.frame(0).shape)
    ds = load_dataset(tmp_path, side, 1)
    h, w = img.frame(0).shape
    top, left = (h - side) // 2, (w - side) // 2
    crop = img.frame(0)[top:top + side, left:left + side]
    assert np.allclose((ds.images[0, 0].numpy() + 1) / 2, crop, atol=1e-6)
    if pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1":
        raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
        assert np.corrcoef(raw.ravel()[::97], enh.ravel()[::97])[0, 1] < -0.9  # not a negative


def test_windowed_head_ct_keeps_its_window():
    img = read_image(get_testdata_file("693_UNCR.dcm"))  # centre 40 HU, width 100 HU
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    inside = (hu > -10) & (hu < 90)
    assert img.scaling.startswith("modality LUT + VOI window 0")
    assert np.allclose(img.frame(0)[hu <= -10], 0) and np.allclose(img.frame(0)[hu >= 90], 1)
    assert 0 < img.frame(0)[inside].mean() < 1


def test_multiframe_dicom_refused_unless_the_policy_names_frames():
    path = get_testdata_file("emri_small.dcm")  # 10 frames
    with pytest.raises(ReadError, match="holds 10 frames; set read.frames"):
        read_image(path)
    assert read_image(path, ReadPolicy(frames="all")).pixels.shape == (10, 64, 64)
    mid = read_image(path, ReadPolicy(frames="middle"))
    assert mid.indices == (5,) and np.array_equal(mid.frame(0), read_image(path, ReadPolicy(frames=5)).frame(0))
    with pytest.raises(ReadError, match="index 12 asked for, but the file holds 10"):
        read_image(path, ReadPolicy(frames=12))


def test_format_by_content_extension_only_a_hint(tmp_path):
    ct = get_testdata_file("MR_small.dcm")
    shutil.copy(ct, tmp_path / "scan.png")
    shutil.copy(ct, tmp_path / "IM0001")  # DICOM files often have no extension at all
    a, b = read_image(tmp_path / "scan.png"), read_image(tmp_path / "IM0001")
    assert a.format == b.format == "dicom" and np.array_equal(a.pixels, read_image(ct).pixels)
    assert a.notes == ("extension says PNG, content is DICOM",) and b.notes == ()
    (tmp_path / "README.txt").write_text("not an image")
    ds = load_dataset(tmp_path, 32, 1)
    assert len(ds) == 2 and ds.report.notes == {"extension says PNG, content is DICOM": 1,
                                                "files that are no images left out": 1}
    (tmp_path / "notes.png").write_text("patient notes")
    with pytest.raises(DataError, match=r"notes.png: not an image: named as PNG but its content is not"):
        load_dataset(tmp_path, 32, 1)


def test_folder_labels_from_subfolders_8_and_16_bit(tmp_path):
    ramp8 = np.tile(np.arange(16, dtype=np.uint8) * 17, (16, 1))  # 0..255
    _png(tmp_path / "a_cls" / "x.png", ramp8)
    ramp16 = (ramp8.astype(np.uint16) * 257)
    (tmp_path / "b_cls").mkdir()
    PILImage.fromarray(ramp16).save(tmp_path / "b_cls" / "y.png")  # 16-bit grayscale PNG
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299
    _png(tmp_path / "b_cls" / "z.tif", rgb)
    ds = load_dataset(tmp_path, 16, 1)
    assert ds.class_names == ["a_cls", "b_cls"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 1, 16, 16)
    assert np.allclose(ds.images[0].numpy(), ds.images[1].numpy(), atol=1e-4)  # 8- and 16-bit ramps alike
    assert ds.images[0, 0, 0, 0] == -1 and ds.images[0, 0, 0, -1] == 1
    assert np.allclose(ds.images[2].numpy(), 0.299 * 2 - 1, atol=1e-3)
    rgb3 = load_dataset(tmp_path, 8, 3)  # resized, RGB kept / gray replicated
    assert rgb3.images.shape == (3, 3, 8, 8)
    assert np.allclose(rgb3.images[2, 0].numpy(), 1) and np.allclose(rgb3.images[2, 1].numpy(), -1)
    assert ds.report.files_read == 3 and ds.report.formats == {"png": 2, "tiff": 1}


def _png_with_sbit(path, arr16: np.ndarray, bits: int) -> None:
    """A 16-bit gray PNG with an sBIT chunk declaring `bits` significant bits (12-bit detector data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    h, w = arr16.shape
    rows = b"".join(b"\x00" + r.astype(">u2").tobytes() for r in arr16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                     + chunk(b"sBIT", bytes([bits])) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_uses_the_declared_true_range(tmp_path):
    import tifffile

    ramp = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (32, 1))  # 12-bit data in 16-bit files
    _png_with_sbit(tmp_path / "a.png", ramp, 12)
    tifffile.imwrite(tmp_path / "b.tif", ramp, extratags=[(281, "H", 1, 4095, False)])  # MaxSampleValue 4095
    PILImage.fromarray(ramp).save(tmp_path / "c.png")  # nothing declared: the container's range
    for name in ("a.png", "b.tif"):
        img = read_image(tmp_path / name)
        assert img.bit_depth == 12 and np.isclose(img.pixels.max(), 1.0), (name, img.scaling)
    plain = read_image(tmp_path / "c.png")
    assert np.isclose(plain.pixels.max(), 4095 / 65535) and plain.scaling == "/65535"
    dark = (ramp // 16).astype(np.uint16)  # a dark 16-bit image stays dark: nothing is fitted to the pixels
    PILImage.fromarray(dark).save(tmp_path / "d.png")
    assert read_image(tmp_path / "d.png").pixels.max() < 0.01
    assert np.isclose(read_image(tmp_path / "c.png", ReadPolicy(scaling="minmax")).pixels.max(), 1.0)


def test_labels_csv_and_masks_beside_images(tmp_path):
    for k in range(4):
        _png(tmp_path / f"im{k}.png", np.full((20, 20), 40 * k, np.uint8))
        m = np.zeros((20, 20), np.uint8)
        m[5:10, 5:10] = 255
        _png(tmp_path / f"im{k}_mask.png", m)
    (tmp_path / "labels.csv").write_text("file,label\nim0.png,cat\nim1.png,dog\nim2.png,cat\nim3.png,dog\n")
    ds = load_dataset(tmp_path, 16, 1)
    assert len(ds) == 4  # the _mask files are not images
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.masks is not None and ds.masks.shape == (4, 1, 16, 16)
    assert set(np.unique(ds.masks.numpy())) == {0.0, 1.0}
    assert 10 <= ds.masks[0].sum() <= 30  # 5x5 of 20 px scaled to 16 px -> 4x4


def test_unreadable_files_fail_by_name_or_are_skipped_and_counted_by_reason(tmp_path):
    _png(tmp_path / "good.png", np.full((8, 8), 100, np.uint8))
    _png(tmp_path / "cut.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8))
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 5)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"^bad.dcm: .*\(read.on_error=skip skips such files"):
        load_dataset(tmp_path, 8, 1)
    ds = load_dataset(tmp_path, 8, 1, on_error="skip")
    assert len(ds) == 1 and sorted(s[0] for s in ds.skipped) == ["bad.dcm", "cut.png", "empty.png"]
    assert ds.report.skipped == {"empty": 1, "no_pixels": 1, "truncated": 1}, ds.report.skipped
    assert ds.report.line() == "read 1 files -> 1 images; skipped 3 (empty 1, no_pixels 1, truncated 1)"


def test_empty_or_unreadable_dataset_raises_clear_error(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load_dataset(tmp_path, 8, 1)
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images.*x.png"):
        load_dataset(tmp_path, 8, 1, on_error="skip")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing", 8, 1)


def test_nifti_slices_and_4d(tmp_path):
    from nibabel.testing import data_path

    anat = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25
    img = read_image(anat)
    assert 0 < len(img) <= 25 and img.frame(0).shape == (41, 33)  # rot90 of [33, 41]
    assert img.pixels.min() >= 0 and img.pixels.max() <= 1 and len(img) + img.dropped_empty == 25
    along0 = read_image(anat, ReadPolicy(slice_axis=0))
    assert len(along0) <= 33 and along0.frame(0).shape == (25, 41)
    four = os.path.join(data_path, "example4d.nii.gz")  # 128 x 96 x 24 x 2
    with pytest.raises(ReadError, match="holds 2 time points"):
        read_image(four)
    first = read_image(four, ReadPolicy(frames="first"))
    assert 0 < len(first) <= 24 and first.frame(0).shape == (96, 128)
    assert len(read_image(four, ReadPolicy(frames="all"))) > len(first)
    shutil.copy(anat, tmp_path / "anat.nii")
    ds = load_dataset(tmp_path, 16, 1, nifti_axis=2)
    assert len(ds) == len(img) and ds.files[0] == f"anat.nii#{img.indices[0]}"
    assert ds.report.notes.get("near-constant volume slices left out", 0) == img.dropped_empty


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "blood.npz", train_images=imgs, train_labels=np.arange(7).reshape(7, 1) % 3,
             val_images=imgs[:2], val_labels=np.zeros((2, 1)))
    ds = load_dataset(tmp_path / "blood.npz", 28, 3)
    assert len(ds) == 7 and ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert np.allclose((ds.images[3].numpy() + 1) / 2 * 255, np.moveaxis(imgs[3], -1, 0), atol=1e-3)
    assert len(load_dataset(tmp_path / "blood.npz", 28, 1, policy=ReadPolicy(npz_split="val"))) == 2
    np.savez(tmp_path / "short.npz", train_images=imgs, train_labels=np.zeros(5))
    with pytest.raises(DataError, match=r"short.npz: train_labels has 5 rows but train_images has 7"):
        load_dataset(tmp_path / "short.npz", 28, 1)
    np.savez(tmp_path / "bad.npz", images=imgs)
    with pytest.raises(DataError, match="train_images"):
        load_dataset(tmp_path / "bad.npz", 28, 1)
