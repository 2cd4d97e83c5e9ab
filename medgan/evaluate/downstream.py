"""The downstream networks of the utility study and of the sanity judges, and their one fitting loop.

Budget parity is the point of this module: a network is trained for a fixed number of optimiser steps
(`Budget.steps`), whatever the size of its training set, so that an arm with more images does not win
by getting more gradient steps (the flaw of an epochs-based protocol). Batches are drawn from one or
more parts (real, synthetic) in fixed shares, each part cycled through its own seeded permutation.
Every `eval_every` steps the validation loss and metric are recorded (the learning curve); the model
kept is the last one (`select="last"`) or the one with the lowest validation loss (`select="best"`,
with optional patience for early stopping).

Networks come from MONAI, kept small so that a run fits 2 CPU cores:
- classifier: `monai.networks.nets.Classifier`, channels (8, 16, 32), strides 2 (about 25 k parameters at
  32 px); cross-entropy, Adam 2e-3, weight decay 1e-4;
- segmenter: `monai.networks.nets.UNet`, channels (8, 16, 32), one residual unit, batch norm; Dice + BCE,
  Adam 5e-3 (with MONAI's default instance norm the 32 px phantom's small lesions were not learnt).
Classical augmentation (flip, small affine, elastic, intensity jitter) resamples through MONAI's
batched `Warp` block, images and masks together; see `ClassicalAugment`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from medgan.errors import DataError
from medgan.evaluate.sets import LabeledSet

# ---------------------------------------------------------------- metrics


def auc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties get average ranks, as sklearn); NaN with one class."""
    pos = np.asarray(y).astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, AUC (macro one-vs-rest for > 2 classes), per-class sensitivity/specificity.

    y [N] int in 0..K-1, proba [N, K]. Classes absent from `y` have undefined sensitivity (NaN) and are
    left out of the balanced accuracy and the AUC average.
    """
    k = proba.shape[1]
    pred = proba.argmax(1)  # [N]
    out: dict[str, float] = {"accuracy": float((pred == y).mean())}
    sens = []
    for c in range(k):
        pos, neg = y == c, y != c
        s = float((pred[pos] == c).mean()) if pos.any() else float("nan")
        out[f"sensitivity_{c}"] = s
        out[f"specificity_{c}"] = float((pred[neg] != c).mean()) if neg.any() else float("nan")
        sens.append(s)
    out["balanced_accuracy"] = float(np.nanmean(sens)) if np.isfinite(sens).any() else float("nan")
    if k == 2:
        out["auc"] = auc_binary(y == 1, proba[:, 1])
    else:
        aucs = [auc_binary(y == c, proba[:, c]) for c in range(k)]
        out["auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    return out


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `y` (labels [N], predictions [N])."""
    rec = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(rec)) if rec else float("nan")


def dice_per_image(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of binary masks [N, H, W] per image; 1.0 where both are empty (a correct 'no lesion')."""
    inter = (pred & truth).reshape(len(pred), -1).sum(1)
    total = pred.reshape(len(pred), -1).sum(1) + truth.reshape(len(truth), -1).sum(1)
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-image Dice averaged over lesion images (`dice`, the primary endpoint), pixel-pooled Dice over all
    images (`dice_global`: false positives on healthy images count) and the share of lesion-free images on
    which nothing was segmented (`empty_correct`). pred, truth: bool [N, H, W]."""
    lesion = truth.reshape(len(truth), -1).any(1)
    d = dice_per_image(pred, truth)
    inter, total = (pred & truth).sum(), pred.sum() + truth.sum()
    healthy_clear = ~pred[~lesion].reshape(int((~lesion).sum()), -1).any(1)
    return {
        "dice": float(d[lesion].mean()) if lesion.any() else float("nan"),
        "dice_global": float(2 * inter / total) if total else float("nan"),
        "empty_correct": float(healthy_clear.mean()) if (~lesion).any() else float("nan"),
    }


# ---------------------------------------------------------------- budget and batches


@dataclass(frozen=True)
class Budget:
    """How a downstream network is trained: the same for every arm of a study (budget parity)."""

    steps: int = 600
    batch: int = 32
    eval_every: int = 50
    select: str = "last"  # "last" | "best" (lowest validation loss)
    patience: int | None = None  # evaluations without improvement before stopping ("best" only)

    def describe(self) -> dict:
        rule = ("fixed budget: weights after the last step" if self.select == "last" else
                "weights of the lowest validation loss" + (f", early stop after {self.patience} evaluations "
                                                           "without improvement" if self.patience else ""))
        return {"steps": self.steps, "batch": self.batch, "eval_every": self.eval_every, "rule": rule}


class PartSampler:
    """Draws batches of fixed size from parts in fixed shares; each part cycles its own seeded permutation.

    parts: list of (set, share) with shares summing to 1. The count from each part per batch is fixed
    (largest-remainder rounding), so the mix is exactly the configured ratio at every step.
    """

    def __init__(self, parts: list[tuple[LabeledSet, float]], batch: int, gen: torch.Generator):
        parts = [(s, w) for s, w in parts if w > 0]
        if not parts or any(len(s) == 0 for s, _ in parts):
            raise DataError("a training arm has an empty part")
        shares = np.array([w for _, w in parts], dtype=np.float64)
        shares = shares / shares.sum()
        raw = shares * batch
        counts = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - counts))[: batch - counts.sum()]:
            counts[i] += 1
        self.parts, self.counts, self.gen = [s for s, _ in parts], counts, gen
        self._orders = [torch.randperm(len(s), generator=gen) for s in self.parts]
        self._pos = [0] * len(self.parts)
        self.with_masks = all(s.masks is not None for s in self.parts)

    def _take(self, i: int, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self._pos[i] >= len(self._orders[i]):
                self._orders[i] = torch.randperm(len(self.parts[i]), generator=self.gen)
                self._pos[i] = 0
            chunk = self._orders[i][self._pos[i]: self._pos[i] + k]
            self._pos[i] += len(chunk)
            k -= len(chunk)
            out.append(chunk)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        xs, ys, ms = [], [], []
        for i, k in enumerate(self.counts):
            if k == 0:
                continue
            idx = self._take(i, int(k))
            s = self.parts[i]
            xs.append(s.images[idx])
            ys.append(s.labels[idx])
            if self.with_masks:
                ms.append(s.masks[idx])
        return torch.cat(xs), torch.cat(ys), (torch.cat(ms) if self.with_masks else None)


# ---------------------------------------------------------------- classical augmentation


class ClassicalAugment:
    """Classical augmentation of a batch: left-right flip, small rotation/scale/translation, elastic
    deformation and intensity jitter, images and masks together (nearest for masks).

    The geometry is one displacement field per image (affine part + a smooth random elastic part) applied
    by MONAI's batched `Warp` block, so each batch costs one resampling. MONAI's dictionary transforms
    (`RandAffined`, `Rand2DElasticd`) do the same per image but cost ~10 ms per call on this CPU, which is
    5x a training step at 32 px; the parameters below are theirs (rotate_range, scale_range,
    translate_range, elastic spacing/magnitude, RandScaleIntensity, RandShiftIntensity). Seeded by a torch
    Generator: the same seed gives the same augmented batches.
    """

    def __init__(self, seed: int, p_affine: float = 0.8, rotate_deg: float = 12.0, scale: float = 0.08,
                 translate_px: float = 2.0, p_elastic: float = 0.3, elastic_spacing: int = 8,
                 elastic_px: float = 1.0, intensity_scale: float = 0.1, intensity_shift: float = 0.08):
        import warnings

        from monai.networks.blocks import Warp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Using PyTorch native grid_sample": that is what we want
            self.warp_img = Warp(mode="bilinear", padding_mode="border")
            self.warp_mask = Warp(mode="nearest", padding_mode="border")
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.p_affine, self.rotate, self.scale, self.translate = p_affine, np.deg2rad(rotate_deg), scale, translate_px
        self.p_elastic, self.spacing, self.elastic_px = p_elastic, elastic_spacing, elastic_px
        self.i_scale, self.i_shift = intensity_scale, intensity_shift
        self.describe = (f"left-right flip p=0.5; affine p={p_affine} (rotate ±{rotate_deg:g}°, scale ±{scale:g}, "
                         f"translate ±{translate_px:g} px); elastic p={p_elastic} (spacing {elastic_spacing} px, "
                         f"σ {elastic_px:g} px); intensity ×(1±{intensity_scale:g}) and ±{intensity_shift:g}, "
                         "p=0.8 each; resampled by MONAI Warp")

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen)

    def _ddf(self, b: int, h: int, w: int) -> torch.Tensor:
        """Displacement fields [B, 2, H, W] in pixels (channel 0 along H): output(p) = input(p + ddf(p))."""
        on = (torch.rand(b, generator=self.gen) < self.p_affine).float()
        ang = self._u(b, -self.rotate, self.rotate) * on
        sc = 1 + self._u(b, -self.scale, self.scale) * on
        ty, tx = self._u(b, -self.translate, self.translate) * on, self._u(b, -self.translate, self.translate) * on
        yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
        cos, sin = (torch.cos(ang) * sc)[:, None, None], (torch.sin(ang) * sc)[:, None, None]
        dy = cos * yy - sin * xx - yy + ty[:, None, None]  # [B, H, W]
        dx = sin * yy + cos * xx - xx + tx[:, None, None]
        ddf = torch.stack([dy, dx], 1)
        coarse = torch.randn(b, 2, max(h // self.spacing, 2) + 1, max(w // self.spacing, 2) + 1, generator=self.gen)
        on_e = (torch.rand(b, generator=self.gen) < self.p_elastic).float()[:, None, None, None]
        smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        return ddf + smooth * self.elastic_px * on_e

    def __call__(self, x: torch.Tensor, m: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, _, h, w = x.shape  # x [B, C, H, W] in [-1, 1]; m [B, 1, H, W] or None
        flip = torch.rand(b, generator=self.gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        ddf = self._ddf(b, h, w)
        x = self.warp_img(x, ddf)
        s_on = (torch.rand(b, generator=self.gen) < 0.8).float()
        t_on = (torch.rand(b, generator=self.gen) < 0.8).float()
        gain = 1 + self._u(b, -self.i_scale, self.i_scale) * s_on
        bias = self._u(b, -self.i_shift, self.i_shift) * t_on
        x = (x * gain[:, None, None, None] + bias[:, None, None, None]).clamp(-1, 1)
        if m is not None:
            m = torch.where(flip[:, None, None, None], m.flip(3), m)
            m = self.warp_mask(m, ddf).round()
        return x, m


# ---------------------------------------------------------------- the fitting loop


@dataclass
class FitResult:
    model: torch.nn.Module
    steps_run: int
    best_step: int
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss", "val_loss", "val_metric"}
    stopped_early: bool = False

    def summary(self) -> dict:
        return {"steps_run": self.steps_run, "selected_step": self.best_step, "stopped_early": self.stopped_early,
                "curve": self.curve}


def fit(model: torch.nn.Module, opt: torch.optim.Optimizer, sampler: PartSampler, budget: Budget,
        loss_of: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
        validate: Callable[[torch.nn.Module], tuple[float, float]] | None,
        augment: Callable | None = None) -> FitResult:
    """`budget.steps` optimiser steps on batches from `sampler`; `validate(model) -> (loss, metric)`."""
    curve: list[dict] = []
    best = (float("inf"), 0, None)  # (val loss, step, state)
    run_loss, run_n, waited, step = 0.0, 0, 0, 0
    stopped = False
    model.train()
    for step in range(1, budget.steps + 1):
        x, y, m = sampler.next()
        if augment is not None:
            x, m = augment(x, m)
        loss = loss_of(x, y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss, run_n = run_loss + float(loss.detach()), run_n + 1
        if validate is not None and (step % budget.eval_every == 0 or step == budget.steps):
            model.eval()
            with torch.no_grad():
                vl, vm = validate(model)
            model.train()
            curve.append({"step": step, "train_loss": run_loss / run_n, "val_loss": vl, "val_metric": vm})
            run_loss, run_n = 0.0, 0
            if budget.select == "best":
                if vl < best[0]:
                    best, waited = (vl, step, copy.deepcopy(model.state_dict())), 0
                else:
                    waited += 1
                    if budget.patience and waited >= budget.patience:
                        stopped = True
                        break
    if not np.isfinite(run_loss):
        raise DataError("a downstream network's loss became non-finite")
    chosen = step
    if budget.select == "best" and best[2] is not None:
        model.load_state_dict(best[2])
        chosen = best[1]
    return FitResult(model.eval(), step, chosen, curve, stopped)


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)  # network initialisation
    return torch.Generator().manual_seed(seed)  # batch order


def build_classifier(channels: int, size: int, num_classes: int) -> torch.nn.Module:
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(channels, size, size), classes=num_classes, channels=(8, 16, 32), strides=(2, 2, 2))


def train_classifier(parts: list[tuple[LabeledSet, float]], num_classes: int, budget: Budget, seed: int,
                     val: LabeledSet | None = None, augment: bool = False) -> FitResult:
    """A small MONAI Classifier on batches mixed from `parts`; validated on `val` (loss, balanced accuracy)."""
    gen = _seeded(seed)
    _, c, h, _ = parts[0][0].images.shape
    model = build_classifier(c, h, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sampler = PartSampler(parts, budget.batch, gen)

    def loss_of(x, y, _m):
        return F.cross_entropy(model(x), y)

    def validate(net):
        logits = torch.cat([net(val.images[i:i + 256]) for i in range(0, len(val), 256)])
        pred = logits.argmax(1).numpy()
        return float(F.cross_entropy(logits, val.labels)), balanced_accuracy(val.labels.numpy(), pred)

    aug = ClassicalAugment(seed) if augment else None
    return fit(model, opt, sampler, budget, loss_of, validate if val is not None and len(val) else None, aug)


def build_segmenter(channels: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=channels, out_channels=1, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=1, norm="batch")


def train_segmenter(parts: list[tuple[LabeledSet, float]], budget: Budget, seed: int,
                    val: LabeledSet | None = None, augment: bool = False) -> FitResult:
    """A small MONAI UNet on image+mask batches mixed from `parts`; validated on `val` (loss, lesion Dice)."""
    from monai.losses import DiceLoss

    if any(s.masks is None for s, _ in parts):
        raise DataError("segmentation needs masks in every training part")
    gen = _seeded(seed)
    model = build_segmenter(parts[0][0].images.shape[1])
    dice = DiceLoss(sigmoid=True, batch=True)  # batch-level Dice: healthy images have empty masks
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sampler = PartSampler(parts, budget.batch, gen)

    def loss_of(x, _y, m):
        logits = model(x)  # [B, 1, H, W]
        return dice(logits, m) + F.binary_cross_entropy_with_logits(logits, m)

    def validate(net):
        logits = torch.cat([net(val.images[i:i + 128]) for i in range(0, len(val), 128)])
        loss = float(dice(logits, val.masks) + F.binary_cross_entropy_with_logits(logits, val.masks))
        return loss, segmentation_metrics(logits[:, 0].numpy() > 0, val.masks[:, 0].numpy() > 0.5)["dice"]

    aug = ClassicalAugment(seed) if augment else None
    ok_val = val is not None and val.masks is not None and len(val)
    return fit(model, opt, sampler, budget, loss_of, validate if ok_val else None, aug)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Softmax probabilities [N, K] of images [N, C, H, W]."""
    model.eval()
    out = [torch.softmax(model(images[i: i + batch]), 1) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> np.ndarray:
    """Binary masks [N, H, W] (logit > 0) of images [N, C, H, W]."""
    model.eval()
    out = [model(images[i: i + batch])[:, 0] > 0 for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Penultimate activations [N, D] of a `build_classifier` network (its flattened conv features)."""
    model.eval()
    outs = []
    for i in range(0, len(images), batch):
        h = model.net(images[i: i + batch])  # MONAI Classifier: `net` (conv stack) then `final` (linear)
        outs.append(h.flatten(1))
    return torch.cat(outs).double().numpy()
