"""Paired statistics of the utility study, against scipy/sklearn and by their error rates on simulated data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from medgan.evaluate.stats import (
    delong,
    holm,
    mcnemar,
    paired_bootstrap,
    paired_effect_size,
    verdict,
    wilson_interval,
)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (57, 200), (1, 1)])
def test_wilson_matches_scipy_and_stays_in_bounds(k, n):
    lo, hi = wilson_interval(k, n)
    ref = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson_interval(0, 0) == (None, None)


def test_mcnemar_counts_only_discordant_images():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 1, 1, 0, 1, 0], bool)
    r = mcnemar(a, b)
    assert (r["a_only_correct"], r["b_only_correct"]) == (5, 1)
    assert r["p"] == pytest.approx(sps.binomtest(5, 6, 0.5).pvalue)
    assert mcnemar(a, a)["p"] == 1.0


def test_delong_auc_matches_sklearn_and_identical_scores_do_not_differ():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150).astype(bool)
    sa, sb = y + rng.normal(0, 1, 150), np.round(y + rng.normal(0, 1.5, 150), 1)  # ties in b
    r = delong(y, sa, sb)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, sa)) and r["auc_b"] == pytest.approx(roc_auc_score(y, sb))
    assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    same = delong(y, sa, sa)
    assert same["diff"] == 0 and same["p"] == 1.0
    assert delong(np.ones(10, bool), sa[:10], sb[:10])["p"] is None  # one class: undefined


def _sim_delong(effect: float, sims: int, n: int = 120) -> np.ndarray:
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(sims):
        y = rng.integers(0, 2, n).astype(bool)
        shared = rng.normal(0, 1, n)  # correlated scores, as two models on the same images
        sa = y * (1 + effect) + shared + rng.normal(0, 0.7, n)
        sb = y * 1.0 + shared + rng.normal(0, 0.7, n)
        ps.append(delong(y, sa, sb)["p"])
    return np.asarray(ps)


def test_delong_holds_its_size_under_the_null_and_has_power_against_a_real_gap():
    null = _sim_delong(0.0, 300)
    assert 0.01 <= (null < 0.05).mean() <= 0.10
    assert (_sim_delong(1.5, 60) < 0.05).mean() > 0.8


def _reduce(x, _idx):
    return x.mean(1)


def test_paired_bootstrap_null_covers_zero_and_a_shift_is_found():
    rng = np.random.default_rng(2)
    base = rng.random((3, 200))
    hits = 0
    for i in range(40):  # same distribution, independent noise: a 95% interval covers 0 about 95% of the time
        other = base + rng.normal(0, 0.2, base.shape)
        r = paired_bootstrap(other, base + rng.normal(0, 0.2, base.shape), _reduce, 300, seed=i)
        hits += r["ci_low"] <= 0 <= r["ci_high"]
    assert hits >= 34
    shifted = paired_bootstrap(base + 0.05 + rng.normal(0, 0.05, base.shape), base, _reduce, 500, seed=0)
    assert shifted["ci_low"] > 0 and shifted["p"] < 0.01 and shifted["diff"] == pytest.approx(0.05, abs=0.01)
    same = paired_bootstrap(base, base, _reduce, 200)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(base, base[:, :10], _reduce, 10)


def test_holm_effect_size_and_verdict():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adj == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06), "d": None}
    a = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert paired_effect_size(a + np.array([0.1, 0.2, 0.1, 0.2]), a) == pytest.approx(0.15 / np.std([.1, .2, .1, .2], ddof=1))
    assert paired_effect_size(a, a) == 0.0
    assert verdict(0.1, 0.01) == "better" and verdict(-0.1, 0.01) == "worse"
    assert verdict(0.1, 0.2) == verdict(None, None) == "no detectable difference"
