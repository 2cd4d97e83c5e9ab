"""Interval estimates used by the evaluation: t-intervals over seeds, percentile bootstrap over test images.

Two sources of uncertainty matter for a utility claim and they are reported separately:
- training randomness (network init, batch order): a Student-t interval over the per-seed values;
- which test images happened to be drawn: a percentile bootstrap that resamples the test images and
  recomputes the seed-averaged metric on every resample.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample sd and a two-sided Student-t interval for the mean of `values`.

    Non-finite values are dropped (a metric undefined for one seed, e.g. AUC on one class).
    With a single value the interval is unknown and reported as None.
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci_low": None, "ci_high": None}
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "sd": None, "n": 1, "ci_low": None, "ci_high": None}
    sd = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, float]],
    n_items: int,
    resamples: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict]:
    """Percentile bootstrap of several statistics at once.

    `statistic(indices)` receives an index array [n_items] drawn with replacement from the test set and
    returns {name: value}. Non-finite values (e.g. a resample holding one class has no AUC) are dropped
    for that name and counted in `boot_valid`. Returns {name: {"boot_low", "boot_high", "boot_valid"}}.
    """
    if resamples <= 0 or n_items <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = rng.integers(0, n_items, size=n_items)  # [n_items]
        for name, v in statistic(idx).items():
            if v is not None and math.isfinite(v):
                draws.setdefault(name, []).append(float(v))
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for name, vals in draws.items():
        lo, hi = np.quantile(np.asarray(vals), [alpha, 1.0 - alpha])
        out[name] = {"boot_low": float(lo), "boot_high": float(hi), "boot_valid": len(vals)}
    return out


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN: undefined figures are written as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
