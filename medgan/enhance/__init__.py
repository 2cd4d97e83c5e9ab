"""Low-light enhancement and super-resolution over a dataset, with quality metrics.

``enhance_dataset`` is the contract with the job system (docs/INTERFACES.md). Methods:
``lime`` (Guo et al. 2017), ``gamma``, ``he``, ``clahe`` (classical baselines), ``zerodce``
(a trained curve estimator), ``bicubic`` and ``esrgan`` (x2/x4 super-resolution). The learned
methods use a trained run's model when given one, else the model shipped with medgan
(``medgan.enhance.models``: Zero-DCE and an x4 super-resolver).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medgan.callbacks import Callbacks
from medgan.config import EnhanceConfig
from medgan.errors import DataError

SR_METHODS = ("bicubic", "esrgan")
LEARNED_METHODS = ("zerodce", "esrgan")

__all__ = ["enhance_dataset", "enhance_image", "make_enhancer", "scoring", "SR_METHODS"]


def _lime(cfg: EnhanceConfig) -> Callable[[np.ndarray], tuple[np.ndarray, dict]]:
    from medgan.enhance.lime import lime_enhance

    def run(img: np.ndarray) -> tuple[np.ndarray, dict]:
        out, params = lime_enhance(img, gamma=cfg.gamma, alpha=cfg.alpha, sigma=cfg.sigma, eps=cfg.eps,
                                   solver=cfg.solver, denoise=cfg.denoise, strength=cfg.strength)
        return out, {k: params[k] for k in ("gamma", "denoise")}

    return run


def _classical(cfg: EnhanceConfig) -> Callable[[np.ndarray], tuple[np.ndarray, dict]]:
    from medgan.enhance import classical

    def run(img: np.ndarray) -> tuple[np.ndarray, dict]:
        if cfg.method == "gamma":
            out, params = classical.gamma_correct(img, cfg.gamma)
        elif cfg.method == "he":
            out, params = classical.hist_equalize(img)
        else:
            out, params = classical.clahe(img, clip_limit=cfg.clip_limit)
        out = cfg.strength * out + (1.0 - cfg.strength) * np.clip(img, 0, 1)
        return out.astype(np.float32), params

    return run


def _learned(cfg: EnhanceConfig, model_dir: Path | None) -> Callable[[np.ndarray], tuple[np.ndarray, dict]]:
    """The learned method's enhancer: the model of ``model_dir`` (a trained run's checkpoint directory),
    else the one shipped with medgan (``medgan.enhance.models``, sha256 checked against its manifest)."""
    import torch

    from medgan.enhance import models

    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = str(model_dir) if model_dir is not None else "the shipped model"
    if cfg.method == "zerodce":
        from medgan.enhance.zerodce import enhance_with, load_zerodce

        net, _ = load_zerodce(Path(model_dir), device) if model_dir is not None else models.load_shipped("zerodce", device)
        return lambda img: (enhance_with(net, img, strength=cfg.strength), {})
    from medgan.enhance.sr import load_esrgan, upscale_with

    net, tcfg = load_esrgan(Path(model_dir), device) if model_dir is not None else models.load_shipped("esrgan", device)
    if tcfg.sr_scale != cfg.scale:
        hint = "" if model_dir is not None else f" (pass a trained x{cfg.scale} model with --model)"
        raise DataError(f"{where} upsamples x{tcfg.sr_scale}, but scale={cfg.scale}{hint}")
    return lambda img: (upscale_with(net, img, cfg.scale, tile=cfg.tile, overlap=cfg.tile_overlap), {})


def _bicubic(cfg: EnhanceConfig) -> Callable[[np.ndarray], tuple[np.ndarray, dict]]:
    from medgan.enhance.sr import upscale_bicubic

    return lambda img: (upscale_bicubic(img, cfg.scale), {})


def make_enhancer(cfg: EnhanceConfig, model_dir: Path | None = None
                  ) -> Callable[[np.ndarray], tuple[np.ndarray, dict]]:
    """A function ``img -> (enhanced, automatic parameters used)`` for ``cfg.method``.

    Images are ``[H, W]`` or ``[H, W, 3]`` float in [0, 1]; SR methods return ``scale`` times larger.
    """
    if cfg.method == "lime":
        return _lime(cfg)
    if cfg.method in ("gamma", "he", "clahe"):
        return _classical(cfg)
    if cfg.method == "bicubic":
        return _bicubic(cfg)
    return _learned(cfg, model_dir)


def enhance_image(img: np.ndarray, cfg: EnhanceConfig, model_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """Enhance one image with ``cfg`` (convenience over ``make_enhancer``)."""
    return make_enhancer(cfg, model_dir)(img)


def scoring(cfg: EnhanceConfig) -> dict[str, Any]:
    """How full-reference scores are computed for ``cfg``: written to every summary.json.

    The field's conventions: super-resolution papers score PSNR/SSIM on the BT.601 Y channel
    with ``scale`` pixels cropped from each border; low-light enhancement is scored on what the
    user sees, the image's own channels (RGB as RGB, so colour casts count; grey as grey).
    ``cfg.y_channel`` overrides the channel choice; the crop stays SR-only.
    """
    sr = cfg.method in SR_METHODS
    y = sr if cfg.y_channel is None else bool(cfg.y_channel)
    crop = cfg.scale if sr else 0
    return {
        "channels": "y" if y else "own",
        "crop_border": crop,
        "convention": ("BT.601 Y of RGB images (grey images as they are)" if y else
                       "the image's own channels (RGB as RGB, grey as grey)")
                      + (f", {crop} px cropped from each border" if crop else ", no border crop")
                      + ("; the super-resolution convention" if sr and y else
                         "; the low-light convention" if not sr and not y else "; set by y_channel"),
        "ssim": "11x11 Gaussian window, sigma 1.5, population covariance (Wang et al. 2004)",
        "entropy": "Shannon entropy of the output's histogram at its own bit depth (256 or 65,536 levels)",
        "baseline": ("bicubic_*: bicubic upsampling of the same input, scored the same way" if sr else
                     "input_*: the unenhanced input against the same reference, scored the same way"),
    }


def _scored_on(img: np.ndarray, conv: dict[str, Any]) -> str:
    """What one image's full-reference scores were computed on, e.g. ``rgb``, ``grey``, ``y/crop4``."""
    chans = "grey" if img.ndim == 2 or img.shape[-1] == 1 else ("y" if conv["channels"] == "y" else "rgb")
    return chans + (f"/crop{conv['crop_border']}" if conv["crop_border"] else "")


def _score(out: np.ndarray, ref: np.ndarray | None, cfg: EnhanceConfig, bits: int = 8) -> dict[str, Any]:
    """No-reference metrics always; full-reference ones (by ``scoring(cfg)``) when a reference is given."""
    from medgan import metrics

    row: dict[str, Any] = {k: float(v[0]) for k, v in metrics.no_reference(out, bits=bits).items()}
    out = metrics.to_unit_float(out)  # integers (as written) by their dtype's maximum
    if ref is None:
        return row
    conv = scoring(cfg)
    if cfg.method in SR_METHODS:
        from medgan.enhance.pairs import crop_to_multiple

        ref = crop_to_multiple(ref, cfg.scale)
    if ref.shape != out.shape:
        raise DataError(f"reference shape {ref.shape} does not match output shape {out.shape}")
    fr = metrics.full_reference(out, ref, crop_border=conv["crop_border"], y_channel=conv["channels"] == "y")
    row.update({k: float(v[0]) for k, v in fr.items()})
    row["scored_on"] = _scored_on(ref, conv)
    return row


def _baseline(img: np.ndarray, ref: np.ndarray, cfg: EnhanceConfig) -> dict[str, float]:
    """The bar a method must clear, scored like the method: the dark input itself (low light),
    or bicubic upsampling of the input (super-resolution; nothing for bicubic itself)."""
    if cfg.method == "bicubic":
        return {}
    if cfg.method in SR_METHODS:
        from medgan.enhance.sr import upscale_bicubic

        base, prefix = upscale_bicubic(img, cfg.scale), "bicubic"
    else:
        if img.shape != ref.shape:
            return {}
        base, prefix = img, "input"
    scores = _score(base, ref, cfg)
    return {f"{prefix}_{k}": scores[k] for k in ("psnr", "ssim", "mse")}


def _summary(rows: list[dict[str, Any]], metric_names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ok = [r for r in rows if r["status"] == "ok"]
    for name in metric_names:
        vals = np.array([r[name] for r in ok if isinstance(r.get(name), float) and math.isfinite(r[name])])
        if len(vals):
            out[name] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    return out


def _auto_params(cfg: EnhanceConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The configured parameters, with each automatic one summarised over images."""
    params: dict[str, Any] = cfg.model_dump(mode="json")
    for key in ("gamma", "denoise"):
        vals = [r[f"param_{key}"] for r in rows if r.get(f"param_{key}") is not None]
        if params.get(key) is None and vals:
            params[key] = {"auto": True, "mean": float(np.mean(vals)), "min": float(np.min(vals)),
                           "max": float(np.max(vals))}
    return params


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = ["file", "status"]
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})


def _frames(path: Path, cfg: EnhanceConfig) -> list[tuple[str, np.ndarray, int]]:
    """(output stem, [H, W] or [H, W, 3] in [0, 1], output bit depth) for each image of one input file.

    Read by `medgan.data` like every job kind's inputs: colour kept, 16-bit by its true range,
    DICOM through its modality and VOI LUTs; frames/slices as `cfg.read` says.
    """
    from medgan.data import read_image

    img = read_image(path, cfg.read.model_copy(update={"color": "keep"}))
    depth = 16 if img.bit_depth > 8 else 8
    stem = path.name.split(".")[0] if path.name.lower().endswith(".nii.gz") else path.stem
    if len(img) == 1:
        return [(stem, img.frame(0), depth)]
    return [(f"{stem}_{k:03d}", img.frame(j), depth) for j, k in enumerate(img.indices)]


def enhance_dataset(cfg: EnhanceConfig, inputs: list[Path], out_dir: Path,
                    references: list[Path] | None = None, model_dir: Path | None = None,
                    callbacks: Callbacks | None = None) -> dict:
    """Enhance every input image, score it, and write images, metrics.csv and summary.json.

    References are matched to inputs by file stem. An unreadable input fails the run naming it
    (``cfg.read.on_error="fail"``), or is skipped and counted by reason in the summary's ``read``
    (``"skip"``; its metrics.csv row says why). Returns the summary:
    ``{metric: {"mean", "sd"}, "count", "failed", "method", "params", "read", "scoring", ...}``;
    ``scoring`` states the convention (``scoring(cfg)``) and every metrics.csv row with a
    reference names what it was scored on (``scored_on``) beside the baseline's scores. Learned
    methods add ``model``: the checkpoint directory used, or the shipped model's file and sha256.
    """
    from medgan.data import ReadError, ReadReport
    from medgan.pngio import to_uint, write_png

    callbacks = callbacks or Callbacks()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    refs = {Path(p).stem: Path(p) for p in (references or [])}
    enhancer = make_enhancer(cfg, model_dir)  # loads a model once; bad model_dir fails here
    rows: list[dict[str, Any]] = []
    report = ReadReport()
    stopped = False
    for i, path in enumerate(inputs):
        if callbacks.should_stop():
            stopped = True
            break
        path = Path(path)
        try:
            frames = _frames(path, cfg)
            report.files_read += 1
            report.images += len(frames)
        except ReadError as err:
            if cfg.read.on_error == "fail":
                raise DataError(f"{err} (read.on_error=skip skips such files and counts them)") from None
            report.skip(err)
            frames = []
            rows.append({"file": path.name, "status": f"skipped: {err.reason}: {err.detail}"})
        for stem, img, depth in frames:
            row: dict[str, Any] = {"file": path.name if len(frames) == 1 else f"{path.name}#{stem}", "status": "ok"}
            try:
                out, used = enhancer(img)
                write_png(out_dir / "images" / f"{stem}.png", out, bit_depth=depth)
                ref = _frames(refs[stem], cfg)[0][1] if stem in refs else None
                # Scored as written: the integers in the PNG, at its bit depth.
                row.update(_score(to_uint(out, depth), ref, cfg, bits=depth))
                row["has_reference"] = ref is not None
                if ref is not None:
                    row.update(_baseline(img, ref, cfg))
                row.update({f"param_{k}": v for k, v in used.items()})
            except (DataError, ValueError) as exc:
                row["status"] = f"error: {exc}"
            rows.append(row)
        callbacks.on_progress(i + 1, len(inputs), {"file": path.name, "status": rows[-1]["status"] if rows else "ok"})
    _write_csv(out_dir / "metrics.csv", rows)
    names = ["psnr", "ssim", "mse", "entropy", "avg_gradient", "std"] + [
        f"{b}_{k}" for b in ("input", "bicubic") for k in ("psnr", "ssim", "mse")]
    summary: dict[str, Any] = _summary(rows, names)
    summary.update({
        "count": sum(r["status"] == "ok" for r in rows),
        "failed": [r["file"] for r in rows if r["status"] != "ok"],
        "method": cfg.method,
        "params": _auto_params(cfg, rows),
        "stopped": stopped,
        "read": report.to_dict(),
        "scoring": scoring(cfg),
    })
    if cfg.method in LEARNED_METHODS:
        from medgan.enhance.models import provenance

        summary["model"] = {"source": str(model_dir)} if model_dir is not None else provenance(cfg.method)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    report.publish()
    return summary
