"""The claim race, forced: two owners on one host admit two jobs onto the same free card at the same moment.

Before the fix the loser's transaction failed on the (host, card) key, `_claim` answered "busy" inside the
failed transaction, the commit error escaped, and the message was acknowledged with no job started: the
job waited for the sweeper's re-send while cards idled. Now every database error of a claim is retried at
once with a fresh look at the free cards, so both jobs start, on different cards, within a second.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import select

import worker.runtime as rt
from scheduler import migrate, policy
from scheduler.client import Client
from scheduler.db import GpuLease, Job, JobEvent, session_scope
from scheduler.settings import Settings
from worker.gpus import Inventory


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, env_home, tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    st = Settings(home=env_home, database_url=url, lease_seconds=30, heartbeat_seconds=0.2)
    migrate.upgrade(st)
    return st


def _forced_race(monkeypatch, barrier: threading.Barrier) -> list[list[int]]:
    """Make `admit` return only after both claimants have decided (so both pick the same free card)."""
    decided: list[list[int]] = []
    real = policy.admit

    def admit(*args, **kwargs):
        decision = real(*args, **kwargs)
        decided.append(decision.cards)
        if len(decided) <= 2:  # the first decision of each claimant; a retry decides alone
            barrier.wait(timeout=10)
        return decision

    monkeypatch.setattr(rt, "admit", admit)
    return decided


def _run_two(settings, job_ids, tries: int, monkeypatch):
    monkeypatch.setattr(rt, "CLAIM_TRIES", tries)
    sent_back: list[str] = []
    monkeypatch.setattr(rt, "_send_back", lambda ctx, job_id: sent_back.append(job_id))
    barrier = threading.Barrier(2)
    decided = _forced_race(monkeypatch, barrier)
    host = Inventory(host="h", cards=(0, 1), fake=True)
    ctxs = [rt.WorkerContext.create(settings, host, name=f"owner{i}@h") for i in range(2)]
    for c in ctxs:
        c.register(["medgan.noop"])
    outcomes: dict[str, str] = {}

    def go(ctx, job_id):
        outcomes[job_id] = rt.execute_job(ctx, job_id, lambda run: time.sleep(1.5))  # holds its card

    t0 = time.monotonic()
    threads = [threading.Thread(target=go, args=(c, j)) for c, j in zip(ctxs, job_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes, sent_back, decided, time.monotonic() - t0


def _submit_two(settings):
    client = Client(settings)  # both cards free: each claimant's admission picks card 0
    # Two owners: on PostgreSQL one owner's admissions are serialised (the quota's advisory lock).
    return [client.submit("noop", gpus=1, owner=owner)["id"] for owner in ("alice", "bob")]


def test_forced_claim_race_loses_no_message_and_starts_both_at_once(settings, monkeypatch, caplog):
    job_ids = _submit_two(settings)
    with caplog.at_level(logging.INFO, logger="medgan.worker"):
        outcomes, sent_back, decided, took = _run_two(settings, job_ids, rt.CLAIM_TRIES, monkeypatch)
    # The race really happened: both first decisions chose card 0, and one claim failed on it.
    assert decided[:2] == [[0], [0]], decided
    assert any("claim 1 of" in r.getMessage() for r in caplog.records), "the forced race did not collide"
    # No message lost, none even sent back: both jobs ran, on different cards, within a second.
    assert outcomes == {j: "SUCCEEDED" for j in job_ids}, outcomes
    assert sent_back == []
    assert took < 5, took
    with session_scope(settings.db_url) as s:
        claims = s.execute(select(JobEvent).where(JobEvent.job_id.in_(job_ids), JobEvent.to_status == "RUNNING")
                           ).scalars().all()
        assert sorted(c.reason for c in claims) == ["cards h:0", "cards h:1"]
        assert abs((claims[0].at - claims[1].at).total_seconds()) < 1.0, "a card idled while a job waited"
        assert s.execute(select(GpuLease)).first() is None


def test_without_retries_the_loser_goes_back_to_the_queue_never_lost(settings, monkeypatch):
    """The control: one try only. The loser of the forced race is not acknowledged into nothing: it is sent
    back (a fresh message), and stays QUEUED in the database for any worker."""
    job_ids = _submit_two(settings)
    outcomes, sent_back, decided, _ = _run_two(settings, job_ids, 1, monkeypatch)
    assert decided == [[0], [0]], decided
    assert sorted(outcomes.values()) == ["SUCCEEDED", "busy"], outcomes
    loser = next(j for j, o in outcomes.items() if o == "busy")
    assert sent_back == [loser]
    with session_scope(settings.db_url) as s:
        assert s.get(Job, loser).status == "QUEUED"


def test_a_commit_error_in_the_claim_is_retried_not_acknowledged(settings, monkeypatch):
    """Any database error counts, also one raised by the commit itself (the claim then did not happen)."""
    job_id = Client(settings).submit("noop")["id"]
    from sqlalchemy.exc import OperationalError

    calls = {"n": 0}

    def claim_once(ctx, jid, _real=rt._claim_once):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return _real(ctx, jid)

    monkeypatch.setattr(rt, "_claim_once", claim_once)
    ctx = rt.WorkerContext.create(settings, Inventory(host="h", cards=()), name="w@h")
    assert rt.execute_job(ctx, job_id, lambda run: None) == "SUCCEEDED"
    assert calls["n"] == 3
