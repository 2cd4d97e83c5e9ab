"""Locked installs: one lock (deploy/constraints.txt) pins `make install/demo/test` and the Docker images alike,
it covers every requirement of pyproject.toml (runtime and the test extra) with a version the range admits,
it is closed under dependencies, and this environment is what it says."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "constraints.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin in the lock: {line!r}"
            pins[_norm(name)] = version
    return pins


def _project_requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["test"]]


def test_every_requirement_is_pinned_within_its_range():
    pins = _pins()
    for req in _project_requirements():
        assert _norm(req.name) in pins, f"{req.name} is not in {LOCK.name}: run `make lock`"
        assert req.specifier.contains(Version(pins[_norm(req.name)]), prereleases=True), \
            f"{req.name}=={pins[_norm(req.name)]} is outside {req.specifier}: run `make lock`"
    assert pins["torch"] == "2.13.0"  # the CPU wheel on the machine; a newer pin would fetch a CUDA build


def test_the_lock_is_closed_and_matches_this_environment():
    pins, env = _pins(), default_environment()
    for name, version in pins.items():
        dist = metadata.distribution(name)
        assert dist.version.split("+")[0] == version, f"installed {name} {dist.version}, locked {version}"
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not req.marker.evaluate({**env, "extra": ""}):
                continue
            assert _norm(req.name) in pins, f"{name} needs {req.name}, which the lock leaves unpinned"


def test_make_and_the_images_install_from_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert "LOCK := deploy/constraints.txt" in make
    assert re.search(r"pip install -q -c \$\(LOCK\) -e '\.\[test\]'", make) and "-c $(LOCK) $(TORCH)" in make
    assert re.search(r"^lock:", make, re.M) and "pin_constraints.py > $(LOCK)" in make
    for image in ("Dockerfile.worker", "Dockerfile.cli"):
        assert "pip install -c deploy/constraints.txt ." in (ROOT / "deploy" / image).read_text(), image
