"""Datasets in the store: local paths given on the CLI are uploaded once, read by any worker.

Layout: `datasets/<name>/<version>/<relative path>` plus `manifest.jsonl` (written last, so a
dataset without a manifest is incomplete). The version is a content hash, so uploading the
same folder twice stores it once.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from scheduler import constants as C
from scheduler.errors import MedganUserError, NotFound, StoreError
from scheduler.store import Store, sha256_file, validate_key

MANIFEST = "manifest.jsonl"
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def dataset_name(path: Path) -> str:
    name = _NAME_BAD.sub("-", path.resolve().name).strip("-.") or "dataset"
    return name[:100]


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))


def _rel(root: Path, path: Path) -> str:
    rel = path.name if root.is_file() else path.relative_to(root).as_posix()
    # Object keys take a safe alphabet; spaces and the like become '_'.
    return "/".join(_NAME_BAD.sub("_", seg) for seg in rel.split("/"))


def upload_dataset(store: Store, path: Path, name: str | None = None) -> str:
    """Upload a file or folder; returns its key `datasets/<name>/<version>`. Raises MedganUserError for bad paths."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MedganUserError(f"dataset path does not exist: {path}")
    files = _files(path)
    if not files:
        raise MedganUserError(f"dataset path holds no files: {path}")
    entries = []
    for f in files:
        entries.append({"path": _rel(path, f), "size": f.stat().st_size, "sha256": sha256_file(f)})
    rels = [e["path"] for e in entries]
    if len(set(rels)) != len(rels):
        raise MedganUserError(f"dataset {path} has file names that collide once made key-safe")
    version = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]
    name = name or dataset_name(path)
    prefix = validate_key(f"{C.PREFIX_DATASETS}/{name}/{version}")
    if store.exists(f"{prefix}/{MANIFEST}"):
        return prefix  # same content already stored
    for f, e in zip(files, entries):
        info = store.put_file(f"{prefix}/{e['path']}", f)
        if info.sha256 != e["sha256"]:
            raise StoreError(f"{f} changed while uploading")
    manifest = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
    store.put_bytes(f"{prefix}/{MANIFEST}", manifest)
    return prefix


def read_manifest(store: Store, key: str) -> list[dict]:
    try:
        raw = store.get_bytes(f"{key}/{MANIFEST}")
    except NotFound:
        raise NotFound(f"dataset {key} is missing or incomplete (no manifest)") from None
    try:
        entries = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        if not all(isinstance(e, dict) and "path" in e and "sha256" in e for e in entries):
            raise ValueError("an entry lacks path/sha256")
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"dataset {key} has a corrupt {MANIFEST}: {str(exc).splitlines()[0]}") from None
    return entries


def download_dataset(store: Store, key: str, cache_root: Path) -> Path:
    """Materialise a dataset in a local cache (by version, checked by sha256); returns its folder."""
    dest = (cache_root / key).resolve()
    marker = dest / ".complete"
    if marker.exists():
        return dest
    for entry in read_manifest(store, key):
        rel = validate_key(entry["path"])  # a manifest cannot point outside the folder
        target = dest / rel
        store.get_file(f"{key}/{rel}", target)
        if sha256_file(target) != entry["sha256"]:
            raise StoreError(f"{key}/{rel} is corrupt (sha256 mismatch)")
    dest.mkdir(parents=True, exist_ok=True)
    marker.write_text("ok\n")
    return dest
