"""Every enhancement knob is refused in the Python API exactly where EnhanceConfig (CLI, job specs) refuses it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from medgan.config import EnhanceConfig
from medgan.enhance import classical
from medgan.enhance.knobs import RANGES
from medgan.enhance.lime import estimate_illumination, lime_enhance
from medgan.enhance.pairs import DarkenSpec
from medgan.enhance.zerodce import DCENet, enhance_with

_IMG = np.random.default_rng(0).uniform(0.02, 0.3, (24, 20, 3)).astype(np.float32)


def _hostile(name: str) -> list[float]:
    """Values around and outside a knob's range: non-finite, the bounds, just past them, far away."""
    lo, hi, _, _ = RANGES[name]
    vals = [math.nan, math.inf, -math.inf, -1.0, 1e9, -1e-12]
    for b in (lo, hi):
        if b is not None:
            vals += [b, b - 1e-9, b + 1e-9, np.nextafter(b, -np.inf), np.nextafter(b, np.inf)]
    if lo is not None and hi is not None:
        vals.append((lo + hi) / 2)
    return vals


_API = {
    "gamma": [lambda v: lime_enhance(_IMG, gamma=v), lambda v: classical.gamma_correct(_IMG, v)],
    "strength": [lambda v: lime_enhance(_IMG, gamma=0.8, strength=v),
                 lambda v: enhance_with(DCENet(3).eval(), _IMG, strength=v)],
    "alpha": [lambda v: lime_enhance(_IMG, gamma=0.8, alpha=v)],
    "sigma": [lambda v: lime_enhance(_IMG, gamma=0.8, sigma=v)],
    "eps": [lambda v: lime_enhance(_IMG, gamma=0.8, eps=v)],
    "denoise": [lambda v: lime_enhance(_IMG, gamma=0.8, denoise=v)],
    "clip_limit": [lambda v: classical.clahe(_IMG, clip_limit=v)],
}


def _config_refuses(name: str, v: float) -> bool:
    try:
        EnhanceConfig(**{name: v})
    except ValidationError:
        return True
    return False


@pytest.mark.parametrize("name", list(_API))
def test_api_refuses_what_the_config_refuses(name: str) -> None:
    import warnings

    checked = 0
    for v in _hostile(name):
        refused = _config_refuses(name, v)
        for call in _API[name]:
            if refused:
                with pytest.raises(ValueError, match=f"{name} must be a finite number in"):
                    call(v)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # an accepted value must give a finite image, no NaN warning
                    res = call(v)
                out = res[0] if isinstance(res, tuple) else res
                assert np.isfinite(out).all()
            checked += 1
    assert checked >= 10 * len(_API[name])
    # the control: both sides accept something and refuse something (a check that refuses all is no check)
    verdicts = {_config_refuses(name, v) for v in _hostile(name)}
    assert verdicts == {True, False}


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5], complex(1, 0)])
def test_non_numbers_refused_with_one_clear_line(bad) -> None:
    with pytest.raises(ValueError, match="alpha must be a finite number in \\(0, 10\\]"):
        lime_enhance(_IMG, alpha=bad)


def test_nan_gamma_and_zero_alpha_named_cases() -> None:
    with pytest.raises(ValueError, match="gamma"):
        lime_enhance(_IMG, gamma=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        lime_enhance(_IMG, alpha=0)
    import torch

    with pytest.raises(ValueError, match="tol"):
        estimate_illumination(torch.from_numpy(_IMG.max(2)), tol=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        DarkenSpec(gamma=float("nan"))
