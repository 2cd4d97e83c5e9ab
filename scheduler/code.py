"""Code snapshots for `medgan run`: a working directory, uploaded once, content-addressed, read by any worker.

Which files: in a git work tree, exactly what git would commit (`git ls-files --cached --others
--exclude-standard`: tracked files plus untracked ones that no .gitignore excludes); elsewhere every file
that the .gitignore files of the folder (nested ones included, with git's rules via pathspec) do not
exclude. Never: `.git/`, `.env*` files (secrets), `__pycache__/`, virtual environments, and medgan's own
home folder when it lies inside. A snapshot over `CODE_MAX_BYTES` or `CODE_MAX_FILES` is refused with the
largest files named: data belongs in `--data`, which is uploaded as a dataset.

Layout: `code/<name>/<version>/blobs/<sha256>` (one object per distinct content, so any file name works)
and `manifest.jsonl` (path, size, sha256, executable), written last by `datasets.seal`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

from scheduler import constants as C
from scheduler.datasets import dataset_name, read_manifest, seal
from scheduler.errors import MedganUserError, StoreError
from scheduler.store import Store, sha256_file

ALWAYS_EXCLUDED_DIRS = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}


def _excluded(rel: PurePosixPath) -> bool:
    return any(p in ALWAYS_EXCLUDED_DIRS for p in rel.parts[:-1]) or rel.name.startswith(".env") \
        or rel.suffix == ".pyc"


def _git_files(root: Path) -> list[str] | None:
    """Paths git would commit from `root` (relative to it), or None outside a git work tree."""
    if shutil.which("git") is None:
        return None
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                              "--", "."], capture_output=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted({p for p in out.decode("utf-8", "surrogateescape").split("\0") if p})


def _gitignore_files(root: Path) -> list[str]:
    """Outside git: walk the folder, applying every .gitignore found (git's pattern rules, via pathspec)."""
    from pathspec import GitIgnoreSpec

    found: list[str] = []
    specs: list[tuple[PurePosixPath, GitIgnoreSpec]] = []

    def ignored(rel: PurePosixPath, is_dir: bool) -> bool:
        for base, spec in specs:
            if base == PurePosixPath(".") or base in rel.parents:
                sub = rel.relative_to(base) if base != PurePosixPath(".") else rel
                if spec.match_file(str(sub) + ("/" if is_dir else "")):
                    return True
        return False

    for dirpath, dirnames, filenames in os.walk(root):
        here = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        gi = Path(dirpath) / ".gitignore"
        if gi.is_file():
            specs.append((here, GitIgnoreSpec.from_lines(gi.read_text(errors="replace").splitlines())))
        dirnames[:] = sorted(d for d in dirnames if d not in ALWAYS_EXCLUDED_DIRS and not ignored(here / d, True))
        found += [str(here / f) if str(here) != "." else f for f in sorted(filenames) if not ignored(here / f, False)]
    return found


def code_files(root: Path, exclude: list[Path] = ()) -> list[tuple[str, Path]]:
    """[(relative posix path, file)] of the snapshot of `root`: regular files (symlinks only to files inside)."""
    root = root.resolve()
    rels = _git_files(root)
    rels = _gitignore_files(root) if rels is None else rels
    skip = [e.resolve() for e in exclude]
    out = []
    for rel in rels:
        path = root / rel
        pure = PurePosixPath(rel)
        if _excluded(pure):
            continue
        try:
            real = path.resolve()
        except OSError:
            continue
        if not path.is_file() or (root not in real.parents) or any(s == real or s in real.parents for s in skip):
            continue
        out.append((rel, path))
    return out


def snapshot_code(store: Store, root: Path, name: str | None = None, *, exclude: list[Path] = (),
                  max_bytes: int = C.CODE_MAX_BYTES, max_files: int = C.CODE_MAX_FILES) -> str:
    """Upload the snapshot of `root` once; returns its key `code/<name>/<version>`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MedganUserError(f"code folder does not exist: {root}")
    files = code_files(root, list(exclude))
    if not files:
        raise MedganUserError(f"{root} holds no files to snapshot (all ignored?)")
    sizes = [(p.stat().st_size, rel) for rel, p in files]
    total = sum(n for n, _ in sizes)
    if len(files) > max_files or total > max_bytes:
        biggest = ", ".join(f"{rel} ({n / 1e6:.1f} MB)" for n, rel in sorted(sizes, reverse=True)[:3])
        raise MedganUserError(
            f"the code snapshot of {root} is {total / 1e6:.1f} MB in {len(files)} files (limit {max_bytes / 1e6:.0f} MB, "
            f"{max_files} files); largest: {biggest}. Add data and outputs to .gitignore and pass data with --data")
    entries = []
    for (rel, path), (size, _) in zip(files, sizes):
        digest = sha256_file(path)
        entries.append({"path": rel, "size": size, "sha256": digest, "key": f"blobs/{digest}",
                        "executable": bool(path.stat().st_mode & stat.S_IXUSR)})
    return seal(store, C.PREFIX_CODE, name or dataset_name(root), [p for _, p in files], entries)


def safe_relpath(rel: str) -> PurePosixPath:
    """A manifest path that stays inside its folder (any characters, but no '..', no absolute path)."""
    pure = PurePosixPath(rel)
    if not rel or "\0" in rel or pure.is_absolute() or any(p in ("", "..") for p in pure.parts) or "\\" in rel:
        raise StoreError(f"code manifest names an unsafe path {rel!r}")
    return pure


def materialise_code(store: Store, key: str, dest: Path) -> Path:
    """A fresh copy of snapshot `key` in `dest` (emptied first: a script may write into its folder), every
    file checked against its sha256, executable bits restored."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for entry in read_manifest(store, key):
        target = dest / safe_relpath(entry["path"])
        store.get_file(f"{key}/{entry.get('key', entry['path'])}", target)
        if sha256_file(target) != entry["sha256"]:
            raise StoreError(f"{key}: {entry['path']} is corrupt (sha256 mismatch)")
        if entry.get("executable"):
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return dest
