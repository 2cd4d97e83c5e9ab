"""Cheap quality probes of a GAN during training, on a fixed sample (run at every checkpoint).

Built once from the run's real data, which is split in two fixed halves A and B so every figure has a
real-vs-real reference of the same size computed the same way:
- recall / precision: k-NN manifolds (medgan.evaluate.distance) in the features of a small CNN trained
  on the real images (medgan.evaluate.features); synthetic vs A, and the reference B vs A;
- conditioning accuracy: that CNN's class head on synthetic images, against the label they were drawn
  for (its accuracy on the held-out half B is reported beside it, so a weak classifier is visible);
- masks: the share of lesion-class samples with a non-empty mask (and of other classes with an empty
  one), and mask/lesion agreement as the image contrast a mask marks: |mean inside the mask - mean of
  a 2-px ring around it|, averaged over images with a mask, next to the same figure on B's real pairs.
  A mask placed off the lesion marks little contrast. It uses no network, so it does not grade the
  segmenter of the mask-coupling loss (medgan.coupling) with itself;
- memorisation: the median distance (pixels) from each synthetic image to its nearest real image in A,
  divided by the same median for B's real images. Near 1 is healthy; well below 1 means copies.

`score` (higher is better; picks the best snapshot) is the geometric mean of min(1, recall / reference
recall), the conditioning accuracy and, with masks, the mask-presence accuracy and min(a, 1 / a) for the
mask area ratio a = (mask pixel share) / (real share): masks everywhere score as badly as none. It is
halved when the memorisation ratio falls under 0.5. `alerts` name collapses as they happen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medgan import rundir
from medgan.config import TrainConfig
from medgan.data import ImageDataset
from medgan.evaluate.distance import precision_recall
from medgan.evaluate.features import train_cnn_extractor

_PROBE_STREAM = 11  # generator stream of the fixed probe noise
MEMO_RATIO_MIN = 0.5
RECALL_COLLAPSE = 0.5  # alert when recall, once above this share of the real-vs-real one, halves


def _nn_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance [len(a)] from each row of a [n, D] to its nearest row of b [m, D]."""
    return torch.cdist(a.double(), b.double()).min(dim=1).values


def mask_contrast(images: torch.Tensor, masks: torch.Tensor, ring: int = 2) -> float:
    """Mean over images with a mask of |mean(image in mask) - mean(image in a `ring`-px band around it)|.

    images [N, C, S, S], masks [N, 1, S, S] bool. NaN when no image has a mask."""
    m = masks.float()
    band = F.max_pool2d(m, 2 * ring + 1, stride=1, padding=ring) - m  # [N, 1, S, S] ring outside the mask
    gray = images.float().mean(1, keepdim=True)  # [N, 1, S, S]
    has = (m.flatten(1).sum(1) > 0) & (band.flatten(1).sum(1) > 0)
    if not has.any():
        return float("nan")
    inside = (gray * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    around = (gray * band).flatten(1).sum(1) / band.flatten(1).sum(1).clamp(min=1)
    return float((inside - around).abs()[has].mean())


def split_halves(labels: torch.Tensor) -> torch.Tensor:
    """[N] bool: True for half A. Alternate within each class, so both halves keep the class mix."""
    a = torch.zeros(len(labels), dtype=torch.bool)
    for k in labels.unique():
        idx = torch.nonzero(labels == k).flatten()
        a[idx[::2]] = True
    return a


class Probes:
    """Fitted once per run (main rank); `probes(ema_generator, step)` returns the probe dict."""

    def __init__(self, cfg: TrainConfig, data: ImageDataset, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        x, y = data.images.float(), data.labels.clone()
        a = split_halves(y)
        self.xa, self.ya, self.xb, self.yb = x[a], y[a], x[~a], y[~a]
        with torch.random.fork_rng(devices=[]):
            self.cnn = train_cnn_extractor(self.xa, self.ya, epochs=30, seed=cfg.seed + 101)
        self.fa = torch.from_numpy(self.cnn(self.xa))  # [nA, D]
        self.ref = precision_recall(self.fa.numpy(), self.cnn(self.xb), "probe-cnn")
        self.cls_acc_b = self._accuracy(self.xb, self.yb)
        self.memo_ref = float(_nn_dist(self.xb.flatten(1), self.xa.flatten(1)).median())
        self.masks = cfg.with_masks and data.masks is not None
        if self.masks:
            self.contrast_ref = mask_contrast(self.xb, data.masks[~a] > 0.5)
            self.px_ref = float((data.masks > 0.5).float().mean())  # share of mask pixels in the real data
            nonempty = (data.masks.flatten(1).amax(1) > 0.5).float()
            share = torch.zeros(cfg.num_classes).index_add_(0, y, nonempty)
            self.lesion = share / torch.bincount(y, minlength=cfg.num_classes).clamp(min=1) >= 0.5  # [K]
            self.real_nonempty = float(nonempty[self.lesion[y]].mean()) if self.lesion.any() else 0.0
        self.best_recall = 0.0

    @torch.no_grad()
    def _accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        head = self.cnn.model.class_head
        if head is None:
            return float("nan")
        pred = torch.cat([head(self.cnn.model.features(x[i:i + 64])).argmax(1) for i in range(0, len(x), 64)])
        return float((pred == y).float().mean())

    @torch.no_grad()
    def _samples(self, g: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        n = cfg.probe_samples
        gen = rundir.step_generator(cfg.seed, 0, 0, _PROBE_STREAM)
        z = torch.randn(cfg.num_classes * n, cfg.z_dim, generator=gen)
        y = torch.arange(cfg.num_classes).repeat_interleave(n)
        out = torch.cat([g(z[i:i + 256].to(self.device), y[i:i + 256].to(self.device)).float().cpu()
                         for i in range(0, len(z), 256)])
        return out.clamp(-1, 1), y  # [K*n, C(+1), S, S], [K*n]

    @torch.no_grad()
    def __call__(self, g: torch.nn.Module, step: int) -> dict:
        cfg, c = self.cfg, self.cfg.channels
        was_training = g.training
        g.eval()
        fake, y = self._samples(g)
        g.train(was_training)
        img = fake[:, :c]
        # equal-size sets for the k-NN figures: as many synthetic images as the reference half B
        pick = torch.randperm(len(img), generator=torch.Generator().manual_seed(0))[: len(self.xb)]
        pr = precision_recall(self.fa.numpy(), self.cnn(img[pick]), "probe-cnn")
        memo = float(_nn_dist(img.flatten(1), self.xa.flatten(1)).median()) / max(self.memo_ref, 1e-12)
        out = {"recall": pr["recall"], "precision": pr["precision"], "recall_real": self.ref["recall"],
               "precision_real": self.ref["precision"], "cond_acc": self._accuracy(img, y),
               "cond_acc_real": self.cls_acc_b, "memorisation_ratio": memo}
        parts = [min(1.0, pr["recall"] / max(self.ref["recall"], 1e-6))]
        if not np.isnan(out["cond_acc"]):
            parts.append(out["cond_acc"])
        alerts = []
        if self.masks and fake.shape[1] > c:
            mask = fake[:, c:] > 0  # [N, 1, S, S]
            nonempty = mask.flatten(1).any(1)
            lesion = self.lesion[y]
            out["mask_nonempty_lesion"] = float(nonempty[lesion].float().mean()) if lesion.any() else float("nan")
            out["mask_empty_other"] = float((~nonempty[~lesion]).float().mean()) if (~lesion).any() else float("nan")
            out["mask_contrast"], out["mask_contrast_real"] = mask_contrast(img, mask), self.contrast_ref
            presence = np.nanmean([out["mask_nonempty_lesion"], out["mask_empty_other"]])
            out["mask_px"], out["mask_px_real"] = float(mask.float().mean()), self.px_ref
            # masks everywhere and masks nowhere both miss: the area must match the real masks' (either way)
            area = out["mask_px"] / self.px_ref if self.px_ref > 0 else float("nan")
            parts += [float(presence), 0.0 if math.isnan(area) or area <= 0 else min(area, 1 / area)]
            if lesion.any() and out["mask_nonempty_lesion"] < 0.5 * self.real_nonempty:
                alerts.append(f"mask channel dead: {out['mask_nonempty_lesion']:.0%} of lesion-class samples "
                              f"have a mask (real: {self.real_nonempty:.0%})")
        # geometric mean: one broken part (no recall, no masks) sinks the score; 0.01 floors a zero part
        score = float(np.exp(np.mean(np.log(np.maximum(parts, 0.01))))) * (0.5 if memo < MEMO_RATIO_MIN else 1.0)
        if self.best_recall >= RECALL_COLLAPSE * self.ref["recall"] and pr["recall"] < 0.5 * self.best_recall:
            alerts.append(f"recall collapsed: {pr['recall']:.2f} (real-vs-real {self.ref['recall']:.2f}, "
                          f"best so far {self.best_recall:.2f})")
        if memo < MEMO_RATIO_MIN:
            alerts.append(f"memorisation: synthetic images are {memo:.2f}x as far from the training set as real ones")
        self.best_recall = max(self.best_recall, pr["recall"])
        clean = {k: (None if math.isnan(v) else round(float(v), 6)) for k, v in out.items()}  # JSON has no NaN
        return {**clean, "score": round(score, 6), "alerts": alerts}
