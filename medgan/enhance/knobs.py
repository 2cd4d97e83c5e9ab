"""Range checks for every enhancement knob of the Python API, the same ranges ``EnhanceConfig`` enforces.

The CLI and job specs validate through ``medgan.config.EnhanceConfig`` (pydantic); a direct
call such as ``lime_enhance(img, gamma=nan)`` must be refused just as clearly, with one
``ValueError`` naming the knob, its range and the value given. The ranges below mirror the
config's fields (tests/medgan/test_enhance_knobs.py checks that both refuse the same values).
"""

from __future__ import annotations

import math
import numbers

# name: (low, high, low inclusive, high inclusive); None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "gamma": (0.0, 10.0, False, True),
    "strength": (0.0, 1.0, True, True),
    "alpha": (0.0, 10.0, False, True),
    "sigma": (0.0, 50.0, False, True),
    "eps": (0.0, 1.0, False, True),
    "denoise": (0.0, 100.0, True, True),
    "clip_limit": (0.0, 1.0, False, True),
    "tol": (0.0, 1.0, False, True),
}


def describe(name: str) -> str:
    """The accepted range as text, e.g. ``(0, 10]``."""
    lo, hi, lo_in, hi_in = RANGES[name]
    left = ("[" if lo_in else "(") + ("-inf" if lo is None else f"{lo:g}")
    right = ("inf" if hi is None else f"{hi:g}") + ("]" if hi_in else ")")
    return f"{left}, {right}"


def check(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` as a float if it is a finite number in ``name``'s range, else one clear ValueError.

    ``optional``: ``None`` is accepted and returned (the knob is then chosen automatically).
    """
    if value is None and optional:
        return None
    lo, hi, lo_in, hi_in = RANGES[name]
    bad = f"{name} must be a finite number in {describe(name)}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(bad)
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(bad)
    if lo is not None and (v < lo or (v == lo and not lo_in)):
        raise ValueError(bad)
    if hi is not None and (v > hi or (v == hi and not hi_in)):
        raise ValueError(bad)
    return v
