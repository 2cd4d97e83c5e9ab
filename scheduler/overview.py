"""The cluster at a glance (for `medgan status` and the Prometheus endpoint), read from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from scheduler import constants as C
from scheduler.db import GpuLease, Job, Status, Worker, session_scope
from scheduler.jobs import check_database, job_dict
from scheduler.policy import gpu_seconds
from scheduler.settings import Settings


def cluster_status(settings: Settings) -> dict[str, Any]:
    check_database(settings)
    with session_scope(settings.db_url) as s:
        workers = s.execute(select(Worker).order_by(Worker.host, Worker.name)).scalars().all()
        leases = s.execute(select(GpuLease.host, GpuLease.gpu_index, GpuLease.job_id)).all()
        counts = s.execute(
            select(Job.queue, Job.status, func.count()).group_by(Job.queue, Job.status)
        ).all()
        by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        share = gpu_seconds(s, settings.fair_share_window_seconds)
        waiting = dict(s.execute(select(Job.owner, func.count()).where(Job.status == Status.QUEUED.value, Job.gpus > 0)
                                 .group_by(Job.owner)).all())
        held = dict(s.execute(select(Job.owner, func.coalesce(func.sum(Job.gpus), 0))
                              .where(Job.status.in_([Status.RUNNING.value, Status.CANCELLING.value]))
                              .group_by(Job.owner)).all())
        running = [job_dict(j) for j in s.execute(
            select(Job).where(Job.status.in_([Status.RUNNING.value, Status.CANCELLING.value]),
                              Job.lease_owner.is_not(None)).order_by(Job.started_at)
        ).scalars()]
    hosts: dict[str, dict[str, Any]] = {}
    for w in workers:
        h = hosts.setdefault(w.host, {"host": w.host, "workers": [], "cards": set()})
        h["workers"].append({"name": w.name, "queues": w.queues, "gpus": w.gpus,
                             "last_seen": w.last_seen.isoformat()})
        h["cards"].update(w.gpus or [])
    busy: dict[str, set[int]] = {}
    for host, idx, _job in leases:
        busy.setdefault(host, set()).add(idx)
    out_hosts = []
    for name, h in sorted(hosts.items()):
        cards = sorted(h["cards"])
        b = sorted(busy.get(name, set()) & set(cards))
        out_hosts.append({"host": name, "workers": h["workers"], "cards": cards, "busy": b,
                          "free": [c for c in cards if c not in b]})
    queues = []
    for q in C.QUEUES.values():
        queued = sum(n for qq, st, n in counts if qq == q and st == Status.QUEUED.value)
        run = sum(n for qq, st, n in counts if qq == q and st in (Status.RUNNING.value, Status.CANCELLING.value))
        queues.append({"queue": q, "queued": queued, "running": run})
    # Fair share (scheduler/policy.py): at equal priority, the owner with the least GPU time in the window first.
    total = sum(share.values()) or 1.0
    owners = sorted(set(share) | set(waiting) | set(held), key=lambda o: (share.get(o, 0.0), o))
    shares = [{"owner": o, "gpu_hours": round(share.get(o, 0.0) / 3600, 3),
               "share": round(share.get(o, 0.0) / total, 4), "gpus_held": int(held.get(o, 0)),
               "gpu_jobs_waiting": int(waiting.get(o, 0)), "order": i + 1} for i, o in enumerate(owners)]
    return {"hosts": out_hosts, "queues": queues, "jobs_by_status": by_status, "running": running,
            "fair_share": {"window_s": settings.fair_share_window_seconds, "owners": shares}}
