"""Bulk submission at the CLI: `medgan submit FILE.jsonl` and `--sweep`.

Every way to break a line, at every position of the file, is one clear line naming the file and line, exit
code 1, and no job written; the same file with no broken line goes in whole (the control).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from scheduler.db import Job, session_scope

runner = CliRunner()


def medgan(*args: str, stdin: str | None = None):
    from cli import app

    return runner.invoke(app, list(args), input=stdin)


def jobs_in(settings, *where) -> int:
    with session_scope(settings.db_url) as s:
        return s.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()


def assert_refused(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


GOOD = [{"kind": "noop", "name": f"job{i}", "sleep": 0.01 * i} for i in range(5)]
BROKEN_LINES = {
    "not JSON": ("{'kind': 'noop'}", "not JSON"),
    "truncated JSON": ('{"kind": "noop"', "not JSON"),
    "a list": ('[{"kind": "noop"}]', 'one JSON object with a "kind"'),
    "a string": ('"noop"', 'one JSON object with a "kind"'),
    "no kind": ('{"name": "x"}', 'one JSON object with a "kind"'),
    "kind not a string": ('{"kind": 3}', 'one JSON object with a "kind"'),
    "unknown kind": ('{"kind": "dream"}', "unknown job kind 'dream'"),
    "unknown field": ('{"kind": "noop", "colour": "red"}', "colour"),
    "bad value": ('{"kind": "noop", "sleep": -1}', "sleep"),
    "bad config": ('{"kind": "train", "config": {"image_size": 33}}', "image_size"),
    "config not a mapping": ('{"kind": "train", "config": [1]}', "config"),
    "unknown job referenced": ('{"kind": "noop", "depends_on": ["feedfacecafe"]}', "feedfacecafe"),
    "missing dataset path": ('{"kind": "enhance", "dataset": "/no/such/dir"}', "does not exist"),
    "bad sweep": ('{"kind": "train", "sweep": {"lr": [0.1, 7]}}', "sweep point lr=7"),
}


@pytest.mark.parametrize("position", [0, 2, 4])
def test_any_broken_line_anywhere_is_named_and_nothing_is_written(embedded, tmp_path: Path, position: int):
    for what, (line, needle) in BROKEN_LINES.items():
        lines = [json.dumps(g) for g in GOOD]
        lines[position] = line
        path = tmp_path / "jobs.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert_refused(medgan("submit", str(path)), f"line {position + 1}", needle)
        assert jobs_in(embedded) == 0, what
    # The control: the same file without the broken line goes in whole.
    path.write_text("\n".join(json.dumps(g) for g in GOOD) + "\n")
    assert medgan("submit", str(path)).exit_code == 0
    assert jobs_in(embedded) == len(GOOD)


def test_a_good_file_gives_one_id_per_line_in_order_and_can_be_resubmitted(embedded, tmp_path: Path):
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n\n".join(json.dumps(g) for g in GOOD) + "\n\n")  # blank lines are skipped
    first = medgan("submit", str(path), "--idempotency-key", "batch-1")
    assert first.exit_code == 0, first.output
    ids = [l for l in first.stdout.splitlines() if len(l) == 12]
    with session_scope(embedded.db_url) as s:
        names = [s.get(Job, i).name for i in ids]
    assert names == [g["name"] for g in GOOD]
    again = medgan("submit", str(path), "--idempotency-key", "batch-1")  # the same file, the same key
    assert [l for l in again.stdout.splitlines() if len(l) == 12] == ids
    assert jobs_in(embedded) == len(GOOD)
    piped = medgan("submit", "-", "--json", stdin="\n".join(json.dumps(g) for g in GOOD[:2]))
    assert piped.exit_code == 0 and [j["name"] for j in json.loads(piped.stdout)] == ["job0", "job1"]
    assert_refused(medgan("submit", str(path), "--sweep", "sleep=1,2"), "--sweep applies to one spec")
    assert_refused(medgan("submit", str(tmp_path / "none.jsonl")), "does not exist")
    (tmp_path / "empty.jsonl").write_text("\n \n")
    assert_refused(medgan("submit", str(tmp_path / "empty.jsonl")), "holds no job specs")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"kind": "noop", "name": "caf\xe9"}\n')
    assert_refused(medgan("submit", str(tmp_path / "latin1.jsonl")), "not UTF-8")


BAD_SWEEPS = [
    (["seed"], "--sweep takes field=v1,v2"),
    (["seed="], "--sweep takes field=v1,v2"),
    (["=1,2"], "--sweep takes field=v1,v2"),
    (["seed=1,,2"], "an empty value"),
    (["seed=4..1"], "the range is empty"),
    (["seed=a..b"], "a range is first..last of integers"),
    (["seed=0..99999"], "more than 10000 values"),
    (["seed=1", "seed=2"], "given twice"),
    (["seed=1,1"], "repeats a value"),
    (["no_such=1,2"], "no such spec or config field"),
    (["lr=0.1,5"], "sweep point lr=5"),
    (["image_size=32,33"], "sweep point image_size=33"),
    (["kind=train"], "cannot sweep 'kind'"),
    (["seed=0..99", "steps=0..199"], "at most 10000"),
]


def test_every_broken_sweep_is_one_line_and_writes_nothing(embedded):
    for items, needle in BAD_SWEEPS:
        args = [a for item in items for a in ("--sweep", item)]
        assert_refused(medgan("train", "--steps", "3", *args), needle)
    assert jobs_in(embedded) == 0


def test_a_sweep_is_one_parent_over_the_cross_product(embedded):
    result = medgan("train", "--steps", "3", "--name", "grid", "--sweep", "lr=1e-4,2e-4", "--sweep", "seed=0..4")
    assert result.exit_code == 0, result.output
    parent = result.stdout.strip().splitlines()[-1]
    assert "a sweep of 10 jobs" in result.output
    listed = json.loads(medgan("jobs", "ls", "--json").stdout)
    assert [j["id"] for j in listed] == [parent]  # one row: the parent
    with session_scope(embedded.db_url) as s:
        kids = s.execute(select(Job).where(Job.parent_id == parent)).scalars().all()
        points = sorted((k.spec["config"]["lr_g"], k.spec["config"]["lr_d"], k.spec["config"]["seed"]) for k in kids)
        assert all(k.spec["config"]["steps"] == 3 for k in kids)
    assert points == sorted((lr, lr, seed) for lr in (1e-4, 2e-4) for seed in range(5))
