"""Evaluation of a synthetic set: sanity gates, distribution quality (FID/KID/PR) and downstream utility.

Entry point `evaluate(...)` (contract in docs/INTERFACES.md). Order of work:
1. read the real set (a folder via `medgan.data`, or the bundled phantom) and the synthetic folder;
2. split the real set once (seed 0) into three disjoint parts:
   - the POOL: the GAN's training images when known (`real_train_count`: the first N), else a stratified
     share; `real_per_class` thins it, and a stratified `val_fraction` of it becomes the real validation
     split of the learning curves; the rest trains the downstream arms;
   - the FEATURE split (`feature_fraction` of the rest): trains the proxy feature extractor and gives the
     sanity judges their held-out references (images the GAN never saw);
   - the TEST split: the rest; every arm is scored on it, and it is the distribution metrics' reference
     pool, which therefore never holds a GAN training image;
3. sanity gates of the synthetic set (`medgan.evaluate.sanity`), judges trained on the pool;
   `gates="refuse"` stops here when one fails, `"flag"` goes on and says so in every verdict;
4. distribution metrics in three spaces (trained proxy CNN, pixel PCA, a fixed random CNN): synthetic vs
   one half of the test split beside the other half vs the same half at equal n (the real-vs-real floor);
5. utility (`medgan.evaluate.utility`): every arm at the same optimiser steps, paired comparisons;
6. write metrics.json, utility.csv and the figures (side by side, learning curves, utility).
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
from medgan.evaluate.features import PixelPCA, RandomCNN, build_extractor
from medgan.evaluate.sets import disjoint
from medgan.evaluate.utility import (
    UTILITY_FIELDS,
    Budget,
    LabeledSet,
    limit_per_class,
    run_task,
    split_draws,
    stratified_split,
    utility_rows,
)

SPLIT_SEED = 0  # the real splits are the same for every arm and seed

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


def load_synthetic(folder: Path, size: int, channels: int, read=None) -> tuple[LabeledSet, dict]:
    """A synthetic set from any generator.

    - a generate job's output: `{i:06d}.png` (+ `{i:06d}_mask.png`) listed by `manifest.csv` (file, label);
    - any other folder through the one reader, `medgan.data.load_dataset`: labels from `labels.csv` or
      class sub-folders (or label 0 for a flat folder), masks from `masks/<stem>.png` or `<stem>_mask.png`
      beside the images. `class_names` in the info lets the caller map sub-folder names onto real classes.
    Masks are kept only when every image has one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"synthetic folder not found: {folder}")
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        from medgan.data import load_dataset

        ds = load_dataset(folder, size, channels, policy=read)  # images [N, C, S, S] in [-1, 1]
        data = LabeledSet(ds.images.float(), ds.labels.long(), ds.masks)
        return data, {"source": str(folder), "count": len(data), "manifest": False, "masks": ds.masks is not None,
                      "class_names": list(ds.class_names), "skipped_files": len(ds.skipped)}
    with open(manifest, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r.get("index") or 0))
    entries = [(folder / r["file"], int(r.get("label") or 0)) for r in rows]
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
    return data, {"source": str(folder), "count": len(data), "manifest": True, "masks": masks is not None}


def load_real(real_dir: Path | None, phantom: PhantomSpec | None, size: int, channels: int) -> tuple[LabeledSet, dict]:
    """The real set: the folder through `medgan.data.load_dataset`, or the phantom when `real_dir` is None."""
    if real_dir is None:
        if phantom is None:
            raise DataError("evaluate needs a real_dir or a phantom spec")
        from medgan.phantom import make_phantom

        imgs, labels, masks = make_phantom(phantom, size=size)  # [N, H, W] in [0, 1], [N], [N, H, W]
        x = torch.from_numpy(imgs)[:, None].repeat(1, channels, 1, 1) * 2.0 - 1.0  # [N, C, H, W]
        m = torch.from_numpy(masks)[:, None].float()  # [N, 1, H, W]
        from medgan.phantom import CLASS_NAMES

        return LabeledSet(x, torch.from_numpy(labels), m), {"source": "phantom", "phantom": phantom.model_dump(),
                                                            "class_names": list(CLASS_NAMES)}
    from medgan.data import load_dataset

    ds = load_dataset(Path(real_dir), size, channels)  # ImageDataset: images [N, C, S, S] in [-1, 1]
    if len(ds) == 0:
        raise DataError(f"no real images in {real_dir}")
    info = {"source": str(real_dir), "class_names": list(ds.class_names), "skipped_files": len(ds.skipped)}
    return LabeledSet(ds.images.float(), ds.labels.long(), ds.masks), info


def _by_name(synth: LabeledSet, syn_names: list[str] | None, real_names: list[str] | None) -> LabeledSet:
    """Synthetic class sub-folders named like real classes take the real class's label."""
    if not syn_names or not real_names or syn_names == real_names[: len(syn_names)]:
        return synth
    lut = {i: real_names.index(n) for i, n in enumerate(syn_names) if n in real_names}
    if len(lut) < len(syn_names):
        unknown = [n for n in syn_names if n not in real_names]
        raise DataError(f"synthetic classes {unknown} are not real classes ({', '.join(real_names)})")
    return LabeledSet(synth.images, torch.tensor([lut[int(c)] for c in synth.labels]), synth.masks)


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


def _splits(cfg: EvaluateConfig, real: LabeledSet) -> tuple[dict[str, np.ndarray], str]:
    """Index arrays of the real set: gan_pool, train, val, feature, test (disjoint; see the module doc)."""
    labels = real.labels.numpy()
    if cfg.real_train_count is not None:
        if cfg.real_train_count >= len(real):
            raise DataError(f"real_train_count {cfg.real_train_count} leaves no test images of {len(real)}")
        pool, held = np.arange(cfg.real_train_count), np.arange(cfg.real_train_count, len(real))
        rule = f"the first {cfg.real_train_count} real images are the GAN's training images (the pool)"
    else:
        pool, held = stratified_split(labels, cfg.test_fraction, SPLIT_SEED)
        rule = (f"GAN training images unknown: a stratified {1 - cfg.test_fraction:g} of the real images is the "
                "pool (treated as the GAN's training images)")
    h_rest, h_feat = stratified_split(labels[held], cfg.feature_fraction, SPLIT_SEED + 1)
    feature, test = held[h_feat], held[h_rest]
    thinned = pool[limit_per_class(labels[pool], cfg.real_per_class, seed=SPLIT_SEED)]
    t_rest, t_val = stratified_split(labels[thinned], cfg.val_fraction, SPLIT_SEED + 2)
    parts = {"gan_pool": pool, "train": thinned[t_rest], "val": thinned[t_val], "feature": feature, "test": test}
    disjoint(train=parts["train"], val=parts["val"], feature=feature, test=test)
    disjoint(gan_pool=pool, feature=feature, test=test)
    rule += (f"; real_per_class={cfg.real_per_class} thins the pool, {cfg.val_fraction:g} of it is the validation "
             f"split; of the other real images {cfg.feature_fraction:g} train the feature extractor and the rest "
             "are the test split (the distribution metrics' reference pool)")
    return parts, rule


def _quality(spaces: list, test: LabeledSet, synth: LabeledSet, cfg: EvaluateConfig, proxy: bool) -> dict:
    """Per feature space: synthetic vs test half A, and test half B vs half A at equal n (the floor)."""
    rest, half = stratified_split(test.labels.numpy(), 0.5, SPLIT_SEED + 3)
    ref, other = test.subset(rest), test.subset(half)
    n = min(len(other), len(synth))
    syn_eq = synth.subset(np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(synth))[:n]))
    kw = {"kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size, "k": cfg.pr_k}
    out: dict = {"proxy": proxy, "n_reference": len(ref), "n_compared": n,
                 "rule": "reference pool: half of the real test split (never a GAN training image); floor: the "
                         "other half against it at the same n as the synthetic side",
                 "spaces": {}}
    for space in spaces:
        f_ref, f_other, f_syn = space(ref.images), space(other.images[:n]), space(syn_eq.images)  # [N, D]
        out["spaces"][space.name] = {
            "describe": space.describe(),
            "synthetic_vs_real": distribution_metrics(f_ref, f_syn, space.name, **kw),
            "real_vs_real_floor": distribution_metrics(f_ref, f_other, space.name, **kw),
        }
    if n < 2048:
        out["flag"] = (f"n = {n} < 2048: FID is biased at this size (compare it only with the real-vs-real floor "
                       "at the same n; KID is the better figure here)")
    if proxy:
        out["label"] = ("PROXY: no local Inception/RadImageNet weights file was named (feature_weights); these "
                        "figures are not comparable with published FIDs")
    return out


def _gates(cfg: EvaluateConfig, real: LabeledSet, parts: dict, synth: LabeledSet) -> dict:
    """Sanity gates of the synthetic set; judges trained on the pool's training split, referenced on the
    feature split (images the GAN never saw); copies are looked for among the GAN's training images."""
    from medgan.evaluate import sanity

    train, held = real.subset(parts["train"]), real.subset(parts["feature"])
    judges = sanity.train_judges(train.images, train.labels, train.masks, held_out=held,
                                 copy_pool=real.images[torch.as_tensor(parts["gan_pool"])],
                                 steps=cfg.judge_steps, seed=0)
    result = sanity.check(judges, synth.images, synth.labels, synth.masks)
    result["line"] = sanity.summary_line(result)
    return result


def _figures(out_dir: Path, real: LabeledSet, synth: LabeledSet, utility: dict) -> dict:
    from medgan.evaluate.report import learning_curve_figure, side_by_side_figure, utility_figure

    figs = {"side_by_side": "side_by_side.png"}
    side_by_side_figure(real.images, synth.images, out_dir / figs["side_by_side"], real.labels, synth.labels)
    if utility:
        figs["learning_curves"] = "learning_curves.png"
        learning_curve_figure(utility, out_dir / figs["learning_curves"])
        if any(u.get("comparisons") for u in utility.values()):
            figs["utility"] = "utility.png"
            utility_figure(utility, out_dir / figs["utility"])
    return figs


def evaluate(
    cfg: EvaluateConfig,
    real_dir: Path | None,
    synthetic_dir: Path,
    out_dir: Path,
    phantom: PhantomSpec | None = None,
    callbacks: Callbacks | None = None,
) -> dict:
    """Gates, quality and utility of the synthetic set in `synthetic_dir`; writes metrics.json, utility.csv
    and figures into `out_dir`.

    Returns the metrics dict (as written to metrics.json). `status`: "completed"; "stopped" when
    `should_stop` fired (the figures cover the seeds completed so far); "refused" when a sanity gate
    failed under `gates="refuse"` (then DataError is raised after metrics.json is written).
    """
    cb = callbacks or Callbacks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real, real_info = load_real(real_dir, phantom, cfg.image_size, cfg.channels)
    synth, syn_info = load_synthetic(Path(synthetic_dir), cfg.image_size, cfg.channels, cfg.read)
    synth = _by_name(synth, syn_info.get("class_names"), real_info.get("class_names"))
    classes, synth, drop_info = _remap_labels(real, synth)
    synth = synth.subset(limit_per_class(synth.labels.numpy(), cfg.synthetic_per_class, seed=SPLIT_SEED))
    parts, split_rule = _splits(cfg, real)
    train, val, test = (real.subset(parts[k]) for k in ("train", "val", "test"))
    feature = real.subset(parts["feature"])
    if len(train) < 2 or len(test) < 2 or len(synth) < 2 or len(feature) < 2:
        raise DataError(f"too few images: real train {len(train)}, real test {len(test)}, feature split "
                        f"{len(feature)}, synthetic {len(synth)}")
    seg = cfg.segmentation and real.masks is not None
    arms = tuple(cfg.arms)
    n_train = cfg.seeds * (len(arms) + (1 if "real" not in arms else 0))
    total = 3 + n_train * (2 if seg else 1)
    step = [0]

    def tick(phase: str, stats: dict[str, Any]) -> None:
        step[0] += 1
        cb.on_progress(step[0], total, {"phase": phase, **stats})

    metrics: dict[str, Any] = {"status": "completed", "config": cfg.model_dump(mode="json")}
    metrics["data"] = {
        "real": real_info, "synthetic": syn_info, **drop_info, "classes": classes,
        "real_gan_pool": len(parts["gan_pool"]), "real_train": len(train), "real_val": len(val),
        "real_feature": len(feature), "real_test": len(test), "synthetic_used": len(synth), "split": split_rule,
    }
    if cfg.gates != "off":
        metrics["gates"] = _gates(cfg, real, parts, synth)
        tick("gates", {"passed": metrics["gates"]["passed"]})
        if not metrics["gates"]["passed"] and cfg.gates == "refuse":
            metrics["status"] = "refused"
            _write(out_dir, metrics, [])
            raise DataError(f"the synthetic set failed its sanity gates ({', '.join(metrics['gates']['failed'])}): "
                            "refusing the utility study (gates=refuse); see metrics.json")
    extractor = build_extractor(cfg.feature_weights, feature.images, feature.labels, cfg.epochs, seed=0)
    metrics["extractor"] = {**extractor.describe(), "trained_on": "feature split (real images the GAN never saw)"
                            if not cfg.feature_weights else "(user weights)"}
    tick("features", {"extractor": extractor.name})
    spaces = [extractor, PixelPCA(feature.images), RandomCNN(cfg.channels, seed=0)]
    metrics["quality"] = _quality(spaces, test, synth, cfg, proxy=not cfg.feature_weights)
    tick("quality", {})

    budget_of = {
        "classification": Budget(steps=cfg.steps, batch=cfg.batch_size, eval_every=cfg.eval_every,
                                 select="best" if cfg.stopping == "early" else "last",
                                 patience=cfg.patience if cfg.stopping == "early" else None),
        "segmentation": Budget(steps=cfg.seg_steps, batch=cfg.seg_batch_size, eval_every=cfg.eval_every,
                               select="best" if cfg.stopping == "early" else "last",
                               patience=cfg.patience if cfg.stopping == "early" else None),
    }
    draws = split_draws(synth, cfg.draws, seed=SPLIT_SEED)
    common = {"seeds": cfg.seeds, "ratio": cfg.synthetic_share, "arms": arms, "bootstrap": cfg.bootstrap,
              "alpha": cfg.alpha, "tick": tick, "should_stop": cb.should_stop}
    utility: dict[str, Any] = {"classification": run_task(
        "classification", train, val, test, draws, num_classes=len(classes), budget=budget_of["classification"],
        primary=cfg.primary_classification, **common)}
    if seg and not utility["classification"]["stopped"]:
        utility["segmentation"] = run_task("segmentation", train, val, test, draws, num_classes=len(classes),
                                           budget=budget_of["segmentation"], primary=cfg.primary_segmentation,
                                           **common)
    gate_flag = None
    if metrics.get("gates") and not metrics["gates"]["passed"]:
        gate_flag = f"the synthetic set FAILED sanity gates: {', '.join(metrics['gates']['failed'])}"
        for u in utility.values():
            for c in [*u.get("comparisons", {}).values()] + ([u["comparison_vs_aug"]] if u.get("comparison_vs_aug")
                                                             else []):
                c["line"] += f" [{gate_flag}]"
    metrics["utility"] = utility
    metrics["replication"] = {
        "downstream_seeds": cfg.seeds,
        "synthetic_draws": cfg.draws,
        "replicated": ["downstream network initialisation, batch order and augmentation (seeds)"]
                      + ([f"generator sampling ({cfg.draws} disjoint synthetic draws, seed s uses draw s mod "
                          f"{cfg.draws})"] if cfg.draws > 1 else []),
        "not_replicated": ["GAN training (one synthetic set from one GAN run; a sweep over GAN seeds replicates it)",
                           "the real splits (one fixed split, seed 0)"]
                          + ([] if cfg.draws > 1 else ["generator sampling (one synthetic draw)"]),
    }
    metrics["verdicts"] = [c["line"] for u in utility.values()
                           for c in [*u.get("comparisons", {}).values()] + ([u["comparison_vs_aug"]]
                                                                          if u.get("comparison_vs_aug") else [])]
    if gate_flag:
        metrics["flag"] = gate_flag
    if any(u["stopped"] for u in utility.values()):
        metrics["status"] = "stopped"
    rows = [r for u in utility.values() for r in utility_rows(u)]
    metrics["figures"] = _figures(out_dir, real, synth, utility)
    _write(out_dir, metrics, rows)
    return metrics


def _write(out_dir: Path, metrics: dict, rows: list[dict]) -> None:
    with open(out_dir / "utility.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=UTILITY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2, allow_nan=False))


def _json_safe(d):
    from medgan.evaluate.utility import _clean

    return _clean(d)
