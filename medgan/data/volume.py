"""NIfTI volumes as 2-D slices: the policy's time point(s), slices along `slice_axis`.

Intensities are in arbitrary units (MRI) or scaled HU (CT); scaling=auto maps the volume's
robust range (its `percentiles`) to [0, 1], the usual choice for MRI (e.g. MONAI's
ScaleIntensityRangePercentiles). Near-constant slices (background) are left out and counted.
"""

from __future__ import annotations

import numpy as np

from medgan.data.report import ReadError

EMPTY_STD = 0.02  # a slice whose std in [0, 1] units is below this holds no anatomy


def nifti_frames(img, name: str, t_idx: list[int], header, policy):  # noqa: ANN001, ANN201 - readers._Raw
    from medgan.data.readers import _Raw, check_finite, select_frames

    shape = header.extra["shape"]  # (X, Y, Z, T)
    out, indices, dropped = [], [], 0
    how = ""
    for t in t_idx:
        vol = np.asarray(img.dataobj[..., t] if len(img.shape) == 4 else img.dataobj, dtype=np.float32)
        vol = check_finite(name, vol.reshape(shape[:3]), policy)  # [X, Y, Z]
        unit, how = _volume_unit(vol, policy)
        axis = policy.slice_axis
        n = unit.shape[axis]
        if policy.slices == "all":
            picks = list(range(n))
        else:
            picks = select_frames(name, n, "middle" if policy.slices == "middle" else policy.slices, "slices")
        for k in picks:
            s = np.take(unit, k, axis=axis)
            if min(s.shape) < policy.min_side:
                raise ReadError(name, "degenerate", f"NIfTI slices along axis {axis} are {s.shape[0]} x "
                                f"{s.shape[1]} voxels (volume {shape[:3]}); try another read.slice_axis")
            if policy.drop_empty_slices and policy.slices == "all" and n > 1 and float(s.std()) < EMPTY_STD:
                dropped += 1
                continue
            out.append(np.ascontiguousarray(np.rot90(s)))  # radiological display orientation
            indices.append(k if len(t_idx) == 1 else t * n + k)
    if not out:
        raise ReadError(name, "no_pixels", f"NIfTI volume {shape[:3]} has no slice with contrast "
                        f"({dropped} near-constant slices)")
    return _Raw(np.stack(out), tuple(indices), scaled=True, scaling=how, dropped=dropped)


def _volume_unit(vol: np.ndarray, policy) -> tuple[np.ndarray, str]:  # noqa: ANN001
    lo, hi = float(vol.min()), float(vol.max())
    if policy.scaling == "minmax" or (policy.scaling == "dtype" and not (lo >= 0 and hi <= 1)):
        pass
    elif policy.scaling == "auto":
        lo, hi = (float(x) for x in np.percentile(vol, policy.percentiles))
    else:
        return np.clip(vol, 0, 1), "float in [0, 1] as stored"
    if hi <= lo:
        return np.zeros_like(vol), "constant volume"
    how = "min-max of the volume" if policy.scaling != "auto" else f"volume percentiles {policy.percentiles}"
    return np.clip((vol - lo) / (hi - lo), 0, 1).astype(np.float32), how
