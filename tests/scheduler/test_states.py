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


def test_lost_leases_are_not_failures_until_the_lease_loss_ceiling(embedded):
    """max_attempts=2, yet five lost leases in a row requeue the job each time (counted in lease_losses);
    the separate ceiling (max_lease_losses) ends it, and every loss frees its cards."""
    job_id = _job(embedded, max_attempts=2)
    ceiling = 6
    for attempt in range(1, ceiling + 1):
        with session_scope(embedded.db_url) as s:
            assert states.claim(s, job_id, owner=f"w{attempt}", lease_seconds=30, gpus=[("h", 0), ("h", 1)])
        with session_scope(embedded.db_url) as s:
            assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 2
            moved = states.requeue_expired(s, utcnow() + timedelta(seconds=60), actor="test",
                                           max_lease_losses=ceiling)
        expected = S.QUEUED if attempt < ceiling else S.FAILED
        assert moved == [(job_id, expected)], attempt
        with session_scope(embedded.db_url) as s:
            assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 0
            job = s.get(Job, job_id)
            assert (job.lease_losses, job.attempt, job.fence) == (attempt, attempt, attempt)
    assert job.status == "FAILED" and f"gave up after {ceiling} lost leases" in job.message


def test_fencing_token_grows_with_every_claim_and_stale_tokens_are_refused(embedded):
    """Each claim gets token +1 (a retry, which resets `attempt`, does not reset it); renewals, the fence
    check and the final transition of an older token are refused, even for the same owner name."""
    job_id = _job(embedded)
    tokens = []
    for i in range(3):
        with session_scope(embedded.db_url) as s:
            tokens.append(states.claim(s, job_id, owner="w", lease_seconds=30).fence)
        with session_scope(embedded.db_url) as s:
            if i == 1:  # FAILED then an explicit retry: attempt back to 0
                states.finish(s, job_id, S.FAILED, owner="w", fence=tokens[-1], reason="x")
                states.transition(s, job_id, S.QUEUED, expect=[S.FAILED], values={"attempt": 0})
            else:
                states.requeue_expired(s, utcnow() + timedelta(seconds=60), actor="t")
    with session_scope(embedded.db_url) as s:
        current = states.claim(s, job_id, owner="w", lease_seconds=30).fence
    assert tokens + [current] == sorted(set(tokens + [current])), tokens  # strictly increasing
    with session_scope(embedded.db_url) as s:
        for stale in tokens:
            assert not states.renew_lease(s, job_id, "w", 30, fence=stale)
            assert not states.fence_holds(s, job_id, "w", stale)
            assert states.finish(s, job_id, S.SUCCEEDED, owner="w", fence=stale) is None
        # the control: the current token is accepted
        assert states.renew_lease(s, job_id, "w", 30, fence=current)
        assert states.fence_holds(s, job_id, "w", current)
        assert states.finish(s, job_id, S.SUCCEEDED, owner="w", fence=current).status == "SUCCEEDED"


def test_preempted_job_goes_back_to_the_queue_through_preempted(embedded):
    job_id = _job(embedded)
    with session_scope(embedded.db_url) as s:
        fence = states.claim(s, job_id, owner="w", lease_seconds=30, gpus=[("h", 0)]).fence
    with session_scope(embedded.db_url) as s:
        assert states.requeue_preempted(s, job_id, owner="w", fence=fence + 1, reason="x") is None  # stale
        job = states.requeue_preempted(s, job_id, owner="w", fence=fence, reason="preempted for job j")
        assert job.status == "QUEUED" and job.preemptions == 1 and job.lease_losses == 0
        events = [(e.from_status, e.to_status, e.reason) for e in job.events]
        assert s.execute(select(func.count()).select_from(GpuLease)).scalar_one() == 0
    assert events[-2:] == [("RUNNING", "PREEMPTED", "preempted for job j"),
                           ("PREEMPTED", "QUEUED", events[-1][2])] and "preemption 1" in events[-1][2]


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
