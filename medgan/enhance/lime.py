"""LIME: low-light image enhancement via illumination map estimation (Guo, Li, Ling, IEEE TIP 2017).

Written from the paper. The illumination ``T`` starts as the channel maximum ``T^`` and is
refined by the paper's sped-up solver (its eq. 12, strategy-III weights):

    (I + alpha * sum_d D_d^T diag(W~_d) D_d) t = t^,
    W~_d = W_d / (|grad_d T^| + eps),   W_d = 1 / (|G_sigma * grad_d T^| + eps)

``D_d`` are forward differences with no edge across the border (Neumann), so the matrix is
a 5-point weighted Laplacian plus identity: symmetric, positive definite, an M-matrix.
Two solvers give the same answer:

- ``exact``: a sparse direct solve (SuperLU via scipy) in float64. Memory grows faster than
  the pixel count; meant for reference and images up to about a megapixel.
- ``fast``: conjugate gradients in torch (CPU or GPU), preconditioned by one aggregation
  multigrid V-cycle (2x2 aggregates, Galerkin coarse operators, red-black Gauss-Seidel), and
  started coarse-to-fine (each level's solution, upsampled, starts the next). Memory is
  O(pixels) - about 4/3 of one level's six float32 arrays - so 4K frames fit.

The enhanced image is ``R = L / T^gamma``; optional denoising recombines as the paper does,
``R_final = R * T + R_denoised * (1 - T)``, so bright (well-lit, less noisy) regions keep detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Floor on the illumination before dividing, so black pixels stay black instead of noise.
T_FLOOR = 1e-3
# Automatic mode lifts no pixel more than this times the image's exposure gain (auto_gain_floor).
# Calibration (scenes.CALIBRATION, 84 pairs, automatic gamma, denoise K 1 / cap 30): cap 1.0 gave
# 21.97 dB / SSIM 0.499 mean, 14 pairs below the dark input's SSIM (none below its PSNR); 1.5 gave
# 21.41 dB / 0.535 / 16; 2.0 21.28 dB / 0.534 / 16; no cap 21.27 dB / 0.534 / 16.
AUTO_GAIN_CAP = 1.0
# A channel at or above this value (254.5 / 255) counts as clipped.
CLIP_LEVEL = 254.5 / 255
# Over-correction of the piecewise-constant coarse-grid correction: unsmoothed aggregation
# underestimates smooth error (Braess 1995); scaling by ~1.8 restores a good V-cycle.
_COARSE_SCALE = 1.8
# Below this many unknowns the coarsest level is solved densely (Cholesky).
_DENSE_MAX = 64
# Red-black Gauss-Seidel sweeps before and after each coarse correction.
_SWEEPS = 1
# Largest update (T in [0, 1]) at which PCG stops. 3e-3 kept the enhanced image within 40-53 dB
# PSNR of the exact solve on darkened skimage photos at 960x540, at 0.4x the time of 1e-3.
FAST_TOL = 3e-3
# PCG iterations at most on the finest grid. The largest-update test there is noisy (a few stiff pixels,
# weights ~1e6, jump by 2-20e-3 from one iteration to the next), so it ran 7 or 16 iterations on the same
# 1080p frame depending on the thread count. Agreement with the direct solve (gamma 0.8, no denoise,
# solve at 1/2): 1080p cap 8 37.7 dB (uncapped 37.5, cap 6 35.1, cap 4 31.2); 960x540 cap 8 40.1 (= uncapped).
FINE_MAX_ITER = 8
# Maps above this many pixels are solved at reduced resolution by default (auto_reduce).
REDUCE_FROM = 1_000_000
# Maps above this many pixels (more than a 4K UHD frame) are solved at 1/4 resolution.
REDUCE4_FROM = 8_300_000


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian (3-sigma support, reflected borders) of ``[H, W]``."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    if x.device.type == "cpu" and x.dtype == torch.float32:
        import cv2  # several times faster than conv2d on the CPU; same taps and borders

        out = cv2.GaussianBlur(x.numpy(), (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out)
    xs = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    k = k / k.sum()
    h, w = x.shape
    mode = "reflect" if min(h, w) > r else "replicate"
    y = F.pad(x[None, None], (r, r, r, r), mode=mode)  # [1, 1, H+2r, W+2r]
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return y[0, 0]


def lime_weights(t_hat: torch.Tensor, sigma: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge weights ``W~`` of the sped-up LIME objective, strategy III.

    ``t_hat``: ``[H, W]`` initial illumination. Returns ``wx [H, W-1]`` (edge (i,j)-(i,j+1))
    and ``wy [H-1, W]`` (edge (i,j)-(i+1,j)).
    """
    dx = torch.zeros_like(t_hat)
    dy = torch.zeros_like(t_hat)
    dx[:, :-1] = t_hat[:, 1:] - t_hat[:, :-1]
    dy[:-1] = t_hat[1:] - t_hat[:-1]
    # The Gaussian sums to one, so strategy III's numerator sum_y G(x, y) is 1.
    wx = 1.0 / (_gaussian_blur(dx, sigma).abs() + eps) / (dx.abs() + eps)
    wy = 1.0 / (_gaussian_blur(dy, sigma).abs() + eps) / (dy.abs() + eps)
    return wx[:, :-1].contiguous(), wy[:-1].contiguous()


# ----------------------------------------------------------------------------------------------
# Exact solver
# ----------------------------------------------------------------------------------------------
def system_matrix(wx: np.ndarray, wy: np.ndarray, alpha: float) -> Any:
    """The LIME system matrix ``I + alpha * L(wx, wy)`` as scipy CSC (float64), n = H*W."""
    import scipy.sparse as sp

    h, w = wx.shape[0], wx.shape[1] + 1
    ax = np.zeros((h, w))
    ay = np.zeros((h, w))
    ax[:, :-1] = alpha * wx
    ay[:-1] = alpha * wy
    ax, ay = ax.ravel(), ay.ravel()  # pixel p couples to p+1 (ax[p]) and to p+w (ay[p])
    diag = 1.0 + ax + ay
    diag[1:] += ax[:-1]
    diag[w:] += ay[:-w]
    return sp.diags([diag, -ax[:-1], -ax[:-1], -ay[:-w], -ay[:-w]], [0, 1, -1, w, -w], format="csc")


def solve_exact(t_hat: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, alpha: float) -> torch.Tensor:
    """Direct sparse solve of the LIME system (SuperLU, symmetric ordering), ``[H, W]``."""
    from scipy.sparse.linalg import splu

    a = system_matrix(wx.double().cpu().numpy(), wy.double().cpu().numpy(), alpha)
    lu = splu(a, permc_spec="MMD_AT_PLUS_A")
    t = lu.solve(t_hat.double().cpu().numpy().ravel())
    return torch.from_numpy(t.reshape(t_hat.shape)).to(t_hat)


# ----------------------------------------------------------------------------------------------
# Fast solver: multigrid-preconditioned conjugate gradients
# ----------------------------------------------------------------------------------------------
@dataclass
class _Level:
    """One grid: ``A = diag(m) + L(ax, ay)``; ``d`` its diagonal; ``red`` the checkerboard mask."""

    m: torch.Tensor  # [h, w] mass (1 on the finest grid, pixel counts on coarse ones)
    ax: torch.Tensor  # [h, w-1]
    ay: torch.Tensor  # [h-1, w]
    d: torch.Tensor  # [h, w]
    red: torch.Tensor  # [h, w] bool

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """``A t`` as a stencil, ``[h, w] -> [h, w]``."""
        out = self.m * t
        fx = self.ax * (t[:, :-1] - t[:, 1:])  # flux across each horizontal edge
        out[:, :-1] += fx
        out[:, 1:] -= fx
        fy = self.ay * (t[:-1] - t[1:])
        out[:-1] += fy
        out[1:] -= fy
        return out


def _make_level(m: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor) -> _Level:
    d = m.clone()
    d[:, :-1] += ax
    d[:, 1:] += ax
    d[:-1] += ay
    d[1:] += ay
    h, w = m.shape
    ij = torch.arange(h, device=m.device)[:, None] + torch.arange(w, device=m.device)[None]
    return _Level(m, ax, ay, d, (ij % 2) == 0)


def _pad_even(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[1], 0, h - x.shape[0]))


def _restrict(r: torch.Tensor) -> torch.Tensor:
    """Sum over 2x2 aggregates (P^T for piecewise-constant P): ``[h, w] -> [ceil(h/2), ceil(w/2)]``."""
    h2, w2 = (r.shape[0] + 1) // 2, (r.shape[1] + 1) // 2
    p = _pad_even(r, 2 * h2, 2 * w2)
    return p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]


def _prolong(e: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Piecewise-constant interpolation (P): ``[h2, w2] -> [h, w]``."""
    return e.repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]


def _coarsen(lv: _Level) -> _Level:
    """Galerkin operator ``P^T A P``: masses add, and edges crossing between aggregates add."""
    h, w = lv.m.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    m = _restrict(lv.m)
    ax = _pad_even(lv.ax, 2 * h2, 2 * w2)  # edge j joins columns j, j+1: odd j crosses aggregates
    ax = (ax[0::2, 1::2] + ax[1::2, 1::2])[:, : w2 - 1]
    ay = _pad_even(lv.ay, 2 * h2, 2 * w2)
    ay = (ay[1::2, 0::2] + ay[1::2, 1::2])[: h2 - 1, :]
    return _make_level(m, ax.contiguous(), ay.contiguous())


def _dense_cholesky(lv: _Level) -> torch.Tensor:
    """Cholesky factor of the coarsest level's matrix, ``[n, n]`` in float64."""
    h, w = lv.m.shape
    idx = torch.arange(h * w, device=lv.m.device).view(h, w)
    a = torch.diag(lv.d.double().flatten())
    for i, j, v in ((idx[:, :-1], idx[:, 1:], lv.ax), (idx[:-1], idx[1:], lv.ay)):
        a[i.flatten(), j.flatten()] = -v.double().flatten()
        a[j.flatten(), i.flatten()] = -v.double().flatten()
    return torch.linalg.cholesky(a)


class _Multigrid:
    """Aggregation multigrid hierarchy; ``vcycle(r, l)`` approximates ``A_l^{-1} r`` symmetrically."""

    def __init__(self, fine: _Level):
        self.levels = [fine]
        while self.levels[-1].m.numel() > _DENSE_MAX and min(self.levels[-1].m.shape) > 2:
            self.levels.append(_coarsen(self.levels[-1]))
        self.chol = _dense_cholesky(self.levels[-1])

    def _gs(self, lv: _Level, x: torch.Tensor, r: torch.Tensor, first_red: bool) -> torch.Tensor:
        # Red-black Gauss-Seidel: the 5-point stencil couples red only to black.
        for colour in ((True, False) if first_red else (False, True)):
            mask = lv.red if colour else ~lv.red
            upd = (r - lv.apply(x)) / lv.d
            x = torch.where(mask, x + upd, x)
        return x

    def vcycle(self, r: torch.Tensor, l: int = 0) -> torch.Tensor:
        """One symmetric V-cycle from level ``l`` (red-black before, black-red after)."""
        if l == len(self.levels) - 1:
            sol = torch.cholesky_solve(r.double().flatten()[:, None], self.chol)
            return sol.view(r.shape).to(r.dtype)
        lv = self.levels[l]
        x = torch.zeros_like(r)
        for _ in range(_SWEEPS):
            x = self._gs(lv, x, r, True)
        coarse = self.vcycle(_restrict(r - lv.apply(x)), l + 1)
        x = x + _COARSE_SCALE * _prolong(coarse, *r.shape)
        for _ in range(_SWEEPS):
            x = self._gs(lv, x, r, False)
        return x


def _pcg(mg: _Multigrid, l: int, b: torch.Tensor, x: torch.Tensor, tol: float, max_iter: int
         ) -> tuple[torch.Tensor, int, float]:
    """Preconditioned CG on level ``l`` from ``x``: (x, iterations, relative residual).

    Stops when the largest update falls below ``tol`` (T lives in [0, 1]). With weights up to
    ~1e6 a float32 residual cannot fall much below 1e-3 of ``|b|`` even when ``x`` is accurate,
    so the update size, not the residual, is the trustworthy test.
    """
    lv = mg.levels[l]
    r = b - lv.apply(x)
    bnorm = float(b.norm()) or 1.0
    rel = float(r.norm()) / bnorm
    z = mg.vcycle(r, l)
    p = z.clone()
    rz = (r * z).sum()
    it = 0
    while it < max_iter:
        q = lv.apply(p)
        pq = (p * q).sum()
        if not float(pq) > 0.0 or not float(rz) > 0.0:  # exact already (r = 0): a step would divide 0 by 0
            break
        step = rz / pq
        dx = step * p
        x = x + dx
        r = r - step * q
        rel = float(r.norm()) / bnorm
        it += 1
        if float(dx.abs().max()) < tol:
            break
        z = mg.vcycle(r, l)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, it, rel


def solve_fast(t_hat: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, alpha: float,
               tol: float = FAST_TOL, max_iter: int = 100) -> tuple[torch.Tensor, dict]:
    """Multigrid-PCG solve of the LIME system on ``t_hat``'s device, ``[H, W]``; also returns stats."""
    mg = _Multigrid(_make_level(torch.ones_like(t_hat), alpha * wx, alpha * wy))
    rhs = [t_hat]
    for _ in mg.levels[1:]:
        rhs.append(_restrict(rhs[-1]))
    # Coarse-to-fine start: solve each level and upsample its answer (bilinear, since the
    # solution is smooth away from edges) as the next level's initial guess.
    x = mg.vcycle(rhs[-1], len(mg.levels) - 1)
    iters = []
    rel = 0.0
    for l in range(len(mg.levels) - 2, -1, -1):
        x = F.interpolate(x[None, None], size=rhs[l].shape, mode="bilinear", align_corners=False)[0, 0]
        x, it, rel = _pcg(mg, l, rhs[l], x, tol, min(max_iter, FINE_MAX_ITER) if l == 0 else max_iter)
        iters.append(it)
    return x, {"levels": len(mg.levels), "iterations": iters, "rel_residual": rel}


# ----------------------------------------------------------------------------------------------
# Enhancement
# ----------------------------------------------------------------------------------------------
def auto_reduce(shape: tuple[int, int]) -> int:
    """Downscale factor of the illumination solve for an ``[H, W]`` map: 1 up to a megapixel, 2 up to
    REDUCE4_FROM (4K included), 4 beyond, so the solve runs on at most ~2.1 MP up to 4K.

    Agreement with the direct full-resolution solve (bench/bench_lime.py, darkened astronaut, gamma 0.8, no
    denoise): 960x540 at 1/2 40.0 dB, at 1/4 34.2 dB; 1920x1080 at 1/2 36.7 dB, at 1/4 34.0 dB. So 4K,
    once solved at 1/4 (32.3 dB in the benchmark), is solved at 1/2: slower, but >= 35 dB.
    """
    n = shape[0] * shape[1]
    return 1 if n <= REDUCE_FROM else (2 if n <= REDUCE4_FROM else 4)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window (clipped at the borders) of ``[h, w]``."""
    return F.avg_pool2d(x[None, None], 2 * r + 1, stride=1, padding=r, count_include_pad=False)[0, 0]


def guided_upsample(guide_small: torch.Tensor, t_small: torch.Tensor, guide: torch.Tensor,
                    radius: int = 1, reg: float = 1e-4) -> torch.Tensor:
    """Fast guided filter upsampling (He & Sun 2015): fit ``T = a * guide + b`` in windows at low
    resolution, upsample ``a`` and ``b`` bilinearly, apply them to the full-resolution ``guide``.

    ``guide_small``/``t_small`` ``[h, w]``, ``guide`` ``[H, W]`` -> ``[H, W]``. Edges of the
    illumination follow the full-resolution initial map, so they stay sharp.
    """
    mi, mt = _box(guide_small, radius), _box(t_small, radius)
    a = (_box(guide_small * t_small, radius) - mi * mt) / (_box(guide_small * guide_small, radius) - mi * mi + reg)
    b = mt - a * mi
    a, b = _box(a, radius), _box(b, radius)  # [h, w]
    size = tuple(guide.shape)

    def up(z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]

    return up(a).mul_(guide).add_(up(b))


def reduced_solve(t_hat: torch.Tensor, factor: int, *, alpha: float, sigma: float, eps: float, tol: float
                  ) -> tuple[torch.Tensor, dict]:
    """The illumination solved on a ``factor``-times smaller grid, guided-upsampled to ``t_hat``'s size.

    Scaling: on a grid ``f`` times coarser a smooth ramp's per-pixel difference is ``f`` times
    larger, so the strategy-III weight (~ 1 / |grad|^2) falls ``f^2`` while ``f^2`` fewer terms sum
    - the same energy needs ``alpha / f`` (and the Gaussian ``sigma / f``, to cover the same
    area). Measured against the exact full-resolution solve on darkened skimage photos at
    960x540 (bench/bench_lime.py, tests/medgan/test_lime_fast.py): alpha/2 gave 37.6-42 dB
    enhanced-image PSNR, alpha unscaled 30-32 dB, alpha/4 32 dB.
    """
    h, w = t_hat.shape
    ph, pw = -h % factor, -w % factor
    # Edge-replicate to a multiple of the factor so every coarse pixel is one exact f x f block.
    full = F.pad(t_hat[None, None], (0, pw, 0, ph), mode="replicate")[0, 0] if ph or pw else t_hat
    small = F.avg_pool2d(full[None, None], factor)[0, 0]  # [ceil(H/f), ceil(W/f)]
    wx, wy = lime_weights(small, sigma / factor, eps)
    ts, stats = solve_fast(small, wx, wy, alpha / factor, tol=tol)
    t = guided_upsample(small, ts, full)[:h, :w]
    return t, {**stats, "reduce": factor, "solve_shape": list(small.shape)}


def estimate_illumination(t_hat: torch.Tensor, *, alpha: float = 0.15, sigma: float = 2.0,
                          eps: float = 1e-3, solver: str = "fast", tol: float = FAST_TOL,
                          reduce: int | None = None) -> tuple[torch.Tensor, dict]:
    """Refined illumination map ``T`` ``[H, W]`` from the initial map ``t_hat`` ``[H, W]`` in [0, 1].

    ``reduce`` (fast solver only): solve on a grid this many times smaller and guided-upsample
    (``reduced_solve``); ``None``: ``auto_reduce`` (1 up to a megapixel).
    """
    from medgan.enhance.knobs import check

    alpha, sigma, eps, tol = check("alpha", alpha), check("sigma", sigma), check("eps", eps), check("tol", tol)
    t_hat = t_hat.float()
    if solver == "exact":
        wx, wy = lime_weights(t_hat, sigma, eps)
        return solve_exact(t_hat, wx, wy, alpha), {"solver": "exact", "reduce": 1}
    if solver != "fast":
        raise ValueError(f"unknown LIME solver {solver!r}; choose 'fast' or 'exact'")
    factor = auto_reduce(tuple(t_hat.shape)) if reduce is None else reduce
    if isinstance(factor, bool) or factor not in (1, 2, 3, 4, 8):
        raise ValueError(f"reduce must be one of 1, 2, 3, 4, 8 or None, got {reduce!r}")
    if factor > 1 and min(t_hat.shape) >= 8 * factor:
        t, stats = reduced_solve(t_hat, factor, alpha=alpha, sigma=sigma, eps=eps, tol=tol)
        return t, {"solver": "fast", **stats}
    wx, wy = lime_weights(t_hat, sigma, eps)
    t, stats = solve_fast(t_hat, wx, wy, alpha, tol=tol)
    return t, {"solver": "fast", "reduce": 1, **stats}


def _lit_region(t: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the lit part of a thumbnail illumination map ``t`` ``[h, w]``.

    Medical images are often mostly black background (outside the body or the field of view).
    Judging brightness over it would brighten the anatomy far past its exposure, so the
    brightness target is met over the pixels above Otsu's threshold of T, when those are a
    plausible foreground (5-80 % of the image); otherwise over the whole image.
    """
    from skimage.filters import threshold_otsu

    tn = t.detach().cpu().numpy()
    if float(tn.max() - tn.min()) > 1e-3:
        mask = t > float(threshold_otsu(tn))
        if 0.05 < float(mask.float().mean()) < 0.8:
            return mask
    return torch.ones_like(t, dtype=torch.bool)


def auto_gamma(img: torch.Tensor, t: torch.Tensor, gain_cap: float | None = None) -> float:
    """Gamma in [0.05, 1] for ``L / T^gamma``: the brightness of the image's automatic exposure, no more clipping.

    ``img`` ``[C, H, W]``, ``t`` ``[H, W]``. The target is the mean over the lit region of the
    input scaled by its white-point exposure gain (``classical.auto_exposure_gain``): LIME then
    spreads that exposure locally, lifting shadows more than highlights. Brightness and clipping
    both rise monotonically with gamma (T <= 1), so bisections on a thumbnail find the gamma that
    meets the target and the largest gamma whose share of lit pixels with a clipped channel stays
    within the exposure-corrected image's (plus 0.5 %); the smaller wins, so colours do not clip
    (the retina's red channel at a fixed 0.8 clipped on 48 % of the fundus).

    Calibration (medgan.enhance.scenes.CALIBRATION, 84 pairs, RGB PSNR): 18.2 dB mean against 16.8 dB
    for the best fixed gamma (0.6) and 13.7 dB for the paper's 0.8; the previous rule (mean 0.45
    over the lit region) gave 15.1 dB.
    """
    from medgan.enhance.classical import auto_exposure_gain

    step = max(1, max(t.shape) // 256)
    small_l, small_t = img[:, ::step, ::step], t[::step, ::step].clamp_min(T_FLOOR)
    lit = _lit_region(small_t)
    arr = small_l.permute(1, 2, 0).cpu().numpy()
    gain = auto_exposure_gain(arr if arr.shape[2] == 3 else arr[..., 0])
    exposed = (small_l * gain).clamp(0, 1)
    target = float(exposed[:, lit].mean())
    allowed = float((exposed[:, lit] >= CLIP_LEVEL).any(0).float().mean()) + 0.005

    floor = 0.0 if gain_cap is None else 1.0 / (gain_cap * gain)

    def out(g: float) -> torch.Tensor:
        return (small_l / (small_t**g).clamp_min(floor)).clamp(0, 1)[:, lit]  # [C, n_lit]

    def bisect(too_high) -> float:
        lo, hi = 0.05, 1.0
        if not too_high(hi):
            return hi
        if too_high(lo):
            return lo
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if too_high(mid) else (mid, hi)
        return 0.5 * (lo + hi)

    g_bright = bisect(lambda g: float(out(g).mean()) > target)
    g_clip = bisect(lambda g: float((out(g) >= CLIP_LEVEL).any(0).float().mean()) > allowed)
    return round(min(g_bright, g_clip), 4)


def auto_gain_floor(img: torch.Tensor) -> float:
    """Floor on ``T^gamma`` in automatic mode: no pixel is lifted more than AUTO_GAIN_CAP times the
    image's exposure gain, so black backgrounds (air around a CT, a fundus surround, a night sky) stay dark."""
    from medgan.enhance.classical import auto_exposure_gain

    step = max(1, max(img.shape[1:]) // 256)
    arr = img[:, ::step, ::step].permute(1, 2, 0).cpu().numpy()
    return 1.0 / (AUTO_GAIN_CAP * auto_exposure_gain(arr if arr.shape[2] == 3 else arr[..., 0]))


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Gaussian noise sigma of ``[H, W(, C)]`` (same units) by Donoho's wavelet MAD rule.

    The finest diagonal Haar subband holds almost only noise; its median absolute value
    divided by 0.6745 estimates sigma (as skimage.restoration.estimate_sigma does with db2,
    which needs PyWavelets).
    """
    y = _luma(img).astype(np.float32, copy=False)
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    y = y[:h, :w]
    hh = (y[0::2, 0::2] - y[0::2, 1::2] - y[1::2, 0::2] + y[1::2, 1::2]) / 2.0  # orthonormal Haar HH
    return float(np.median(np.abs(hh)).astype(np.float64) / 0.6745)


# Automatic denoising: NLM strength h = DENOISE_K x the output's expected noise (the input's estimated
# sigma times its exposure gain, in 8-bit grey levels), 0 below DENOISE_MIN, at most DENOISE_MAX.
# Calibrated with LIME's automatic gamma (no gain cap) on medgan.enhance.scenes.CALIBRATION (84 pairs),
# mean RGB PSNR / SSIM, pairs whose SSIM fell below the dark input's:
#   off 18.98 dB / 0.389 / 42;  K 0.5, cap 12: 19.06 / 0.405 / 37;  K 0.75, cap 20: 20.10 / 0.476 / 18;
#   K 1, cap 30: 21.27 / 0.534 / 16;  K 1.5, cap 30: 21.40 / 0.532 / 18;  K 1.5, cap 45: 21.58 / 0.551 / 18.
# K 1 with a cap of 30 grey levels: nearly the best, with the fewest SSIM losses and a bounded smear.
DENOISE_K = 1.0
DENOISE_MIN = 2.0
DENOISE_MAX = 30.0
# Automatic denoising also runs NLM on the chroma (Cr, Cb) with the same strength: LIME lifts the dark
# input's colour noise with its luma. Calibration (scenes.CALIBRATION, 84 pairs, automatic gamma, gain cap
# 1.0, K 1 / cap 30; lime_enhance on scenes.pairs(scenes.CALIBRATION), RGB PSNR / SSIM): luma only 21.97 dB /
# SSIM 0.499 mean, 14 pairs below the dark input's SSIM (0 below its PSNR); luma + chroma 23.01 dB / 0.578,
# 0 below either, with Cr and Cb denoised as one 2-channel image (shared patch weights, one NLM call instead of
# two: 0.04 s less per 1080p frame): 23.04 dB / 0.584, 0 below either. (`evaluate` of bench/bench_enhance.py on
# scenes.pairs(scenes.CALIBRATION) with AUTO_CHROMA_DENOISE False / True: luma only is now 21.97 / 0.501.)
AUTO_CHROMA_DENOISE = True


def auto_denoise(img: np.ndarray, gain: float | None = None) -> float:
    """Non-local-means strength (8-bit grey levels) for enhancing the INPUT ``img`` by about ``gain``.

    The noise is measured on the input's luma, where it has not yet been amplified or shaped by the
    enhancement (the previous rule measured the enhanced image and reached h = 72). ``gain``:
    the brightening expected (default: ``classical.auto_exposure_gain``).
    """
    from medgan.enhance.classical import auto_exposure_gain

    gain = auto_exposure_gain(img) if gain is None else gain
    h = DENOISE_K * estimate_noise_sigma(img) * gain * 255.0
    return round(min(h, DENOISE_MAX), 3) if h >= DENOISE_MIN else 0.0


def _luma(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``[H, W, 3]`` (or the image itself if grey), float in [0, 1]."""
    if img.ndim == 2:
        return img
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


# Images above this many pixels are denoised at 1/2 resolution (area-averaged, so the NLM strength is
# halved: averaging 2x2 pixels halves white noise's sigma) and bilinearly upsampled. At 1080p full-
# resolution NLM took 0.73 s of a 1.06 s frame; at 1/2 it takes about a quarter of that. The
# recombination keeps the full-resolution raw estimate where the illumination is bright.
DENOISE_REDUCE_FROM = 1_000_000


# NLM search window (px) on images denoised at reduced resolution; OpenCV's default 21 elsewhere. At
# 960x540, 11 took 0.17 CPU-s against 0.46 for 21 (load ~3). Not calibrated: the pairs are 256 px.
REDUCED_SEARCH = 11


def _nlm(u: np.ndarray, h: float, search: int = 21) -> np.ndarray:
    """OpenCV non-local means of an ``[H, W]`` or ``[H, W, C]`` (C <= 4: one patch distance over the
    channels, OpenCV divides it by C) float image in [0, 1] (via uint8), float32."""
    import cv2

    u8 = np.round(np.clip(u, 0, 1) * 255).astype(np.uint8)
    out = cv2.fastNlMeansDenoising(u8, None, h=float(h), templateWindowSize=7, searchWindowSize=search)
    return out.astype(np.float32) / np.float32(255.0)


def _denoise_planes(img: np.ndarray, h: float, chroma: bool, chroma_down: int = 1, search: int = 21
                    ) -> np.ndarray:
    """NLM on the luma (and, with ``chroma``, on Cr/Cb with the same strength) of ``[H, W(, 3)]``.

    ``chroma_down`` > 1: the chroma planes are denoised that many times smaller (strength divided
    by it, as area averaging divides white noise's sigma) and bilinearly upsampled; chroma carries
    little detail, and this keeps their cost small against the luma's.
    """
    import cv2

    if img.ndim == 2:
        return _nlm(img, h, search)
    ycc = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32, copy=False), cv2.COLOR_RGB2YCrCb)  # [H, W, 3]
    ycc[..., 0] = _nlm(ycc[..., 0], h, search)
    if chroma:
        hh, ww = ycc.shape[:2]
        c = ycc[..., 1:] if chroma_down == 1 else cv2.resize(
            ycc[..., 1:], (-(-ww // chroma_down), -(-hh // chroma_down)), interpolation=cv2.INTER_AREA)
        c = _nlm(np.ascontiguousarray(c), h / chroma_down, search)  # [h', w', 2]: Cr and Cb share weights
        ycc[..., 1:] = c if chroma_down == 1 else cv2.resize(c, (ww, hh), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def denoise_luma(img: np.ndarray, h: float, chroma: bool = False) -> np.ndarray:
    """OpenCV non-local means on the luma (chroma kept unless ``chroma``): ``[H, W(, 3)]`` float in [0, 1].

    Above DENOISE_REDUCE_FROM pixels the luma is denoised at 1/2 resolution (strength h/2, search
    window REDUCED_SEARCH), the chroma at 1/4, and the result is returned at that 1/2 resolution,
    ``[ceil(H/2), ceil(W/2)(, 3)]``: ``_recombine`` brings each plane back.
    """
    import cv2

    hh, ww = img.shape[:2]
    if hh * ww <= DENOISE_REDUCE_FROM:
        return np.clip(_denoise_planes(img, h, chroma), 0, 1)
    small = cv2.resize(img, ((ww + 1) // 2, (hh + 1) // 2), interpolation=cv2.INTER_AREA)
    return np.clip(_denoise_planes(small, h / 2.0, chroma, chroma_down=2, search=REDUCED_SEARCH), 0, 1)


def _recombine(out: np.ndarray, den: np.ndarray, tn: np.ndarray) -> None:
    """The paper's recombination R * T + R_den * (1 - T) = R_den + (R - R_den) * T, in ``out``, one
    plane at a time (``den`` upsampled bilinearly plane by plane if smaller: no full-size RGB temporary).

    ``out`` ``[H, W(, C)]``, ``den`` the same or ``[h, w(, C)]``, ``tn`` ``[H, W]``.
    """
    import cv2

    hh, ww = out.shape[:2]
    planes = [(out, den)] if out.ndim == 2 else [(out[..., c], den[..., c]) for c in range(out.shape[2])]
    for o, d in planes:
        if d.shape != o.shape:
            d = cv2.resize(np.ascontiguousarray(d), (ww, hh), interpolation=cv2.INTER_LINEAR)
        o -= d
        o *= tn
        o += d


def _as_unit_float32(img: np.ndarray) -> np.ndarray:
    """``img`` as float32 in [0, 1], ``[H, W, C]``; no copy when it already is (4K: 100 MB saved)."""
    if img.dtype == np.float32 and img.size and float(img.min()) >= 0.0 and float(img.max()) <= 1.0:
        arr = img
    else:
        arr = np.clip(img, 0.0, 1.0, dtype=np.float32) if img.dtype != np.float32 else np.clip(img, 0.0, 1.0)
    return arr.reshape(arr.shape[:2] + (-1,))


def lime_enhance(img: np.ndarray, *, gamma: float | None = None, alpha: float = 0.15,
                 sigma: float = 2.0, eps: float = 1e-3, solver: str = "fast",
                 denoise: float | None = None, strength: float = 1.0,
                 device: str | torch.device | None = None, reduce: int | None = None
                 ) -> tuple[np.ndarray, dict]:
    """Enhance a low-light image with LIME.

    ``img``: ``[H, W]`` (grey, e.g. a CT slice) or ``[H, W, 3]`` RGB, float in [0, 1].
    ``gamma``/``denoise`` ``None`` (the defaults, as in the CLI and job specs) choose automatically
    (see ``auto_gamma``/``auto_denoise``; bench/bench_enhance.py reports them on held-out pairs);
    ``denoise`` is the non-local-means strength in 8-bit grey levels (0: off); the automatic one
    also denoises the chroma (AUTO_CHROMA_DENOISE). ``strength`` blends the result over the input.
    ``reduce``: see ``estimate_illumination`` (None: 1 up to a megapixel, 2 up to 4K, then 4).
    Returns the enhanced image (same shape, float32 in [0, 1]) and the parameters actually used.
    """
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"expected [H, W] or [H, W, 1|3], got {img.shape}")
    from medgan.enhance.knobs import check

    gamma, denoise = check("gamma", gamma, optional=True), check("denoise", denoise, optional=True)
    strength, alpha = check("strength", strength), check("alpha", alpha)
    sigma, eps = check("sigma", sigma), check("eps", eps)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or infinite values")
    arr = _as_unit_float32(img)  # [H, W, C]
    # Measured on the input, and first: its luma temporaries come and go before the big buffers exist.
    h = auto_denoise(arr[..., 0] if arr.shape[2] == 1 else arr) if denoise is None else float(denoise)
    x = torch.from_numpy(arr).to(dev).permute(2, 0, 1)  # [C, H, W] (a view on the CPU)
    t_hat = x.amax(0)  # [H, W] brightest channel: the paper's initial illumination
    t, stats = estimate_illumination(t_hat, alpha=alpha, sigma=sigma, eps=eps, solver=solver, reduce=reduce)
    del t_hat
    t = t.clamp_(T_FLOOR, 1.0)
    auto = gamma is None
    g = auto_gamma(x, t, AUTO_GAIN_CAP) if auto else float(gamma)
    tg = t.pow_(g).clamp_(auto_gain_floor(x) if auto else 0.0)
    r = x.div(tg)  # [C, H, W], stored channels-last like x, so the permute below copies nothing
    out = r.clamp_(0, 1).permute(1, 2, 0).cpu().numpy().reshape(img.shape)
    del r
    if h > 0:
        tn = tg.pow_(1.0 / g).cpu().numpy()  # T again (floored in automatic mode), [H, W]
        den = denoise_luma(out, h, chroma=denoise is None and AUTO_CHROMA_DENOISE)
        _recombine(out, den, tn)  # trust the raw estimate where light was plentiful
        del den, tn
    if strength < 1.0:
        out *= np.float32(strength)
        out += np.float32(1.0 - strength) * arr.reshape(img.shape)
    out = np.clip(out, 0, 1, out=out) if out.dtype == np.float32 else np.clip(out, 0, 1).astype(np.float32)
    params = {"gamma": g, "alpha": alpha, "sigma": sigma, "eps": eps, "denoise": h,
              "strength": strength, **stats}
    return out, params
