"""In-memory image datasets built from folders, single files or the phantom.

Everything is decoded, resized and normalised once at load time into one tensor
[N, C, S, S] in [-1, 1]: GAN training samples random batches every step, and per-step
seeded indexing of a tensor is both fast and exactly reproducible after a resume.

Files come from `medgan.data.tree` (sealed: nothing outside the root), pixels from
`read_image` under one ReadPolicy, labels from labels.csv or first-level sub-folders.
Nothing is reshaped silently: an unreadable file fails the load naming it (on_error=fail),
or is skipped and counted by reason in `ImageDataset.report` (on_error=skip).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medgan.config import PhantomSpec, TrainConfig
from medgan.data.inputs import Inputs, list_inputs, mask_for
from medgan.data.labels import read_labels
from medgan.data.policy import ReadPolicy
from medgan.data.readers import Image, read_image
from medgan.data.report import ReadError, ReadReport
from medgan.errors import DataError

log = logging.getLogger(__name__)
SKIP_HINT = " (read.on_error=skip skips such files and counts them)"


@dataclass
class ImageDataset(Dataset):
    """images [N, C, S, S] float32 in [-1, 1]; labels [N] int64; masks [N, 1, S, S] in {0, 1} or None.

    `report` counts files read and skipped by reason; `skipped` lists (file, reason) for each
    skipped file; `class_names[k]` names label k.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    report: ReadReport = field(default_factory=ReadReport)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        mask = self.masks[i] if self.masks is not None else None
        return self.images[i], int(self.labels[i]), mask

    @property
    def num_classes(self) -> int:
        return max(len(self.class_names), int(self.labels.max()) + 1 if len(self) else 0)


def square(frame: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
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


def _chw(frame: np.ndarray) -> np.ndarray:
    """[H, W] -> [1, H, W]; [H, W, 3] -> [3, H, W] (the reader already made the colour the policy's)."""
    return frame[None] if frame.ndim == 2 else np.moveaxis(frame, -1, 0)


class _Labeller:
    """Labels per image file: labels.csv, else first-level sub-folder names, else one class."""

    def __init__(self, inputs: Inputs, policy: ReadPolicy, report: ReadReport):
        self.report, self.fail = report, policy.on_error == "fail"
        self.table = read_labels(inputs.labels_csv.path) if inputs.labels_csv else None
        self.by_folder = self.table is None and any("/" in e.rel for e in inputs.images)
        self.class_dirs = inputs.class_dirs if self.by_folder else []
        if self.table is not None:
            self._check_rows(inputs)
            raw = [v for v, _ in self.table.rows.values()]
            if self.table.duplicates:
                report.note("labels.csv rows repeated with the same label", self.table.duplicates)
            if all(v.lstrip("-").isdigit() for v in raw):
                ids = sorted({int(v) for v in raw})
                if ids[0] < 0:
                    raise DataError(f"labels.csv: negative label {ids[0]}")
                self.names = [self.table.class_names.get(k, str(k)) for k in range(ids[-1] + 1)]
                self.index = {str(k): k for k in ids} | {v: int(v) for v in raw}
            else:
                self.names = sorted(set(raw))
                self.index = {v: i for i, v in enumerate(self.names)}
        elif self.by_folder:
            self.names = sorted(self.class_dirs)
            self.index = {n: i for i, n in enumerate(self.names)}
        else:
            self.names, self.index = ["0"], {}

    def _check_rows(self, inputs: Inputs) -> None:
        """Every row names a file of the dataset (by path, or by a name that is unique)."""
        rels = {e.rel for e in inputs.images}
        names: dict[str, list[str]] = {}
        for r in rels:
            names.setdefault(r.rsplit("/", 1)[-1], []).append(r)
        self.lookup: dict[str, str] = {}
        missing = []
        for key, (label, line) in self.table.rows.items():
            raw = self.table.raw.get(key, key)
            if key in rels or raw in rels:
                self.lookup[key if key in rels else raw] = label
            elif "/" not in key and len(names.get(key, [])) == 1:
                self.lookup[names[key][0]] = label
            elif "/" not in key and len(names.get(key, [])) > 1:
                raise DataError(f"labels.csv line {line}: {key} matches {len(names[key])} files "
                                f"({', '.join(sorted(names[key])[:3])}); give its path")
            else:
                missing.append((key, line))
        if missing:
            key, line = missing[0]
            if self.fail:
                raise DataError(f"labels.csv line {line} names {key}, which is not an image of the dataset "
                                f"({len(missing)} such rows){SKIP_HINT}")
            self.report.note("labels.csv rows naming files not in the dataset", len(missing))

    def label_of(self, rel: str) -> int:
        if self.table is not None:
            if rel not in self.lookup:
                raise ReadError(rel, "unlabelled", "image is not in labels.csv")
            return self.index[self.lookup[rel]]
        if self.by_folder:
            if "/" not in rel:
                raise ReadError(rel, "unlabelled", "image is outside every class folder (sub-folders are the "
                                "classes)")
            return self.index[rel.split("/", 1)[0]]
        return 0


def load_dataset(path: Path, image_size: int, channels: int, *, policy: ReadPolicy | None = None,
                 on_error: str | None = None, nifti_axis: int | None = None) -> ImageDataset:
    """Read a folder (or one file) of PNG/JPEG/TIFF/BMP/DICOM/NIfTI/npz into an ImageDataset.

    Labels come from `labels.csv` (file,label[,class]) or first-level sub-folder names (sorted);
    masks from `masks/<stem>.png` or `<stem>_mask.png`, used when every image has one. Files are
    read under `policy` (its colour set by `channels`; `on_error`/`nifti_axis` override it).
    Raises DataError naming the file (and line) at fault.
    """
    policy = policy or ReadPolicy()
    update = {k: v for k, v in (("on_error", on_error), ("slice_axis", nifti_axis)) if v is not None}
    policy = policy.model_copy(update=update).for_channels(channels)
    inputs = list_inputs(Path(path))
    report = ReadReport(notes=dict(inputs.notes))
    labeller = _Labeller(inputs, policy, report)
    images, labels, masks, used, skipped = [], [], [], [], []
    per_class = dict.fromkeys(range(len(labeller.names)), 0)
    for entry in inputs.images:
        try:
            label = labeller.label_of(entry.rel)
            img = read_image(entry.path, policy, name=entry.rel)
            own_masks = img.masks if img.masks is not None else _mask(inputs, entry.rel, img, policy)
        except ReadError as err:
            if policy.on_error == "fail":
                raise DataError(f"{err}{SKIP_HINT}") from None
            report.skip(err)
            skipped.append((err.file, err.detail))
            continue
        _account(report, img)
        for j in range(len(img)):
            images.append(_chw(square(img.frame(j), image_size)))
            labels.append(int(img.labels[j]) if img.labels is not None else label)
            m = own_masks[j] if own_masks is not None else None
            masks.append(None if m is None else square(m.astype(np.float32), image_size, nearest=True) > 0.5)
            used.append(entry.rel if len(img) == 1 else f"{entry.rel}#{img.indices[j]}")
            per_class[labels[-1]] = per_class.get(labels[-1], 0) + 1
    if not images:
        first = f"; {report.skipped_total} skipped (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"dataset {Path(path).name} has no readable images{first}")
    _check_classes(labeller, per_class)
    have_masks = all(m is not None for m in masks)
    if not have_masks and any(m is not None for m in masks):
        report.note("masks found for only some images: masks not used")
    if report.skipped:
        log.warning("%s", report.line())
    report.publish()
    lab = torch.as_tensor(labels, dtype=torch.int64)
    names = labeller.names if len(labeller.names) >= int(lab.max()) + 1 else [str(k) for k in range(int(lab.max()) + 1)]
    return ImageDataset(
        images=torch.from_numpy(np.stack(images)).float() * 2 - 1,  # [N, C, S, S] in [-1, 1]
        labels=lab,
        masks=torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)) if have_masks else None,
        class_names=names, files=used, skipped=skipped, report=report)


def _account(report: ReadReport, img: Image) -> None:
    report.files_read += 1
    report.images += len(img)
    report.formats[img.format] = report.formats.get(img.format, 0) + 1
    for n in img.notes:
        report.note(n)
    if img.dropped_empty:
        report.note("near-constant volume slices left out", img.dropped_empty)


def _mask(inputs: Inputs, rel: str, img: Image, policy: ReadPolicy) -> list[np.ndarray] | None:
    """The mask beside an image, as bool [H, W] in a one-item list; ReadError when it does not fit."""
    entry = mask_for(inputs, rel)
    if entry is None:
        return None
    if len(img) != 1:
        raise ReadError(rel, "bad_mask", f"has {len(img)} frames; masks beside multi-frame files are not read")
    mpol = policy.model_copy(update={"color": "gray", "frames": "refuse", "scaling": "dtype", "min_side": 1})
    try:
        m = read_image(entry.path, mpol, name=entry.rel).frame(0) > 0
    except ReadError as err:
        raise ReadError(rel, "bad_mask", f"its mask {err}") from None
    if m.shape != img.frame(0).shape[:2]:
        raise ReadError(rel, "bad_mask", f"image is {img.frame(0).shape[1]} x {img.frame(0).shape[0]} but its "
                        f"mask {entry.rel} is {m.shape[1]} x {m.shape[0]}")
    return [m]


def _check_classes(labeller: _Labeller, per_class: dict[int, int]) -> None:
    """A class without images would make a conditional model of fewer classes than the data says."""
    if labeller.by_folder or labeller.table is not None:
        empty = [labeller.names[k] for k, n in sorted(per_class.items()) if n == 0 and k < len(labeller.names)]
        if empty:
            where = "class folder" if labeller.by_folder else "class"
            raise DataError(f"{where} {empty[0]!r} holds no readable images"
                            + (f" ({len(empty)} empty classes)" if len(empty) > 1 else ""))


def phantom_dataset(spec: PhantomSpec, image_size: int, channels: int = 1) -> ImageDataset:
    """The bundled phantom rendered at `image_size`, with its lesion masks."""
    from medgan.phantom import CLASS_NAMES, make_phantom

    images, labels, masks = make_phantom(spec, size=image_size)  # [N, S, S], [N], [N, S, S]
    x = torch.from_numpy(images)[:, None] * 2 - 1  # [N, 1, S, S] in [-1, 1]
    return ImageDataset(images=x.repeat(1, channels, 1, 1), labels=torch.from_numpy(labels),
                        masks=torch.from_numpy(masks)[:, None].float(), class_names=list(CLASS_NAMES),
                        files=[f"phantom_{k:06d}" for k in range(spec.count)],
                        report=ReadReport(files_read=0, images=spec.count, formats={"phantom": spec.count}))


def training_dataset(cfg: TrainConfig, data_dir: Path | None) -> ImageDataset:
    """A training run's images: the folder `data_dir`, else the config's phantom (DataError if neither)."""
    if data_dir is not None:
        return load_dataset(Path(data_dir), cfg.image_size, cfg.channels, policy=cfg.read)
    if cfg.phantom is not None:
        return phantom_dataset(cfg.phantom, cfg.image_size, cfg.channels)
    raise DataError("no training data: data_dir is None and the config has no phantom spec")
