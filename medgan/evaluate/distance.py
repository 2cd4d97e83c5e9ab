"""Distances between two feature distributions: FID, KID and k-NN precision/recall.

All functions take feature matrices [N, D] (float; one row per image) produced by one extractor, and
return plain dicts that say which extractor and how many samples they saw, so that a figure can never be
read without its caveats. FID is biased upwards for small N (Chong & Forsyth 2020) and is flagged under
2048 samples; KID (Binkowski et al. 2018) is unbiased and is the figure to trust for small sets.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from medgan.errors import DataError

FID_MIN_UNBIASED = 2048  # samples; below this FID is biased (and Inception's 2048-d covariance is singular)
IMAG_TOL = 1e-3  # largest |imaginary part| of sqrtm(S1 S2) we accept silently (pytorch-fid's tolerance)


def _check(feats: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < min_rows:
        raise DataError(f"{name} features must be [N >= {min_rows}, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} features contain non-finite values")
    return arr


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> tuple[float, float]:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}); returns (distance, largest |imag| of the sqrt).

    The product of two PSD matrices has a real square root in exact arithmetic; numerically sqrtm may
    return tiny imaginary parts (we drop them) or fail on singular inputs (we retry with a small ridge,
    as pytorch-fid does).
    """
    diff = mu1 - mu2  # [D]
    covmean = linalg.sqrtm(sigma1 @ sigma2)  # [D, D], possibly complex
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    imag = 0.0
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(covmean.imag)))
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return value, imag


def fid(real: np.ndarray, fake: np.ndarray, extractor: str) -> dict:
    """Fréchet distance between Gaussians fitted to real [N, D] and fake [M, D] features."""
    r, f = _check(real, "real"), _check(fake, "synthetic")
    if r.shape[1] != f.shape[1]:
        raise DataError(f"feature widths differ: {r.shape[1]} vs {f.shape[1]}")
    mu1, mu2 = r.mean(0), f.mean(0)  # [D]
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)  # [D, D]
    value, imag = frechet_distance(mu1, np.atleast_2d(s1), mu2, np.atleast_2d(s2))
    flags = []
    n = min(r.shape[0], f.shape[0])
    if n < FID_MIN_UNBIASED:
        flags.append(f"biased: n < {FID_MIN_UNBIASED}")
    if n <= r.shape[1]:
        flags.append(f"rank-deficient covariance: n={n} <= D={r.shape[1]}")
    if imag > IMAG_TOL:
        flags.append(f"complex: max imaginary component {imag:.3g} dropped")
    return {
        "fid": max(value, 0.0),  # tiny negatives are round-off of a zero distance
        "imag_max": imag,
        "n_real": int(r.shape[0]),
        "n_synthetic": int(f.shape[0]),
        "dim": int(r.shape[1]),
        "extractor": extractor,
        "flags": flags,
    }


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's cubic kernel k(x, y) = (x.y / d + 1)^3 on [n, d] x [m, d] -> [n, m]."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate with the cubic kernel (diagonals of Kxx, Kyy excluded)."""
    m, n = x.shape[0], y.shape[0]
    kxx = polynomial_kernel(x, x)  # [m, m]
    kyy = polynomial_kernel(y, y)  # [n, n]
    kxy = polynomial_kernel(x, y)  # [m, n]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    extractor: str,
    subsets: int = 50,
    subset_size: int = 100,
    seed: int = 0,
) -> dict:
    """Kernel Inception Distance: mean and sd of unbiased MMD^2 over random equal-size subsets.

    The subset size shrinks to the smaller set when needed, so KID is defined down to 2 images per side.
    """
    r, f = _check(real, "real"), _check(fake, "synthetic")
    if r.shape[1] != f.shape[1]:
        raise DataError(f"feature widths differ: {r.shape[1]} vs {f.shape[1]}")
    m = int(min(subset_size, r.shape[0], f.shape[0]))
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        xi = r[rng.choice(r.shape[0], m, replace=False)]  # [m, D]
        yi = f[rng.choice(f.shape[0], m, replace=False)]  # [m, D]
        vals[i] = mmd2_unbiased(xi, yi)
    return {
        "kid_mean": float(vals.mean()),
        "kid_sd": float(vals.std(ddof=1)) if subsets > 1 else None,
        "subsets": int(subsets),
        "subset_size": m,
        "n_real": int(r.shape[0]),
        "n_synthetic": int(f.shape[0]),
        "extractor": extractor,
    }


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [n, m]; clipped at 0 against round-off of the expanded square."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row: the radius of its manifold ball."""
    d = _pairwise(x, x)  # [n, n]
    # column 0 of each sorted row is the point itself (distance 0), so the k-th neighbour is column k
    return np.sort(d, axis=1)[:, k]


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of query rows lying inside at least one ball (centre manifold[i], radius radii[i])."""
    d = _pairwise(queries, manifold)  # [q, n]
    return float((d <= radii[None, :]).any(axis=1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, extractor: str, k: int = 3) -> dict:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN hypersphere manifolds.

    precision: share of synthetic samples inside the real manifold (fidelity);
    recall: share of real samples inside the synthetic manifold (diversity).
    """
    r, f = _check(real, "real", k + 1), _check(fake, "synthetic", k + 1)
    precision = _coverage(r, _knn_radii(r, k), f)
    recall = _coverage(f, _knn_radii(f, k), r)
    return {
        "precision": precision,
        "recall": recall,
        "k": int(k),
        "n_real": int(r.shape[0]),
        "n_synthetic": int(f.shape[0]),
        "extractor": extractor,
    }


def knn_metrics(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    """Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) in one pass.

    real [N, D], fake [M, D]. density counts how many real k-NN balls hold each synthetic sample
    (1.0 for samples distributed like the real ones, above 1 when they crowd the dense regions);
    coverage is the share of real balls holding at least one synthetic sample (robust to outliers).
    """
    r, f = _check(real, "real", k + 1), _check(fake, "synthetic", k + 1)
    r_rad, f_rad = _knn_radii(r, k), _knn_radii(f, k)
    d_fr = _pairwise(f, r)  # [M, N]
    inside = d_fr <= r_rad[None, :]  # synthetic j in real ball i
    return {
        "precision": float(inside.any(1).mean()),
        "recall": float((d_fr.T <= f_rad[None, :]).any(1).mean()),
        "density": float(inside.sum() / (k * len(f))),
        "coverage": float(inside.any(0).mean()),
        "k": int(k), "n_real": int(len(r)), "n_synthetic": int(len(f)),
    }


def nn_distances(queries: np.ndarray, pool: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance [Q] of each query row to its nearest pool row (the next one when `exclude_self`)."""
    q, p = _check(queries, "query", 1), _check(pool, "pool", 2 if exclude_self else 1)
    out = np.empty(len(q))
    for i in range(0, len(q), 512):  # bounded memory: [512, P] at a time
        d = _pairwise(q[i: i + 512], p)
        out[i: i + 512] = np.sort(d, axis=1)[:, 1 if exclude_self else 0]
    return out


def distribution_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    extractor: str,
    kid_subsets: int = 50,
    kid_subset_size: int = 100,
    k: int = 3,
    seed: int = 0,
) -> dict:
    """FID, KID and precision/recall of one pair of feature sets, in one dict."""
    out = {
        "fid": fid(real, fake, extractor),
        "kid": kid(real, fake, extractor, kid_subsets, kid_subset_size, seed),
    }
    if min(len(real), len(fake)) > k:
        out["precision_recall"] = precision_recall(real, fake, extractor, k)
    return out
