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


# ---------------------------------------------------------------- paired comparisons of two arms
#
# The utility study compares every arm with the real-only baseline on the SAME test images, with the same
# downstream seeds. The tests below use that pairing; none of them treats the two arms as independent samples.


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion k/n: always inside [0, 1], sane at k = 0 or k = n."""
    if n <= 0:
        return None, None
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the ends (round-off otherwise)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers' correctness on the same images (bool [N] each).

    Only the discordant images count: b = a right and b wrong, c = a wrong and b right; under the null
    each discordant image is a fair coin, so the two-sided p is a binomial test of b among b + c.
    """
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    return {"test": "exact McNemar", "a_only_correct": b, "b_only_correct": c, "p": p}


def _midranks(x: np.ndarray) -> np.ndarray:
    return sps.rankdata(x)


def delong(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, confidence: float = 0.95) -> dict:
    """DeLong's test of two correlated ROC AUCs on the same images (DeLong, DeLong & Clarke-Pearson 1988).

    y [N] bool (positive class), score_a/score_b [N]. Uses Sun & Xu's (2014) mid-rank formulation of the
    structural components. Returns both AUCs, their difference (a - b), its standard error, a normal
    interval of the difference clipped to [-1, 1], and the two-sided p.
    """
    y = np.asarray(y, bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return {"test": "DeLong", "auc_a": None, "auc_b": None, "diff": None, "se": None, "p": None,
                "ci_low": None, "ci_high": None}
    v10, v01, aucs = [], [], []
    for s in (np.asarray(score_a, float), np.asarray(score_b, float)):
        pos, neg = s[y], s[~y]
        tx, ty, tz = _midranks(pos), _midranks(neg), _midranks(np.concatenate([pos, neg]))
        auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v10.append((tz[:m] - tx) / n)  # [m] structural components of the positives
        v01.append(1.0 - (tz[m:] - ty) / m)  # [n] of the negatives
        aucs.append(auc)
    s10, s01 = np.cov(np.stack(v10)), np.cov(np.stack(v01))  # [2, 2] each
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = aucs[0] - aucs[1]
    se = math.sqrt(max(var, 0.0))
    if se <= 1e-12:
        p = 1.0 if abs(diff) <= 1e-12 else 0.0
    else:
        p = float(2 * sps.norm.sf(abs(diff) / se))
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    return {"test": "DeLong", "auc_a": aucs[0], "auc_b": aucs[1], "diff": diff, "se": se, "p": p,
            "ci_low": max(-1.0, diff - z * se), "ci_high": min(1.0, diff + z * se)}


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    reduce: Callable[[np.ndarray, np.ndarray], np.ndarray],
    resamples: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Bootstrap of the difference a - b of a metric, resampling test images AND seeds, paired.

    a, b: per-image scores [S, N] of two arms (S downstream seeds, N test images; correctness for a
    classifier, Dice for a segmenter); `reduce(scores [S', N'], idx [N'])` gives the metric per seed [S']
    for the test images `idx`. Every resample draws N images and S seeds with replacement and applies the
    SAME draw to both arms. Returns the point difference, the percentile interval, the two-sided
    bootstrap p (share of resamples on the other side of 0, doubled, with the +1 correction), and how
    many resamples were finite.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired scores must have one shape [S, N], got {a.shape} and {b.shape}")
    s_count, n = a.shape
    all_idx = np.arange(n)
    point = float(np.mean(reduce(a, all_idx) - reduce(b, all_idx)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(max(resamples, 0)):
        idx = rng.integers(0, n, size=n)
        seeds = rng.integers(0, s_count, size=s_count)
        d = reduce(a[seeds][:, idx], idx) - reduce(b[seeds][:, idx], idx)
        v = float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
        if math.isfinite(v):
            draws.append(v)
    out = {"test": "paired bootstrap over test images and seeds", "diff": point, "resamples": len(draws),
           "ci_low": None, "ci_high": None, "p": None}
    if len(draws) >= 20:
        arr = np.asarray(draws)
        alpha = (1.0 - confidence) / 2.0
        lo, hi = np.quantile(arr, [alpha, 1.0 - alpha])
        below, above = int((arr <= 0).sum()), int((arr >= 0).sum())
        out.update(ci_low=float(lo), ci_high=float(hi),
                   p=float(min(1.0, 2.0 * (min(below, above) + 1) / (len(arr) + 1))))
    return out


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values of a family of tests (None stays None)."""
    named = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m = len(named)
    out: dict[str, float | None] = {k: None for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def paired_effect_size(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's d_z of the per-image paired difference of seed-averaged scores (a, b: [S, N])."""
    d = np.nanmean(np.asarray(a, float), 0) - np.nanmean(np.asarray(b, float), 0)  # [N]
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return None
    sd = float(d.std(ddof=1))
    if sd <= 1e-12:
        return 0.0 if abs(float(d.mean())) <= 1e-12 else None
    return float(d.mean() / sd)


def verdict(diff: float | None, p_adjusted: float | None, alpha: float = 0.05) -> str:
    """'better', 'worse' or 'no detectable difference' (at `alpha`, after adjustment)."""
    if diff is None or p_adjusted is None or p_adjusted >= alpha:
        return "no detectable difference"
    return "better" if diff > 0 else "worse"
