"""Readers on real files: PNG 8/16-bit, RGB, TIFF, DICOM, NIfTI, npz; labels, masks, errors."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medgan.data import load_dataset
from medgan.data.readers import dicom_window, read_dicom, read_nifti
from medgan.errors import DataError


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_folder_labels_from_subfolders_8_and_16_bit(tmp_path):
    ramp8 = np.tile(np.arange(16, dtype=np.uint8) * 17, (16, 1))  # 0..255
    _png(tmp_path / "a_cls" / "x.png", ramp8)
    ramp16 = (ramp8.astype(np.uint16) * 257)
    (tmp_path / "b_cls").mkdir()
    Image.fromarray(ramp16).save(tmp_path / "b_cls" / "y.png")  # 16-bit grayscale PNG
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299
    _png(tmp_path / "b_cls" / "z.tif", rgb)
    ds = load_dataset(tmp_path, 16, 1)
    assert ds.class_names == ["a_cls", "b_cls"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 1, 16, 16)
    # the 8-bit and 16-bit ramps decode to the same [-1, 1] values
    assert np.allclose(ds.images[0].numpy(), ds.images[1].numpy(), atol=1e-4)
    assert ds.images[0, 0, 0, 0] == -1 and ds.images[0, 0, 0, -1] == 1
    assert np.allclose(ds.images[2].numpy(), 0.299 * 2 - 1, atol=1e-3)
    rgb3 = load_dataset(tmp_path, 8, 3)  # resized, RGB kept / gray replicated
    assert rgb3.images.shape == (3, 3, 8, 8)
    assert np.allclose(rgb3.images[2, 0].numpy(), 1) and np.allclose(rgb3.images[2, 1].numpy(), -1)


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


def test_corrupt_files_are_skipped_or_fail_by_name(tmp_path):
    _png(tmp_path / "good.png", np.full((8, 8), 100, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "bad.dcm").write_bytes(b"DICM garbage")
    ds = load_dataset(tmp_path, 8, 1, on_error="skip")
    assert len(ds) == 1 and sorted(s[0] for s in ds.skipped) == ["bad.dcm", "broken.png"]
    with pytest.raises(DataError, match="bad.dcm|broken.png"):
        load_dataset(tmp_path, 8, 1, on_error="fail")


def test_empty_or_unreadable_dataset_raises_clear_error(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load_dataset(tmp_path, 8, 1)
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images.*x.png"):
        load_dataset(tmp_path, 8, 1)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing", 8, 1)


def test_dicom_ct_rescale_and_mr_window(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(ct)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    (frame,) = read_dicom(ct)  # no window in the file: percentile stretch of the HU values
    lo, hi = np.percentile(hu, [0.5, 99.5])
    assert np.allclose(frame, np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-5)
    mr = get_testdata_file("MR_small.dcm")
    raw = pydicom.dcmread(mr).pixel_array.astype(np.float32)
    (frame,) = read_dicom(mr)  # window centre 600, width 1600
    assert np.allclose(frame, np.clip((raw - 599.5) / 1599 + 0.5, 0, 1), atol=1e-5)
    assert dicom_window(np.array([-1e6, 1e6]), 600, 1600).tolist() == [0.0, 1.0]


def test_dicom_monochrome1_is_inverted_and_loads_in_folder(tmp_path):
    rg = get_testdata_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(rg)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    (frame,) = read_dicom(rg)
    raw = ds.pixel_array.astype(np.float32)
    # MONOCHROME1: high stored values are dark, so the output falls as the raw value rises
    assert np.corrcoef(raw.ravel()[::97], frame.ravel()[::97])[0, 1] < -0.9
    shutil.copy(rg, tmp_path / "chest.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    data = load_dataset(tmp_path, 32, 1)
    assert len(data) == 2 and data.images.shape == (2, 1, 32, 32)
    assert data.images.min() >= -1 and data.images.max() <= 1 and data.images.std() > 0.1


def test_nifti_slices_and_4d(tmp_path):
    from nibabel.testing import data_path

    anat = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25
    slices = read_nifti(anat, axis=2)
    assert 0 < len(slices) <= 25 and slices[0].shape == (41, 33)  # rot90 of [33, 41]
    assert all(s.min() >= 0 and s.max() <= 1 for s in slices)
    assert len(read_nifti(anat, axis=0)) <= 33 and read_nifti(anat, axis=0)[0].shape == (25, 41)
    four = read_nifti(os.path.join(data_path, "example4d.nii.gz"))  # 128 x 96 x 24 x 2 -> first volume
    assert 0 < len(four) <= 24 and four[0].shape == (96, 128)
    shutil.copy(anat, tmp_path / "anat.nii")
    ds = load_dataset(tmp_path, 16, 1, nifti_axis=2)
    assert len(ds) == len(slices) and ds.files[0] == "anat.nii#0"


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "blood.npz", train_images=imgs, train_labels=np.arange(7).reshape(7, 1) % 3,
             val_images=imgs[:2], val_labels=np.zeros((2, 1)))
    ds = load_dataset(tmp_path / "blood.npz", 28, 3)
    assert len(ds) == 7 and ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert np.allclose((ds.images[3].numpy() + 1) / 2 * 255, np.moveaxis(imgs[3], -1, 0), atol=1e-3)
    np.savez(tmp_path / "bad.npz", images=imgs)
    with pytest.raises(DataError, match="train_images"):
        load_dataset(tmp_path / "bad.npz", 28, 1, on_error="fail")
