"""Small image reader/writer for enhancement: PNG/JPEG/TIFF (8/16-bit) and DICOM.

Images come back as float32 in [0, 1], ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB), with the
source bit depth so outputs can keep it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgan.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}


def _from_array(arr: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # alpha is not part of the picture
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or min(arr.shape[:2]) < 1:
        raise DataError(f"{name}: unsupported image shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, 8
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, 16
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{name}: image contains NaN or infinite values")
        return np.clip(arr.astype(np.float32), 0, 1), 16
    return _minmax(arr.astype(np.float64)), 16


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """Read an image as float32 in [0, 1] plus its bit depth (8 or 16); corrupt files raise DataError.

    DICOM pixel data is rescaled from its own min..max (no window is stored reliably).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".dcm":
            import pydicom

            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array
            if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
                arr = arr[arr.shape[0] // 2]  # a multi-frame volume: its middle slice
            return _minmax(arr.astype(np.float64)), 16
        import cv2

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(f"{path.name}: not a readable image")
        if arr.ndim == 3:
            arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]] if arr.shape[2] in (3, 4) else arr  # BGR -> RGB
        return _from_array(arr, path.name)
    except DataError:
        raise
    except Exception as exc:  # any decoder failure is a data problem of this one file
        raise DataError(f"{path.name}: cannot read image ({exc})") from exc


def write_png(path: Path, img: np.ndarray, bit_depth: int = 8) -> None:
    """Write ``[H, W]`` or ``[H, W, 3]`` float in [0, 1] as an 8- or 16-bit PNG."""
    import cv2

    if bit_depth not in (8, 16):
        raise ValueError("bit_depth must be 8 or 16")
    maxv = 255 if bit_depth == 8 else 65535
    q = np.round(np.clip(img, 0, 1) * maxv).astype(np.uint8 if bit_depth == 8 else np.uint16)
    if q.ndim == 3:
        q = q[..., ::-1]  # RGB -> BGR for OpenCV
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(q)):
        raise DataError(f"cannot write {path}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
