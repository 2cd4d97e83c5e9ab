"""FID / KID / precision-recall against direct, independent numpy/scipy computations."""

from __future__ import annotations

import numpy as np
import pytest

from medgan.errors import DataError
from medgan.evaluate.distance import (distribution_metrics, fid, kid, knn_metrics, mmd2_unbiased, nn_distances,
                                      precision_recall)


def _direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    # Tr((S1 S2)^1/2) = sum of sqrt of the eigenvalues of S1 S2 (real, >= 0 for PSD S1, S2)
    s1, s2 = np.cov(a.T), np.cov(b.T)
    ev = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(ev.real, 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _direct_mmd(x: np.ndarray, y: np.ndarray) -> float:
    # the unbiased MMD^2 estimator written as explicit double loops
    d = x.shape[1]
    k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def _direct_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radius(points, i):
        dists = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
        return dists[k - 1]

    def inside(manifold, q):
        return any(np.linalg.norm(q - manifold[i]) <= radius(manifold, i) for i in range(len(manifold)))

    prec = np.mean([inside(real, f) for f in fake])
    rec = np.mean([inside(fake, r) for r in real])
    return float(prec), float(rec)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = rng.normal(size=(250, 6)) @ np.diag([1.5, 1, 1, 0.7, 1, 1]) + 0.4
    return a, b


def test_fid_matches_eigenvalue_computation(feats):
    a, b = feats
    out = fid(a, b, "test")
    assert out["fid"] == pytest.approx(_direct_fid(a, b), rel=1e-6)
    assert out["fid"] > 0.5  # shifted by 0.4 in 6 dims: ||mu||^2 alone is ~0.96
    assert out["n_real"] == 300 and out["n_synthetic"] == 250 and out["extractor"] == "test"
    assert "biased: n < 2048" in out["flags"]


def test_fid_of_a_set_with_itself_is_zero(feats):
    a, _ = feats
    out = fid(a, a, "test")
    assert out["fid"] == pytest.approx(0.0, abs=1e-8)
    assert out["imag_max"] < 1e-3


def test_fid_unflagged_at_2048_and_flags_rank_deficiency():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(2048, 3))
    assert fid(big, big + 0.01, "x")["flags"] == []
    small = rng.normal(size=(5, 8))
    assert any("rank-deficient" in f for f in fid(small, small[::-1] + 1, "x")["flags"])


def test_mmd_matches_loops(feats):
    a, b = feats
    x, y = a[:20], b[:17]
    assert mmd2_unbiased(x, y) == pytest.approx(_direct_mmd(x, y), rel=1e-9)


def test_kid_full_subset_equals_direct_mmd(feats):
    a, b = feats
    x, y = a[:25], b[:25]
    out = kid(x, y, "t", subsets=3, subset_size=25)
    # subsets of the whole set are permutations, and MMD is permutation invariant
    assert out["kid_mean"] == pytest.approx(_direct_mmd(x, y), rel=1e-9)
    assert out["kid_sd"] == pytest.approx(0.0, abs=1e-12)
    assert out["subset_size"] == 25


def test_kid_small_sets_and_ordering(feats):
    a, b = feats
    same = kid(a[:150], a[150:], "t", subsets=20, subset_size=50)
    diff = kid(a[:150], b, "t", subsets=20, subset_size=50)
    assert abs(same["kid_mean"]) < 3 * same["kid_sd"] + 1e-3  # unbiased: centred on 0
    assert diff["kid_mean"] > same["kid_mean"] + 5 * diff["kid_sd"] / np.sqrt(20)
    tiny = kid(a[:3], b[:4], "t", subsets=5, subset_size=100)
    assert tiny["subset_size"] == 3 and np.isfinite(tiny["kid_mean"])


def test_precision_recall_matches_loops(feats):
    a, b = feats
    x, y = a[:30], b[:25]
    out = precision_recall(x, y, "t", k=3)
    p, r = _direct_pr(x, y, 3)
    assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)
    self_pr = precision_recall(x, x, "t", k=3)
    assert self_pr["precision"] == 1.0 and self_pr["recall"] == 1.0


def test_precision_drops_for_far_samples(feats):
    a, _ = feats
    far = a[:100] + 50.0
    out = precision_recall(a, far, "t", k=3)
    assert out["precision"] == 0.0 and out["recall"] == 0.0


def test_distribution_metrics_and_errors(feats):
    a, b = feats
    out = distribution_metrics(a, b, "ext", kid_subsets=5, kid_subset_size=20)
    assert set(out) == {"fid", "kid", "precision_recall"}
    assert all(v["extractor"] == "ext" for v in out.values())
    with pytest.raises(DataError):
        fid(a, b[:, :3], "x")
    with pytest.raises(DataError):
        kid(a[:1], b, "x")
    with pytest.raises(DataError):
        fid(np.full((4, 2), np.nan), b[:, :2], "x")


def _brute_knn(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return np.sort(d, 1)[:, k]
    rr, fr = radii(real), radii(fake)
    d = np.linalg.norm(fake[:, None] - real[None], axis=2)  # [M, N]
    prec = np.mean([any(d[j, i] <= rr[i] for i in range(len(real))) for j in range(len(fake))])
    rec = np.mean([any(d[j, i] <= fr[j] for j in range(len(fake))) for i in range(len(real))])
    dens = sum(d[j, i] <= rr[i] for j in range(len(fake)) for i in range(len(real))) / (k * len(fake))
    cov = np.mean([any(d[j, i] <= rr[i] for j in range(len(fake))) for i in range(len(real))])
    return prec, rec, dens, cov


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_metrics_match_brute_force(shift, k):
    rng = np.random.default_rng(k)
    real, fake = rng.normal(size=(40, 4)), rng.normal(size=(30, 4)) + shift
    m = knn_metrics(real, fake, k)
    p, r, d, c = _brute_knn(real, fake, k)
    assert (m["precision"], m["recall"], m["density"], m["coverage"]) == pytest.approx((p, r, d, c))


def test_knn_metrics_see_collapse_outliers_and_identity():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    same = knn_metrics(real, rng.normal(size=(200, 8)), 5)
    assert 0.75 < same["precision"] <= 1 and 0.75 < same["recall"] <= 1 and 0.8 < same["density"] < 1.25
    collapsed = knn_metrics(real, np.repeat(real[:1], 200, 0) + 1e-3 * rng.normal(size=(200, 8)), 5)
    assert collapsed["recall"] < 0.05 and collapsed["coverage"] < 0.1 and collapsed["density"] > 1.5
    outliers = knn_metrics(real, rng.normal(size=(200, 8)) * 6, 5)
    # spread-out outliers have huge k-NN balls: recall is fooled, coverage is not (why the gates use both)
    assert outliers["recall"] > 0.9 and outliers["precision"] < 0.05 and outliers["coverage"] < 0.05


def test_nn_distances_brute_force_and_self_exclusion():
    rng = np.random.default_rng(3)
    q, p = rng.normal(size=(700, 3)), rng.normal(size=(50, 3))  # > 512 queries: the chunked path
    want = np.linalg.norm(q[:, None] - p[None], axis=2).min(1)
    assert nn_distances(q, p) == pytest.approx(want)
    d_self = nn_distances(p, p, exclude_self=True)
    full = np.linalg.norm(p[:, None] - p[None], axis=2)
    np.fill_diagonal(full, np.inf)
    assert d_self == pytest.approx(full.min(1))
    with pytest.raises(DataError):
        nn_distances(q, p[:1], exclude_self=True)


def test_extractor_free_feature_spaces():
    import torch

    from medgan.evaluate.features import PixelPCA, RandomCNN

    x = torch.rand(50, 1, 16, 16) * 2 - 1
    pca = PixelPCA(x, dim=8)
    f = pca(x)
    assert f.shape == (50, 8) and np.allclose(f.mean(0), 0, atol=1e-9) and np.allclose(f.std(0, ddof=1), 1, atol=1e-6)
    assert 0 < pca.describe()["explained_variance"] < 1
    with pytest.raises(DataError, match="pixels"):
        pca(torch.zeros(2, 1, 8, 8))
    a, b = RandomCNN(1, seed=3), RandomCNN(1, seed=3)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    RandomCNN(1, seed=9)
    assert torch.rand(1) == before  # building one does not move the caller's random stream
    assert np.array_equal(a(x), b(x)) and a(x).shape == (50, a.model.feature_dim)
