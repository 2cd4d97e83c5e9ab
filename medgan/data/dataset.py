"""In-memory image datasets built from folders, single files or the phantom.

Everything is decoded, resized and normalised once at load time into one tensor
[N, C, S, S] in [-1, 1]: GAN training samples random batches every step, and per-step
seeded indexing of a tensor is both fast and exactly reproducible after a resume.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from medgan.config import PhantomSpec, TrainConfig
from medgan.data import readers
from medgan.errors import DataError

log = logging.getLogger(__name__)
OnError = Literal["skip", "fail"]


@dataclass
class ImageDataset(Dataset):
    """images [N, C, S, S] float32 in [-1, 1]; labels [N] int64; masks [N, 1, S, S] in {0, 1} or None.

    `skipped` lists (file, reason) for unreadable inputs; `class_names[k]` names label k.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        mask = self.masks[i] if self.masks is not None else None
        return self.images[i], int(self.labels[i]), mask

    @property
    def num_classes(self) -> int:
        return max(len(self.class_names), int(self.labels.max()) + 1 if len(self) else 0)


def _square(frame: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Centre-crop to a square, then resize to size x size (area filter when shrinking)."""
    import cv2

    h, w = frame.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(frame[top:top + s, left:left + s])
    if s == size:
        return crop
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if s > size else cv2.INTER_CUBIC)
    out = cv2.resize(crop.astype(np.float32), (size, size), interpolation=interp)
    return np.clip(out, 0, 1) if not nearest else out


def _channels(frame: np.ndarray, channels: int) -> np.ndarray:
    """[H, W] or [H, W, 3] -> [C, H, W] with C = channels (luma for gray, replicate for RGB)."""
    if frame.ndim == 3:
        if channels == 1:
            frame = frame @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma
        else:
            return np.moveaxis(frame, -1, 0)
    return np.repeat(frame[None], channels, axis=0)


def _labels_csv(root: Path) -> tuple[dict[str, str], dict[int, str]] | None:
    """labels.csv -> ({file: label}, {numeric label: class name} from an optional 'class' column)."""
    p = root / "labels.csv"
    if not p.is_file():
        return None
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{p} has no rows")
    fcol = next((c for c in ("file", "filename", "path", "image") if c in rows[0]), None)
    lcol = next((c for c in ("label", "class", "target") if c in rows[0]), None)
    if fcol is None or lcol is None:
        raise DataError(f"{p} needs a 'file' and a 'label' column, found {list(rows[0])}")
    names = {}
    if lcol != "class" and "class" in rows[0]:
        names = {int(r[lcol]): r["class"].strip() for r in rows if r[lcol].strip().lstrip("-").isdigit()}
    return {r[fcol].replace("\\", "/"): r[lcol].strip() for r in rows}, names


def _is_mask(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return "masks" in rel.parts[:-1] or path.name.lower().split(".")[0].endswith("_mask")


def _mask_for(path: Path, root: Path) -> Path | None:
    """Mask beside an image: `<stem>_mask.*`, `<dir>/masks/<stem>.*` or `<root>/masks/<stem>.*`."""
    stem = path.name.split(".")[0]
    for d, name in ((path.parent, f"{stem}_mask"), (path.parent / "masks", stem), (root / "masks", stem)):
        for ext in (".png", ".tif", ".tiff", ".bmp"):
            if (d / (name + ext)).is_file():
                return d / (name + ext)
    return None


def _scan(root: Path) -> list[Path]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and readers.kind_of(p) and not _is_mask(p, root)]
    return [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]


def _label_names(root: Path, files: list[Path], csv_info) -> tuple[list[str], dict[Path, int]]:
    """Class names and per-file labels, from labels.csv or first-level sub-folder names."""
    if csv_info is not None:
        table, known = csv_info
        raw = {p: table.get(p.relative_to(root).as_posix(), table.get(p.name)) for p in files}
        missing = [p.relative_to(root).as_posix() for p, v in raw.items() if v is None]
        if missing:
            log.warning("%d files are not in labels.csv and are ignored (first: %s)", len(missing), missing[0])
        raw = {p: v for p, v in raw.items() if v is not None}
        if all(v.lstrip("-").isdigit() for v in raw.values()):
            ids = {p: int(v) for p, v in raw.items()}
            return [known.get(k, str(k)) for k in range(max(ids.values(), default=-1) + 1)], ids
        names = sorted(set(raw.values()))
        return names, {p: names.index(v) for p, v in raw.items()}
    groups = {p: (p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "") for p in files}
    names = sorted(set(groups.values()))
    return names, {p: names.index(g) for p, g in groups.items()}


def _read(path: Path, nifti_axis: int) -> tuple[list[np.ndarray], np.ndarray | None, list | None]:
    kind = readers.kind_of(path)
    if kind == "image":
        return readers.read_image(path), None, None
    if kind == "dicom":
        return readers.read_dicom(path), None, None
    if kind == "nifti":
        return readers.read_nifti(path, axis=nifti_axis), None, None
    return readers.read_npz(path)


def load_dataset(path: Path, image_size: int, channels: int, *, on_error: OnError = "skip",
                 nifti_axis: int = 2) -> ImageDataset:
    """Read a folder (or one file) of PNG/JPEG/TIFF/DICOM/NIfTI/npz into an ImageDataset.

    Labels come from `labels.csv` (file,label) or first-level sub-folder names (sorted);
    masks from `masks/<stem>.png` or `<stem>_mask.png`; used only if every image has one.
    Unreadable files are skipped with a logged count (`on_error="skip"`) or raise DataError
    naming the file (`"fail"`). No readable image at all raises DataError.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist")
    root = path if path.is_dir() else path.parent
    files = _scan(root) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no image files ({', '.join(readers.ALL_EXTS)}) found under {path}")
    names, file_labels = _label_names(root, files, _labels_csv(root) if path.is_dir() else None)
    images, labels, masks, used, skipped = [], [], [], [], []
    for f in [f for f in files if f in file_labels]:
        rel = f.relative_to(root).as_posix()
        try:
            frames, own_labels, own_masks = _read(f, nifti_axis)
            mask_path = _mask_for(f, root) if own_masks is None and len(frames) == 1 else None
            if mask_path is not None:
                own_masks = [readers.read_mask(mask_path)]
            for j, fr in enumerate(frames):
                images.append(_channels(_square(fr, image_size), channels))
                labels.append(int(own_labels[j]) if own_labels is not None else file_labels[f])
                m = own_masks[j] if own_masks is not None else None
                masks.append(None if m is None else _square(m.astype(np.float32), image_size, nearest=True) > 0.5)
                used.append(rel if len(frames) == 1 else f"{rel}#{j}")
        except Exception as exc:  # any decoder failure: name the file, never crash the run
            if on_error == "fail":
                raise DataError(f"cannot read {rel}: {type(exc).__name__}: {exc}") from exc
            skipped.append((rel, f"{type(exc).__name__}: {exc}"))
    if skipped:
        log.warning("skipped %d unreadable files: %s", len(skipped), ", ".join(s[0] for s in skipped[:10]))
    if not images:
        detail = f"; {len(skipped)} unreadable (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"dataset {path} has no readable images{detail}")
    have_masks = all(m is not None for m in masks)
    if not have_masks and any(m is not None for m in masks):
        log.warning("only some images have masks; masks are ignored")
    lab = torch.as_tensor(labels, dtype=torch.int64)
    if names == [""] or len(names) < int(lab.max()) + 1:
        names = [str(k) for k in range(int(lab.max()) + 1)]
    return ImageDataset(
        images=torch.from_numpy(np.stack(images)).float() * 2 - 1,  # [N, C, S, S] in [-1, 1]
        labels=lab,
        masks=torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)) if have_masks else None,
        class_names=names, files=used, skipped=skipped)


def phantom_dataset(spec: PhantomSpec, image_size: int, channels: int = 1) -> ImageDataset:
    """The bundled phantom rendered at `image_size`, with its lesion masks."""
    from medgan.phantom import CLASS_NAMES, make_phantom

    images, labels, masks = make_phantom(spec, size=image_size)  # [N, S, S], [N], [N, S, S]
    x = torch.from_numpy(images)[:, None] * 2 - 1  # [N, 1, S, S] in [-1, 1]
    return ImageDataset(images=x.repeat(1, channels, 1, 1), labels=torch.from_numpy(labels),
                        masks=torch.from_numpy(masks)[:, None].float(), class_names=list(CLASS_NAMES),
                        files=[f"phantom_{k:06d}" for k in range(spec.count)])


def training_dataset(cfg: TrainConfig, data_dir: Path | None) -> ImageDataset:
    """A training run's images: the folder `data_dir`, else the config's phantom (DataError if neither)."""
    if data_dir is not None:
        return load_dataset(Path(data_dir), cfg.image_size, cfg.channels)
    if cfg.phantom is not None:
        return phantom_dataset(cfg.phantom, cfg.image_size, cfg.channels)
    raise DataError("no training data: data_dir is None and the config has no phantom spec")
