"""The reader against generated classes of hostile input (tests/fault/hostile.py), in-process and fast:
every format x breakage (ten bit-flip seeds each), every folder shape, every label source, read the way
train reads (load_dataset) and the way enhance reads (its per-file loader). A refusal is one DataError line
naming the file; nothing else may escape; the policy's explicit options turn each refusal into a reading."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from medgan.config import EnhanceConfig
from medgan.data import ReadPolicy, list_inputs, load_dataset
from medgan.errors import DataError
from tests.fault.hostile import FORMATS, all_cases, huge, materialise, multi_page, non_finite

CASES = all_cases(bitflip_seeds=tuple(range(1, 11)))


def _train_read(folder: Path) -> str:
    try:
        ds = load_dataset(folder, 16, 1)
    except DataError as err:
        return f"refused: {err}"
    assert ds.images.isfinite().all() and ds.images.min() >= -1 and ds.images.max() <= 1
    return f"handled: {len(ds)}"


def _enhance_read(folder: Path) -> str:
    from medgan.enhance import _frames

    try:
        files = [e.path for e in list_inputs(folder).images]
        frames = [f for p in files for f in _frames(p, EnhanceConfig(method="gamma"))]
    except DataError as err:
        return f"refused: {err}"
    for _, img, depth in frames:
        assert np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1 and depth in (8, 16)
        assert min(img.shape[:2]) >= 8
    return f"handled: {len(frames)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_hostile_case_is_refused_by_name_or_read_right(tmp_path, case):
    folder = materialise(case, tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = {"train": _train_read(folder)}
        if "enhance" in case.kinds and case.name != "empty class folder":  # classes are train's concern
            outcomes["enhance"] = _enhance_read(folder)
    for kind, out in outcomes.items():
        if case.expect == "refuse":
            assert out.startswith("refused"), (kind, out)
        if case.expect == "handle":
            assert out.startswith("handled"), (kind, out)
        if out.startswith("refused"):
            msg = out[len("refused: "):]
            assert "\n" not in msg and "Traceback" not in msg, msg
            if case.needle != "-":  # (an empty folder is named by the upload as "holds no files")
                assert case.needle in msg or (case.needle == "holds no files" and "no image files" in msg), (kind, msg)
    if len(outcomes) == 2 and case.group == "format x breakage":  # one reader: both kinds decide alike
        assert outcomes["train"].split(":")[0] == outcomes["enhance"].split(":")[0], outcomes


def test_explicit_policy_options_read_what_the_default_refuses(tmp_path):
    for fmt in FORMATS:
        mp = multi_page(fmt)
        if mp is not None and fmt != "npz":
            p = tmp_path / f"mp-{fmt}"
            p.write_bytes(mp)
            from medgan.data import read_image

            assert len(read_image(p, ReadPolicy(frames="first"))) >= 1, fmt
            assert len(read_image(p, ReadPolicy(frames="all"))) >= 3, fmt
        nf = non_finite(fmt)
        if nf is not None:
            p = tmp_path / f"nf-{fmt}"
            p.write_bytes(nf)
            from medgan.data import read_image

            if fmt != "dicom":  # an infinite rescale slope leaves nothing finite to keep
                img = read_image(p, ReadPolicy(non_finite="zero", frames="all"))
                assert np.isfinite(img.pixels).all(), fmt


def test_skip_policy_counts_every_refusal_by_reason(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    from tests.fault.hostile import good

    (d / "ok.png").write_bytes(good("png"))
    (d / "bomb.png").write_bytes(huge("png"))
    (d / "empty.dcm").write_bytes(b"")
    (d / "nan.nii.gz").write_bytes(non_finite("nifti"))
    (d / "pages.tif").write_bytes(multi_page("tiff"))
    ds = load_dataset(d, 16, 1, on_error="skip")
    assert len(ds) == 1
    assert ds.report.skipped == {"empty": 1, "multi_frame": 1, "non_finite": 1, "too_many_pixels": 1}
