"""`generate --checkpoint last|best|step-N` against checkpoints in the store: the spec refuses bad
forms before anything is written; the worker resolves good ones and names what exists otherwise."""

from __future__ import annotations

import json

import pytest

from scheduler.errors import SpecError
from scheduler.specs import parse_spec
from scheduler.store import LocalStore
from worker.runtime import JobFailed
from worker.tasks._common import choose_checkpoint

JOB = "0123456789ab"


@pytest.fixture()
def store(tmp_path):
    s = LocalStore(tmp_path)
    for step in (100, 200, 300):
        s.put_bytes(f"jobs/{JOB}/checkpoints/step-{step:06d}/model.safetensors", b"x")
        s.put_bytes(f"jobs/{JOB}/checkpoints/step-{step:06d}/COMPLETE", b"{}")
    s.put_bytes(f"jobs/{JOB}/checkpoints/step-000400/model.safetensors", b"x")  # incomplete: no COMPLETE
    return s


def test_choices_resolve(store):
    assert choose_checkpoint(store, JOB, "last") == "step-000300"
    assert choose_checkpoint(store, JOB, "step-200") == "step-000200"
    store.put_bytes(f"jobs/{JOB}/best.json", json.dumps({"step": 100, "score": 0.9}).encode())
    assert choose_checkpoint(store, JOB, "best") == "step-000100"


@pytest.mark.parametrize("which, message", [
    ("step-400", "no stored checkpoint step-000400; it has step-000100, step-000200, step-000300"),
    ("step-7", "no stored checkpoint step-000007"),
    ("best", "has no best checkpoint"),
    ("newest", "best, last or step-N"),
])
def test_bad_choices_fail_with_one_line(store, which, message):
    with pytest.raises(JobFailed, match=message):
        choose_checkpoint(store, JOB, which)


def test_best_json_corrupt_or_pointing_nowhere(store):
    store.put_bytes(f"jobs/{JOB}/best.json", b"{not json")
    with pytest.raises(JobFailed, match="has no best checkpoint"):
        choose_checkpoint(store, JOB, "best")
    store.put_bytes(f"jobs/{JOB}/best.json", json.dumps({"step": 999}).encode())
    with pytest.raises(JobFailed, match="no stored checkpoint step-000999"):
        choose_checkpoint(store, JOB, "best")


def test_no_checkpoint_at_all(tmp_path):
    with pytest.raises(JobFailed, match="has no complete checkpoint"):
        choose_checkpoint(LocalStore(tmp_path), JOB, "last")


@pytest.mark.parametrize("which", ["", "latest", "step-", "step-x", "step--3", "best last", 5, None])
def test_spec_refuses_bad_forms(which):
    with pytest.raises(SpecError, match="checkpoint"):
        parse_spec({"kind": "generate", "source_job": JOB, "checkpoint": which})


@pytest.mark.parametrize("which", ["last", "best", "step-1", "step-000500", " best "])
def test_spec_accepts(which):
    assert parse_spec({"kind": "generate", "source_job": JOB, "checkpoint": which}).checkpoint == which.strip()
