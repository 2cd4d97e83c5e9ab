"""The learned enhancers that ship with medgan: Zero-DCE (low light) and an RRDB x4 super-resolver.

Each is a safetensors file in ``medgan/enhance/weights/`` described by ``manifest.json``: the
TrainConfig it was trained with (the net is built from it), the command that retrains it, the
training data, steps, CPU time, the file's sha256 and its scores on held-out pairs. A model is
loaded only after its sha256 matches the manifest; a missing or altered file is a
``NoShippedModel`` (one line saying how to retrain it or which option to use instead).

Training data: images the installed packages carry that the benchmark scenes (``scenes.SCENES``)
do not use - scikit-image samples, pydicom-data's CT/MR/radiograph/ultrasound files, a nibabel
volume and the bundled phantom - area-resized like the scenes and cut into overlapping tiles
(``write_training_folder``). The project's own training function (``medgan.train.train``, what a
``train`` job runs) darkens / downsamples them on the fly through the pair maker
(``medgan.enhance.pairs``). Held-out scores are measured on ``scenes.SCENES``: low light on the
``scenes.HELD_OUT`` darkenings, scored as the enhance job scores low light (the image's own
channels, RGB as RGB); super-resolution on the scenes' x4 pairs, scored by the SR convention
(BT.601 Y, 4 px border crop). Neither the scenes nor those darkenings are ever trained on.

Retrain (CPU, about 15 minutes each; rewrites the weights and the manifest)::

    python -m medgan.enhance.models retrain zerodce   # or esrgan, or all (`make models`)
    python -m medgan.enhance.models check             # sha256 of every shipped file against the manifest
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from medgan.errors import DataError

WEIGHTS_DIR = Path(__file__).with_name("weights")
MANIFEST = WEIGHTS_DIR / "manifest.json"
METHODS = ("zerodce", "esrgan")
RETRAIN = "python -m medgan.enhance.models retrain"

# Training sources (none of them a benchmark scene, nor another encoding of one: RG1_* is the
# held-out chest radiograph, reoriented/resampled_anat_moved.nii are anatomical.nii moved).
SKIMAGE_TRAIN = ("brick", "cat", "clock", "coins", "colorwheel", "grass", "gravel", "hubble_deep_field",
                 "page", "text")
DICOM_TRAIN = ("693_UNCR.dcm", "MR2_UNCR.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm", "liver_1frame.dcm",
               "MR-SIEMENS-DICOM-WithOverlays.dcm", "OT-PAL-8-face.dcm", "examples_overlay.dcm")
NIFTI_TRAIN = ("example4d.nii.gz",)  # its first time point, middle slice
PHANTOM_TRAIN = 4  # images of the bundled phantom (seed 0): smooth, so few
TRAIN_SIDES = (256, 384)  # long sides the sources are area-resized to (the scenes use 256)

# The shipped models' training settings: the project's TrainConfig, nothing else.
# Zero-DCE: the paper's net and losses plus an L1 to the pair maker's clean reference
# (reference_weight), without which the exposure target E = 0.6 lifts black backgrounds
# and darkens bright scenes (an earlier zero-reference-only model scored below the dark input).
# dce_context (Zero-DCE++ curves from a downscaled copy) stays off: in a 300-step trial on 128 px tiles
# it brightened the bright scenes more and scored below the full-resolution net.
# SR: adv_weight 0 is ESRGAN's PSNR-oriented first stage; the bar is PSNR/SSIM against bicubic.
TRAIN_SETTINGS: dict[str, dict[str, Any]] = {
    "zerodce": {"model": "zerodce", "channels": 3, "image_size": 64, "tile": 64, "steps": 1500,
                "batch_size": 16, "lr_g": 1e-3, "reference_weight": 50.0},
    "esrgan": {"model": "esrgan", "channels": 1, "image_size": 64, "tile": 64, "steps": 2500,
               "batch_size": 16, "lr_g": 5e-4, "base_channels": 32, "sr_scale": 4, "adv_weight": 0.0},
}


class NoShippedModel(DataError):
    """A shipped model is absent, altered or does not load; the message is one line."""


def read_manifest() -> dict[str, Any]:
    """The shipped models' manifest (``{"models": {method: entry}}``); NoShippedModel if unreadable."""
    try:
        return json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        raise NoShippedModel(f"no shipped-model manifest at {MANIFEST}; retrain with `{RETRAIN} all`") from None
    except (OSError, ValueError) as exc:
        raise NoShippedModel(f"shipped-model manifest {MANIFEST} is unreadable ({exc})") from None


def _entry(method: str) -> dict[str, Any]:
    if method not in METHODS:
        raise NoShippedModel(f"no shipped model for method {method!r} (shipped: {', '.join(METHODS)})")
    entry = read_manifest().get("models", {}).get(method)
    if not entry:
        raise NoShippedModel(f"no {method} model ships with this install; retrain it with `{RETRAIN} {method}` "
                             "or pass a trained job with --model")
    return entry


def verify(method: str) -> Path:
    """The shipped weights file of ``method`` after checking its sha256 against the manifest."""
    from medgan.checkpoint import file_sha256

    entry = _entry(method)
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise NoShippedModel(f"shipped {method} weights {path} are missing; reinstall medgan or retrain them "
                             f"with `{RETRAIN} {method}`")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise NoShippedModel(f"shipped {method} weights {path.name} do not match the manifest (sha256 "
                             f"{digest[:12]}... != {entry['sha256'][:12]}...); reinstall medgan or retrain "
                             f"with `{RETRAIN} {method}`")
    return path


def shipped_sr_scale() -> int | None:
    """The shipped SR model's factor from the manifest (no weights read); None when none ships."""
    try:
        return int(_entry("esrgan")["config"]["sr_scale"])
    except (NoShippedModel, KeyError, TypeError, ValueError):
        return None


def provenance(method: str) -> dict[str, Any]:
    """What an enhance summary records about a shipped model it used."""
    entry = _entry(method)
    return {"source": "shipped with medgan", "file": entry["file"], "sha256": entry["sha256"],
            "steps": entry["steps"], "command": entry["command"]}


def _builder(method: str):
    if method == "zerodce":
        from medgan.enhance.zerodce import build_dce

        return build_dce
    from medgan.enhance.sr import build_sr_generator

    return build_sr_generator


def load_shipped(method: str, device: str = "cpu"):
    """``(net in eval mode, its TrainConfig)`` of the shipped ``method`` model, sha256 checked first."""
    from safetensors.torch import load_model

    from medgan.config import TrainConfig

    path = verify(method)
    cfg = TrainConfig(**_entry(method)["config"])
    net = _builder(method)(cfg)
    try:
        load_model(net, str(path), device=str(device))
    except Exception as exc:  # wrong shapes, truncated header: one line, not a traceback
        raise NoShippedModel(f"shipped {method} weights {path.name} do not load: {str(exc).splitlines()[0]}") from None
    return net.to(device).eval(), cfg


# --- training data -------------------------------------------------------------------------------------------


def _source(name: str, side: int) -> np.ndarray:
    """One training source ``[H, W]`` or ``[H, W, 3]`` in [0, 1], long side <= ``side``."""
    from medgan.enhance.scenes import _resize

    if name.endswith((".dcm", ".nii", ".nii.gz")):
        from medgan.data import read_image
        from medgan.data.policy import ReadPolicy

        if ".nii" in name:
            from nibabel.testing import data_path

            img = read_image(os.path.join(data_path, name), ReadPolicy(frames="first"))
            frame = img.frame(len(img) // 2)  # the middle slice
        else:
            from pydicom.data import get_testdata_file

            frame = read_image(get_testdata_file(name)).frame(0)
        return _resize(frame, side)
    from skimage import data, util

    img = util.img_as_float32(getattr(data, name)())
    return _resize(img[..., :3] if img.ndim == 3 else img, side)


def _tiles(img: np.ndarray, tile: int) -> list[np.ndarray]:
    """Overlapping ``tile`` x ``tile`` crops (stride tile/2) covering the image; [] if it is smaller."""
    h, w = img.shape[:2]
    if min(h, w) < tile:
        return []
    ys = sorted({*range(0, h - tile + 1, tile // 2), h - tile})
    xs = sorted({*range(0, w - tile + 1, tile // 2), w - tile})
    return [img[y:y + tile, x:x + tile] for y in ys for x in xs]


def write_training_folder(out_dir: Path, tile: int) -> dict[str, Any]:
    """Write the training tiles as 8-bit PNGs into ``out_dir``; returns what was written (for the manifest)."""
    from medgan.config import PhantomSpec
    from medgan.phantom import phantom_image
    from medgan.pngio import write_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    sources: list[tuple[str, Any]] = [(n, n) for n in (*SKIMAGE_TRAIN, *DICOM_TRAIN, *NIFTI_TRAIN)]
    sources += [(f"phantom_{k:02d}", k) for k in range(PHANTOM_TRAIN)]
    spec = PhantomSpec(count=max(PHANTOM_TRAIN, 4), size=256, seed=0)
    for label, src in sources:
        n = 0
        for side in TRAIN_SIDES:
            img = phantom_image(spec, src, side)[0] if isinstance(src, int) else _source(src, side)
            for j, t in enumerate(_tiles(img, tile)):
                write_png(out_dir / f"{label.replace('.', '_')}_{side}_{j:03d}.png", np.ascontiguousarray(t))
                n += 1
        counts[label] = n
    return {"sources": {"skimage": list(SKIMAGE_TRAIN), "pydicom-data": list(DICOM_TRAIN),
                        "nibabel": list(NIFTI_TRAIN), "phantom": f"{PHANTOM_TRAIN} images, seed 0"},
            "long_sides": list(TRAIN_SIDES), "tile": tile, "stride": tile // 2, "tiles": sum(counts.values()),
            "tiles_per_source": counts}


# --- held-out scores -----------------------------------------------------------------------------------------


def score_zerodce(net, scene_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Zero-DCE against the dark input on ``scenes.HELD_OUT`` pairs, RGB scored as RGB (SSIM 11x11 Gaussian)."""
    from medgan import metrics as M
    from medgan.enhance import scenes
    from medgan.enhance.zerodce import enhance_with

    rows = []
    for p in scenes.pairs(scenes.HELD_OUT, scene_names or scenes.SCENES):
        out = enhance_with(net, p.dark)
        # The exact inverse of the pair maker's exposure (display-space gain e^(-1/gamma)), for context:
        # no pointwise brightening does better on average, and it too is below the dark input's SSIM
        # where the amplified noise outweighs the corrected brightness.
        exact = np.clip(p.dark * p.spec.exposure ** (-1.0 / p.spec.gamma), 0, 1)
        rows.append({"pair": p.name, "psnr": M.psnr(out, p.ref).item(), "ssim": M.ssim(out, p.ref).item(),
                     "input_psnr": M.psnr(p.dark, p.ref).item(), "input_ssim": M.ssim(p.dark, p.ref).item(),
                     "exact_gain_psnr": M.psnr(exact, p.ref).item(), "exact_gain_ssim": M.ssim(exact, p.ref).item()})
    return _summarise(rows, "input", "the image's own channels (RGB as RGB, grey as grey), no border crop; "
                      "SSIM 11x11 Gaussian sigma 1.5", "scenes.HELD_OUT darkenings (exposure 0.07/0.14/0.3, "
                      "400 and 20,000 photons, seed 1) of scenes.SCENES at 256 px")


def score_esrgan(net, scene_names: tuple[str, ...] | None = None, scale: int = 4) -> dict[str, Any]:
    """The SR model against bicubic on the scenes' x``scale`` pairs, BT.601 Y with a ``scale``-px border crop."""
    from medgan import metrics as M
    from medgan.enhance import scenes
    from medgan.enhance.pairs import make_sr_pair
    from medgan.enhance.sr import upscale_bicubic, upscale_with

    rows = []
    kw = {"crop_border": scale, "y_channel": True}
    for name in scene_names or scenes.SCENES:
        lr, ref = make_sr_pair(scenes.load_scene(name), scale)
        out, base = upscale_with(net, lr, scale), upscale_bicubic(lr, scale)
        rows.append({"pair": name, "psnr": M.psnr(out, ref, **kw).item(), "ssim": M.ssim(out, ref, **kw).item(),
                     "bicubic_psnr": M.psnr(base, ref, **kw).item(), "bicubic_ssim": M.ssim(base, ref, **kw).item()})
    return _summarise(rows, "bicubic", f"BT.601 Y, {scale} px cropped from each border (the SR convention); "
                      "SSIM 11x11 Gaussian sigma 1.5", f"x{scale} bicubic-antialiased downsamplings of "
                      "scenes.SCENES at 256 px")


def _summarise(rows: list[dict[str, Any]], base: str, convention: str, pairs: str) -> dict[str, Any]:
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "pair"}
    out = {"pairs": pairs, "count": len(rows), "scored_on": convention, "baseline": base, "mean": mean,
           "below_baseline_psnr": sum(r["psnr"] < r[f"{base}_psnr"] for r in rows),
           "below_baseline_ssim": sum(r["ssim"] < r[f"{base}_ssim"] for r in rows)}
    if "exact_gain_ssim" in rows[0]:
        out["exact_gain_below_baseline_ssim"] = sum(r["exact_gain_ssim"] < r[f"{base}_ssim"] for r in rows)
    return {**out,
            "per_pair": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


def beats_baseline(scores: dict[str, Any]) -> bool:
    """Whether the mean PSNR and SSIM are both above the baseline's (the bar a shipped model must clear)."""
    m, b = scores["mean"], scores["baseline"]
    return m["psnr"] > m[f"{b}_psnr"] and m["ssim"] > m[f"{b}_ssim"]


# --- retraining ----------------------------------------------------------------------------------------------


def train_config(method: str, steps: int | None = None):
    """The TrainConfig a shipped ``method`` model is trained with (``steps`` overrides its step count)."""
    from medgan.config import TrainConfig

    s = {k: v for k, v in TRAIN_SETTINGS[method].items() if k != "tile"}
    if steps is not None:
        s["steps"] = steps
    every = s["steps"]
    return TrainConfig(**s, phantom=None, checkpoint_every=every, sample_every=every, log_every=50,
                       probes=False, tensorboard=False, keep_checkpoints=1, mixed_precision="no", seed=0)


def retrain(method: str, steps: int | None = None, work: Path | None = None, ship: bool = True,
            log=print, held_out_scenes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train ``method`` from scratch with the project's training function, score it held out (on
    ``held_out_scenes``, default every scene) and, when it clears the bar (``beats_baseline``) and
    ``ship``, write its weights and manifest entry. Returns the entry."""
    import torch

    from medgan.checkpoint import file_sha256, latest_checkpoint
    from medgan.train import train

    if method not in METHODS:
        raise NoShippedModel(f"no shipped model for method {method!r} (shipped: {', '.join(METHODS)})")
    torch.set_num_threads(1)  # a shared CPU; also the measured CPU time below is one core's
    work = Path(work or tempfile.mkdtemp(prefix=f"medgan-{method}-"))
    cfg = train_config(method, steps)
    data = write_training_folder(work / "data", TRAIN_SETTINGS[method]["tile"])
    log(f"{method}: {data['tiles']} training tiles in {work / 'data'}; training {cfg.steps} steps")
    cpu0, wall0 = time.process_time(), time.time()
    result = train(cfg, work / "run", work / "data")
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    if result.get("status") != "completed":
        raise DataError(f"{method} training ended {result.get('status')}: {result.get('reason')}")
    export = latest_checkpoint(work / "run") / ("dce.safetensors" if method == "zerodce" else "generator.safetensors")
    net = _builder(method)(cfg)
    from safetensors.torch import load_model

    load_model(net, str(export))
    net.eval()
    scores = (score_zerodce if method == "zerodce" else score_esrgan)(net, held_out_scenes)
    m = scores["mean"]
    base = scores["baseline"]
    log(f"{method}: held out {m['psnr']:.2f} dB / {m['ssim']:.4f} vs {base} {m[base + '_psnr']:.2f} / "
        f"{m[base + '_ssim']:.4f}; below {base} on {scores['below_baseline_psnr']} (PSNR) / "
        f"{scores['below_baseline_ssim']} (SSIM) of {scores['count']}")
    entry = {
        "file": f"{method}.safetensors", "sha256": file_sha256(export), "bytes": export.stat().st_size,
        "parameters": sum(p.numel() for p in net.parameters()),
        "config": cfg.model_dump(mode="json"), "steps": cfg.steps,
        "command": f"{RETRAIN} {method}" + (f" --steps {steps}" if steps is not None else ""),
        "trained_with": "medgan.train.train (what a `train` job runs), torch threads 1, CPU",
        "train_cpu_seconds": round(cpu, 1), "train_wall_seconds": round(wall, 1),
        "torch": torch.__version__, "data": data, "held_out": scores,
        "trained": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if not beats_baseline(scores):
        log(f"{method}: does not beat {base} on held-out pairs: not shipped")
        return {**entry, "shipped": False}
    if ship:
        WEIGHTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(export, WEIGHTS_DIR / entry["file"])
        try:
            manifest = read_manifest()
        except NoShippedModel:
            manifest = {}
        manifest.setdefault("models", {})[method] = entry
        manifest["about"] = ("medgan's shipped learned enhancers; each entry: TrainConfig, command, data, steps, "
                             "sha256, held-out scores (medgan/enhance/models.py)")
        MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        log(f"{method}: wrote {WEIGHTS_DIR / entry['file']} ({entry['bytes']} bytes) and {MANIFEST.name}")
    return {**entry, "shipped": ship}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medgan.enhance.models", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rt = sub.add_parser("retrain", help="train a shipped model again and replace it (if it beats its baseline)")
    rt.add_argument("method", choices=(*METHODS, "all"))
    rt.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped model's)")
    rt.add_argument("--work", type=Path, default=None, help="folder for the tiles and the run (default: a temp dir)")
    rt.add_argument("--no-ship", action="store_true", help="train and score only; leave the shipped files alone")
    sub.add_parser("check", help="check every shipped file's sha256 against the manifest")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            for method in METHODS:
                verify(method)
                print(f"{method}: {_entry(method)['file']} matches the manifest")
            return 0
        for method in METHODS if args.method == "all" else (args.method,):
            work = args.work / method if args.work else None
            retrain(method, args.steps, work, ship=not args.no_ship)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
