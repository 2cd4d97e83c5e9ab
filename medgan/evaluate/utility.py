"""Utility of a synthetic set: does adding it help a downstream network on held-out REAL images?

Conditions (each trained over `cfg.seeds` seeds, always tested on the same held-out real split):
  real            the real training split only (the baseline)
  real+synthetic  real training split plus the synthetic set
  synthetic       the synthetic set only (can the generator replace the data?)

Networks come from MONAI, kept small so that a run fits 2 CPU cores:
- classifier: `monai.networks.nets.Classifier`, channels (8, 16, 32), strides 2 (about 25 k parameters at
  32 px). DenseNet121 would take minutes per epoch on CPU and the phantom task does not need it.
- segmenter: `monai.networks.nets.UNet`, channels (8, 16, 32), one residual unit, batch norm, Dice + BCE loss.

Intervals: `ci_low/ci_high` are Student-t 95% intervals over seeds (training randomness); `boot_low/boot_high`
are 95% percentile-bootstrap intervals over the test images of the seed-averaged metric (test-sample
randomness). Differences to the baseline (`delta`) are paired by seed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from medgan.errors import DataError
from medgan.evaluate.downstream import auc_binary, classification_metrics, dice_per_image  # noqa: F401
from medgan.evaluate.sets import LabeledSet, concat, random_per_class, stratified_split  # noqa: F401
from medgan.evaluate.stats import bootstrap_intervals, finite_or_none, t_interval

CONDITIONS = ("real", "real+synthetic", "synthetic")


limit_per_class = random_per_class


# ---------------------------------------------------------------- training


def _batches(n: int, batch: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch):
        if n - i >= 2 or n == 1:  # a 1-image batch breaks batch norm's statistics
            yield order[i : i + batch]


def _fit(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int, epochs: int, batch: int,
         gen: torch.Generator, loss_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.nn.Module:
    """`epochs` passes over n items in seeded random batches; `loss_of(indices)` gives a batch's loss."""
    for _ in range(epochs):
        model.train()
        for idx in _batches(n, batch, gen):
            loss = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def train_classifier(data: LabeledSet, num_classes: int, epochs: int, seed: int, batch: int = 32) -> torch.nn.Module:
    """A small MONAI Classifier trained with Adam and random flips; seeded (init and batch order)."""
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    _, c, h, w = data.images.shape
    model = Classifier(in_shape=(c, h, w), classes=num_classes, channels=(8, 16, 32), strides=(2, 2, 2))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x, y = data.images[idx], data.labels[idx]  # [B, C, H, W], [B]
        if torch.rand((), generator=gen) < 0.5:  # left-right flip: anatomy is roughly symmetric
            x = x.flip(3)
        return F.cross_entropy(model(x), y)

    return _fit(model, opt, len(data), epochs, batch, gen, loss_of)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> np.ndarray:
    """Softmax probabilities [N, K]."""
    out = [torch.softmax(model(images[i : i + batch]), 1) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def train_segmenter(data: LabeledSet, epochs: int, seed: int, batch: int = 32) -> torch.nn.Module:
    """A small MONAI UNet trained on image+mask pairs with Dice + BCE; seeded."""
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet

    if data.masks is None:
        raise DataError("segmentation needs masks")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = UNet(spatial_dims=2, in_channels=data.images.shape[1], out_channels=1,
                 channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm="batch")
    dice = DiceLoss(sigmoid=True, batch=True)  # batch-level Dice: healthy images have empty masks
    # batch norm + lr 5e-3: on the 32 px phantom this reached Dice ~0.46 in 30 epochs, where MONAI's default
    # instance norm stayed near 0.1 (small lesions, 1.6% of a lesion image's pixels)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x, m = data.images[idx], data.masks[idx]  # [B, C, H, W], [B, 1, H, W]
        logits = model(x)  # [B, 1, H, W]
        return dice(logits, m) + F.binary_cross_entropy_with_logits(logits, m)

    return _fit(model, opt, len(data), epochs, batch, gen, loss_of)


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Binary masks [N, H, W] (logit > 0)."""
    out = [model(images[i : i + batch])[:, 0] > 0 for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


# ---------------------------------------------------------------- summaries


def summarise(per_seed: dict[str, list[dict[str, float]]], boot: dict[str, dict[str, dict]]) -> dict:
    """{condition: {metric: t-interval + bootstrap}} plus paired deltas of each condition against 'real'."""
    out: dict = {}
    for cond, runs in per_seed.items():
        names = runs[0].keys() if runs else []
        out[cond] = {m: {**t_interval([r[m] for r in runs]), **boot.get(cond, {}).get(m, {})} for m in names}
    base = per_seed.get("real") or []
    deltas: dict = {}
    for cond, runs in per_seed.items():
        if cond == "real" or not base or not runs:
            continue
        n = min(len(base), len(runs))
        deltas[f"{cond} - real"] = {
            m: t_interval([runs[i][m] - base[i][m] for i in range(n)]) for m in runs[0].keys()
        }
    return {"conditions": out, "delta": deltas}


def _clean(d):
    """Recursively map NaN/inf to None so the result is valid JSON."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    if isinstance(d, float):
        return finite_or_none(d)
    return d


# ---------------------------------------------------------------- experiments

Tick = Callable[[str, dict], None]  # called after every trained network: (phase, stats)


def _conditions(train_real: LabeledSet, synthetic: LabeledSet | None, need_masks: bool) -> dict[str, LabeledSet]:
    sets = {"real": train_real}
    if synthetic is not None and len(synthetic) and (not need_masks or synthetic.masks is not None):
        sets["real+synthetic"] = concat(train_real, synthetic)
        sets["synthetic"] = synthetic
    return sets


def run_classification(
    train_real: LabeledSet,
    test_real: LabeledSet,
    synthetic: LabeledSet | None,
    num_classes: int,
    seeds: int,
    epochs: int,
    batch: int = 32,
    bootstrap: int = 1000,
    tick: Tick | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Train a classifier per (seed, condition) and score it on `test_real`; see the module docstring.

    `should_stop` is checked between seeds, so every completed seed has all conditions (pairing holds).
    """
    if len(test_real) == 0:
        raise DataError("no real test images for the utility evaluation")
    sets = _conditions(train_real, synthetic, need_masks=False)
    y = test_real.labels.numpy()
    probs: dict[str, list[np.ndarray]] = {c: [] for c in sets}
    per_seed: dict[str, list[dict]] = {c: [] for c in sets}
    stopped = False
    for seed in range(seeds):
        if should_stop is not None and should_stop():
            stopped = True
            break
        for cond, data in sets.items():
            model = train_classifier(data, num_classes, epochs, seed, batch)
            p = predict_proba(model, test_real.images)  # [N_test, K]
            probs[cond].append(p)
            per_seed[cond].append(classification_metrics(y, p))
            if tick is not None:
                tick("classification", {"condition": cond, "seed": seed, **per_seed[cond][-1]})

    def stat_for(plist):
        # seed-averaged metrics on one bootstrap resample of the test images
        def stat(idx):
            runs = [classification_metrics(y[idx], p[idx]) for p in plist]
            return {m: float(np.nanmean([r[m] for r in runs])) for m in runs[0]}
        return stat

    boot = {c: bootstrap_intervals(stat_for(pl), len(y), bootstrap, seed=1) for c, pl in probs.items() if pl}
    return _clean({
        "task": "classification",
        "network": "monai Classifier(channels=(8,16,32), strides=(2,2,2))",
        "num_classes": num_classes,
        "test_images": len(test_real),
        "train_images": {c: len(d) for c, d in sets.items()},
        "epochs": epochs,
        "seeds_completed": len(per_seed["real"]),
        "stopped": stopped,
        "interval_methods": {
            "ci": "95% Student-t over seeds",
            "boot": f"95% percentile bootstrap over test images ({bootstrap} resamples) of the seed mean",
        },
        "per_seed": per_seed,
        **summarise(per_seed, boot),
    })


def run_segmentation(
    train_real: LabeledSet,
    test_real: LabeledSet,
    synthetic: LabeledSet | None,
    seeds: int,
    epochs: int,
    batch: int = 32,
    bootstrap: int = 1000,
    tick: Tick | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Segmenter per (seed, condition); Dice on the real test images that contain a lesion.

    `dice` averages per-image Dice over lesion images; `dice_global` pools all pixels of all test images
    (so false positives on healthy images count); `empty_correct` is the share of lesion-free test images
    on which nothing was segmented.
    """
    if train_real.masks is None or test_real.masks is None:
        raise DataError("segmentation needs real masks")
    sets = _conditions(train_real, synthetic, need_masks=True)
    sets.pop("synthetic", None)  # the brief: real vs real+synthetic
    truth = test_real.masks[:, 0].numpy() > 0.5  # [N, H, W]
    has_lesion = truth.reshape(len(truth), -1).any(1)  # [N]
    preds: dict[str, list[np.ndarray]] = {c: [] for c in sets}
    per_seed: dict[str, list[dict]] = {c: [] for c in sets}

    def metrics(pred, tr, lesion):
        d = dice_per_image(pred, tr)
        inter, total = (pred & tr).sum(), pred.sum() + tr.sum()
        return {
            "dice": float(d[lesion].mean()) if lesion.any() else float("nan"),
            "dice_global": float(2 * inter / total) if total else float("nan"),
            "empty_correct": float((~pred[~lesion].reshape((~lesion).sum(), -1).any(1)).mean())
            if (~lesion).any() else float("nan"),
        }

    stopped = False
    for seed in range(seeds):
        if should_stop is not None and should_stop():
            stopped = True
            break
        for cond, data in sets.items():
            # batches of at most 16: the segmenter needs more steps per epoch than the classifier
            model = train_segmenter(data, epochs, seed, min(batch, 16))
            pred = predict_masks(model, test_real.images)  # [N, H, W] bool
            preds[cond].append(pred)
            per_seed[cond].append(metrics(pred, truth, has_lesion))
            if tick is not None:
                tick("segmentation", {"condition": cond, "seed": seed, **per_seed[cond][-1]})

    def stat_for(plist):
        def stat(idx):
            runs = [metrics(p[idx], truth[idx], has_lesion[idx]) for p in plist]
            return {m: float(np.nanmean([r[m] for r in runs])) for m in runs[0]}
        return stat

    # per-image Dice is cheap, but 1000 resamples of full masks is not: cap the segmentation bootstrap
    boot = {c: bootstrap_intervals(stat_for(pl), len(truth), min(bootstrap, 300), seed=2) for c, pl in preds.items() if pl}
    return _clean({
        "task": "segmentation",
        "network": "monai UNet(channels=(8,16,32), strides=(2,2), num_res_units=1, norm=batch), Dice+BCE",
        "test_images": len(test_real),
        "test_images_with_lesion": int(has_lesion.sum()),
        "train_images": {c: len(d) for c, d in sets.items()},
        "epochs": epochs,
        "seeds_completed": len(per_seed["real"]),
        "stopped": stopped,
        "interval_methods": {
            "ci": "95% Student-t over seeds",
            "boot": f"95% percentile bootstrap over test images ({min(bootstrap, 300)} resamples) of the seed mean",
        },
        "per_seed": per_seed,
        **summarise(per_seed, boot),
    })


def utility_rows(result: dict) -> list[dict]:
    """Flatten a run_* result into CSV rows: task, condition, metric, mean, sd, n, ci_*, boot_*."""
    rows = []
    blocks = [(c, v) for c, v in result.get("conditions", {}).items()]
    blocks += [(c, v) for c, v in result.get("delta", {}).items()]
    for cond, metrics in blocks:
        for metric, s in metrics.items():
            rows.append({
                "task": result["task"], "condition": cond, "metric": metric,
                "mean": s.get("mean"), "sd": s.get("sd"), "n_seeds": s.get("n"),
                "ci_low": s.get("ci_low"), "ci_high": s.get("ci_high"),
                "boot_low": s.get("boot_low"), "boot_high": s.get("boot_high"),
            })
    return rows
