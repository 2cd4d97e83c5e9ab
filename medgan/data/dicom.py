"""DICOM pixels as a viewer shows them: pydicom's modality LUT, then its VOI LUT, then MONOCHROME1.

The grayscale pipeline of PS3.3 C.11 (and PS3.4 N.2): stored values -> modality LUT or rescale
(Hounsfield units for CT) -> VOI LUT or window centre/width -> presentation. Both LUT steps are
pydicom's own `apply_modality_lut` / `apply_voi_lut`, so a file reads exactly as pydicom says.
The VOI output lies in the range pydicom's windowing maps to; that range, and nothing fitted to
the pixels, maps it to [0, 1]. Without a VOI in the file, the modality values' min..max is used,
as viewers do by default.
"""

from __future__ import annotations

import numpy as np

from medgan.data.report import ReadError


def output_range(ds, voi_lut_bits: int | None = None) -> tuple[float, float]:  # noqa: ANN001 - a Dataset
    """The value range after the modality LUT (and the VOI LUT, when a LUT sequence was used).

    Mirrors pydicom's `apply_windowing`: LINEAR windows map to [y_min, y_max] of the modality output.
    """
    if voi_lut_bits is not None:
        return 0.0, float(2 ** voi_lut_bits - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if ds.get("ModalityLUTSequence"):
        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** lut_bits - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _voi(ds, index: int | None) -> tuple[str, int | None, int | None]:  # noqa: ANN001
    """Which VOI applies: ('window'|'lut'|'none', the index used, LUT output bits)."""
    if index is None:
        return "none", None, None
    seq = ds.get("VOILUTSequence")
    if seq:
        i = min(index, len(seq) - 1)
        return "lut", i, int(seq[i].LUTDescriptor[2])
    if "WindowCenter" in ds and "WindowWidth" in ds:
        n = ds["WindowCenter"].VM
        return "window", min(index, max(0, n - 1)), None
    return "none", None, None


def gray_to_unit(arr: np.ndarray, ds, name: str, window: int | None) -> tuple[np.ndarray, str]:  # noqa: ANN001
    """Stored grayscale values [..., H, W] -> [0, 1] through the modality and VOI LUTs (no inversion)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ReadError(name, "non_finite", f"{bad:,} pixel values are NaN or infinite after the modality LUT "
                        f"(RescaleSlope {ds.get('RescaleSlope')}, RescaleIntercept {ds.get('RescaleIntercept')})")
    kind, idx, lut_bits = _voi(ds, window)
    if kind != "none":
        values = np.asarray(apply_voi_lut(values, ds, index=idx), dtype=np.float64)
        lo, hi = output_range(ds, lut_bits if kind == "lut" else None)
        how = f"modality LUT + VOI {'window' if kind == 'window' else 'LUT'} {idx}"
    else:  # no VOI in the file (or dicom_window=None): the data's own range, as viewers default to
        lo, hi = float(values.min()), float(values.max())
        how = "modality LUT, min-max of the file (no VOI)"
    if hi <= lo:
        return np.zeros(values.shape, np.float32), how + " (constant image)"
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), how


def dicom_frames(ds, name: str, idx: list[int], header, policy):  # noqa: ANN001, ANN201 - readers._Raw
    """The selected frames of a DICOM data set, scaled to [0, 1] (readers._Raw, already scaled)."""
    from pydicom.pixels import pixel_array

    from medgan.data.readers import _Raw

    n = header.frames
    frames = [pixel_array(ds, index=i) if n > 1 else pixel_array(ds) for i in idx]
    arr = np.stack(frames)  # [F, H, W] or [F, H, W, 3]; YBR converted to RGB by pydicom
    photometric = header.photometric
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float32)
        top = 255.0 if rgb.max() <= 255 else 65535.0
        return _Raw(rgb / top, tuple(idx), scaled=True, scaling=f"palette colour LUT /{int(top)}")
    if header.samples == 3:
        if arr.dtype.kind == "f":
            from medgan.data.readers import check_finite

            arr = check_finite(name, arr, policy)
            return _Raw(np.clip(arr, 0, 1).astype(np.float32), tuple(idx), scaled=True, scaling="float RGB")
        bits = int(header.bits or header.container_bits)
        return _Raw(arr.astype(np.float32) / float(2 ** bits - 1), tuple(idx), scaled=True,
                    scaling=f"RGB /{2 ** bits - 1} (BitsStored {bits})")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ReadError(name, "unsupported", f"DICOM photometric interpretation {photometric} is not read")
    unit, how = gray_to_unit(arr, ds, name, policy.dicom_window)
    return _Raw(unit, tuple(idx), scaled=True, scaling=how, invert=photometric == "MONOCHROME1")
