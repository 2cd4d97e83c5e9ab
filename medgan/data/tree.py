"""A dataset folder, sealed: the files under a root and nothing outside it.

Used by the upload (scheduler/datasets.py) before the first byte is written and by the reader
on any local folder. Symlinks are resolved: one that leaves the root, dangles or loops is a
problem, as is a FIFO/device (reading one blocks or never ends) and a name that is not UTF-8
or holds control characters. Hidden entries (a leading '.') are left out and counted.
Pure standard library: the CLI imports it without torch.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


@dataclass(frozen=True)
class Entry:
    rel: str  # relative posix path as named inside the dataset (what labels.csv refers to)
    path: Path  # where its bytes are (a symlink's resolved target inside the root)
    size: int


@dataclass(frozen=True)
class Problem:
    rel: str
    kind: str  # link_escapes | link_dangling | link_loop | special_file | bad_name
    detail: str

    def __str__(self) -> str:
        return f"{self.rel}: {self.detail}"


@dataclass
class Tree:
    root: Path
    entries: list[Entry] = field(default_factory=list)
    hidden: int = 0
    problems: list[Problem] = field(default_factory=list)

    def describe_problems(self) -> str:
        """One line: how many problems, and the first."""
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{first}{more}"


def _name_problem(name: str) -> str | None:
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return "file name is not valid UTF-8"
    if any(ch in _CONTROL for ch in name):
        return "file name holds control characters (newline, tab, ...)"
    return None


def _printable(rel: str) -> str:
    return os.fsencode(rel).decode("utf-8", "backslashreplace").replace("\n", "\\n").replace("\t", "\\t")


def scan_tree(root: Path) -> Tree:
    """Every regular file under `root` (a folder or one file), symlinks resolved and sealed."""
    root = Path(root).expanduser()
    real_root = root.resolve()
    tree = Tree(real_root)
    if real_root.is_file():
        name_issue = _name_problem(real_root.name)
        if name_issue:
            tree.problems.append(Problem(_printable(real_root.name), "bad_name", name_issue))
        else:
            tree.entries.append(Entry(real_root.name, real_root, real_root.stat().st_size))
        return tree
    _walk(tree, real_root, "", {real_root})
    tree.entries.sort(key=lambda e: e.rel)
    return tree


def _walk(tree: Tree, folder: Path, prefix: str, seen: set[Path]) -> None:
    try:
        items = sorted(os.scandir(folder), key=lambda d: d.name)
    except OSError as exc:
        tree.problems.append(Problem(prefix or ".", "special_file", f"cannot list folder: {exc.strerror}"))
        return
    for item in items:
        rel = f"{prefix}{item.name}"
        shown = _printable(rel)
        if item.name.startswith("."):
            tree.hidden += 1
            continue
        issue = _name_problem(item.name)
        if issue:
            tree.problems.append(Problem(shown, "bad_name", issue))
            continue
        path = Path(item.path)
        if item.is_symlink():
            target = _resolve_link(tree, path, shown)
            if target is None:
                continue
            if target.is_dir():
                if target in seen or any(p == target for p in path.parents):
                    tree.problems.append(Problem(shown, "link_loop", "symlink loops back to a folder above it"))
                    continue
                _walk(tree, target, rel + "/", seen | {target})
            elif target.is_file():
                tree.entries.append(Entry(rel, target, target.stat().st_size))
            else:
                tree.problems.append(Problem(shown, "special_file", "symlink to something that is not a file"))
            continue
        mode = item.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            _walk(tree, path, rel + "/", seen | {path.resolve()})
        elif stat.S_ISREG(mode):
            tree.entries.append(Entry(rel, path, item.stat(follow_symlinks=False).st_size))
        else:
            tree.problems.append(Problem(shown, "special_file", "not a regular file (FIFO, socket or device)"))


def _resolve_link(tree: Tree, path: Path, shown: str) -> Path | None:
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        tree.problems.append(Problem(shown, "link_loop", "symlink loops (it resolves to itself)"))
        return None
    except OSError as exc:
        if getattr(exc, "errno", None) == 40:  # ELOOP
            tree.problems.append(Problem(shown, "link_loop", "symlink loops (it resolves to itself)"))
        else:
            tree.problems.append(Problem(shown, "link_dangling",
                                         f"symlink points to {os.readlink(path)!r}, which does not exist"))
        return None
    if target != tree.root and tree.root not in target.parents:
        tree.problems.append(Problem(shown, "link_escapes", "symlink leaves the dataset folder (it points "
                                     f"outside {tree.root.name}/); copy the file in instead"))
        return None
    return target
