"""The packages stack in one direction: medgan (science) < scheduler < worker < cli (the face).

Every import statement in a package's modules, including imports inside functions, is read with `ast`; a
package may import only the packages below it. `cli` is the top floor, so nothing else imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("medgan", "scheduler", "worker", "cli", "migrations")
ALLOWED = {
    "medgan": {"medgan"},
    # scheduler.migrate finds the Alembic scripts (migrations/) to run `medgan db upgrade`.
    "scheduler": {"scheduler", "medgan", "migrations"},
    "worker": {"worker", "scheduler", "medgan"},
    "cli": {"cli", "worker", "scheduler", "medgan"},
    "migrations": {"migrations", "scheduler"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(_imports(path) - ALLOWED[package]):
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
