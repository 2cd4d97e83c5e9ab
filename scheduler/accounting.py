"""`medgan jobs acct`: GPU-hours and job-hours per owner and kind over a window (Slurm's `sacct`).

Time is counted per run, from the job's events: every period between a transition into RUNNING and the
next transition out of RUNNING/CANCELLING is one run (a requeued job ran several times, and every run held
its cards). A run still going counts up to now. Periods are clipped to the window [since, until).
A fan-out parent holds no cards itself: its shards are counted, the parent is not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from scheduler.db import Job, JobEvent, Status, session_scope, utcnow
from scheduler.jobs import check_database, parse_when
from scheduler.settings import Settings

GROUPS = ("owner", "kind")
_HOLDING = (Status.RUNNING.value, Status.CANCELLING.value)


def run_periods(events: list[tuple[str, datetime]], now: datetime) -> list[tuple[datetime, datetime]]:
    """[(start, end)] of the runs in a job's (to_status, at) events, in time order."""
    periods, start = [], None
    for to, at in events:
        if to == Status.RUNNING.value and start is None:
            start = at
        elif to not in _HOLDING and start is not None:
            periods.append((start, at))
            start = None
    if start is not None:
        periods.append((start, now))
    return periods


def _overlap(a: datetime, b: datetime, lo: datetime | None, hi: datetime) -> float:
    start = max(a, lo) if lo else a
    end = min(b, hi)
    return max(0.0, (end - start).total_seconds())


def accounting(settings: Settings, *, since: Any = "7d", until: Any = None, by: str = "owner,kind",
               owner: str | None = None) -> list[dict[str, Any]]:
    """Rows {owner?, kind?, jobs, runs, job_hours, gpu_hours, succeeded, failed, cancelled}, most GPU-hours first."""
    keys = [k.strip() for k in by.split(",") if k.strip()]
    bad = [k for k in keys if k not in GROUPS]
    if bad or not keys:
        from scheduler.errors import MedganUserError

        raise MedganUserError(f"--by takes {', '.join(GROUPS)} or both (owner,kind), not {by!r}")
    now = utcnow()
    lo, hi = parse_when(since, now=now), parse_when(until, now=now) or now
    check_database(settings)
    with session_scope(settings.db_url) as s:
        q = select(Job).where(Job.kind != "noop")
        if owner:
            q = q.where(Job.owner == owner)
        if lo is not None:  # a job that ended before the window cannot count
            q = q.where((Job.finished_at.is_(None)) | (Job.finished_at >= lo))
        jobs = s.execute(q).scalars().all()
        ids = [j.id for j in jobs]
        events: dict[str, list[tuple[str, datetime]]] = {}
        for chunk in range(0, len(ids), 500):
            rows = s.execute(select(JobEvent.job_id, JobEvent.to_status, JobEvent.at)
                             .where(JobEvent.job_id.in_(ids[chunk:chunk + 500])).order_by(JobEvent.id)).all()
            for job_id, to, at in rows:
                events.setdefault(job_id, []).append((to, at))
        parents = {j.parent_id for j in jobs if j.parent_id}
        table: dict[tuple[str, ...], dict[str, Any]] = {}
        for job in jobs:
            if job.id in parents:
                continue
            periods = [p for p in run_periods(events.get(job.id, []), now) if _overlap(*p, lo, hi) > 0]
            if not periods:
                continue
            seconds = sum(_overlap(a, b, lo, hi) for a, b in periods)
            row = table.setdefault(tuple(getattr(job, k) for k in keys), {
                **{k: getattr(job, k) for k in keys}, "jobs": 0, "runs": 0, "job_hours": 0.0, "gpu_hours": 0.0,
                "succeeded": 0, "failed": 0, "cancelled": 0})
            row["jobs"] += 1
            row["runs"] += len(periods)
            row["job_hours"] += seconds / 3600
            row["gpu_hours"] += seconds * job.gpus / 3600
            if job.status in ("SUCCEEDED", "FAILED", "CANCELLED"):
                row[job.status.lower()] += 1
    out = sorted(table.values(), key=lambda r: (-r["gpu_hours"], -r["job_hours"], tuple(str(r[k]) for k in keys)))
    for row in out:
        row["job_hours"], row["gpu_hours"] = round(row["job_hours"], 4), round(row["gpu_hours"], 4)
    return out
