"""Feature extractors for the distribution metrics: pluggable, all mapping images to [N, D] numpy.

Two kinds:
- `TorchScriptExtractor`: an Inception-v3 (or any network) the user supplies as a LOCAL TorchScript file
  (`EvaluateConfig.feature_weights`). Nothing is downloaded. The file must map float [N, 3, 299, 299]
  with values in [0, 255] to [N, D] (D = 2048 for Inception pool3). This is the calling convention of
  NVlabs' `inception-2015-12-05.pt` (used by StyleGAN2-ADA and clean-fid), which is called with
  `return_features=True`; we try that keyword first and fall back to a plain call for other scripts.
  We do not rebuild Inception-v3 here: without torchvision that means re-deriving its ~100 layers and
  a weight-name map for each published checkpoint, and a TorchScript file carries its own graph.
- `TrainedCNNExtractor` (default): a small CNN trained by the evaluation itself on the REAL training
  split, seeded; its penultimate (global-pooled) activations are the features. It is trained on two
  tasks at once: the class labels (when there are >= 2 classes) and predicting which of 4 rotations was
  applied (self-supervised, always on). The rotation task keeps the features from collapsing onto the
  one direction that separates two classes, so they still see texture and shape. Its figures are NOT
  comparable with published Inception FIDs; the output says which extractor produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medgan.errors import DataError

INCEPTION_SIZE = 299  # pixels; Inception-v3's input side


class FeatureExtractor(Protocol):
    """Maps images [N, C, H, W] in [-1, 1] to features [N, D]; `describe()` says what it is."""

    name: str

    def __call__(self, images: torch.Tensor) -> np.ndarray: ...

    def describe(self) -> dict: ...


@torch.no_grad()
def _batched(fn, images: torch.Tensor, batch: int) -> np.ndarray:
    outs = [fn(images[i : i + batch]).reshape(min(batch, len(images) - i), -1) for i in range(0, len(images), batch)]
    return torch.cat(outs).double().numpy()  # [N, D]


class TorchScriptExtractor:
    """A user-supplied TorchScript feature network (e.g. FID's Inception-v3), read from a local file."""

    def __init__(self, path: str | Path, batch: int = 32):
        p = Path(path)
        if not p.is_file():
            raise DataError(f"feature weights file not found: {p}")
        try:
            self.model = torch.jit.load(str(p), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"{p} is not a TorchScript file (torch.jit.load failed: {exc})") from exc
        self.path, self.batch = p, batch
        self.name = f"torchscript:{p.name}"
        self._kw = True  # whether the script accepts return_features=True; settled on first call

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # [n, C, H, W] in [-1, 1] -> [n, 3, 299, 299] in [0, 255]
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = ((x.clamp(-1, 1) + 1.0) * 127.5)
        if self._kw:
            try:
                return self.model(x, return_features=True)
            except (RuntimeError, TypeError):
                self._kw = False
        return self.model(x)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return _batched(self._forward, images, self.batch)

    def describe(self) -> dict:
        return {"name": self.name, "kind": "torchscript", "path": str(self.path)}


class SmallCNN(nn.Module):
    """Four strided conv blocks -> global average pool (the features) -> linear heads."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        layers, c_in = [], channels
        for c_out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = c_in
        self.class_head = nn.Linear(c_in, num_classes) if num_classes >= 2 else None
        self.rot_head = nn.Linear(c_in, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))  # [N, C, H, W] -> [N, feature_dim]


def _rotate_batch(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a random multiple of 90 degrees; returns images and rotation labels [N]."""
    k = torch.randint(0, 4, (x.shape[0],), generator=gen)
    out = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k)])  # [N, C, H, W]
    return out, k


@dataclass
class TrainedCNNExtractor:
    """Penultimate features of a SmallCNN trained on real images (see module docstring)."""

    model: SmallCNN
    train_images: int
    epochs: int
    seed: int
    tasks: list[str]
    final_loss: float
    name: str = "trained-cnn"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        self.model.eval()
        return _batched(self.model.features, images.float(), 64)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": "small CNN trained on the real training split (penultimate features)",
            "feature_dim": self.model.feature_dim,
            "tasks": self.tasks,
            "train_images": self.train_images,
            "epochs": self.epochs,
            "seed": self.seed,
            "final_loss": self.final_loss,
            "comparable_with_published_fid": False,
        }


def train_cnn_extractor(
    images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int = 0, batch: int = 32
) -> TrainedCNNExtractor:
    """Train the default extractor on real images [N, C, H, W] in [-1, 1] and labels [N].

    Seeded: the same inputs and seed give the same weights (CPU kernels).
    """
    if len(images) < 2:
        raise DataError("need at least 2 real images to train the feature extractor")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    classes = int(torch.unique(labels).numel())
    remap = {int(v): i for i, v in enumerate(torch.unique(labels).tolist())}
    y_all = torch.tensor([remap[int(v)] for v in labels], dtype=torch.long)  # [N] in 0..classes-1
    model = SmallCNN(images.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_val = float("nan")
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x, y = images[idx].float(), y_all[idx]
            xr, r = _rotate_batch(x, gen)
            # one forward over [original; rotated]: class loss on originals, rotation loss on rotated
            feats = model.features(torch.cat([x, xr]))  # [2B, D]
            loss = F.cross_entropy(model.rot_head(feats[len(x) :]), r)
            if model.class_head is not None:
                loss = loss + F.cross_entropy(model.class_head(feats[: len(x)]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_val = float(loss.detach())
    tasks = (["labels"] if classes >= 2 else []) + ["rotation"]
    return TrainedCNNExtractor(model.eval(), len(images), epochs, seed, tasks, loss_val)


class PixelPCA:
    """Extractor-free features: the top principal components of the pixels, fitted on real images.

    No network, no training: a second view beside a trained extractor, so that a figure cannot hinge on
    what one small CNN learnt to look at. Whitened (unit variance per component), so that no single
    component (usually global brightness) dominates Euclidean distances.
    """

    name = "pixel-pca"

    def __init__(self, real_images: torch.Tensor, dim: int = 64):
        x = real_images.detach().flatten(1).double().numpy()  # [N, C*H*W]
        if len(x) < 3:
            raise DataError("pixel PCA needs at least 3 real images")
        self.mean = x.mean(0)
        _, sv, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.dim = int(min(dim, len(sv) - 1))
        self.basis = vt[: self.dim].T  # [D_pix, dim]
        self.scale = np.maximum(sv[: self.dim] / np.sqrt(max(len(x) - 1, 1)), 1e-8)  # sd per component
        self.explained = float((sv[: self.dim] ** 2).sum() / max((sv ** 2).sum(), 1e-12))
        self.fit_images = int(len(x))

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = images.detach().flatten(1).double().numpy()
        if x.shape[1] != self.basis.shape[0]:
            raise DataError(f"pixel PCA was fitted on {self.basis.shape[0]} pixels, got {x.shape[1]}")
        return (x - self.mean) @ self.basis / self.scale  # [N, dim]

    def describe(self) -> dict:
        return {"name": self.name, "kind": "whitened PCA of pixels fitted on real images (no network)",
                "feature_dim": self.dim, "explained_variance": self.explained, "fit_images": self.fit_images,
                "comparable_with_published_fid": False}


class RandomCNN:
    """Extractor-free features of a fixed, randomly initialised SmallCNN (seeded; never trained).

    Random convolutional features keep local texture statistics that pixel PCA averages away
    (cf. Naeem et al. 2020 on randomly initialised embeddings for evaluating generators).
    """

    name = "random-cnn"

    def __init__(self, channels: int, seed: int = 0):
        with torch.random.fork_rng():  # seeded without disturbing the caller's random stream
            torch.manual_seed(seed)
            self.model = SmallCNN(channels, num_classes=1).eval()
        self.seed = seed

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return _batched(self.model.features, images.float(), 64)

    def describe(self) -> dict:
        return {"name": self.name, "kind": "randomly initialised SmallCNN, never trained", "seed": self.seed,
                "feature_dim": self.model.feature_dim, "comparable_with_published_fid": False}


def build_extractor(
    feature_weights: str | None, real_images: torch.Tensor, real_labels: torch.Tensor, epochs: int, seed: int = 0
) -> FeatureExtractor:
    """The user's TorchScript file when named, else a CNN trained on `real_images` [N, C, H, W]."""
    if feature_weights:
        return TorchScriptExtractor(feature_weights)
    return train_cnn_extractor(real_images, real_labels, epochs=epochs, seed=seed)
