"""examples/ run as a user runs them: a subprocess against the embedded defaults (MEDGAN_HOME in tmp,
`medgan db upgrade`, a real `medgan worker --gpus none`), then the output folder is checked here as well."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import MEDGAN, ROOT, medgan_env, worker_process

EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_bulk_generate_help() -> None:
    done = _run([sys.executable, str(EXAMPLES / "bulk_generate.py"), "--help"], medgan_env(), ROOT, 60)
    assert done.returncode == 0, done.stderr
    for flag in ("--count", "--shards", "--out", "--steps"):
        assert flag in done.stdout


def test_bulk_generate_embedded(env_home: Path, tmp_path: Path) -> None:
    env = medgan_env()
    done = _run([*MEDGAN, "db", "upgrade"], env, tmp_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "synthetic"
    script = [sys.executable, str(EXAMPLES / "bulk_generate.py"), "--count", "6", "--shards", "2",
              "--out", str(out), "--steps", "4"]
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log", env=env):
        first = _run(script, env, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        # Progress lines while it waited, then one JSON summary line.
        assert "train " in first.stdout and "generate " in first.stdout and "SUCCEEDED" in first.stdout
        summary = json.loads(first.stdout.strip().splitlines()[-1])
        assert summary["images"] == 6 and summary["labels"] == {"0": 3, "1": 3} and summary["shards"] == 2

        # The same arguments again: both jobs are found by their idempotency keys, nothing runs twice.
        again = _run(script, env, tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("reusing the finished job") == 2, again.stdout
        summary2 = json.loads(again.stdout.strip().splitlines()[-1])
        assert (summary2["train_job"], summary2["generate_job"]) == (summary["train_job"], summary["generate_job"])

    # The folder, checked independently of the script.
    rows = list(csv.DictReader((out / "manifest.csv").open(newline="")))
    assert sorted(int(r["index"]) for r in rows) == list(range(6))
    assert Counter(int(r["label"]) for r in rows) == {0: 3, 1: 3}
    assert {Path(r["file"]).parent.as_posix() for r in rows} == {"images/shard-0000", "images/shard-0001"}
    for row in rows:
        assert hashlib.sha256((out / row["file"]).read_bytes()).hexdigest() == row["sha256"], row["file"]
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(r["file"] for r in rows)


def test_bulk_generate_bad_arguments(env_home: Path, tmp_path: Path) -> None:
    done = _run([sys.executable, str(EXAMPLES / "bulk_generate.py"), "--count", "4", "--shards", "9"],
                medgan_env(), tmp_path, 60)
    assert done.returncode == 2 and "--shards" in done.stderr


# --- the client's scripting helpers (scheduler.client), as the examples use them ---------------------------------


def test_client_docstring_examples_validate() -> None:
    """The specs in help(Client) are valid specs (a doc example that fails is worse than none)."""
    from scheduler.client import Client
    from scheduler.specs import parse_spec

    assert "submit" in Client.__doc__ and "download" in Client.__doc__ and "wait" in Client.__doc__
    parse_spec({"kind": "train", "config": {"steps": 200, "image_size": 32, "phantom": {"count": 256, "size": 32}}})
    parse_spec({"kind": "generate", "source_job": "0" * 12, "shards": 4,
                "config": {"count": 100, "class_counts": {0: 50, 1: 50}}})
    for name in ("submit", "submit_many", "wait", "wait_all", "jobs", "children", "artifacts", "download"):
        assert getattr(Client, name).__doc__, name


def test_client_submit_many_and_wait_all(embedded, tmp_path: Path) -> None:
    from scheduler.client import Client
    from scheduler.errors import SpecError

    c = Client(embedded)
    with pytest.raises(SpecError, match=r"request 1: .*sleep"):
        c.submit_many([{"kind": "noop"}, {"kind": "noop", "sleep": -1}])
    assert c.jobs(limit=10) == []  # one bad request: nothing written

    seen: list[int] = []
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log"):
        made = c.submit_many([{"kind": "noop", "sleep": 0.2, "name": f"n{i}"} for i in range(3)]
                             + [{"kind": "noop", "fail": "on purpose", "idempotency_key": "k1"}])
        assert [j["name"] for j in made[:3]] == ["n0", "n1", "n2"]
        done = c.wait_all([j["id"] for j in made], timeout=60, poll=0.2,
                          on_progress=lambda jobs: seen.append(len(jobs)))
    assert [j["id"] for j in done] == [j["id"] for j in made]
    assert [j["status"] for j in done] == ["SUCCEEDED"] * 3 + ["FAILED"]
    assert seen and set(seen) == {4}
    assert c.submit("noop", idempotency_key="k1")["id"] == made[3]["id"]
    assert c.children(made[0]["id"]) == []
    with pytest.raises(TimeoutError):
        c.wait_all([c.submit("noop")["id"]], timeout=0.1, poll=0.05)  # no worker now: stays QUEUED
