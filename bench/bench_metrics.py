"""Metric throughput: batched torch PSNR/SSIM/entropy against scikit-image, same images, same settings."""

from __future__ import annotations

import numpy as np
import torch

from bench._timing import best_of


def run(quick: bool = False) -> list[dict]:
    """Images/s of our batched metrics vs a loop of skimage calls over the same batch."""
    from skimage import data, measure, util
    from skimage import metrics as skm

    from medgan import metrics as M

    n, size = (4, 128) if quick else (16, 256)
    base = util.img_as_float(data.camera()[:size, :size])
    rng = np.random.default_rng(0)
    refs = np.stack([np.roll(base, 7 * i, axis=1) for i in range(n)])  # [N, H, W]
    xs = np.clip(refs + rng.normal(0, 0.05, refs.shape), 0, 1)
    tx, tr = torch.from_numpy(xs)[:, None], torch.from_numpy(refs)[:, None]  # [N, 1, H, W] float64
    rows = []
    cases = {
        "ssim": (lambda: M.ssim(tx, tr),
                 lambda: [skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False, data_range=1.0)
                          for a, b in zip(xs, refs)]),
        "psnr": (lambda: M.psnr(tx, tr), lambda: [skm.peak_signal_noise_ratio(b, a, data_range=1.0)
                                                  for a, b in zip(xs, refs)]),
        "entropy": (lambda: M.entropy(tx),
                    lambda: [measure.shannon_entropy(util.img_as_ubyte(a)) for a in xs]),
    }
    threads = torch.get_num_threads()
    # One thread, like skimage: on this shared 2-core box OpenMP spin-waiting under load made
    # multi-threaded small ops 30x slower, which measures the neighbours, not the code.
    torch.set_num_threads(1)
    try:
        timings = {name: (best_of(ours)[0], best_of(theirs)[0]) for name, (ours, theirs) in cases.items()}
    finally:
        torch.set_num_threads(threads)
    for name, (t_ours, t_sk) in timings.items():
        rows.append({"name": f"{name}_{n}x{size}px", "value": round(n / t_ours, 1), "unit": "images/s",
                     "baseline": round(n / t_sk, 1), "ratio": round(t_sk / t_ours, 2),
                     "note": "batched torch, CPU, 1 thread, float64 vs a loop of skimage calls"})
    return rows


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
