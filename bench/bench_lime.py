"""LIME speed and memory: medgan's fast LIME on a 1920x1080 frame in a fresh process, against a direct sparse
solve of the same system and a plain re-implementation of the paper's FFT-ADMM solver, in the same run.

- ``lime_1080p``: best of N ``lime_enhance`` calls in a fresh child process (1 and 2 torch threads: on this
  shared 2-core machine, OpenMP spin-waiting under load can make 2 threads slower than 1). Baselines, in
  this process: a direct sparse solve (scipy ``splu``) of the same sped-up system at full resolution, and
  the paper's exact solver (ADMM on the l1 objective, FFT for the T sub-problem; Guo et al. 2017,
  Algorithm 1), both timed for the illumination alone, so the ratios favour the baselines.
- Agreement: PSNR of the enhanced image against the one from the direct solve's illumination (>= 35 dB
  asked for), at 1080p and at 960x540.
- ``lime_peak_rss_*``: peak resident memory of a fresh process that loads a frame and enhances it
  (torch import and the frame itself included).
Load average is recorded beside every timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._timing import best_of

ROOT = Path(__file__).resolve().parents[1]
GAMMA = 0.8


def _frame(h: int, w: int) -> np.ndarray:
    import cv2
    from skimage import data, util

    from medgan.enhance.pairs import DarkenSpec, darken

    img = cv2.resize(util.img_as_float32(data.astronaut()), (w, h), interpolation=cv2.INTER_AREA)
    return darken(np.clip(img, 0, 1), DarkenSpec(exposure=0.1, photons=5000, seed=0))


def admm_illumination(t_hat: np.ndarray, alpha: float = 0.15, eps: float = 1e-3, mu: float = 1.0,
                      rho: float = 1.5, tol: float = 1e-5, max_iter: int = 50) -> tuple[np.ndarray, int]:
    """The paper's exact solver (Algorithm 1): min ||T - T^||^2 + alpha ||W o grad T||_1 by ADMM.

    Strategy II weights W_d = 1 / (|grad_d T^| + eps); circular differences, so the T step is a
    division in the Fourier domain; G by soft thresholding; Z the scaled multiplier; mu grows by rho.
    Stops when ||grad T - G|| <= tol ||T^|| (the paper's rule) or after max_iter. Plain numpy, written
    as a user would from the paper.
    """
    from scipy import fft

    h, w = t_hat.shape
    dx = lambda x: np.roll(x, -1, 1) - x  # noqa: E731
    dy = lambda x: np.roll(x, -1, 0) - x  # noqa: E731
    dxt = lambda x: np.roll(x, 1, 1) - x  # noqa: E731  (adjoint of dx)
    dyt = lambda x: np.roll(x, 1, 0) - x  # noqa: E731
    wx, wy = 1.0 / (np.abs(dx(t_hat)) + eps), 1.0 / (np.abs(dy(t_hat)) + eps)
    kx = np.zeros((h, w)); kx[0, 0], kx[0, -1] = -1, 1  # noqa: E702
    ky = np.zeros((h, w)); ky[0, 0], ky[-1, 0] = -1, 1  # noqa: E702
    dtd = np.abs(fft.fft2(kx)) ** 2 + np.abs(fft.fft2(ky)) ** 2
    t = t_hat.copy()
    gx = np.zeros_like(t); gy = np.zeros_like(t)  # noqa: E702
    zx = np.zeros_like(t); zy = np.zeros_like(t)  # noqa: E702
    norm = np.linalg.norm(t_hat)
    for it in range(1, max_iter + 1):
        rhs = 2 * t_hat + mu * (dxt(gx - zx / mu) + dyt(gy - zy / mu))
        t = np.real(fft.ifft2(fft.fft2(rhs) / (2 + mu * dtd)))
        tx, ty = dx(t), dy(t)
        ax, ay = tx + zx / mu, ty + zy / mu
        gx = np.sign(ax) * np.maximum(np.abs(ax) - alpha * wx / mu, 0)
        gy = np.sign(ay) * np.maximum(np.abs(ay) - alpha * wy / mu, 0)
        zx, zy = zx + mu * (tx - gx), zy + mu * (ty - gy)
        mu *= rho
        if np.sqrt(np.linalg.norm(tx - gx) ** 2 + np.linalg.norm(ty - gy) ** 2) <= tol * norm:
            break
    return t, it


def _enhance_with(img: np.ndarray, t: np.ndarray) -> np.ndarray:
    from medgan.enhance.lime import T_FLOOR

    return np.clip(img / np.clip(t, T_FLOOR, 1.0)[..., None] ** GAMMA, 0, 1).astype(np.float32)


_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
from medgan.enhance.lime import lime_enhance
img = np.load(sys.argv[1])
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); out, p = lime_enhance(img, gamma=%r); times.append(time.perf_counter() - t0)
np.save(sys.argv[1] + ".out.npy", out)
# VmHWM (this process's own high-water mark): ru_maxrss would carry the parent's peak over fork + exec.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"times": times, "peak_mib": peak,
                  "reduce": p["reduce"], "iterations": p["iterations"]}))
""" % GAMMA


def _fresh(path: Path, threads: int, reps: int) -> dict:
    """Run LIME in a fresh Python process on the frame stored at ``path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(threads), str(reps)], env=env,
                         capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return "load average %.1f" % os.getloadavg()[0]


def run(quick: bool = False) -> list[dict]:
    """Rows: fresh-process LIME time at 1080p vs direct and FFT-ADMM solves; agreement; peak RSS at 1080p/4K."""
    from medgan import metrics as M
    from medgan.enhance.lime import lime_enhance, lime_weights, solve_exact

    h, w = (540, 960) if quick else (1080, 1920)
    reps = 3 if quick else 7
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        frame = _frame(h, w)
        path = Path(tmp) / "frame.npy"
        np.save(path, frame)
        fresh = {n: _fresh(path, n, reps) for n in (1, 2)}
        fresh_load = _load()
        ours = min(min(r["times"]) for r in fresh.values())
        ours_out = np.load(str(path) + ".out.npy")
        t_hat = np.ascontiguousarray(frame.max(2))
        th = torch.from_numpy(t_hat)
        wx, wy = lime_weights(th, 2.0, 1e-3)
        t0 = time.perf_counter()
        exact = solve_exact(th, wx, wy, 0.15).numpy()
        t_direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        t_admm, admm_iters = admm_illumination(t_hat.astype(np.float64))
        t_admm_s = time.perf_counter() - t0
        base_load = _load()
        exact_img = _enhance_with(frame, exact)
        # Solver agreement: the same pipeline without denoising (the child's output is denoised).
        agree = float(M.psnr(lime_enhance(frame, gamma=GAMMA, denoise=0)[0], exact_img).item())
        del ours_out
        admm_agree = float(M.psnr(_enhance_with(frame, t_admm), exact_img).item())
        by_threads = ", ".join(f"{n} thread{'s' * (n > 1)}: best {min(r['times']):.3f} s, first "
                               f"{r['times'][0]:.3f} s" for n, r in fresh.items())
        rows.append({"name": f"lime_{w}x{h}_fresh_process", "value": round(ours, 3), "unit": "s/frame",
                     "baseline": round(t_direct, 3), "ratio": round(t_direct / ours, 2),
                     "note": f"best of {reps} lime_enhance calls (gamma {GAMMA}, solve at 1/{fresh[1]['reduce']} "
                             f"resolution + guided upsampling) in a fresh process ({by_threads}; {fresh_load}); "
                             f"baseline: scipy splu direct solve of the same system at full resolution, "
                             f"illumination only ({base_load}); enhanced image {agree:.1f} dB PSNR from the "
                             f"direct solve's"})
        rows.append({"name": f"lime_{w}x{h}_vs_fft_admm", "value": round(ours, 3), "unit": "s/frame",
                     "baseline": round(t_admm_s, 3), "ratio": round(t_admm_s / ours, 2),
                     "note": f"baseline: the paper's exact l1 solver (ADMM + FFT, Algorithm 1, numpy, "
                             f"{admm_iters} iterations), illumination only; its enhanced image is "
                             f"{admm_agree:.1f} dB from the sped-up system's direct solve (a different "
                             f"objective); {base_load}"})
        if not quick:
            small = _frame(540, 960)
            ts = torch.from_numpy(np.ascontiguousarray(small.max(2)))
            sx, sy = lime_weights(ts, 2.0, 1e-3)
            ref = _enhance_with(small, solve_exact(ts, sx, sy, 0.15).numpy())
            for f in (1, 2, 4):
                o, _ = lime_enhance(small, gamma=GAMMA, reduce=f, denoise=0)
                rows.append({"name": f"lime_agreement_960x540_reduce{f}",
                             "value": round(float(M.psnr(o, ref).item()), 2), "unit": "dB",
                             "note": "enhanced image PSNR (no denoise) against the direct solve's, solve at "
                                     f"1/{f} resolution (>= 35 dB asked for)"})
        rows.append({"name": f"lime_peak_rss_{w}x{h}", "value": round(fresh[1]["peak_mib"]), "unit": "MiB",
                     "note": "fresh process: torch import, the frame and LIME (1 thread)"})
        if not quick:
            big = _frame(2160, 3840)
            np.save(path, big)
            del big
            r4 = _fresh(path, 1, 2)
            rows.append({"name": "lime_peak_rss_3840x2160", "value": round(r4["peak_mib"]), "unit": "MiB",
                         "note": f"fresh process, 1 thread, solve at 1/{r4['reduce']} resolution; best "
                                 f"{min(r4['times']):.3f} s per frame (auto denoise, gamma {GAMMA}); {_load()}"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
