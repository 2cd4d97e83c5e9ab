"""Which files of a dataset folder are images, masks and labels (no pixel decoded).

An image is a file whose extension names an image format, or whose first bytes do (a DICOM
named `IM0001` is an image; a `README.txt` is not). Masks are `masks/<stem>.*` or
`<stem>_mask.*`; labels come from a `labels.csv` at the root. Pure standard library + the
format sniffer: the worker lists an enhance job's inputs with it, without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medgan.data.formats import extension_format, sniff
from medgan.data.tree import Entry, scan_tree
from medgan.errors import DataError

MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")


@dataclass
class Inputs:
    root: Path
    images: list[Entry] = field(default_factory=list)
    masks: dict[str, Entry] = field(default_factory=dict)  # rel -> entry
    labels_csv: Entry | None = None
    class_dirs: list[str] = field(default_factory=list)  # first-level folders (classes when no labels.csv)
    notes: dict[str, int] = field(default_factory=dict)


def is_mask(rel: str) -> bool:
    parts = rel.split("/")
    return "masks" in parts[:-1] or parts[-1].lower().split(".")[0].endswith("_mask")


def looks_like_image(entry: Entry) -> bool:
    if extension_format(entry.path) is not None or extension_format(Path(entry.rel)) is not None:
        return True
    try:
        with open(entry.path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return True  # let the reader name the problem
    return sniff(head, entry.path) is not None


def list_inputs(path: Path) -> Inputs:
    """Images, masks and labels.csv under `path` (a folder or one file); DataError for a broken tree."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist")
    tree = scan_tree(path)
    if tree.problems:
        raise DataError(f"dataset {path.name}: {tree.describe_problems()}")
    out = Inputs(tree.root)
    ignored = 0
    for e in tree.entries:
        if e.rel == "labels.csv" and path.is_dir():
            out.labels_csv = e
        elif is_mask(e.rel) and path.is_dir():
            out.masks[e.rel] = e
        elif looks_like_image(e):
            out.images.append(e)
        else:
            ignored += 1
    if tree.hidden:
        out.notes["hidden files and folders left out"] = tree.hidden
    if ignored:
        out.notes["files that are no images left out"] = ignored
    if path.is_dir():
        found = {e.rel.split("/", 1)[0] for e in out.images if "/" in e.rel}
        on_disk = {d.name for d in os.scandir(tree.root) if d.is_dir() and not d.name.startswith(".")}
        out.class_dirs = sorted((found | on_disk) - {"masks"})
    if not out.images:
        extra = ", ".join(f"{v} {k}" for k, v in out.notes.items())
        raise DataError(f"no image files found under {path.name}" + (f" ({extra})" if extra else ""))
    return out


def mask_for(inputs: Inputs, rel: str) -> Entry | None:
    """The mask beside image `rel`: `<stem>_mask.*`, `<dir>/masks/<stem>.*` or `masks/<stem>.*`."""
    parent, _, name = rel.rpartition("/")
    stem = name.split(".")[0]
    base = f"{parent}/" if parent else ""
    for cand in (f"{base}{stem}_mask", f"{base}masks/{stem}", f"masks/{stem}"):
        for ext in MASK_EXTS:
            if cand + ext in inputs.masks:
                return inputs.masks[cand + ext]
    return None
