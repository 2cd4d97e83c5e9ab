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


# -- order: priority, then fair share, then age --------------------------------------------------------
WEEK = 7 * 24 * 3600.0


def _sent(s, gpus, **kw):
    job = _job(s, gpus, **kw)
    job.enqueued_at = utcnow()  # its message is out (a job waiting on dependencies is not a rival)
    s.flush()
    return job


def _used(s, owner, gpus, hours):
    """A finished run of `owner` that held `gpus` cards for `hours` within the window."""
    end = utcnow() - timedelta(minutes=5)
    s.add(Job(kind="noop", spec={"kind": "noop"}, queue="medgan.generate", gpus=gpus, owner=owner,
              status="SUCCEEDED", started_at=end - timedelta(hours=hours), finished_at=end))
    s.flush()


def test_fair_share_least_recent_gpu_time_goes_first_at_equal_priority(embedded):
    with session_scope(embedded.db_url) as s:
        _worker(s, "a", [0])
        _used(s, "heavy", 1, hours=3)
        older = _sent(s, 1, owner="heavy", age=60)  # older, but its owner used 3 GPU-hours
        newer = _sent(s, 1, owner="light", age=1)
        d = admit(s, older, "a", (0,), quota=None, reserve_after=1e9, fair_share_window=WEEK)
        assert d.cards is None and f"job {newer.id} goes first" in d.reason and "fair share" in d.reason
        assert admit(s, newer, "a", (0,), quota=None, reserve_after=1e9, fair_share_window=WEEK).cards == [0]
        # Control 1: GPU time outside the window does not count: age decides (the older goes first).
        assert admit(s, older, "a", (0,), quota=None, reserve_after=1e9, fair_share_window=60).cards == [0]
        late = admit(s, newer, "a", (0,), quota=None, reserve_after=1e9, fair_share_window=60)
        assert late.cards is None and f"job {older.id} goes first" in late.reason
        # Control 2: priority beats fair share.
        urgent = _sent(s, 1, owner="heavy", priority=1)
        d = admit(s, newer, "a", (0,), quota=None, reserve_after=1e9, fair_share_window=WEEK)
        assert d.cards is None and f"job {urgent.id} goes first" in d.reason and "priority" in d.reason


def test_better_ranked_jobs_keep_only_the_cards_they_need(embedded):
    """Two free cards, one better-ranked 1-card job waiting: a worse-ranked 1-card job still gets the other
    card (no card idles); a 2-card one must wait."""
    with session_scope(embedded.db_url) as s:
        _worker(s, "a", [0, 1])
        _sent(s, 1, owner="x", priority=1)
        assert admit(s, _sent(s, 1, owner="y"), "a", (0, 1), quota=None, reserve_after=1e9,
                     fair_share_window=WEEK).cards == [0]
        d = admit(s, _sent(s, 2, owner="y"), "a", (0, 1), quota=None, reserve_after=1e9, fair_share_window=WEEK)
        assert d.cards is None and "priority" in d.reason


def test_gpu_seconds_counts_running_and_finished_runs_in_the_window(embedded):
    from scheduler.policy import gpu_seconds

    with session_scope(embedded.db_url) as s:
        _used(s, "a", 2, hours=1)  # 7200 GPU-s
        running = _job(s, 1, owner="b")
        _run(s, running, "h", [0])
        s.get(Job, running.id).started_at = utcnow() - timedelta(seconds=100)
        s.flush()
        share = gpu_seconds(s, WEEK)
        assert abs(share["a"] - 7200) < 1 and 99 < share["b"] < 110


# -- preemption planning --------------------------------------------------------------------------------
def _running(s, host, cards, priority, age, **kw):
    job = _job(s, len(cards), priority=priority, **kw)
    _run(s, job, host, cards)
    s.get(Job, job.id).started_at = utcnow() - timedelta(seconds=age)
    s.flush()
    return job


def _waiting(s, gpus, priority, waited):
    from scheduler.db import JobEvent

    job = _sent(s, gpus, priority=priority)
    s.add(JobEvent(job_id=job.id, to_status="QUEUED", reason="submitted", at=utcnow() - timedelta(seconds=waited)))
    s.flush()
    return job


def test_preemption_takes_the_fewest_youngest_lower_priority_after_the_grace(embedded):
    from scheduler.policy import plan_preemptions

    with session_scope(embedded.db_url) as s:
        _worker(s, "a", [0, 1, 2, 3])
        old = _running(s, "a", [0], priority=8, age=3000)
        young = _running(s, "a", [1], priority=8, age=10)
        pair = _running(s, "a", [2, 3], priority=8, age=20)
        one = _waiting(s, 1, priority=1, waited=60)
        plan = plan_preemptions(s, grace=30, protected=frozenset())
        # One card is needed: any one victim will do (fewest); the youngest of them loses least.
        assert [p.victim for p in plan] == [young.id]
        assert plan[0].for_job == one.id and "priority 1 over 8" in plan[0].reason
        # Three cards: the pair and one more (two victims, not three), the younger single one.
        three = _waiting(s, 3, priority=0, waited=60)
        assert sorted(p.victim for p in plan_preemptions(s, grace=30, protected=frozenset())) == sorted(
            [pair.id, young.id])
        s.get(Job, three.id).status = "CANCELLED"
        s.flush()
        # Not before the grace period.
        assert plan_preemptions(s, grace=120, protected=frozenset()) == []
        # Never the non-preemptible, the protected, or an equal/higher priority.
        for j in (young, pair):
            s.get(Job, j.id).preemptible = False
        s.flush()
        assert [p.victim for p in plan_preemptions(s, grace=30, protected=frozenset())] == [old.id]
        assert plan_preemptions(s, grace=30, protected=frozenset({"ana"})) == []  # the owner (team)
        assert plan_preemptions(s, grace=30, protected=frozenset({"medgan.generate"})) == []  # the queue
        s.get(Job, old.id).priority = 1
        s.flush()
        assert plan_preemptions(s, grace=30, protected=frozenset()) == []
