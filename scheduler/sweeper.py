"""The sweeper (`medgan scheduler`): the broker may lose or duplicate messages, the database may not.

Every `sweep_seconds` it
- requeues RUNNING jobs whose lease expired (a lost lease is not a failure; FAILED after max_lease_losses),
- asks lower-priority jobs to make room for an urgent one by preemption (scheduler/policy.py),
- re-sends messages for QUEUED jobs that were never sent or whose message looks lost,
- finishes fan-out parents whose children all ended (if the last child's worker died first),
- forgets workers not seen for a while,
- removes half-written dataset uploads whose uploader died (scheduler/datasets.py).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import delete, select, update

from scheduler import fanout, states
from scheduler.datasets import sweep_uploads
from scheduler.db import Job, Status, Worker, session_scope, status_is, utcnow
from scheduler.jobs import dispatch_ready
from scheduler.policy import plan_preemptions
from scheduler.settings import Settings
from scheduler.store import Store, make_store

log = logging.getLogger("medgan.sweeper")
ACTOR = "sweeper"


def sweep_once(settings: Settings, store: Store | None = None) -> dict[str, int]:
    now = utcnow()
    store = store or make_store(settings)
    # The requeue commits on its own: the rows it locked (in id order, as a heartbeat's renewal does) are not
    # held while the preemptions below lock others.
    with session_scope(settings.db_url) as s:
        moved = states.requeue_expired(s, now, actor=ACTOR, max_lease_losses=settings.max_lease_losses)
    with session_scope(settings.db_url) as s:
        preempted = request_preemptions(s, settings)
        # Every running fan-out parent: one whose last shard's worker died before finishing it ends here.
        running_parents = s.execute(
            select(Job.id).where(Job.status == Status.RUNNING.value, Job.lease_expires_at.is_(None),
                                 Job.id.in_(select(Job.parent_id).where(Job.parent_id.is_not(None))))
        ).scalars().all()
        for pid in running_parents:
            fanout.maybe_finish_parent(s, store, pid, actor=ACTOR)
        stale = now - timedelta(seconds=max(60.0, 6 * settings.heartbeat_seconds))
        gone = s.execute(delete(Worker).where(Worker.last_seen < stale)).rowcount
    for job_id, to in moved:
        log.warning("job %s: lease expired → %s", job_id, to.value)
    requeued = [j for j, to in moved if to is Status.QUEUED]
    sent = dispatch_ready(settings, requeued) if requeued else []
    sent += dispatch_ready(settings)
    half = sweep_uploads(store, settings.upload_stale_seconds)
    return {"expired": len(moved), "requeued": len(requeued), "preempting": preempted, "sent": len(sent), "workers_forgotten": gone or 0,
            "half_uploads_removed": half}


def request_preemptions(session, settings: Settings) -> int:  # noqa: ANN001 - a Session
    """Mark the victims `plan_preemptions` picks (CAS: still RUNNING, not already asked); their workers'
    heartbeats see it, SIGTERM the science (final checkpoint) and requeue them. Returns how many."""
    n = 0
    plan = plan_preemptions(session, grace=settings.preempt_grace_seconds,
                            protected=settings.protected_from_preemption)
    for p in sorted(plan, key=lambda p: p.victim):  # id order, the heartbeat's lock order
        res = session.execute(update(Job).where(Job.id == p.victim, status_is(Status.RUNNING.value),
                                                Job.preempt_requested.is_(None))
                              .values(preempt_requested=p.reason).execution_options(synchronize_session=False))
        if res.rowcount == 1:
            log.warning("job %s: %s", p.victim, p.reason)
            n += 1
    return n


def run_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    store = make_store(settings)
    log.info("sweeper running every %.1fs (lease %.0fs)", settings.sweep_seconds, settings.lease_seconds)
    while not stop.is_set():
        try:
            counts = sweep_once(settings, store)
            if any(counts.values()):
                log.info("sweep: %s", counts)
        except Exception as exc:  # a database or broker blip: try again next round
            log.warning("sweep failed: %s", exc)
        stop.wait(settings.sweep_seconds)
