"""Evaluation of a synthetic set: distribution quality (FID/KID/PR) and downstream utility.

Entry point `evaluate(...)` (contract in docs/INTERFACES.md). Order of work:
1. read the real set (a folder via `medgan.data`, or the bundled phantom) and the synthetic folder;
2. split the real set once (stratified, seed 0) into train/test; `real_per_class` then thins the TRAIN
   split only, to simulate a low-data regime, while the test split stays fixed for every condition;
3. build the feature extractor (the user's TorchScript Inception, else a CNN trained on the real train
   split) and compute synthetic-vs-real distances plus a real-train-vs-real-test reference (the floor
   the distances can reach at these sample sizes);
4. utility: classifier (and segmenter when masks exist) over seeds, real / real+synthetic / synthetic;
5. write metrics.json, utility.csv, side_by_side.png and utility.png.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgan.callbacks import Callbacks
from medgan.config import EvaluateConfig, PhantomSpec
from medgan.errors import DataError
from medgan.evaluate.distance import distribution_metrics
from medgan.evaluate.features import build_extractor
from medgan.evaluate.utility import (
    LabeledSet,
    limit_per_class,
    run_classification,
    run_segmentation,
    stratified_split,
    utility_rows,
)

SPLIT_SEED = 0  # the real train/test split is the same for every condition and seed
UTILITY_FIELDS = ["task", "condition", "metric", "mean", "sd", "n_seeds", "ci_low", "ci_high", "boot_low", "boot_high"]

__all__ = ["evaluate", "load_synthetic", "load_real"]


def _png_to_array(path: Path, size: int, channels: int, nearest: bool = False) -> np.ndarray:
    """One PNG -> float32 [C, size, size] in [0, 1]; 8- and 16-bit grey or RGB."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    scale = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
    arr = arr.astype(np.float32) / scale
    if arr.ndim == 3:
        arr = arr[..., :3]  # drop alpha
        arr = arr.mean(-1, keepdims=True) if channels == 1 else arr
    else:
        arr = arr[..., None].repeat(channels, -1)  # [H, W, C]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]  # [1, C, H, W]
    if t.shape[-1] != size or t.shape[-2] != size:
        mode = "nearest" if nearest else "bilinear"
        kw = {} if nearest else {"align_corners": False, "antialias": True}
        t = torch.nn.functional.interpolate(t, size=(size, size), mode=mode, **kw)
    return t[0].clamp(0, 1).numpy()


def load_synthetic(folder: Path, size: int, channels: int) -> tuple[LabeledSet, dict]:
    """A generation output folder: `{i:06d}.png` (+ `{i:06d}_mask.png`) listed by `manifest.csv`.

    Without a manifest, every non-mask PNG is read with label 0 (said in the returned info).
    Masks are kept only when every image has one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"synthetic folder not found: {folder}")
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as fh:
            rows = sorted(csv.DictReader(fh), key=lambda r: int(r.get("index") or 0))
        entries = [(folder / r["file"], int(r.get("label") or 0)) for r in rows]
    else:
        entries = [(p, 0) for p in sorted(folder.glob("*.png")) if not p.stem.endswith("_mask")]
    if not entries:
        raise DataError(f"no synthetic images in {folder}")
    missing = [str(p) for p, _ in entries if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} files named in {manifest} are missing, e.g. {missing[0]}")
    images = np.stack([_png_to_array(p, size, channels) for p, _ in entries])  # [N, C, H, W] in [0, 1]
    mask_paths = [p.with_name(p.stem + "_mask.png") for p, _ in entries]
    masks = None
    if all(m.is_file() for m in mask_paths):
        masks = np.stack([_png_to_array(m, size, 1, nearest=True) > 0.5 for m in mask_paths])  # [N, 1, H, W]
        masks = torch.from_numpy(masks.astype(np.float32))
    data = LabeledSet(torch.from_numpy(images * 2.0 - 1.0), torch.tensor([l for _, l in entries]), masks)
    return data, {"source": str(folder), "count": len(data), "manifest": manifest.is_file(), "masks": masks is not None}


def load_real(real_dir: Path | None, phantom: PhantomSpec | None, size: int, channels: int) -> tuple[LabeledSet, dict]:
    """The real set: the folder through `medgan.data.load_dataset`, or the phantom when `real_dir` is None."""
    if real_dir is None:
        if phantom is None:
            raise DataError("evaluate needs a real_dir or a phantom spec")
        from medgan.phantom import make_phantom

        imgs, labels, masks = make_phantom(phantom, size=size)  # [N, H, W] in [0, 1], [N], [N, H, W]
        x = torch.from_numpy(imgs)[:, None].repeat(1, channels, 1, 1) * 2.0 - 1.0  # [N, C, H, W]
        m = torch.from_numpy(masks)[:, None].float()  # [N, 1, H, W]
        return LabeledSet(x, torch.from_numpy(labels), m), {"source": "phantom", "phantom": phantom.model_dump()}
    from medgan.data import load_dataset

    ds = load_dataset(Path(real_dir), size, channels)  # ImageDataset: images [N, C, S, S] in [-1, 1]
    if len(ds) == 0:
        raise DataError(f"no real images in {real_dir}")
    info = {"source": str(real_dir), "class_names": list(ds.class_names), "skipped_files": len(ds.skipped)}
    return LabeledSet(ds.images.float(), ds.labels.long(), ds.masks), info


def _remap_labels(real: LabeledSet, synth: LabeledSet) -> tuple[list[int], LabeledSet, dict]:
    """Map real classes to 0..K-1; synthetic images of classes the real set lacks are dropped."""
    classes = sorted(int(c) for c in torch.unique(real.labels))
    lut = {c: i for i, c in enumerate(classes)}
    real.labels = torch.tensor([lut[int(c)] for c in real.labels])
    keep = np.array([int(c) in lut for c in synth.labels])
    dropped = int((~keep).sum())
    synth = synth.subset(np.flatnonzero(keep))
    synth.labels = torch.tensor([lut[int(c)] for c in synth.labels], dtype=torch.long)
    return classes, synth, {"synthetic_dropped_unknown_class": dropped}


def _quality(extractor, train: LabeledSet, test: LabeledSet, synth: LabeledSet, cfg: EvaluateConfig) -> dict:
    """Synthetic vs all real, plus the real-train vs real-test reference floor."""
    f_train, f_test, f_syn = extractor(train.images), extractor(test.images), extractor(synth.images)  # [N, D]
    f_real = np.concatenate([f_train, f_test])
    kw = {"kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size, "k": cfg.pr_k}
    out = {
        "synthetic_vs_real": distribution_metrics(f_real, f_syn, extractor.name, **kw),
        "reference_real_train_vs_real_test": distribution_metrics(f_train, f_test, extractor.name, **kw),
    }
    per_class = {}
    real_labels = np.concatenate([train.labels.numpy(), test.labels.numpy()])  # rows of f_real
    for c in torch.unique(synth.labels).tolist():
        r, s = f_real[real_labels == c], f_syn[synth.labels.numpy() == c]
        if len(r) >= 2 and len(s) >= 2:
            per_class[str(c)] = distribution_metrics(r, s, extractor.name, **kw)["kid"]
    out["per_class_kid"] = per_class
    return out


def evaluate(
    cfg: EvaluateConfig,
    real_dir: Path | None,
    synthetic_dir: Path,
    out_dir: Path,
    phantom: PhantomSpec | None = None,
    callbacks: Callbacks | None = None,
) -> dict:
    """Quality and utility of the synthetic set in `synthetic_dir`; writes metrics.json, utility.csv, figures.

    Returns the metrics dict (as written to metrics.json); `status` is "stopped" when `should_stop`
    fired, in which case the figures cover the seeds completed so far.
    """
    from medgan.evaluate.report import side_by_side_figure, utility_figure

    cb = callbacks or Callbacks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real, real_info = load_real(real_dir, phantom, cfg.image_size, cfg.channels)
    synth, syn_info = load_synthetic(Path(synthetic_dir), cfg.image_size, cfg.channels)
    classes, synth, drop_info = _remap_labels(real, synth)
    synth = synth.subset(limit_per_class(synth.labels.numpy(), cfg.synthetic_per_class, seed=SPLIT_SEED))
    if cfg.real_train_count is not None:
        # The GAN trained on the first N images: they may only ever be training data.
        if cfg.real_train_count >= len(real):
            raise DataError(f"real_train_count {cfg.real_train_count} leaves no test images of {len(real)}")
        tr_idx, te_idx = np.arange(cfg.real_train_count), np.arange(cfg.real_train_count, len(real))
    else:
        tr_idx, te_idx = stratified_split(real.labels.numpy(), cfg.test_fraction, SPLIT_SEED)
    train, test = real.subset(tr_idx), real.subset(te_idx)
    train = train.subset(limit_per_class(train.labels.numpy(), cfg.real_per_class, seed=SPLIT_SEED))
    if len(train) < 2 or len(test) < 1 or len(synth) < 2:
        raise DataError(f"too few images: real train {len(train)}, real test {len(test)}, synthetic {len(synth)}")

    seg = cfg.segmentation and real.masks is not None
    n_cls = 3 if len(synth) else 1
    total = 2 + cfg.seeds * n_cls + (cfg.seeds * 2 if seg else 0)
    step = [0]

    def tick(phase: str, stats: dict[str, Any]) -> None:
        step[0] += 1
        cb.on_progress(step[0], total, {"phase": phase, **stats})

    metrics: dict[str, Any] = {"status": "completed", "config": cfg.model_dump()}
    metrics["data"] = {
        "real": real_info, "synthetic": syn_info, **drop_info, "classes": classes,
        "real_train": len(train), "real_test": len(test), "synthetic_used": len(synth),
        "split": (f"first {cfg.real_train_count} real images train, the rest test"
                  if cfg.real_train_count is not None else
                  f"stratified, test_fraction={cfg.test_fraction}, seed={SPLIT_SEED}") + "; real_per_class thins train only",
    }
    extractor = build_extractor(cfg.feature_weights, train.images, train.labels, cfg.epochs, seed=0)
    metrics["extractor"] = extractor.describe()
    tick("features", {"extractor": extractor.name})
    metrics["quality"] = _quality(extractor, train, test, synth, cfg)
    tick("quality", {"kid": metrics["quality"]["synthetic_vs_real"]["kid"]["kid_mean"]})

    common = {"seeds": cfg.seeds, "epochs": cfg.epochs, "batch": cfg.batch_size, "bootstrap": cfg.bootstrap,
              "tick": tick, "should_stop": cb.should_stop}
    utility = {"classification": run_classification(train, test, synth, len(classes), **common)}
    if seg and not utility["classification"]["stopped"]:
        utility["segmentation"] = run_segmentation(train, test, synth, **common)
    metrics["utility"] = utility
    if any(u["stopped"] for u in utility.values()):
        metrics["status"] = "stopped"

    rows = [r for u in utility.values() for r in utility_rows(u)]
    with open(out_dir / "utility.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=UTILITY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    side_by_side_figure(real.images, synth.images, out_dir / "side_by_side.png", real.labels, synth.labels)
    utility_figure(utility, out_dir / "utility.png")
    metrics["figures"] = {"side_by_side": "side_by_side.png", "utility": "utility.png"}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    return metrics
