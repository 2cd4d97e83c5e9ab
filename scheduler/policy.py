"""Who may start where: gang allocation, quotas and the large-job reservation.

The policy, in the order it is applied when a worker on `host` receives job J asking for k cards:

1. **Gang**: J starts only if k cards of this one host are free now; they are leased in the same
   transaction as the claim (the (host, card) primary key makes a double lease impossible).
   A worker that cannot start J now puts the message back for any other worker (no parking).
2. **Quota**: an owner (a person or a team name) holds at most `quota_gpus_per_owner` cards at once.
3. **Backfill with a reservation**: small jobs may use free cards while a large job waits, so no
   card idles. But once a GPU job has waited longer than `reserve_after_seconds`, it becomes the
   *head*: one host (the one that can hold it with the most cards already free) is drained for it,
   i.e. no other job may lease cards there until the head has started. Other hosts keep
   backfilling. Among waiting jobs the head is the most urgent priority, then the oldest.
   This is Slurm's backfill without run-time estimates: large jobs wait a bounded extra time,
   small jobs never wait for idle cards elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from scheduler.db import GpuLease, Job, Status, Worker, utcnow

S = Status
LIVE = (S.RUNNING.value, S.CANCELLING.value)


@dataclass(frozen=True)
class Decision:
    cards: list[int] | None  # None: not now
    reason: str | None = None  # why it waits (shown in `medgan jobs show`)


def leased_cards(session: Session, host: str) -> set[int]:
    return set(session.execute(
        select(GpuLease.gpu_index).join(Job, Job.id == GpuLease.job_id)
        .where(GpuLease.host == host, Job.status.in_(LIVE))
    ).scalars())


def host_cards(session: Session) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for host, cards in session.execute(select(Worker.host, Worker.gpus)):
        out.setdefault(host, set()).update(cards or [])
    return out


def owner_gpus_in_use(session: Session, owner: str) -> int:
    return session.execute(
        select(func.coalesce(func.sum(Job.gpus), 0)).where(Job.owner == owner, Job.status.in_(LIVE))
    ).scalar_one()


def head_job(session: Session, reserve_after: float) -> Job | None:
    """The waiting GPU job that has earned a reservation, if any."""
    cutoff = utcnow() - timedelta(seconds=reserve_after)
    return session.execute(
        select(Job).where(Job.status == S.QUEUED.value, Job.gpus > 0, Job.created_at < cutoff)
        .order_by(Job.priority, Job.created_at).limit(1)
    ).scalar_one_or_none()


def reserved_host(session: Session, head: Job) -> str | None:
    """The host drained for the head job: it fits there, and the most cards are already free."""
    best: tuple[int, str] | None = None
    for host, cards in host_cards(session).items():
        if len(cards) < head.gpus:
            continue
        free = len(cards - leased_cards(session, host))
        key = (-free, host)
        if best is None or key < (-best[0], best[1]):
            best = (free, host)
    return best[1] if best else None


def admit(session: Session, job: Job, host: str, cards: tuple[int, ...], *, quota: int | None,
          reserve_after: float) -> Decision:
    """Decide whether `job` may start on `host` (whose cards are `cards`) now, and on which cards."""
    if job.gpus == 0:
        return Decision([])
    if not cards:
        return Decision(None, f"waiting for a worker with {job.gpus} GPU(s)")
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        # Serialise admissions of one owner so two workers cannot both squeeze under the quota.
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:o))"), {"o": f"medgan-owner:{job.owner}"})
    if quota is not None:
        used = owner_gpus_in_use(session, job.owner)
        if used + job.gpus > quota:
            return Decision(None, f"waiting: owner {job.owner} holds {used} of {quota} GPUs (quota)")
    head = head_job(session, reserve_after)
    if head is not None and head.id != job.id and reserved_host(session, head) == host:
        return Decision(None, f"waiting: host {host} is reserved for job {head.id} ({head.gpus} GPUs, "
                              f"waiting since {head.created_at:%H:%M:%S})")
    free = [c for c in cards if c not in leased_cards(session, host)]
    if len(free) < job.gpus:
        return Decision(None, f"waiting for {job.gpus} free GPU(s) on one host")
    return Decision(free[: job.gpus])
