"""File readers: each turns one file into a list of 2-D frames, float in [0, 1].

A frame is [H, W] (grayscale) or [H, W, 3] (RGB). Readers raise on anything they cannot
decode; the dataset builder catches, names the file and skips or fails per `on_error`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTS = (".dcm", ".dicom")
NIFTI_EXTS = (".nii", ".nii.gz")
NPZ_EXTS = (".npz",)
ALL_EXTS = IMAGE_EXTS + DICOM_EXTS + NIFTI_EXTS + NPZ_EXTS


def kind_of(path: Path) -> str | None:
    """'image' | 'dicom' | 'nifti' | 'npz' by file name, or None when unsupported."""
    name = path.name.lower()
    for kind, exts in (("nifti", NIFTI_EXTS), ("image", IMAGE_EXTS), ("dicom", DICOM_EXTS), ("npz", NPZ_EXTS)):
        if name.endswith(exts):
            return kind
    return None


def _unit(arr: np.ndarray) -> np.ndarray:
    """Integer pixels -> [0, 1] by their dtype's range; floats by min-max unless already in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    arr = arr.astype(np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo >= 0.0 and hi <= 1.0:
        return np.nan_to_num(arr)
    return np.nan_to_num((arr - lo) / max(hi - lo, 1e-12))


def read_image(path: Path) -> list[np.ndarray]:
    """PNG / JPEG / TIFF / BMP, 8 or 16 bit, gray or RGB(A) -> one frame (alpha dropped)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # BGR order, native bit depth
    if arr is None:
        raise ValueError("not a decodable image")
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        else:
            arr = arr[:, :, ::-1]  # BGR -> RGB
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        raise ValueError(f"unexpected image shape {arr.shape}")
    return [_unit(np.ascontiguousarray(arr))]


def dicom_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear VOI window -> [0, 1]."""
    width = max(float(width), 1.0)
    x = (values - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (values > center).astype(np.float32)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _first(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
    except (TypeError, ValueError, IndexError):
        return None


def read_dicom(path: Path) -> list[np.ndarray]:
    """DICOM: modality LUT (rescale slope/intercept), VOI window centre/width when present
    (else 0.5-99.5 percentile stretch), MONOCHROME1 inverted so bright = dense; multi-frame
    files give one frame each."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ValueError("DICOM file has no pixel data")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: RGB (possibly YBR, converted by pydicom)
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        frames = arr if arr.ndim == 4 else arr[None]
        return [_unit(f) for f in frames]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = arr.astype(np.float32) * slope + intercept  # stored values -> modality units (HU for CT)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    frames = values if values.ndim == 3 else values[None]  # [F, H, W]
    out = []
    for f in frames:
        if center is not None and width is not None:
            x = dicom_window(f, center, width)
        else:
            lo, hi = np.percentile(f, [0.5, 99.5])
            x = np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
        out.append(1.0 - x if photometric == "MONOCHROME1" else x)
    return out


def read_nifti(path: Path, axis: int = 2, percentiles: tuple[float, float] = (1.0, 99.0),
               min_std: float = 0.02) -> list[np.ndarray]:
    """NIfTI volume -> 2-D slices along `axis`, intensities normalised by the volume's
    percentiles (robust to hot voxels). 4-D series use their first volume. Near-constant
    slices (background) are dropped: they teach a GAN nothing."""
    import nibabel as nib

    vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    if vol.ndim == 4:
        vol = vol[..., 0]
    if vol.ndim == 2:
        vol = vol[:, :, None]
    if vol.ndim != 3:
        raise ValueError(f"NIfTI volume has unsupported shape {vol.shape}")
    lo, hi = np.percentile(vol, percentiles)
    vol = np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1)
    out = []
    for i in range(vol.shape[axis]):
        s = np.take(vol, i, axis=axis)
        if s.std() >= min_std and min(s.shape) >= 2:
            out.append(np.ascontiguousarray(np.rot90(s)).astype(np.float32))  # radiological display orientation
    if not out:
        raise ValueError("NIfTI volume has no non-empty slices")
    return out


def read_npz(path: Path, split: str = "train") -> tuple[list[np.ndarray], np.ndarray | None, list[np.ndarray] | None]:
    """MedMNIST-style archive: `<split>_images` [N, H, W(, 3)], optional `<split>_labels`
    [N] or [N, 1] and `<split>_masks`. Returns (frames, labels or None, masks or None)."""
    with np.load(str(path), allow_pickle=False) as z:
        key = f"{split}_images"
        if key not in z:
            raise ValueError(f"npz has no {key!r} array (keys: {sorted(z.files)})")
        images = z[key]
        labels = z[f"{split}_labels"].reshape(len(images), -1)[:, 0].astype(np.int64) if f"{split}_labels" in z else None
        masks = [m > 0 for m in z[f"{split}_masks"]] if f"{split}_masks" in z else None
    if images.ndim not in (3, 4):
        raise ValueError(f"{key} has shape {images.shape}, expected [N, H, W] or [N, H, W, 3]")
    return [_unit(im) for im in images], labels, masks


def read_mask(path: Path) -> np.ndarray:
    """A mask image -> bool [H, W] (any non-zero pixel is foreground)."""
    frames = read_image(path)
    m = frames[0]
    return (m.max(axis=2) if m.ndim == 3 else m) > 0
