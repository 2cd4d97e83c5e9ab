"""The admission policy on its own: gang, quota, reservation for a long-waiting large job."""

from __future__ import annotations

from datetime import timedelta

from scheduler import states
from scheduler.db import Job, Worker, session_scope, utcnow
from scheduler.policy import admit


def _worker(s, host, cards):
    s.add(Worker(name=f"w@{host}", host=host, gpus=cards, queues=[]))


def _job(s, gpus, owner="ana", age=0.0, priority=5):
    job = Job(kind="noop", spec={"kind": "noop"}, queue="medgan.generate", gpus=gpus, owner=owner,
              priority=priority, created_at=utcnow() - timedelta(seconds=age))
    s.add(job)
    s.flush()
    return job


def _run(s, job, host, cards):
    states.claim(s, job.id, owner="w", lease_seconds=60, gpus=[(host, c) for c in cards])


def test_gang_needs_all_cards_on_one_host(embedded):
    with session_scope(embedded.db_url) as s:
        _worker(s, "a", [0, 1])
        small, big = _job(s, 1), _job(s, 2)
        _run(s, small, "a", admit(s, small, "a", (0, 1), quota=None, reserve_after=1e9).cards)
        d = admit(s, big, "a", (0, 1), quota=None, reserve_after=1e9)
        assert d.cards is None and "2 free GPU" in d.reason
        assert admit(s, _job(s, 1), "a", (0, 1), quota=None, reserve_after=1e9).cards == [1]


def test_quota_per_owner(embedded):
    with session_scope(embedded.db_url) as s:
        _worker(s, "a", [0, 1, 2, 3])
        first = _job(s, 2, owner="team-x")
        _run(s, first, "a", [0, 1])
        d = admit(s, _job(s, 1, owner="team-x"), "a", (0, 1, 2, 3), quota=2, reserve_after=1e9)
        assert d.cards is None and "quota" in d.reason
        assert admit(s, _job(s, 1, owner="bob"), "a", (0, 1, 2, 3), quota=2, reserve_after=1e9).cards == [2]


def test_long_waiting_large_job_drains_one_host_others_backfill(embedded):
    with session_scope(embedded.db_url) as s:
        _worker(s, "a", [0, 1])
        _worker(s, "b", [0, 1])
        for host in ("a", "b"):
            _run(s, _job(s, 1), host, [0])
        big = _job(s, 2, age=600)  # waited past the threshold: it is the head
        small = _job(s, 1)
        # Both hosts have one free card; the head cannot start anywhere yet.
        assert admit(s, big, "a", (0, 1), quota=None, reserve_after=300).cards is None
        # Host "a" (tie on free cards, first by name) is held for it; "b" still backfills.
        held = admit(s, small, "a", (0, 1), quota=None, reserve_after=300)
        assert held.cards is None and f"reserved for job {big.id}" in held.reason
        assert admit(s, small, "b", (0, 1), quota=None, reserve_after=300).cards == [1]
        # Before the threshold, nothing is reserved: small jobs backfill everywhere.
        assert admit(s, small, "a", (0, 1), quota=None, reserve_after=3600).cards == [1]
