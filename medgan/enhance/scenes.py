"""Scenes for calibrating and benchmarking enhancement without a network: images the installed packages carry.

Natural photos and microscopy from scikit-image, medical images from pydicom's and nibabel's test data
(read through ``medgan.data`` like every job's input), several with black backgrounds (the retina's
surround, the Shepp-Logan phantom, the moon's sky, an MR slice). Each is area-resized so its long
side is at most ``size`` pixels, and darkened by the pair maker (``pairs.make_lowlight_pair``).

Two disjoint sets of darkening settings: ``CALIBRATION`` (used to choose the automatic settings'
constants) and ``HELD_OUT`` (used by bench/bench_enhance.py to report them), so the figures are not
measured on what they were tuned on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from medgan.enhance.pairs import DarkenSpec, make_lowlight_pair

RGB_SCENES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")
GREY_SCENES = ("camera", "moon", "cell", "shepp_logan_phantom")
MEDICAL_SCENES = ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "anatomical.nii")
SCENES = RGB_SCENES + GREY_SCENES + MEDICAL_SCENES

# (exposure, photons at full scale): dim and very dim, with the pair maker's default shot noise
# (400 photons) and nearly noiseless (20,000).
CALIBRATION = tuple(DarkenSpec(exposure=e, photons=p, seed=0) for e in (0.05, 0.1, 0.2) for p in (400.0, 20000.0))
HELD_OUT = tuple(DarkenSpec(exposure=e, photons=p, seed=1) for e in (0.07, 0.14, 0.3) for p in (400.0, 20000.0))


@dataclass(frozen=True)
class Pair:
    scene: str
    spec: DarkenSpec
    dark: np.ndarray  # [H, W] or [H, W, 3] float32 in [0, 1]
    ref: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.scene}@e{self.spec.exposure:g}/p{self.spec.photons:g}"


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = size / max(h, w)
    if s < 1:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.clip(img, 0, 1).astype(np.float32)


def load_scene(name: str, size: int = 256) -> np.ndarray:
    """One clean scene ``[H, W]`` or ``[H, W, 3]`` float32 in [0, 1], long side <= ``size``."""
    if name in MEDICAL_SCENES:
        from medgan.data import read_image

        if name.endswith(".nii"):
            from nibabel.testing import data_path

            img = read_image(os.path.join(data_path, name))
            frame = img.frame(len(img) // 2)  # the middle slice
        else:
            from pydicom.data import get_testdata_file

            frame = read_image(get_testdata_file(name)).frame(0)
        return _resize(frame, size)
    from skimage import data, util

    return _resize(util.img_as_float32(getattr(data, name)()), size)


def pairs(specs: tuple[DarkenSpec, ...] = HELD_OUT, scenes: tuple[str, ...] = SCENES, size: int = 256
          ) -> list[Pair]:
    """Every scene darkened under every spec (seeded: the same pairs every run)."""
    out = []
    for scene in scenes:
        img = load_scene(scene, size)
        for spec in specs:
            dark, ref = make_lowlight_pair(img, spec)
            out.append(Pair(scene, spec, dark, ref))
    return out
