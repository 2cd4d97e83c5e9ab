"""Utility of a synthetic set: does adding it make a downstream network better on held-out REAL images?

An instrument, not a leaderboard. Every arm of the study trains the same network for the SAME number of
optimiser steps (`Budget`, from `medgan.evaluate.downstream`), so an arm with more images cannot win by
getting more gradient steps; the stopping rule, the steps and the epochs each part of an arm saw are
reported per arm, with its learning curve on a validation split carved from the REAL training images.

Arms (`ARMS`); "synthetic share" r is the configured share of each batch drawn from the second part:
  real                 real training images only: the baseline every other arm is compared with
  real+aug             the baseline with classical augmentation (flip, affine, elastic, intensity; MONAI Warp)
  real+synthetic       batches of (1 - r) real and r synthetic images
  real+aug+synthetic   the same, with classical augmentation (the comparison the field cares about)
  real-duplicated      batches of (1 - r) real and r real again: same steps, no new information (a control)
  synthetic            synthetic images only, tested on real ones ("train on synthetic, test on real")

Each arm is trained over `seeds` downstream seeds (network initialisation, batch order, augmentation). When
the synthetic set is cut into several independent draws (`draws` > 1), seed s uses draw s mod draws, so
the generator's sampling randomness is replicated too; GAN training randomness is replicated only when
several synthetic sets from independent GAN runs are supplied (`replication` in the result says which).

Comparisons with the baseline are paired on the same test images and seeds: the pre-declared primary
endpoint (balanced accuracy; per-image Dice on the test images that hold a lesion) by a paired bootstrap
over test images and seeds, Holm-adjusted over the arms of a task; AUC by DeLong's test and accuracy by
McNemar's on the seed-averaged predictions; Wilson intervals for accuracies; Cohen's d_z as effect size.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from medgan.errors import DataError
from medgan.evaluate.downstream import (  # noqa: F401  (re-exported: the study's metrics live there)
    Budget,
    FitResult,
    auc_binary,
    classification_metrics,
    dice_per_image,
    predict_masks,
    predict_proba,
    segmentation_metrics,
    train_classifier,
    train_segmenter,
)
from medgan.evaluate.sets import LabeledSet, concat, random_per_class, stratified_split  # noqa: F401
from medgan.evaluate.stats import (
    delong,
    finite_or_none,
    holm,
    mcnemar,
    paired_bootstrap,
    paired_effect_size,
    t_interval,
    verdict,
    wilson_interval,
)

BASELINE = "real"
ARMS = ("real", "real+aug", "real+synthetic", "real+aug+synthetic", "real-duplicated", "synthetic")
PRIMARY = {"classification": "balanced_accuracy", "segmentation": "dice"}
CLASSIFIER = "monai Classifier(channels=(8,16,32), strides=(2,2,2)); cross-entropy, Adam 2e-3"
SEGMENTER = "monai UNet(channels=(8,16,32), strides=(2,2), num_res_units=1, norm=batch); Dice+BCE, Adam 5e-3"

limit_per_class = random_per_class

Tick = Callable[[str, dict], None]  # called after every trained network: (phase, stats)


# ---------------------------------------------------------------- arms


def arm_parts(arm: str, real: LabeledSet, synthetic: LabeledSet | None,
              ratio: float) -> tuple[list[tuple[LabeledSet, float]], bool] | None:
    """(parts with their batch shares, classical augmentation on?) of an arm; None if it cannot run."""
    if arm == "real":
        return [(real, 1.0)], False
    if arm == "real+aug":
        return [(real, 1.0)], True
    if arm == "real-duplicated":
        # a second copy of the same images as its own part: the batch mix of a synthetic arm, no new data
        return [(real, 1.0 - ratio), (real, ratio)], False
    if synthetic is None or len(synthetic) == 0:
        return None
    if arm == "real+synthetic":
        return [(real, 1.0 - ratio), (synthetic, ratio)], False
    if arm == "real+aug+synthetic":
        return [(real, 1.0 - ratio), (synthetic, ratio)], True
    if arm == "synthetic":
        return [(synthetic, 1.0)], False
    raise DataError(f"unknown utility arm {arm!r}; choose from {', '.join(ARMS)}")


def _exposure(parts: list[tuple[LabeledSet, float]], budget: Budget, steps_run: int) -> list[dict]:
    """Images and epochs each part of an arm saw in `steps_run` steps (epochs = draws / part size)."""
    total = sum(w for _, w in parts)
    out = []
    for i, (s, w) in enumerate(parts):
        drawn = steps_run * budget.batch * w / total
        out.append({"part": i, "images": len(s), "share": w / total, "epochs": drawn / max(len(s), 1)})
    return out


# ---------------------------------------------------------------- per-image scores and their reductions


def _balanced_reduce(labels: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Balanced accuracy per seed from correctness [S, N'] of the test images idx [N']."""
    def reduce(correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
        y = labels[idx]
        per_class = [correct[:, y == c].mean(1) for c in np.unique(y)]
        return np.mean(per_class, axis=0)  # [S]
    return reduce


def _mean_reduce(scores: np.ndarray, _idx: np.ndarray) -> np.ndarray:
    return scores.mean(1)  # [S]


def _clean(d):
    """Recursively map NaN/inf to None so the result is valid JSON."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_clean(v) for v in d]
    if isinstance(d, (float, np.floating)):
        return finite_or_none(float(d))
    if isinstance(d, np.integer):
        return int(d)
    return d


# ---------------------------------------------------------------- one task, every arm


def _draw_for(seed: int, draws: list[LabeledSet] | None) -> LabeledSet | None:
    return draws[seed % len(draws)] if draws else None


def _train(task: str, parts, augment: bool, budget: Budget, seed: int, val: LabeledSet,
           num_classes: int) -> FitResult:
    if task == "classification":
        return train_classifier(parts, num_classes, budget, seed, val=val, augment=augment)
    return train_segmenter(parts, budget, seed, val=val, augment=augment)


def run_task(
    task: str,
    train: LabeledSet,
    val: LabeledSet,
    test: LabeledSet,
    draws: list[LabeledSet] | None,
    *,
    num_classes: int,
    budget: Budget,
    seeds: int,
    ratio: float = 0.5,
    arms: tuple[str, ...] = ARMS,
    bootstrap: int = 2000,
    alpha: float = 0.05,
    primary: str | None = None,
    custom: dict[str, list[tuple[LabeledSet, float]]] | None = None,
    tick: Tick | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Train every arm over `seeds` seeds on `task` ("classification" | "segmentation") and compare each
    with the real-only baseline on `test`. `draws`: the synthetic set, cut into one or more draws.

    `custom` adds arms given by their parts directly ({name: [(set, share), ...]}, no augmentation): the
    self-validation controls (an oracle, noise, shuffled labels) share one baseline that way.
    `should_stop` is checked between seeds, so every completed seed has every arm (the pairing holds).
    """
    custom = dict(custom or {})
    if task not in PRIMARY:
        raise DataError(f"unknown downstream task {task!r}")
    metric = primary or PRIMARY[task]
    if metric not in ({"dice"} if task == "segmentation" else {"balanced_accuracy", "accuracy"}):
        raise DataError(f"{metric!r} is not a primary endpoint of {task}")
    if len(test) == 0 or len(train) == 0:
        raise DataError("the utility study needs real training and test images")
    seg = task == "segmentation"
    if seg and (train.masks is None or test.masks is None):
        raise DataError("segmentation needs real masks")
    if seg and draws and any(d.masks is None for d in draws):
        draws = None  # a synthetic set without masks has nothing to teach a segmenter
    arms = tuple(a for a in ((BASELINE,) + tuple(a for a in arms if a != BASELINE)))
    runnable = [a for a in arms if arm_parts(a, train, _draw_for(0, draws), ratio) is not None]
    if seg and any(s.masks is None for parts in custom.values() for s, _ in parts):
        raise DataError("a custom segmentation arm has a part without masks")
    runnable += [a for a in custom if a not in runnable]
    y = test.labels.numpy()
    truth = test.masks[:, 0].numpy() > 0.5 if seg else None  # [N, H, W]
    lesion = truth.reshape(len(truth), -1).any(1) if seg else None  # [N]
    if seg and not lesion.any():
        raise DataError("no real test image holds a lesion: per-image Dice is undefined")

    scores: dict[str, list[np.ndarray]] = {a: [] for a in runnable}  # per seed [N] (or [N_lesion])
    probs: dict[str, list[np.ndarray]] = {a: [] for a in runnable}
    per_seed: dict[str, list[dict]] = {a: [] for a in runnable}
    fits: dict[str, list[dict]] = {a: [] for a in runnable}
    stopped = False
    for seed in range(seeds):
        if should_stop is not None and should_stop():
            stopped = True
            break
        synth = _draw_for(seed, draws)
        for arm in runnable:
            parts, augment = (custom[arm], False) if arm in custom else arm_parts(arm, train, synth, ratio)
            fr = _train(task, parts, augment, budget, seed, val, num_classes)
            if seg:
                pred = predict_masks(fr.model, test.images)  # [N, H, W] bool
                m = segmentation_metrics(pred, truth)
                scores[arm].append(dice_per_image(pred, truth)[lesion])
            else:
                p = predict_proba(fr.model, test.images)  # [N, K]
                m = classification_metrics(y, p)
                probs[arm].append(p)
                scores[arm].append((p.argmax(1) == y).astype(np.float64))
            per_seed[arm].append(m)
            fits[arm].append({"seed": seed, **fr.summary(), "parts": _exposure(parts, budget, fr.steps_run),
                              "augment": augment})
            if tick is not None:
                tick(task, {"arm": arm, "seed": seed, metric: m[metric]})

    done = len(per_seed[BASELINE])
    result = {
        "task": task,
        "network": SEGMENTER if seg else CLASSIFIER,
        "primary_endpoint": metric,
        "primary_endpoint_rule": {"dice": "per-image Dice averaged over the test images holding a lesion",
                                  "balanced_accuracy": "mean per-class recall",
                                  "accuracy": "share of test images classified right"}[metric],
        "budget": budget.describe(),
        "synthetic_share": ratio,
        "seeds_completed": done,
        "stopped": stopped,
        "test_images": len(test),
        "test_images_scored": int(lesion.sum()) if seg else len(test),
        "val_images": len(val),
        "arms_skipped": [a for a in arms if a not in runnable],
        "arms": {},
        "comparisons": {},
    }
    for arm in runnable:
        runs = per_seed[arm]
        summary = {k: t_interval([r[k] for r in runs]) for k in (runs[0] if runs else {})}
        entry = {"per_seed": runs, "summary": summary, "fits": fits[arm]}
        if not seg and runs:
            k = int(np.sum(np.mean(probs[arm], 0).argmax(1) == y))
            lo, hi = wilson_interval(k, len(y))
            entry["accuracy_seed_averaged"] = {"value": k / len(y), "wilson_low": lo, "wilson_high": hi}
        result["arms"][arm] = entry
    if done:
        result["comparisons"] = _compare(task, metric, runnable, scores, probs, y, bootstrap, alpha)
        if {"real+aug", "real+aug+synthetic"} <= set(runnable):
            # the question the field asks (Frid-Adar 2018): does synthetic data add anything once classical
            # augmentation is saturated? One pre-declared test, its own family
            result["comparison_vs_aug"] = _compare(task, metric, ["real+aug", "real+aug+synthetic"], scores, probs,
                                                   y, bootstrap, alpha, baseline="real+aug")["real+aug+synthetic"]
    return _clean(result)


def _compare(task: str, metric: str, arms: list[str], scores: dict, probs: dict, y: np.ndarray,
             bootstrap: int, alpha: float, baseline: str = BASELINE) -> dict:
    """Each arm versus `baseline`: paired bootstrap (primary), DeLong and McNemar (classification)."""
    seg = task == "segmentation"
    reduce = _balanced_reduce(y) if metric == "balanced_accuracy" else _mean_reduce
    base = np.stack(scores[baseline])  # [S, N]
    out: dict = {}
    for i, arm in enumerate(a for a in arms if a != baseline):
        mine = np.stack(scores[arm])
        c = {"primary": paired_bootstrap(mine, base, reduce, bootstrap, seed=1 + i),
             "effect_size_dz": paired_effect_size(mine, base)}
        if not seg:
            pa, pb = np.mean(probs[arm], 0), np.mean(probs[baseline], 0)  # seed-averaged [N, K]
            if pa.shape[1] == 2:
                c["auc_delong"] = delong(y == 1, pa[:, 1], pb[:, 1])
            c["accuracy_mcnemar"] = mcnemar(pa.argmax(1) == y, pb.argmax(1) == y)
        out[arm] = c
    adjusted = holm({a: c["primary"]["p"] for a, c in out.items()})
    one_seed = base.shape[0] < 2
    for arm, c in out.items():
        pr = c["primary"]
        c["p_holm"] = adjusted[arm]
        # one seed: the bootstrap resamples test images only, so training noise alone can look significant
        c["verdict"] = "not judged (one seed)" if one_seed else verdict(pr["diff"], adjusted[arm], alpha)
        ci = ("" if pr["ci_low"] is None else f", 95% CI [{pr['ci_low']:+.3f}, {pr['ci_high']:+.3f}]")
        p_txt = "n/a" if adjusted[arm] is None else f"{adjusted[arm]:.3g}"
        name = "real-only" if baseline == BASELINE else baseline
        c["line"] = (f"{arm} vs {name} ({task}): {c['verdict']} — {metric} {pr['diff']:+.3f}{ci}; "
                     f"paired bootstrap over {base.shape[1]} test images x {base.shape[0]} seeds, "
                     f"Holm-adjusted p = {p_txt}")
    return out


def utility_rows(result: dict) -> list[dict]:
    """Flatten a run_task result into CSV rows: one per arm (summary of the primary endpoint) and one per
    comparison (difference, interval, p, verdict)."""
    task, metric = result["task"], result["primary_endpoint"]
    rows = []
    for arm, a in result.get("arms", {}).items():
        s = a["summary"].get(metric, {})
        fit0 = (a.get("fits") or [{}])[0]
        rows.append({"task": task, "arm": arm, "kind": "arm", "metric": metric, "value": s.get("mean"),
                     "sd_over_seeds": s.get("sd"), "n_seeds": s.get("n"), "ci_low": s.get("ci_low"),
                     "ci_high": s.get("ci_high"), "p_holm": None, "verdict": None,
                     "steps": fit0.get("steps_run"), "rule": result["budget"]["rule"]})
    for arm, c in result.get("comparisons", {}).items():
        p = c["primary"]
        rows.append({"task": task, "arm": arm, "kind": "vs real", "metric": metric, "value": p["diff"],
                     "sd_over_seeds": None, "n_seeds": result["seeds_completed"], "ci_low": p["ci_low"],
                     "ci_high": p["ci_high"], "p_holm": c["p_holm"], "verdict": c["verdict"], "steps": None,
                     "rule": p["test"]})
    return rows


UTILITY_FIELDS = ["task", "arm", "kind", "metric", "value", "sd_over_seeds", "n_seeds", "ci_low", "ci_high",
                  "p_holm", "verdict", "steps", "rule"]


def split_draws(synthetic: LabeledSet, draws: int, seed: int = 0) -> list[LabeledSet]:
    """Cut a synthetic set into `draws` disjoint, class-stratified parts (independent generator samples)."""
    if draws <= 1:
        return [synthetic]
    rng = np.random.default_rng(seed)
    labels = synthetic.labels.numpy()
    buckets: list[list[int]] = [[] for _ in range(draws)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, part in enumerate(np.array_split(idx, draws)):
            buckets[j].extend(part.tolist())
    if any(len(b) < 2 for b in buckets):
        raise DataError(f"{len(synthetic)} synthetic images are too few for {draws} draws")
    return [synthetic.subset(np.sort(np.asarray(b))) for b in buckets]
