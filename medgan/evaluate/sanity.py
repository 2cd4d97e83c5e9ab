"""Sanity gates of a synthetic set: cheap checks that must pass before a utility figure means anything.

Shared by the utility study (`medgan.evaluate`) and by GAN training as probes every few hundred steps
(~200 samples on a CPU in well under a second, once the judges are trained). Conventions everywhere:
images [N, C, H, W] float in [-1, 1]; masks [N, 1, H, W] in {0, 1} (a GAN's mask channel in [-1, 1]
is thresholded at 0 first); labels [N] int64 in the judges' label space 0..K-1.

The gates, each compared with the value the REAL data reach on the same probe (its reference):
- `empty_masks`: share of lesion-class samples whose mask is empty (a collapsed mask channel);
- `mask_dice`: Dice between the emitted mask and what a real-trained segmenter sees in the image;
- `mask_contrast`: |mean intensity inside the mask - mean in a ring around it|: is there a lesion where
  the mask says?;
- `conditioning`: per-class accuracy of a real-trained classifier on the samples of each class;
- `diversity` (k-NN recall and coverage) and `fidelity` (k-NN precision) per class (Kynkäänniemi 2019,
  Naeem 2020) in a whitened pixel-PCA space fitted on the real images, against real-vs-real at the same
  number of samples, cross-fitted over folds of the real images (a few dozen real images per class make
  one split too noisy to judge by). Not the judge classifier's features: real images it trained on sit
  closer to each other there than new ones do, which would make every synthetic set look worse;
- `memorisation`: distance of each sample to its nearest GAN training image versus the same distance for
  new real images (held-out ones, or each training image to the others), in pixels, and the share of
  near-copies.

The judges (a small classifier and segmenter) are trained once on real data by `train_judges`, which a
training loop calls with its own real data; `check(judges, images, labels, masks)` runs every gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medgan.errors import DataError
from medgan.evaluate.distance import knn_metrics, nn_distances
from medgan.evaluate.downstream import (Budget, dice_per_image, predict_masks, predict_proba, train_classifier,
                                        train_segmenter)
from medgan.evaluate.features import PixelPCA
from medgan.evaluate.sets import LabeledSet, as_set, concat, lesion_classes, stratified_split


@dataclass(frozen=True)
class GateThresholds:
    """Pass/fail rules. Ratios are synthetic value / real reference value on the same probe."""

    max_empty_mask_share: float = 0.05
    min_mask_dice_ratio: float = 0.5
    min_contrast_ratio: float = 0.5
    min_conditioning_ratio: float = 0.9  # per class: accuracy on synthetic / accuracy on held-out real
    min_recall_ratio: float = 0.5  # per class, recall and coverage against real-vs-real at equal n
    min_precision_ratio: float = 0.5  # per class, against real-vs-real at equal n
    max_near_copy_share: float = 0.15  # real held-out images have 0.05 by construction (5th percentile)
    k: int = 3  # k of the k-NN manifolds


@dataclass
class Judges:
    """Real-trained networks and the real data's own values of every probe (see `train_judges`)."""

    classifier: torch.nn.Module
    segmenter: torch.nn.Module | None
    num_classes: int
    lesion_classes: list[int]
    space: PixelPCA  # the feature space of the k-NN probes
    real_feats: np.ndarray  # [R, d] real images in `space` (diversity/fidelity reference)
    real_labels: np.ndarray  # [R]
    copy_pool_pixels: np.ndarray  # [P, D] pixels of every GAN training image (copy detection)
    reference: dict = field(default_factory=dict)  # probe values of real images
    held_out: LabeledSet | None = None
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------- single probes


def _pixels(images: torch.Tensor) -> np.ndarray:
    return images.detach().flatten(1).double().cpu().numpy()  # [N, C*H*W]


def _has_mask(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).amax(1) > 0.5  # [N] bool


def empty_mask_share(masks: torch.Tensor, labels: torch.Tensor, lesion: list[int]) -> dict:
    """Share of samples of the lesion classes whose mask is empty. masks [N, 1, H, W], labels [N]."""
    sel = torch.isin(labels, torch.tensor(lesion, dtype=labels.dtype)) if lesion else torch.zeros_like(labels, dtype=torch.bool)
    n = int(sel.sum())
    empty = int((~_has_mask(masks[sel])).sum()) if n else 0
    return {"share": empty / n if n else None, "empty": empty, "n": n}


def mask_contrast(images: torch.Tensor, masks: torch.Tensor, ring: int = 2) -> np.ndarray:
    """Per image with a non-empty mask: |mean inside the mask - mean of a `ring`-pixel band around it|.

    images [N, C, H, W] in [-1, 1], masks [N, 1, H, W] {0, 1}. Returns [M] for the M images with a mask,
    in image units (the phantom's nodules are about 0.6-1.0 on the [-1, 1] scale).
    """
    m = (masks > 0.5).float()
    keep = _has_mask(m)
    if not keep.any():
        return np.zeros(0)
    x, m = images[keep].float().mean(1, keepdim=True), m[keep]  # [M, 1, H, W]
    dil = F.max_pool2d(m, 2 * ring + 1, stride=1, padding=ring)
    band = (dil - m).clamp(0, 1)
    inside = (x * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    around = (x * band).flatten(1).sum(1) / band.flatten(1).sum(1).clamp_min(1)
    return (inside - around).abs().double().numpy()


def segmenter_dice(segmenter: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per-image Dice [N] between the segmenter's prediction on `images` and `masks` [N, 1, H, W]."""
    pred = predict_masks(segmenter, images.float())
    return dice_per_image(pred, masks[:, 0].numpy() > 0.5)


def per_class_accuracy(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """{class: share of its samples the classifier assigns to it}."""
    pred = predict_proba(classifier, images.float()).argmax(1)
    y = labels.numpy()
    return {int(c): float((pred[y == c] == c).mean()) for c in np.unique(y)}


def _below(p_syn: float, n_syn: int, p_ref: float, n_ref: int, ratio: float) -> bool:
    """Is p_syn significantly (one-sided, 2.5%) below ratio * p_ref, given binomial noise on both sides?

    Both accuracies are proportions over a few dozen images (a GAN loop holds back a quarter of its data),
    so a bare ratio would fail healthy generators by chance.
    """
    se = np.sqrt(p_syn * (1 - p_syn) / max(n_syn, 1) + (ratio ** 2) * p_ref * (1 - p_ref) / max(n_ref, 1))
    return bool(p_syn - ratio * p_ref < -1.96 * max(se, 1e-9))


def memorisation(samples: np.ndarray, pool: np.ndarray, held_out_to_pool: np.ndarray) -> dict:
    """Distances to the nearest GAN training image, against what new real images show.

    samples [N, D], pool [P, D] (the GAN's training images), held_out_to_pool [M]: nearest-pool
    distances of new real images. `near_copy_share` is the share of samples closer to a training
    image than the 5th percentile of the held-out distances (0.05 for images as new as real ones).
    """
    d = nn_distances(samples, pool)
    ref = np.asarray(held_out_to_pool, dtype=np.float64)
    cut = float(np.quantile(ref, 0.05))
    return {
        "median_nn": float(np.median(d)),
        "median_nn_real": float(np.median(ref)),
        "ratio": float(np.median(d) / max(np.median(ref), 1e-12)),
        "near_copy_share": float((d < cut).mean()),
        "near_copy_cut": cut,
        "n": int(len(d)),
    }


def _subsample(n: int, m: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:m]) if m < n else np.arange(n)


KNN_KEYS = ("precision", "recall", "density", "coverage")
# Components of the k-NN probes' pixel PCA. Few on purpose: components fitted on a few hundred images
# overfit them, so that new real images look less spread out than the fitted ones (at 64 components,
# fresh phantom images scored recall 0.4x and precision 1.8x the real-vs-real value; at 8, 0.9-1.1x).
KNN_PCA_DIM = 8


def diversity(sample_feats: np.ndarray, sample_labels: np.ndarray, real_feats: np.ndarray, real_labels: np.ndarray,
              k: int, folds: int = 4, seed: int = 0) -> dict:
    """Per class: k-NN metrics of samples and of new real images against a real pool, at equal n.

    The real images of each class are cut into `folds`; for each fold, the pool is the other folds, the
    real side is the fold, and the synthetic side a same-size subsample of the samples. Both sides are
    averaged over folds, so the real-vs-real value is the reference these metrics reach at this sample
    size, with the noise of one split averaged out.
    """
    out: dict = {}
    rng = np.random.default_rng(seed)
    for c in np.unique(real_labels):
        r_all, s_all = real_feats[real_labels == c], sample_feats[sample_labels == c]
        parts = np.array_split(rng.permutation(len(r_all)), folds)
        syn, real, ns = [], [], []
        for f, fold in enumerate(parts):
            pool = r_all[np.setdiff1d(np.arange(len(r_all)), fold)]
            m = min(len(fold), len(s_all))
            if m <= k or len(pool) <= k:
                continue
            real.append(knn_metrics(pool, r_all[fold[:m]], k))
            syn.append(knn_metrics(pool, s_all[_subsample(len(s_all), m, seed + 1 + f)], k))
            ns.append(m)
        if syn:
            mean = lambda rows: {key: float(np.mean([x[key] for x in rows])) for key in KNN_KEYS}  # noqa: E731
            out[str(int(c))] = {"synthetic": mean(syn), "real": mean(real), "n": int(np.mean(ns)),
                                "folds": len(syn), "k": k}
    return out


# ---------------------------------------------------------------- judges


def train_judges(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None, *,
                 held_out: LabeledSet | None = None, copy_pool: torch.Tensor | None = None,
                 steps: int = 400, seed: int = 0, held_out_fraction: float = 0.25) -> Judges:
    """Train the judges once on real data and measure every probe on real images they did not train on.

    images [N, C, H, W] in [-1, 1], labels [N] in 0..K-1, masks [N, 1, H, W] {0, 1} or None.
    - Without `held_out`, a stratified `held_out_fraction` of the input is kept back for the networks'
      reference values (a GAN loop calls it with its own training set); with it, the networks train on
      all of `images` and `held_out` (never seen by the generator) gives the references.
    - `copy_pool` (default: `images`) are the generator's training images, which it must not copy; the
      new-image reference distance is held-out → pool, or each pool image → the rest of the pool.
    - The k-NN probes' real reference is every real image given (input and held-out).
    Costs `steps` classifier plus `steps` segmenter steps: about 10 s on a quiet 2-core CPU at 32 px.
    """
    data = as_set(images, labels, masks)
    split_here = held_out is None  # then the held-out images are part of the copy pool
    if held_out is None:
        rest, part = stratified_split(data.labels.numpy(), held_out_fraction, seed)
        train, held_out = data.subset(rest), data.subset(part)
        everything = data
    else:
        train = data
        everything = concat(data, held_out) if (data.masks is None) == (held_out.masks is None) else data
    if len(train) < 4 or len(held_out) < 2:
        raise DataError(f"judges need more real images (train {len(train)}, held out {len(held_out)})")
    num_classes = int(data.labels.max()) + 1
    # classical augmentation: on the phantom it lifts a small classifier from ~0.66 to ~0.85 balanced
    # accuracy at 25 images per class, and a segmenter from Dice ~0.3 to ~0.55; a judge should be strong
    clf = train_classifier([(train, 1.0)], num_classes, Budget(steps=steps, batch=32, eval_every=steps), seed,
                           augment=True).model
    lesion = lesion_classes(data)
    seg = None
    if lesion and data.masks is not None:
        seg = train_segmenter([(train, 1.0)], Budget(steps=steps, batch=16, eval_every=steps), seed,
                              augment=True).model
    space = PixelPCA(everything.images, dim=KNN_PCA_DIM)
    pool = copy_pool if copy_pool is not None else data.images
    judges = Judges(clf, seg, num_classes, lesion, space, space(everything.images), everything.labels.numpy(),
                    _pixels(pool), held_out=held_out,
                    info={"train_images": len(train), "held_out_images": len(held_out), "steps": steps,
                          "seed": seed, "copy_pool_images": int(len(pool)), "knn_space": space.describe(),
                          "classifier": "monai Classifier(8,16,32)",
                          "segmenter": "monai UNet(8,16,32)" if seg else None})
    judges.reference = _reference(judges, leave_one_out=split_here)
    return judges


def _reference(j: Judges, leave_one_out: bool) -> dict:
    """The probes on real images the judges did not train on: what a perfect generator would score."""
    h = j.held_out
    ref: dict = {"conditioning": per_class_accuracy(j.classifier, h.images, h.labels)}
    if h.masks is not None and j.lesion_classes:
        sel = torch.isin(h.labels, torch.tensor(j.lesion_classes))
        hm = h.subset(torch.nonzero(sel & _has_mask(h.masks)).flatten())
        ref["empty_masks"] = empty_mask_share(h.masks, h.labels, j.lesion_classes)["share"]
        ref["mask_contrast"] = float(np.median(mask_contrast(hm.images, hm.masks))) if len(hm) else None
        if j.segmenter is not None and len(hm):
            ref["mask_dice"] = float(segmenter_dice(j.segmenter, hm.images, hm.masks).mean())
    if leave_one_out:
        # the held-out part came out of the copy pool itself: each pool image against the others
        ref["new_to_pool"] = nn_distances(j.copy_pool_pixels, j.copy_pool_pixels, exclude_self=True)
        ref["new_to_pool_rule"] = "each GAN training image to its nearest other training image"
    else:
        ref["new_to_pool"] = nn_distances(_pixels(h.images), j.copy_pool_pixels)
        ref["new_to_pool_rule"] = "held-out real images to their nearest GAN training image"
    return ref


# ---------------------------------------------------------------- all gates


def _gate(name: str, value, reference, threshold: float, rule: str, passed: bool | None, **detail) -> dict:
    return {"name": name, "value": value, "reference": reference, "threshold": threshold, "rule": rule,
            "passed": passed, **detail}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b <= 1e-12:
        return None
    return float(a / b)


def _mask_gates(j: Judges, s: LabeledSet, t: GateThresholds) -> list[dict]:
    ref = j.reference
    if not j.lesion_classes:
        return []
    if s.masks is None:
        return [_gate("empty_masks", None, ref.get("empty_masks"), t.max_empty_mask_share,
                      "the set has no masks", None)]
    e = empty_mask_share(s.masks, s.labels, j.lesion_classes)
    gates = [_gate("empty_masks", e["share"], ref.get("empty_masks"), t.max_empty_mask_share,
                   f"share of lesion-class samples with an empty mask <= {t.max_empty_mask_share}",
                   None if e["share"] is None else e["share"] <= t.max_empty_mask_share, n=e["n"])]
    sel = torch.isin(s.labels, torch.tensor(j.lesion_classes)) & _has_mask(s.masks)
    sm = s.subset(torch.nonzero(sel).flatten())
    contrast = float(np.median(mask_contrast(sm.images, sm.masks))) if len(sm) else None
    r = _ratio(contrast, ref.get("mask_contrast"))
    gates.append(_gate("mask_contrast", contrast, ref.get("mask_contrast"), t.min_contrast_ratio,
                       f"median |inside - ring| >= {t.min_contrast_ratio} x real", None if r is None else r >= t.min_contrast_ratio,
                       ratio=r, n=len(sm)))
    if j.segmenter is not None:
        dice = float(segmenter_dice(j.segmenter, sm.images, sm.masks).mean()) if len(sm) else None
        r = _ratio(dice, ref.get("mask_dice"))
        gates.append(_gate("mask_dice", dice, ref.get("mask_dice"), t.min_mask_dice_ratio,
                           f"real-trained segmenter's Dice vs the emitted mask >= {t.min_mask_dice_ratio} x real",
                           None if r is None else r >= t.min_mask_dice_ratio, ratio=r, n=len(sm)))
    return gates


def _knn_gates(div: dict, t: GateThresholds) -> list[dict]:
    """diversity: recall and coverage (coverage ignores outliers, which inflate recall); fidelity: precision."""
    def ratios(key):
        return {c: _ratio(d["synthetic"][key], d["real"][key]) for c, d in div.items()}

    gates = []
    for name, keys, thr, what in (("diversity", ("recall", "coverage"), t.min_recall_ratio, "recall and coverage"),
                                  ("fidelity", ("precision",), t.min_precision_ratio, "precision")):
        rr = {key: ratios(key) for key in keys}
        worst = min((r for per in rr.values() for r in per.values() if r is not None), default=None)
        gates.append(_gate(name, {c: {k: d["synthetic"][k] for k in keys} for c, d in div.items()},
                           {c: {k: d["real"][k] for k in keys} for c, d in div.items()}, thr,
                           f"per-class k-NN {what} >= {thr} x real-vs-real at equal n (pixel PCA)",
                           None if worst is None else worst >= thr, ratio=rr, worst_ratio=worst,
                           n={c: d["n"] for c, d in div.items()}))
    return gates


def check(judges: Judges, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None,
          thresholds: GateThresholds | None = None, seed: int = 0) -> dict:
    """Run every gate on a synthetic set; returns {"gates": [...], "passed": bool, "failed": [names]}.

    images [N, C, H, W] in [-1, 1], labels [N] in the judges' 0..K-1, masks [N, 1, H, W] {0, 1} or None.
    A gate with `passed: None` could not be computed (e.g. too few samples of a class) and fails nothing.
    """
    t = thresholds or GateThresholds()
    j = judges
    s = as_set(images, labels, masks)
    if int(s.labels.max()) >= j.num_classes or int(s.labels.min()) < 0:
        raise DataError(f"labels outside the judges' classes 0..{j.num_classes - 1}")
    gates = _mask_gates(j, s, t)
    acc = per_class_accuracy(j.classifier, s.images, s.labels)
    ref_acc, ref_n = j.reference["conditioning"], j.held_out.class_counts()
    ratios = {c: _ratio(a, ref_acc.get(c)) for c, a in acc.items()}
    worst = min((r for r in ratios.values() if r is not None), default=None)
    n_syn = s.class_counts()
    low = [c for c, a in acc.items() if c in ref_acc and _below(a, n_syn[c], ref_acc[c], ref_n.get(c, 0),
                                                                 t.min_conditioning_ratio)]
    gates.append(_gate("conditioning", acc, ref_acc, t.min_conditioning_ratio,
                       f"per-class accuracy of a real-trained classifier not significantly below "
                       f"{t.min_conditioning_ratio} x real", None if worst is None else not low,
                       ratio=ratios, worst_ratio=worst, classes_below=low))
    div = diversity(j.space(s.images), s.labels.numpy(), j.real_feats, j.real_labels, t.k, seed=seed)
    gates += _knn_gates(div, t)
    mem = memorisation(_pixels(s.images), j.copy_pool_pixels, j.reference["new_to_pool"])
    gates.append(_gate("memorisation", mem["near_copy_share"], 0.05, t.max_near_copy_share,
                       f"share of samples nearer a training image than 95% of new real images <= {t.max_near_copy_share}",
                       mem["near_copy_share"] <= t.max_near_copy_share, **mem))
    failed = [g["name"] for g in gates if g["passed"] is False]
    return {"gates": gates, "passed": not failed, "failed": failed, "n": len(s), "judges": j.info,
            "thresholds": t.__dict__}


def summary_line(result: dict) -> str:
    """One line for a log: every gate's value and PASS/FAIL."""
    parts = []
    for g in result["gates"]:
        v = g["value"]
        shown = g.get("worst_ratio") if isinstance(v, dict) else v
        mark = "–" if g["passed"] is None else ("ok" if g["passed"] else "FAIL")
        parts.append(f"{g['name']}={'n/a' if shown is None else f'{shown:.3g}'} {mark}")
    return "; ".join(parts)
