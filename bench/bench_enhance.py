"""Low-light enhancement on made pairs: automatic settings against fixed ones and against the dark input.

Pairs: ``medgan.enhance.scenes.HELD_OUT`` - 14 scenes the installed packages carry (6 RGB photos/fundus/
histology, 4 grey, 4 medical: head CT, MR, chest radiograph, NIfTI slice; several with black
backgrounds) darkened by the pair maker at exposures 0.07 / 0.14 / 0.3 with 400 and 20,000 photons,
seed 1. The automatic settings were calibrated on other exposures and seed 0 (``scenes.CALIBRATION``),
so these figures are not measured on what they were tuned on.

Scored as the enhance job scores low light: PSNR and SSIM (11x11 Gaussian) on the image's own
channels (RGB as RGB). Per method and setting: mean PSNR / SSIM over all pairs, the RGB and the grey
ones; how many pairs fall below the dark input's own PSNR / SSIM; and colour clipping: the mean
excess share of pixels with a clipped channel over the reference's (0 = no clipping beyond it).

Zero-DCE is the model shipped with medgan (``medgan.enhance.models``, trained on other images than these
scenes and on other darkenings); if its file is missing or altered its row says so and it is not run.
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import torch

CLIP = 254.5 / 255


def _clipped(img: np.ndarray) -> float:
    x = img if img.ndim == 3 else img[..., None]
    return float((x >= CLIP).any(-1).mean())


def _methods() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from medgan.enhance import classical
    from medgan.enhance.lime import lime_enhance

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "lime auto": lambda d: lime_enhance(d, gamma=None, denoise=None)[0],
    }
    for g in (0.6, 0.7, 0.8):
        out[f"lime gamma {g}"] = (lambda g: lambda d: lime_enhance(d, gamma=g, denoise=0)[0])(g)
    out["gamma auto"] = lambda d: classical.gamma_correct(d, None)[0]
    for g in (0.4, 0.5, 0.6):
        out[f"gamma {g}"] = (lambda g: lambda d: classical.gamma_correct(d, g)[0])(g)
    out["clahe 0.01"] = lambda d: classical.clahe(d, clip_limit=0.01)[0]
    from medgan.enhance.models import NoShippedModel, load_shipped
    from medgan.enhance.zerodce import enhance_with

    try:
        net, _ = load_shipped("zerodce")  # the model shipped with medgan, sha256 checked
        out["zerodce"] = lambda d: enhance_with(net, d)
    except NoShippedModel as exc:
        _NOT_RUN["zerodce"] = str(exc)
    return out


_NOT_RUN: dict[str, str] = {}


def evaluate(pairs, methods) -> dict[str, dict[str, float]]:
    """Per method: mean PSNR/SSIM (all, rgb, grey), pairs below the dark input, clipping beyond the reference."""
    from medgan import metrics as M

    dark = [(M.psnr(p.dark, p.ref).item(), M.ssim(p.dark, p.ref).item()) for p in pairs]
    rgb = np.array([p.ref.ndim == 3 for p in pairs])
    table: dict[str, dict[str, float]] = {}
    rows = {"dark input": [p.dark for p in pairs]}
    for name, fn in methods.items():
        rows[name] = [fn(p.dark) for p in pairs]
    for name, outs in rows.items():
        ps = np.array([M.psnr(o, p.ref).item() for o, p in zip(outs, pairs)])
        ss = np.array([M.ssim(o, p.ref).item() for o, p in zip(outs, pairs)])
        excess = [max(0.0, _clipped(o) - _clipped(p.ref)) for o, p in zip(outs, pairs)]
        table[name] = {
            "psnr": float(ps.mean()), "ssim": float(ss.mean()),
            "psnr_rgb": float(ps[rgb].mean()), "ssim_rgb": float(ss[rgb].mean()),
            "psnr_grey": float(ps[~rgb].mean()), "ssim_grey": float(ss[~rgb].mean()),
            "below_dark_psnr": int(sum(a < d[0] for a, d in zip(ps, dark))),
            "below_dark_ssim": int(sum(a < d[1] for a, d in zip(ss, dark))),
            "clip_excess": float(np.mean(excess)), "pairs": len(pairs),
        }
    return table


def run(quick: bool = False) -> list[dict]:
    """One row per method and setting (mean RGB PSNR), baseline the dark input's."""
    from medgan.enhance import scenes

    torch.set_num_threads(1)
    sc = ("astronaut", "retina", "camera", "CT_small.dcm") if quick else scenes.SCENES
    specs = scenes.HELD_OUT[::3] if quick else scenes.HELD_OUT
    pairs = scenes.pairs(specs, sc)
    table = evaluate(pairs, _methods())
    base = table["dark input"]
    rows = []
    for name, t in table.items():
        rows.append({"name": name.replace(" ", "_"), "value": round(t["psnr"], 2), "unit": "dB",
                     "baseline": round(base["psnr"], 2), "ratio": None,
                     "note": f"SSIM {t['ssim']:.3f} (dark {base['ssim']:.3f}); RGB pairs {t['psnr_rgb']:.2f} dB / "
                             f"{t['ssim_rgb']:.3f}, grey/medical {t['psnr_grey']:.2f} dB / {t['ssim_grey']:.3f}; "
                             f"below the dark input on {t['below_dark_psnr']} (PSNR) / {t['below_dark_ssim']} "
                             f"(SSIM) of {t['pairs']} pairs; clipping beyond the reference "
                             f"{100 * t['clip_excess']:.2f} % of pixels"})
    if "zerodce" not in table:
        rows.append({"name": "zerodce", "value": None, "unit": "dB",
                     "note": f"not run: {_NOT_RUN.get('zerodce', 'no shipped model')}"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
