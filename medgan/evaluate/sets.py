"""Labelled image sets in memory and the splits of the utility study.

A `LabeledSet` is the tensor triple every evaluation function takes: images [N, C, H, W] float32 in
[-1, 1], labels [N] int64, masks [N, 1, H, W] float32 in {0, 1} or None. Splits are index arrays, so
that which real image went where can be written down and checked (`disjoint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medgan.errors import DataError


@dataclass
class LabeledSet:
    """Images [N, C, H, W] float32 in [-1, 1], labels [N] int64, masks [N, 1, H, W] float32 {0, 1} or None."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor) -> "LabeledSet":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return LabeledSet(self.images[idx], self.labels[idx], None if self.masks is None else self.masks[idx])

    def class_counts(self) -> dict[int, int]:
        vals, counts = torch.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(vals, counts)}


def concat(a: LabeledSet, b: LabeledSet) -> LabeledSet:
    """Union of two sets; masks survive only when both have them."""
    masks = None if a.masks is None or b.masks is None else torch.cat([a.masks, b.masks])
    return LabeledSet(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), masks)


def as_set(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None) -> LabeledSet:
    """Checked construction from tensors: shapes agree, values in range (DataError otherwise)."""
    if images.ndim != 4:
        raise DataError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"labels must be [N={images.shape[0]}], got {tuple(labels.shape)}")
    if masks is not None and tuple(masks.shape) != (images.shape[0], 1, *images.shape[2:]):
        raise DataError(f"masks must be [N, 1, H, W] = {(images.shape[0], 1, *images.shape[2:])}, "
                        f"got {tuple(masks.shape)}")
    if not torch.isfinite(images).all():
        raise DataError("images contain non-finite values")
    return LabeledSet(images.float(), labels.long(), None if masks is None else (masks > 0.5).float())


def stratified_split(labels: np.ndarray, fraction: float, seed: int, min_each: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-class random split into (rest, part) with `fraction` of each class in `part`.

    Every class with at least 2 * min_each images keeps at least `min_each` on each side.
    """
    rng = np.random.default_rng(seed)
    rest, part = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * fraction))
        if len(idx) >= 2 * min_each:
            k = min(max(k, min_each), len(idx) - min_each)
        part.extend(idx[:k])
        rest.extend(idx[k:])
    return np.sort(np.asarray(rest, dtype=np.int64)), np.sort(np.asarray(part, dtype=np.int64))


def first_per_class(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first `per_class` items of each class, in index order (all when None).

    "First" and not "random": the phantom is a prefix-stable sequence, so the first n per class of a
    pool are exactly the images a GAN trained on `count = 2n` phantom images saw.
    """
    if per_class is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def random_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices keeping at most `per_class` random items of each class (all when None)."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def disjoint(**parts: np.ndarray) -> None:
    """Raise DataError naming two index sets that share an item (the splits' contract)."""
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.intersect1d(parts[a], parts[b])
            if shared.size:
                raise DataError(f"splits {a} and {b} share {shared.size} real images (e.g. index {shared[0]})")


def lesion_classes(data: LabeledSet, min_share: float = 0.5) -> list[int]:
    """Classes whose masks are non-empty in at least `min_share` of their images (none without masks)."""
    if data.masks is None:
        return []
    has = data.masks.flatten(1).amax(1) > 0  # [N]
    out = []
    for c in torch.unique(data.labels).tolist():
        sel = data.labels == c
        if float(has[sel].float().mean()) >= min_share:
            out.append(int(c))
    return out
