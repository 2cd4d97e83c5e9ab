"""The bundled procedural dataset: CT-slice-like chest phantoms with optional lesions.

Every image is a pure function of (spec.seed, k, size): its random parameters come from a
numpy Generator seeded by (seed, k), so any count is a prefix of a bigger one and a shard of
the dataset can be rebuilt anywhere. Parameters are drawn in normalised coordinates
([-1, 1]^2) first and rendered afterwards, so the anatomy of image k is the same at every
size (only the texture noise depends on the size).

Class 0 ("healthy") has no lesion; class 1 ("lesion") has 1-3 blobs: bright nodules inside
the lungs or dark (hypodense) spots in the soft tissue, each with its binary mask.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from medgan.config import PhantomSpec

CLASS_NAMES = ("healthy", "lesion")

# Attenuation-like grey levels (0 = air, 1 = dense bone) of the tissues, before noise.
_AIR, _FAT, _SOFT, _LUNG, _BONE, _BLOOD = 0.02, 0.38, 0.52, 0.12, 0.92, 0.62


def label_of(spec: PhantomSpec, k: int) -> int:
    """Class of image k: a low-discrepancy interleave that hits `lesion_fraction` exactly.

    floor((k+1)f) - floor(kf) is 1 for exactly round(n*f) of the first n images, for every n,
    which keeps small prefixes balanced and independent of the total count.
    """
    f = spec.lesion_fraction
    return int(np.floor((k + 1) * f + 1e-9) - np.floor(k * f + 1e-9))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # pixel centres in [-1, 1]; y grows downwards like an image row index
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(t, t, indexing="ij")  # [H, W] each
    return xx, yy


def _ellipse_r(xx, yy, cx, cy, ax, ay, theta) -> np.ndarray:
    """Normalised elliptical radius: < 1 inside the ellipse."""
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return np.sqrt((u / ax) ** 2 + (v / ay) ** 2)


def _soft(r: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of r < 1 with an edge about `edge` wide (partial-volume look)."""
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / max(edge, 1e-4), -60, 60)))


def _params(rng: np.random.Generator, label: int) -> dict:
    """All random anatomy of one image, in normalised coordinates (size independent)."""
    p = {
        "body": (rng.normal(0, 0.03), rng.normal(0.02, 0.03), rng.uniform(0.78, 0.9),
                 rng.uniform(0.6, 0.72), rng.normal(0, 0.05)),
        "fat": rng.uniform(0.04, 0.09),
        "lung_l": (rng.uniform(-0.48, -0.36), rng.uniform(-0.12, 0.0), rng.uniform(0.2, 0.28),
                   rng.uniform(0.32, 0.42), rng.normal(0.12, 0.08)),
        "lung_r": (rng.uniform(0.36, 0.48), rng.uniform(-0.12, 0.0), rng.uniform(0.2, 0.28),
                   rng.uniform(0.32, 0.42), rng.normal(-0.12, 0.08)),
        "heart": (rng.uniform(-0.12, 0.02), rng.uniform(0.02, 0.14), rng.uniform(0.15, 0.22),
                  rng.uniform(0.13, 0.19), rng.normal(0.4, 0.15)),
        "spine_y": rng.uniform(0.36, 0.46),
        "spine_r": rng.uniform(0.07, 0.1),
        "aorta": (rng.uniform(0.06, 0.14), rng.uniform(0.18, 0.26), rng.uniform(0.045, 0.065)),
        "ribs": int(rng.integers(5, 8)),
        "rib_phase": rng.uniform(0, 2 * np.pi),
        "gain": rng.uniform(0.92, 1.06),
        "noise": rng.uniform(0.015, 0.035),
        "texture": rng.uniform(0.02, 0.05),
        "lesions": [],
    }
    if label == 1:
        for _ in range(int(rng.integers(1, 4))):
            in_lung = rng.uniform() < 0.7
            if in_lung:
                lx, ly, ax, ay, _th = p["lung_l"] if rng.uniform() < 0.5 else p["lung_r"]
                ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform()) * 0.55
                cx, cy = lx + rad * ax * np.cos(ang), ly + rad * ay * np.sin(ang)
                contrast = rng.uniform(0.3, 0.5)  # bright solid nodule on dark lung
            else:
                # soft tissue below the lungs, beside the spine: hypodense spot
                cx, cy = rng.uniform(-0.4, 0.4), rng.uniform(0.25, 0.45)
                if abs(cx) < 0.15:
                    cx = np.sign(cx + 1e-9) * 0.2
                contrast = -rng.uniform(0.22, 0.35)
            p["lesions"].append((cx, cy, rng.uniform(0.07, 0.14), rng.uniform(0.75, 1.3),
                                 rng.uniform(0, np.pi), contrast))
    return p


def _texture(rng: np.random.Generator, size: int, sigma_frac: float) -> np.ndarray:
    """Correlated Gaussian noise with unit std: tissue texture / mottle."""
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=max(size * sigma_frac, 0.5))
    return n / (n.std() + 1e-8)


def _render(p: dict, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom from its parameters. Returns (image [H, W] float32, mask [H, W] uint8)."""
    xx, yy = _grid(size)
    edge = 1.5 / size  # about one pixel of partial-volume blur at every size
    bx, by, bax, bay, bth = p["body"]
    body = _soft(_ellipse_r(xx, yy, bx, by, bax, bay, bth), edge / min(bax, bay))
    inner = _soft(_ellipse_r(xx, yy, bx, by, bax - p["fat"], bay - p["fat"], bth), edge / bay)
    img = _AIR + body * (_FAT - _AIR) + inner * (_SOFT - _FAT)
    # ribs: short bright arcs on an ellipse just inside the fat layer
    rib_r = _ellipse_r(xx, yy, bx, by, bax - p["fat"] - 0.03, bay - p["fat"] - 0.03, bth)
    ang = np.arctan2(yy - by, xx - bx)
    ribs = np.clip(np.cos(ang * p["ribs"] * 2 + p["rib_phase"]) * 3 - 1.6, 0, 1)
    ribs *= _soft(np.abs(rib_r - 1.0) / 0.035 + 0.0, 0.25)
    img = img + ribs * (_BONE - _SOFT) * inner
    lungs = np.zeros_like(img)
    for key in ("lung_l", "lung_r"):
        cx, cy, ax, ay, th = p[key]
        lungs = np.maximum(lungs, _soft(_ellipse_r(xx, yy, cx, cy, ax, ay, th), edge / ax))
    img = img * (1 - lungs) + _LUNG * lungs
    hx, hy, hax, hay, hth = p["heart"]
    heart = _soft(_ellipse_r(xx, yy, hx, hy, hax, hay, hth), edge / hay)
    img = img * (1 - heart) + _BLOOD * heart
    ax_, ay_, ar = p["aorta"]
    aorta = _soft(np.hypot(xx - ax_, yy - ay_) / ar, edge / ar)
    img = img * (1 - aorta) + (_BLOOD + 0.05) * aorta
    spine = _soft(np.hypot(xx - bx, yy - p["spine_y"]) / p["spine_r"], edge / p["spine_r"])
    canal = _soft(np.hypot(xx - bx, yy - p["spine_y"] + p["spine_r"] * 0.2) / (p["spine_r"] * 0.4), 0.2)
    img = img * (1 - spine) + _BONE * spine - canal * spine * (_BONE - _SOFT)
    # lung vessels: faint texture inside lungs, soft-tissue mottle elsewhere
    tex = _texture(rng, size, 0.02)
    img = img + tex * p["texture"] * (lungs * 1.5 + inner * 0.6)
    mask = np.zeros((size, size), dtype=bool)
    for cx, cy, r, aspect, th, contrast in p["lesions"]:
        rr = _ellipse_r(xx, yy, cx, cy, r, r * aspect, th)
        # lobulated margin: modulate the radius with a low-order angular wave
        rr = rr * (1 + 0.12 * np.cos(3 * np.arctan2(yy - cy, xx - cx) + th))
        img = img + contrast * _soft(rr, max(edge / r, 0.08))
        m = rr < 1.0
        if not m.any():  # too small for this grid: mark the centre pixel so the mask is never empty
            m[int(np.clip((cy + 1) / 2 * size, 0, size - 1)), int(np.clip((cx + 1) / 2 * size, 0, size - 1))] = True
        mask |= m
    img = img * p["gain"] + rng.standard_normal((size, size)) * p["noise"] * body
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask.astype(np.uint8)


def phantom_image(spec: PhantomSpec, k: int, size: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """Image k of the phantom: (image [H, W] float32 in [0, 1], label, mask [H, W] uint8)."""
    size = int(size or spec.size)
    label = label_of(spec, k)
    # two independent streams: anatomy (size independent) and noise (size dependent)
    params = _params(np.random.default_rng([spec.seed, k, 0]), label)
    image, mask = _render(params, size, np.random.default_rng([spec.seed, k, 1, size]))
    return image, label, mask


def make_phantom(spec: PhantomSpec, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole phantom set.

    Returns images [N, H, W] float32 in [0, 1], labels [N] int64 (0 healthy, 1 lesion) and
    masks [N, H, W] uint8 in {0, 1}. Deterministic by seed; image k depends only on (seed, k, size).
    """
    size = int(size or spec.size)
    images = np.empty((spec.count, size, size), dtype=np.float32)
    masks = np.empty((spec.count, size, size), dtype=np.uint8)
    labels = np.empty(spec.count, dtype=np.int64)
    for k in range(spec.count):
        images[k], labels[k], masks[k] = phantom_image(spec, k, size)
    return images, labels, masks


def write_phantom_folder(spec: PhantomSpec, out_dir: Path, size: int | None = None) -> Path:
    """Write the phantom as a folder dataset readable by `medgan.data.load_dataset`.

    Layout: `healthy/phantom_000000.png`, `lesion/...` (8-bit grayscale), `masks/<stem>.png`
    (0/255) and `labels.csv` (file,label,class). Returns `out_dir`.
    """
    from PIL import Image  # local: keeps `import medgan.phantom` light for the CLI

    out_dir = Path(out_dir)
    for name in (*CLASS_NAMES, "masks"):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(spec.count):
        image, label, mask = phantom_image(spec, k, size)
        stem = f"phantom_{k:06d}"
        rel = f"{CLASS_NAMES[label]}/{stem}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(out_dir / rel)
        Image.fromarray(mask * 255, mode="L").save(out_dir / "masks" / f"{stem}.png")
        rows.append((rel, label, CLASS_NAMES[label]))
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "class"])
        w.writerows(rows)
    return out_dir
