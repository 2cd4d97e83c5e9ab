"""Submission and queries: the job system's service layer, shared by the CLI, the Python client,
the sweeper and the worker.

Submission order (DESIGN.md): validate → INSERT row(s) → COMMIT → send the message(s).
A message lost between commit and send is re-sent by the sweeper (the row is the truth).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Sequence

from pathlib import Path

from sqlalchemy import func, inspect, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from scheduler import states
from scheduler.broker import make_celery, queue_for, send_job
from scheduler.db import (
    Artifact, Job, JobEvent, MetricPoint, Status, get_engine, new_id, session_scope, utcnow,
)
from scheduler.fanout import is_fanout_parent, parent_progress, plan_children, retry_failed_children
from scheduler.policy import host_cards
from scheduler.errors import DatabaseUnavailable, MedganUserError, NotFound, SpecError
from scheduler.settings import Settings
from scheduler.specs import GenerateSpec, parse_spec

log = logging.getLogger(__name__)
S = Status


def check_database(settings: Settings) -> None:
    """Fail with one clear line when the database is unreachable or not migrated."""
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise DatabaseUnavailable(f"database {url.database} does not exist: run `medgan db upgrade`")
    try:
        engine = get_engine(settings.db_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if not inspect(conn).has_table("jobs"):
                raise DatabaseUnavailable(
                    f"database {engine.url.render_as_string(hide_password=True)} is not initialised: "
                    "run `medgan db upgrade`"
                )
    except (OperationalError, ProgrammingError) as exc:
        url = get_engine(settings.db_url).url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(f"cannot reach the database {url}: {exc.orig or exc}".splitlines()[0]) from None


def submit(settings: Settings, spec_data: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
    """Validate, record, commit, then enqueue. Returns the job (the existing one for a repeated key)."""
    spec = parse_spec(spec_data)
    check_database(settings)
    with session_scope(settings.db_url) as session:
        if idempotency_key:
            existing = session.execute(select(Job).where(Job.idempotency_key == idempotency_key)).scalar_one_or_none()
            if existing is not None:
                return existing
        _check_references(session, spec)
        _check_gpus(session, spec.gpus)
        jobs = _rows_for(spec, settings, idempotency_key)
        session.add_all(jobs)
        try:
            session.flush()
        except IntegrityError:
            # Two submissions with the same key raced: the other one won, return it.
            session.rollback()
            existing = session.execute(select(Job).where(Job.idempotency_key == idempotency_key)).scalar_one()
            return existing
        for job in jobs:
            session.add(JobEvent(job_id=job.id, from_status=None, to_status=job.status, actor=spec.owner,
                                 reason="submitted"))
        top = jobs[0]
    dispatch_ready(settings, [j.id for j in jobs])
    return top


def _rows_for(spec: Any, settings: Settings, key: str | None) -> list[Job]:
    """One row, or a parent plus one child per shard for a fanned-out generation."""
    data = spec.model_dump(mode="json")
    common = dict(
        kind=spec.kind, owner=spec.owner, priority=spec.priority, gpus=spec.gpus, queue=queue_for(spec.kind),
        max_attempts=spec.max_attempts or settings.max_attempts, depends_on=list(spec.depends_on), name=spec.name,
    )
    if isinstance(spec, GenerateSpec) and spec.shards > 1:
        # The parent carries no message of its own: it turns RUNNING when its first child is claimed
        # and is finished by whoever finishes its last child (scheduler.fanout).
        parent = Job(id=new_id(), spec=data, idempotency_key=key, status=S.QUEUED.value, **common)
        return [parent, *plan_children(parent, spec)]
    return [Job(spec=data, idempotency_key=key, status=S.QUEUED.value, **common)]


def _check_references(session: Session, spec: Any) -> None:
    for dep in spec.depends_on:
        if session.get(Job, dep) is None:
            raise SpecError(f"depends_on names an unknown job {dep}")
    source = getattr(spec, "source_job", None)
    if source:
        src = session.get(Job, source)
        if src is None:
            raise SpecError(f"source job {source} does not exist")
        if src.kind not in ("train", "generate"):
            raise SpecError(f"source job {source} is a {src.kind} job")
        if src.status != S.SUCCEEDED.value and source not in spec.depends_on:
            raise SpecError(f"source job {source} is {src.status}, not SUCCEEDED (or list it in depends_on)")


def _check_gpus(session: Session, gpus: int) -> None:
    if gpus == 0:
        return
    hosts = host_cards(session)
    if not hosts:
        return  # no worker has registered yet: nothing to compare with
    most = max(len(c) for c in hosts.values())
    if gpus > most:
        raise SpecError(f"the job asks for {gpus} GPUs but the largest host has {most}")


def dispatch_ready(settings: Settings, job_ids: Sequence[str] | None = None) -> list[str]:
    """Send messages for QUEUED jobs whose dependencies have succeeded (and fail those whose
    dependencies failed). With `job_ids`, only those; else every queued job never sent or sent
    longer ago than `resend_after_seconds` (the sweeper's re-send of lost messages)."""
    now = utcnow()
    sent: list[tuple[str, str, int]] = []
    with session_scope(settings.db_url) as session:
        q = select(Job).where(Job.status == S.QUEUED.value)
        if job_ids is not None:
            q = q.where(Job.id.in_(list(job_ids)))
        else:
            stale = now - timedelta(seconds=settings.resend_after_seconds)
            q = q.where(or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale))
        for job in session.execute(q).scalars():
            blocked = _blocked_by(session, job)
            if blocked == "" and is_fanout_parent(job):
                continue  # its children carry the work
            if blocked == "":
                job.enqueued_at = now
                sent.append((job.id, job.kind, job.priority))
            elif blocked is not None:
                states.transition(session, job.id, S.FAILED, expect=[S.QUEUED], actor="scheduler", reason=blocked)
    if sent:
        app = make_celery(settings)
        for job_id, kind, priority in sent:
            try:
                send_job(app, job_id, kind, priority)
            except Exception as exc:  # the sweeper re-sends; the job stays QUEUED
                log.warning("could not send job %s: %s", job_id, exc)
    return [s[0] for s in sent]


def _blocked_by(session: Session, job: Job) -> str | None:
    """'' = ready; None = still waiting; a reason = a dependency failed."""
    for dep_id in job.depends_on or []:
        dep = session.get(Job, dep_id)
        if dep is None or dep.status in (S.FAILED.value, S.CANCELLED.value):
            return f"dependency {dep_id} {dep.status if dep else 'vanished'}"
        if dep.status != S.SUCCEEDED.value:
            job.message = f"waiting for job {dep_id} ({dep.status})"
            return None
    return ""


def resolve_id(session: Session, job_id: str) -> Job:
    """A job by id or unique id prefix (at least 4 characters)."""
    job = session.get(Job, job_id)
    if job is not None:
        return job
    if len(job_id) >= 4:
        rows = session.execute(select(Job).where(Job.id.like(f"{job_id}%")).limit(2)).scalars().all()
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            raise MedganUserError(f"job id prefix {job_id!r} is ambiguous")
    raise NotFound(f"no job {job_id!r}")


def get_job(settings: Settings, job_id: str) -> dict[str, Any]:
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        out = job_dict(job)
        out["events"] = [
            {"at": e.at.isoformat(), "from": e.from_status, "to": e.to_status, "actor": e.actor, "reason": e.reason}
            for e in job.events
        ]
        out["children"] = parent_progress(session, job.id)[2]  # children per status
        out["read"] = _read_summary(session, job.id)
        if job.status == S.QUEUED.value:
            out["queue_position"], out["waiting_reason"] = queue_position(session, job)
        return out


def _read_summary(session: Session, job_id: str) -> dict[str, Any] | None:
    """What the job's science read: files, images and files skipped by reason (metric rows `read.*`)."""
    rows = session.execute(select(MetricPoint.name, MetricPoint.value).where(
        MetricPoint.job_id == job_id, MetricPoint.name.like("read.%")).order_by(MetricPoint.id)).all()
    if not rows:
        return None
    out: dict[str, Any] = {"files_read": 0, "images": 0, "skipped": {}}
    for name, value in rows:
        key = name[len("read."):]
        if key.startswith("skipped."):
            out["skipped"][key[len("skipped."):]] = int(value)
        elif key in ("files_read", "images"):
            out[key] = int(value)
    return out


def read_line(read: dict[str, Any]) -> str:
    """'12 files -> 40 images; skipped 2 (non_finite 1, truncated 1)'."""
    text = f"{read['files_read']} files -> {read['images']} images"
    if read["skipped"]:
        text += f"; skipped {sum(read['skipped'].values())} (" + ", ".join(
            f"{k} {v}" for k, v in sorted(read["skipped"].items())) + ")"
    return text


def queue_position(session: Session, job: Job) -> tuple[int, str]:
    """1-based place among queued jobs of its queue, in the order workers take them (priority, age)."""
    ahead = session.execute(
        select(func.count()).where(
            Job.status == S.QUEUED.value,
            Job.queue == job.queue,
            or_(Job.priority < job.priority, (Job.priority == job.priority) & (Job.created_at < job.created_at)),
        )
    ).scalar_one()
    reason = job.message or (f"{ahead} job(s) ahead in {job.queue}" if ahead else "next in line")
    return ahead + 1, reason


def list_jobs(settings: Settings, *, status: str | None = None, kind: str | None = None,
              owner: str | None = None, limit: int = 50, include_children: bool = False) -> list[dict[str, Any]]:
    check_database(settings)
    with session_scope(settings.db_url) as session:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status.upper())
        if kind:
            q = q.where(Job.kind == kind)
        if owner:
            q = q.where(Job.owner == owner)
        if not include_children:
            q = q.where(Job.parent_id.is_(None))
        return [job_dict(j) for j in session.execute(q).scalars()]


def job_dict(job: Job) -> dict[str, Any]:
    dur = None
    if job.started_at:
        dur = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    return {
        "id": job.id, "kind": job.kind, "status": job.status, "name": job.name, "owner": job.owner,
        "priority": job.priority, "gpus": job.gpus, "queue": job.queue, "attempt": job.attempt,
        "max_attempts": job.max_attempts, "progress": round(job.progress, 4), "step": job.progress_step,
        "total": job.progress_total, "message": job.message, "parent_id": job.parent_id,
        "shard_index": job.shard_index, "depends_on": job.depends_on, "lease_owner": job.lease_owner,
        "created_at": job.created_at.isoformat(), "started_at": job.started_at and job.started_at.isoformat(),
        "finished_at": job.finished_at and job.finished_at.isoformat(), "duration_s": dur, "spec": job.spec,
    }


def cancel(settings: Settings, job_id: str, actor: str = "cli") -> dict[str, Any]:
    """QUEUED → CANCELLED now; RUNNING → CANCELLING (the worker stops it within seconds). Cascades to children."""
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        for child in session.execute(select(Job).where(Job.parent_id == job.id)).scalars():
            states.request_cancel(session, child.id, actor=actor)
        if job.parent_id is None and session.execute(
            select(func.count()).where(Job.parent_id == job.id)
        ).scalar_one():
            states.transition(session, job.id, S.CANCELLED, expect=[S.QUEUED, S.RUNNING], actor=actor,
                              reason="cancelled by user")
        else:
            states.request_cancel(session, job.id, actor=actor)
        session.flush()
        return job_dict(session.get(Job, job.id, populate_existing=True))


def retry(settings: Settings, job_id: str, actor: str = "cli") -> dict[str, Any]:
    """FAILED/CANCELLED → QUEUED, keeping its id, outputs so far and checkpoints (training resumes)."""
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        if job.status not in (S.FAILED.value, S.CANCELLED.value):
            raise MedganUserError(f"job {job.id} is {job.status}; only FAILED or CANCELLED jobs can be retried")
        job_id = job.id
        if session.execute(select(func.count()).where(Job.parent_id == job_id)).scalar_one():
            # A fan-out parent: only its failed shards run again; it is RUNNING while they do.
            states.transition(session, job_id, S.QUEUED, expect=[S(job.status)], actor=actor, reason="retried")
            states.transition(session, job_id, S.RUNNING, expect=[S.QUEUED], actor=actor,
                              values={"message": None})
            to_send = retry_failed_children(session, job_id, actor)
        else:
            states.transition(session, job_id, S.QUEUED, expect=[S(job.status)], actor=actor,
                              reason="retried by user", values={"attempt": 0, "message": None})
            to_send = [job_id]
    dispatch_ready(settings, to_send)
    return get_job(settings, job_id)


def list_artifacts(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        rows = session.execute(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.key)).scalars()
        return [{"key": a.key, "size": a.size, "sha256": a.sha256, "kind": a.kind} for a in rows]


def metric_series(settings: Settings, job_id: str) -> dict[str, list[tuple[int | None, float]]]:
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        rows = session.execute(
            select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.job_id == job.id).order_by(MetricPoint.id)
        ).all()
    out: dict[str, list[tuple[int | None, float]]] = {}
    for name, step, value in rows:
        out.setdefault(name, []).append((step, value))
    return out
