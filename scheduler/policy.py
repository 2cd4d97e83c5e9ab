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
4. **Order**: a job does not take cards that a better-ranked waiting job (one whose message is out) could
   take here now. Rank: priority (0 first), then fair share (the owner with the least GPU time within
   `fair_share_window_seconds` first: Slurm's fair-share factor in spirit), then age.
5. **Preemption** (the sweeper, `plan_preemptions`): a waiting GPU job that has waited
   `preempt_grace_seconds` and fits no host's free cards preempts the fewest, then youngest, running jobs of
   lower priority (a larger number) on one host that would free enough cards. Jobs with `preemptible` off,
   and jobs of queues or owners named in `preempt_protected`, are never chosen. A preempted job gets
   SIGTERM, stores its final checkpoint and goes back to the queue (PREEMPTED then QUEUED events).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import combinations

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from scheduler.db import GpuLease, Job, JobEvent, Status, Worker, utcnow

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


def gpu_seconds(session: Session, window: float, owners: list[str] | None = None) -> dict[str, float]:
    """GPU-seconds per owner within the last `window` seconds (cards x time of runs that overlap it, running
    ones up to now). The time of attempts before a job's latest claim is not counted."""
    now = utcnow()
    since = now - timedelta(seconds=window)
    q = select(Job.owner, Job.gpus, Job.started_at, Job.finished_at, Job.status).where(
        Job.gpus > 0, Job.started_at.is_not(None), or_(Job.finished_at.is_(None), Job.finished_at >= since))
    if owners is not None:
        q = q.where(Job.owner.in_(owners))
    out: dict[str, float] = {o: 0.0 for o in owners or []}
    for owner, gpus, started, finished, status in session.execute(q):
        end = finished or (now if status in LIVE else None)
        if end is None:  # requeued: its run ended when it lost its lease or was preempted
            continue
        out[owner] = out.get(owner, 0.0) + gpus * max(0.0, (end - max(started, since)).total_seconds())
    return out


def better_waiting(session: Session, job: Job, host: str, free: int, *, window: float,
                   quota: int | None) -> Job | None:
    """A waiting job (its message out) that ranks before `job` and needs the cards `job` would take: the
    better-ranked jobs that could start on `host` now keep as many of its `free` cards as they need, and
    `job` may have the rest. Returns the first of them when the rest is too little, else None."""
    queues = {q for qs in session.execute(select(Worker.queues).where(Worker.host == host)).scalars()
              for q in (qs or [])}
    rivals = session.execute(
        select(Job).where(Job.status == S.QUEUED.value, Job.gpus > 0, Job.gpus <= free, Job.id != job.id,
                          Job.enqueued_at.is_not(None), Job.priority <= job.priority,
                          Job.queue.in_(queues or {job.queue}))
        .order_by(Job.priority, Job.created_at).limit(50)
    ).scalars().all()
    if not rivals:
        return None
    share = gpu_seconds(session, window, sorted({job.owner, *(r.owner for r in rivals)}))
    mine = (job.priority, share[job.owner], job.created_at)
    kept, first = 0, None
    for rival in sorted(rivals, key=lambda r: (r.priority, share[r.owner], r.created_at)):
        if (rival.priority, share[rival.owner], rival.created_at) >= mine:
            break
        if quota is not None and owner_gpus_in_use(session, rival.owner) + rival.gpus > quota:
            continue  # it could not start here anyway
        if kept + rival.gpus <= free:
            kept += rival.gpus
            first = first or rival
    return first if first is not None and kept + job.gpus > free else None


def admit(session: Session, job: Job, host: str, cards: tuple[int, ...], *, quota: int | None,
          reserve_after: float, fair_share_window: float | None = None) -> Decision:
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
    if fair_share_window is not None:
        rival = better_waiting(session, job, host, len(free), window=fair_share_window, quota=quota)
        if rival is not None:
            why = "priority" if rival.priority < job.priority else f"fair share: owner {rival.owner} has used less"
            return Decision(None, f"waiting: job {rival.id} goes first on {host} ({why})")
    return Decision(free[: job.gpus])


def _age(job: Job, now: datetime) -> float:
    return max(0.0, (now - (job.started_at or now)).total_seconds())


def _fewest_youngest(victims: list[Job], need: int, cards_of: dict[str, int], now: datetime) -> list[Job] | None:
    """The fewest of `victims` whose cards add up to `need`; among as few, the youngest (the least run time
    lost in all). None when even all of them are not enough."""
    if need <= 0:
        return []
    if sum(cards_of[v.id] for v in victims) < need:
        return None
    victims = sorted(victims, key=lambda v: _age(v, now))[:12]  # the youngest dozen: combinations stay cheap
    for k in range(1, len(victims) + 1):
        fits = [c for c in combinations(victims, k) if sum(cards_of[v.id] for v in c) >= need]
        if fits:
            return list(min(fits, key=lambda c: sum(_age(v, now) for v in c)))
    return None


@dataclass(frozen=True)
class Preemption:
    victim: str  # the job to stop
    for_job: str  # the waiting job it makes room for
    reason: str


def plan_preemptions(session: Session, *, grace: float, protected: frozenset[str]) -> list[Preemption]:
    """Which running jobs to preempt now, for the most urgent waiting GPU job that has waited `grace` seconds
    and fits no host's free cards: on the host where it fits, the fewest victims, then the youngest (the
    least work since their start), of lower priority, preemptible, not protected. Nothing while a
    preemption for it is already under way (its victims are still stopping)."""
    cutoff = utcnow() - timedelta(seconds=grace)
    queued_at = (select(func.max(JobEvent.at)).where(JobEvent.job_id == Job.id, JobEvent.to_status == S.QUEUED.value)
                 .correlate(Job).scalar_subquery())  # since when it waits (its message may bounce meanwhile)
    waiting = session.execute(
        select(Job).where(Job.status == S.QUEUED.value, Job.gpus > 0, Job.enqueued_at.is_not(None),
                          queued_at < cutoff).order_by(Job.priority, Job.created_at).limit(20)
    ).scalars().all()
    if not waiting:
        return []
    hosts = host_cards(session)
    running = session.execute(
        select(Job, GpuLease.host, GpuLease.gpu_index).join(GpuLease, GpuLease.job_id == Job.id)
        .where(Job.status.in_(LIVE))
    ).all()
    held: dict[str, dict[str, Job]] = {}  # host -> job id -> job
    cards_of: dict[str, int] = {}
    busy: dict[str, int] = {}
    for job, host, _idx in running:
        held.setdefault(host, {})[job.id] = job
        cards_of[job.id] = cards_of.get(job.id, 0) + 1
        busy[host] = busy.get(host, 0) + 1
    for want in waiting:
        if any(len(c) - busy.get(h, 0) >= want.gpus for h, c in hosts.items()):
            continue  # it fits somewhere now: the ordering rule gives it those cards
        if any(j.preempt_requested and want.id in j.preempt_requested for js in held.values() for j in js.values()):
            return []  # its victims are stopping
        best: tuple[tuple, str, list[Job]] | None = None
        for host, cards in hosts.items():
            if len(cards) < want.gpus:
                continue
            free = len(cards) - busy.get(host, 0)
            victims = [j for j in held.get(host, {}).values()
                       if j.priority > want.priority and j.preemptible and not j.preempt_requested
                       and j.queue not in protected and j.owner not in protected and j.status == S.RUNNING.value]
            chosen = _fewest_youngest(victims, want.gpus - free, cards_of, cutoff)
            if chosen is None:
                continue
            key = (len(chosen), sum(_age(v, cutoff) for v in chosen))
            if best is None or key < best[0]:
                best = (key, host, chosen)
        if best is None or not best[2]:
            continue
        return [Preemption(v.id, want.id, f"preempted for job {want.id} (priority {want.priority} over "
                                          f"{v.priority}, which waited over {grace:g} s for {want.gpus} card(s))")
                for v in best[2]]
    return []
