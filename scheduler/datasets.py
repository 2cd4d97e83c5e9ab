"""Datasets in the store: local paths given on the CLI are uploaded once, read by any worker.

Layout: `datasets/<name>/<version>/<key>` plus `manifest.jsonl`. The version is a content hash,
so uploading the same folder twice stores it once.

An upload is sealed and atomic:
- the folder is scanned first (medgan.data.tree): a symlink that leaves it, dangles or loops, a
  FIFO or device, a name that is not UTF-8, an empty class folder or a file over the size limit
  refuses the upload before the first byte is written; so does the caller's `check` (the job's
  reader policy applied to every file's header);
- every file gets an object key that is safe whatever its name (`-x.png`, `$(rm).png`, spaces,
  unicode): safe names are kept, others are encoded with a hash; the manifest maps each key back
  to the file's own relative name, which is what the worker's copy (and labels.csv) uses;
- the manifest is the commit point: written last, it makes the dataset exist. A failed upload
  deletes what it wrote; one whose process died is removed by the sweeper once its marker under
  `datasets/_pending/` has not been refreshed for `upload_stale_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Callable

from scheduler import constants as C
from scheduler.errors import MedganUserError, NotFound, StoreError
from scheduler.store import Store, sha256_file, validate_key

MANIFEST = "manifest.jsonl"
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=+-]{0,119}$")

Check = Callable[[list], None]  # gets the scanned entries; raises MedganUserError to refuse


def dataset_name(path: Path) -> str:
    name = _NAME_BAD.sub("-", path.resolve().name).strip("-._") or "dataset"
    return name[:100]


def key_segment(seg: str) -> str:
    """A store-safe key segment for one path segment: itself when safe, else a readable
    sanitised form plus a hash of the original (injective in practice; collisions are refused)."""
    if _SAFE_SEGMENT.match(seg):
        return seg
    stem, dot, ext = seg.rpartition(".")
    if not dot or not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext):
        stem, ext = seg, ""
    base = _NAME_BAD.sub("_", stem).lstrip(".-")[:80] or "_"
    if not re.match(r"[A-Za-z0-9_]", base):
        base = "_" + base
    digest = hashlib.sha256(seg.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{base}={digest}" + (f".{ext}" if ext else "")


def object_key(rel: str) -> str:
    return "/".join(key_segment(s) for s in rel.split("/"))


def _refuse(path: Path, what: str) -> MedganUserError:
    return MedganUserError(f"dataset {path}: {what}; nothing was uploaded")


def scan(path: Path, max_file_bytes: int | None = None) -> list:
    """The sealed file list of a dataset folder (medgan.data.tree entries); MedganUserError if unfit."""
    from medgan.data.tree import scan_tree

    tree = scan_tree(path)
    if tree.problems:
        raise _refuse(path, tree.describe_problems())
    if not tree.entries:
        hidden = f" ({tree.hidden} hidden files are not uploaded)" if tree.hidden else ""
        raise MedganUserError(f"dataset path holds no files: {path}{hidden}")
    if tree.root.is_dir():
        used = {e.rel.split("/", 1)[0] for e in tree.entries if "/" in e.rel}
        empty = sorted(d.name for d in os.scandir(tree.root)
                       if d.is_dir() and not d.name.startswith(".") and d.name not in used)
        if empty:
            raise _refuse(path, f"folder {empty[0]!r} holds no files (first-level folders are classes; "
                          "remove it or add its images)")
    if max_file_bytes is not None:
        big = [e for e in tree.entries if e.size > max_file_bytes]
        if big:
            raise _refuse(path, f"{big[0].rel} is {big[0].size:,} bytes, over the limit of {max_file_bytes:,} "
                          "(MEDGAN_MAX_FILE_BYTES)")
    return tree.entries


def upload_dataset(store: Store, path: Path, name: str | None = None, *, check: Check | None = None,
                   max_file_bytes: int | None = None) -> str:
    """Upload a file or folder; returns its key `datasets/<name>/<version>`. Raises MedganUserError for
    anything unfit, before anything is written."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        raise MedganUserError(f"dataset path does not exist: {path}")
    files = scan(path, max_file_bytes)
    keys = [object_key(e.rel) for e in files]
    if len(set(keys)) != len(keys) or MANIFEST in keys:
        raise _refuse(path, "two file names map to the same object key (or one is named manifest.jsonl)")
    if check is not None:
        check(files)
    entries = [{"path": e.rel, "key": k, "size": e.size, "sha256": sha256_file(e.path)} for e, k in zip(files, keys)]
    version = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]
    name = name or dataset_name(path)
    prefix = validate_key(f"{C.PREFIX_DATASETS}/{name}/{version}")
    if store.exists(f"{prefix}/{MANIFEST}"):
        return prefix  # same content already stored
    _commit(store, prefix, name, version, files, entries)
    return prefix


def seal(store: Store, root: str, name: str, files: list[Path], entries: list[dict]) -> str:
    """Upload other content-addressed trees (code snapshots, scheduler/code.py) with the same commit protocol:
    `entries` (path, key, size, sha256, …) describe `files`; the version is the hash of the entries; the
    manifest is written last; a failed upload is cleaned up. Returns `<root>/<name>/<version>`."""
    from types import SimpleNamespace

    version = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]
    prefix = validate_key(f"{root}/{name}/{version}")
    if not store.exists(f"{prefix}/{MANIFEST}"):
        _commit(store, prefix, name, version, [SimpleNamespace(path=f) for f in files], entries)
    return prefix


def header_check(policy) -> Check:  # noqa: ANN001 - a medgan.data ReadPolicy
    """A `check` that applies a job's reader policy to every file's header (no pixel decoded), and
    parses labels.csv: a file the job would refuse is refused at submission, naming it."""
    from medgan.data.inputs import is_mask, looks_like_image
    from medgan.data.labels import read_labels
    from medgan.data.readers import read_header
    from medgan.data.report import ReadError
    from medgan.errors import DataError

    def check(files: list) -> None:
        for e in files:
            try:
                if e.rel == "labels.csv":
                    read_labels(e.path)
                elif not is_mask(e.rel) and looks_like_image(e):
                    read_header(e.path, policy, e.rel)
            except ReadError as err:
                if policy.on_error == "fail":
                    raise MedganUserError(f"{err}; nothing was uploaded (read.on_error=skip would skip it)") from None
            except DataError as err:
                raise MedganUserError(f"{err}; nothing was uploaded") from None

    return check


def _marker(name: str, version: str) -> str:
    return f"{C.PREFIX_PENDING_UPLOADS}/{name}/{version}.json"


def _commit(store: Store, prefix: str, name: str, version: str, files: list, entries: list[dict]) -> None:
    marker = _marker(name, version)
    beat = lambda: store.put_bytes(marker, json.dumps(  # noqa: E731
        {"prefix": prefix, "refreshed": time.time(), "pid": os.getpid()}).encode())
    beat()
    written: list[str] = []
    last = time.monotonic()
    try:
        for f, e in zip(files, entries):
            key = f"{prefix}/{e['key']}"
            info = store.put_file(key, f.path)
            written.append(key)
            if info.sha256 != e["sha256"]:
                raise StoreError(f"{e['path']} changed while uploading")
            if time.monotonic() - last > C.UPLOAD_REFRESH_SECONDS:
                beat()
                last = time.monotonic()
        manifest = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
        store.put_bytes(f"{prefix}/{MANIFEST}", manifest)  # the commit point
    except BaseException:
        if not _exists(store, f"{prefix}/{MANIFEST}"):  # a concurrent upload of the same content may own them
            for key in written:
                _try(lambda k=key: store.delete(k))
        _try(lambda: store.delete(marker))
        raise
    _try(lambda: store.delete(marker))


def _exists(store: Store, key: str) -> bool:
    try:
        return store.exists(key)
    except Exception:  # the store is down: keep the objects, the sweeper decides later
        return True


def _try(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:  # cleanup is best effort; the sweeper removes what is left
        pass


def sweep_uploads(store: Store, stale_seconds: float, now: float | None = None) -> int:
    """Remove half-written uploads whose marker went stale (their process died). Returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for obj in list(store.list(f"{C.PREFIX_PENDING_UPLOADS}/")):
        try:
            info = json.loads(store.get_bytes(obj.key))
            prefix, refreshed = validate_key(str(info["prefix"])), float(info["refreshed"])
        except NotFound:
            continue
        except (ValueError, KeyError, TypeError):
            store.delete(obj.key)  # a marker that is no marker
            continue
        if now - refreshed < stale_seconds:
            continue
        if not store.exists(f"{prefix}/{MANIFEST}"):
            for part in list(store.list(f"{prefix}/")):
                store.delete(part.key)
            removed += 1
        store.delete(obj.key)
    return removed


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


def local_path(rel: str) -> str:
    """A manifest's file name as a path inside the dataset folder; InvalidKey-like refusal if it is not."""
    from scheduler.errors import InvalidKey

    parts = PurePosixPath(rel).parts
    if (not rel or rel.startswith("/") or "\x00" in rel or any(p in ("..", ".") for p in parts)
            or any(c < " " for c in rel)):
        raise InvalidKey(f"invalid file name in a dataset manifest: {rel!r}")
    return rel


def download_dataset(store: Store, key: str, cache_root: Path) -> Path:
    """Materialise a dataset in a local cache (by version, checked by sha256); returns its folder.

    Files keep the names they had in the uploaded folder (labels.csv refers to them)."""
    dest = (cache_root / key).resolve()
    marker = dest / ".complete"
    if marker.exists():
        return dest
    for entry in read_manifest(store, key):
        obj = validate_key(entry.get("key", entry["path"]))  # a manifest cannot point outside its prefix
        target = dest / local_path(entry["path"])
        if dest not in target.resolve().parents:
            raise StoreError(f"{key}: manifest entry {entry['path']!r} leaves the dataset folder")
        store.get_file(f"{key}/{obj}", target)
        if sha256_file(target) != entry["sha256"]:
            raise StoreError(f"{key}/{obj} is corrupt (sha256 mismatch)")
    dest.mkdir(parents=True, exist_ok=True)
    marker.write_text("ok\n")
    return dest
