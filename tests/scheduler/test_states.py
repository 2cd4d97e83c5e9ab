"""The state machine: compare-and-set transitions, event rows, illegal edges, claims, leases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from scheduler import states
from scheduler.db import GpuLease, Job, JobEvent, Status, session_scope, utcnow
from scheduler.errors import IllegalTransition

S = Status


def _job(settings, **kw) -> str:
    with session_scope(settings.db_url) as s:
        job = Job(kind="noop", spec={"kind": "noop"}, queue="medgan.generate", **kw)
        s.add(job)
        s.flush()
        return job.id


def _events(settings, job_id):
    with session_scope(settings.db_url) as s:
        return [(e.from_status, e.to_status) for e in
                s.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars()]


def test_claim_is_exclusive_and_writes_one_event(embedded):
    job_id = _job(embedded)
    with session_scope(embedded.db_url) as s:
        first = states.claim(s, job_id, owner="w1", lease_seconds=30)
        second = states.claim(s, job_id, owner="w2", lease_seconds=30)
    assert first is not None and first.status == "RUNNING" and first.lease_owner == "w1" and first.attempt == 1
    assert second is None  # a duplicate delivery finds nothing to claim
    assert _events(embedded, job_id) == [("QUEUED", "RUNNING")]


def test_illegal_transition_raises(embedded):
    job_id = _job(embedded)
    with session_scope(embedded.db_url) as s:
        with pytest.raises(IllegalTransition):
            states.transition(s, job_id, S.SUCCEEDED, expect=[S.QUEUED])
    with session_scope(embedded.db_url) as s:
        states.claim(s, job_id, owner="w", lease_seconds=30)
        states.finish(s, job_id, S.SUCCEEDED, owner="w")
    with session_scope(embedded.db_url) as s:
        with pytest.raises(IllegalTransition):
            states.transition(s, job_id, S.RUNNING, expect=[S.SUCCEEDED])
        assert s.get(Job, job_id).progress == 1.0


def test_only_the_lease_holder_finishes(embedded):
    job_id = _job(embedded)
    with session_scope(embedded.db_url) as s:
        states.claim(s, job_id, owner="w1", lease_seconds=30)
        assert states.finish(s, job_id, S.SUCCEEDED, owner="intruder") is None
        assert states.finish(s, job_id, S.FAILED, owner="w1", reason="boom").status == "FAILED"
        assert s.get(Job, job_id).message == "boom"


def test_cancel_queued_and_running(embedded):
    queued, running = _job(embedded), _job(embedded)
    with session_scope(embedded.db_url) as s:
        states.claim(s, running, owner="w", lease_seconds=30)
        assert states.request_cancel(s, queued).status == "CANCELLED"
        job = states.request_cancel(s, running)
        assert job.status == "CANCELLING" and job.cancel_requested


def test_expired_lease_requeues_then_fails_and_frees_cards(embedded):
    job_id = _job(embedded, max_attempts=2)
    for attempt in (1, 2):
        with session_scope(embedded.db_url) as s:
            assert states.claim(s, job_id, owner=f"w{attempt}", lease_seconds=30, gpus=[("h", 0), ("h", 1)])
        with session_scope(embedded.db_url) as s:
            assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 2
            moved = states.requeue_expired(s, utcnow() + timedelta(seconds=60), actor="test")
        expected = S.QUEUED if attempt == 1 else S.FAILED
        assert moved == [(job_id, expected)]
        with session_scope(embedded.db_url) as s:
            assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 0
    with session_scope(embedded.db_url) as s:
        job = s.get(Job, job_id)
        assert job.status == "FAILED" and "gave up after 2 attempts" in job.message


def test_renewed_lease_is_not_requeued(embedded):
    job_id = _job(embedded)
    with session_scope(embedded.db_url) as s:
        states.claim(s, job_id, owner="w", lease_seconds=1)
    with session_scope(embedded.db_url) as s:
        assert states.renew_lease(s, job_id, "w", 120)
        assert not states.renew_lease(s, job_id, "someone-else", 120)
        assert states.requeue_expired(s, utcnow() + timedelta(seconds=60), actor="t") == []


def test_double_lease_of_a_card_is_impossible(embedded):
    a, b = _job(embedded), _job(embedded)
    with session_scope(embedded.db_url) as s:
        states.claim(s, a, owner="w1", lease_seconds=30, gpus=[("h", 0)])
    with pytest.raises(IntegrityError):
        with session_scope(embedded.db_url) as s:
            states.claim(s, b, owner="w2", lease_seconds=30, gpus=[("h", 0)])
    with session_scope(embedded.db_url) as s:
        assert s.get(Job, b).status == "QUEUED"  # the whole claim rolled back
