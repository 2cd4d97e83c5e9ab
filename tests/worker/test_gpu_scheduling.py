"""Sharing the GPUs, with real worker processes and fake card inventories."""

from __future__ import annotations

import csv
import hashlib
import io
from contextlib import ExitStack
from datetime import datetime

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from scheduler.client import Client
from scheduler.db import GpuLease, Job, JobEvent, session_scope
from scheduler.errors import SpecError
from tests.conftest import reset_settings, sweeper_process, wait_for, worker_process

TINY = {"model": "cgan", "image_size": 16, "steps": 4, "batch_size": 8, "base_channels": 8, "z_dim": 16,
        "checkpoint_every": 2, "sample_every": 4, "phantom": {"count": 32, "size": 16, "seed": 1}}


@pytest.fixture
def fast(embedded, monkeypatch, tmp_path):
    """Embedded settings with quick heartbeats (cancels land within a second or two), and the sweeper
    running as in production: it re-sends any message the broker loses while jobs bounce between workers."""
    monkeypatch.setenv("MEDGAN_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("MEDGAN_SWEEP_SECONDS", "1")
    monkeypatch.setenv("MEDGAN_RESEND_AFTER_SECONDS", "10")
    reset_settings()
    from scheduler.settings import get_settings

    with sweeper_process(tmp_path / "sweeper.log"):
        yield get_settings()


def _client(settings) -> Client:
    return Client(settings)


def _card_intervals(settings) -> dict[tuple[str, int], list[tuple[datetime, datetime, str]]]:
    """(host, card) → [(claimed at, ended at, job)] from the claim events."""
    out: dict[tuple[str, int], list] = {}
    with session_scope(settings.db_url) as s:
        for ev, job in s.execute(select(JobEvent, Job).join(Job, Job.id == JobEvent.job_id)
                                 .where(JobEvent.to_status == "RUNNING", JobEvent.reason.like("cards %"))):
            for card in ev.reason.removeprefix("cards ").split(","):
                host, idx = card.rsplit(":", 1)
                out.setdefault((host, int(idx)), []).append((ev.at, job.finished_at, job.id))
    return out


def _assert_no_overlap(intervals) -> None:
    for key, spans in intervals.items():
        spans.sort()
        for (s1, e1, j1), (s2, _e2, j2) in zip(spans, spans[1:]):
            assert e1 <= s2, f"card {key} held by {j1} and {j2} at once"


def _wait_all(client, ids, timeout=120):
    return [client.wait(i, timeout=timeout) for i in ids]


def test_gang_allocation_never_overlaps_and_rejects_oversized(fast, tmp_path):
    c = _client(fast)
    with ExitStack() as stack:
        stack.enter_context(worker_process("--gpus", "0,1", "--fake-gpus", "--hostname", "h1",
                                           log=tmp_path / "w1.log"))
        stack.enter_context(worker_process("--gpus", "0", "--fake-gpus", "--hostname", "h2",
                                           log=tmp_path / "w2.log"))
        with pytest.raises(SpecError, match="largest host has 2"):
            c.submit("noop", gpus=3)
        big = c.submit("noop", gpus=2, sleep=1.0)
        smalls = [c.submit("noop", gpus=1, sleep=1.0) for _ in range(3)]
        jobs = _wait_all(c, [big["id"], *[j["id"] for j in smalls]])
    assert all(j["status"] == "SUCCEEDED" for j in jobs), [j["message"] for j in jobs]
    intervals = _card_intervals(fast)
    _assert_no_overlap(intervals)
    assert sum(len(v) for v in intervals.values()) == 5  # 2 cards for the big job + 3 single cards
    assert {k for k, v in intervals.items() if any(j == big["id"] for *_, j in v)} == {("h1", 0), ("h1", 1)}
    with session_scope(fast.db_url) as s:
        assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 0


def test_quota_holds(fast, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGAN_QUOTA_GPUS_PER_OWNER", "1")
    reset_settings()
    from scheduler.settings import get_settings

    settings = get_settings()
    c = _client(settings)
    with worker_process("--gpus", "0,1", "--fake-gpus", "--hostname", "q", log=tmp_path / "w.log"):
        mine = [c.submit("noop", gpus=1, sleep=1.0, owner="team-a") for _ in range(2)]
        other = c.submit("noop", gpus=1, sleep=1.0, owner="team-b")
        jobs = {j["id"]: j for j in _wait_all(c, [*[m["id"] for m in mine], other["id"]])}
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values())
    a, b = sorted((jobs[m["id"]] for m in mine), key=lambda j: j["started_at"])
    assert a["finished_at"] <= b["started_at"], "team-a held 2 GPUs despite a quota of 1"
    # team-b was not held back by team-a's quota: it overlapped with one of team-a's jobs.
    o = jobs[other["id"]]
    assert any(o["started_at"] < j["finished_at"] and j["started_at"] < o["finished_at"] for j in (a, b))


def test_priority_later_high_job_starts_first(fast, redis_url, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGAN_BROKER_URL", redis_url)
    reset_settings()
    from scheduler.settings import get_settings

    settings = get_settings()
    c = _client(settings)
    low = [c.submit("noop", sleep=0.2, priority=9) for _ in range(3)]
    high = c.submit("noop", sleep=0.2, priority=0)
    shown = c.job(high["id"])
    assert shown["queue_position"] == 1  # the queue order workers will follow
    with worker_process("--gpus", "none", "--concurrency", "1", log=tmp_path / "w.log"):
        jobs = _wait_all(c, [high["id"], *[j["id"] for j in low]])
    started = {j["id"]: j["started_at"] for j in jobs}
    assert all(started[high["id"]] < started[j["id"]] for j in low)


def test_cancel_stops_a_running_job_and_frees_its_cards(fast, tmp_path):
    c = _client(fast)
    with worker_process("--gpus", "0,1", "--fake-gpus", "--hostname", "c", log=tmp_path / "w.log"):
        long = c.submit("noop", gpus=2, sleep=120)
        wait_for(lambda: c.job(long["id"])["status"] == "RUNNING", timeout=60, what="the job to run")
        c.cancel(long["id"])
        done = c.wait(long["id"], timeout=15)
        assert done["status"] == "CANCELLED"
        with session_scope(fast.db_url) as s:
            assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 0
        nxt = c.wait(c.submit("noop", gpus=2)["id"], timeout=60)
        assert nxt["status"] == "SUCCEEDED"


def test_two_process_training_on_a_two_card_lease(fast, tmp_path):
    c = _client(fast)
    with worker_process("--gpus", "0,1", "--fake-gpus", "--hostname", "t", log=tmp_path / "w.log"):
        job = c.wait(c.submit("train", config=TINY, gpus=2)["id"], timeout=300)
    assert job["status"] == "SUCCEEDED", job["message"]
    keys = [a["key"] for a in c.artifacts(job["id"])]
    assert any("/checkpoints/step-000004/" in k for k in keys)
    log = c.store.get_bytes(f"jobs/{job['id']}/train.log").decode()
    assert "--num_processes 2 --multi_gpu" in log.splitlines()[0]  # the launcher's command line
    assert log.count("completed at step 4") == 2, log[-2000:]  # both ranks finished


def test_fanout_over_two_workers_equals_one_worker(fast, tmp_path):
    c = _client(fast)
    with ExitStack() as stack:
        for i in range(2):
            stack.enter_context(worker_process("--gpus", "none", "--hostname", f"g{i}", log=tmp_path / f"w{i}.log"))
        train = c.wait(c.submit("train", config=TINY)["id"], timeout=300)
        assert train["status"] == "SUCCEEDED", train["message"]
        cfg = {"count": 16, "seed": 11}
        fan = c.submit("generate", source_job=train["id"], config=cfg, shards=8)
        one = c.submit("generate", source_job=train["id"], config=cfg)
        fan, one = c.wait(fan["id"], timeout=300), c.wait(one["id"], timeout=300)
    assert fan["status"] == one["status"] == "SUCCEEDED", (fan["message"], one["message"])

    def hashes(job_id):
        """index → sha256 of the decoded pixels (the files differ only in their provenance's job id)."""
        rows = csv.DictReader(io.StringIO(c.store.get_bytes(f"jobs/{job_id}/manifest.csv").decode()))
        out = {}
        for r in rows:
            with Image.open(io.BytesIO(c.store.get_bytes(f"jobs/{job_id}/{r['file']}"))) as im:
                assert im.text.get("job") == job_id and "SYNTHETIC" in " ".join(im.text.values())
                out[int(r["index"])] = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()
        return out

    children = [j for j in c.jobs(include_children=True, limit=100) if j["parent_id"] == fan["id"]]
    assert len(children) == 8
    with session_scope(fast.db_url) as s:
        owners = set(s.execute(select(JobEvent.actor).where(
            JobEvent.job_id.in_([j["id"] for j in children]), JobEvent.to_status == "RUNNING")).scalars())
    assert len(owners) == 2, f"shards ran on {owners}, expected both workers"


def test_cancel_training_checkpoints_then_cancelled(fast, tmp_path):
    c = _client(fast)
    cfg = {**TINY, "steps": 5000, "checkpoint_every": 4000, "log_every": 1}
    with worker_process("--gpus", "0", "--fake-gpus", "--hostname", "k", log=tmp_path / "w.log"):
        job = c.submit("train", config=cfg, gpus=1)
        wait_for(lambda: c.job(job["id"])["step"] >= 3, timeout=120, what="training to make progress")
        c.cancel(job["id"])
        done = c.wait(job["id"], timeout=60)
    assert done["status"] == "CANCELLED"
    result = __import__("json").loads(c.store.get_bytes(f"jobs/{job['id']}/result.json"))
    assert result["status"] == "stopped" and 3 <= result["step"] < 5000
    keys = [a["key"] for a in c.artifacts(job["id"])]
    assert f"jobs/{job['id']}/checkpoints/step-{result['step']:06d}/COMPLETE" in keys  # the final checkpoint
    with session_scope(fast.db_url) as s:
        assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 0
