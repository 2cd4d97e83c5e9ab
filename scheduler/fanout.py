"""Fan-out: a parent job whose children carry the work, spread over every worker.

- Shards: image i of a generation is a pure function of (checkpoint, seed, i), so a shard is just a
  range of indices; children write under the parent's prefix, `jobs/<parent>/images/shard-NNNN/`.
  The parent finishes when its last child does, and writes one manifest for the whole set.
- Sweeps: one child per point of a cross product of field values (`--sweep lr=1e-4,2e-4 --sweep seed=0..4`),
  each a complete job with its own outputs; the parent succeeds when every child has.

The parent gets no message: it is RUNNING from its first child's claim, and finished by whoever ends its
last child (the sweeper is the safety net).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler import states
from scheduler.db import Artifact, Job, Status, utcnow
from scheduler.errors import SpecError
from scheduler.specs import GenerateSpec
from scheduler.store import Store

S = Status


def shard_range(count: int, shards: int, index: int) -> tuple[int, int]:
    """[start, stop) of shard `index` when `count` images are split into `shards` near-equal parts."""
    base, extra = divmod(count, shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def plan_children(parent: Job, spec: GenerateSpec) -> list[Job]:
    children = []
    for i in range(spec.shards):
        data = spec.model_copy(update={"shard_index": i, "name": f"{spec.name or 'generate'} shard {i}"})
        children.append(
            Job(
                spec=data.model_dump(mode="json"), kind=parent.kind, owner=parent.owner, priority=parent.priority,
                gpus=parent.gpus, queue=parent.queue, max_attempts=parent.max_attempts,
                preemptible=parent.preemptible, depends_on=list(parent.depends_on or []), name=data.name, parent_id=parent.id, shard_index=i,
                status=S.QUEUED.value,
            )
        )
    return children


# A sweep field that is a shorthand for several config fields (as the CLI's --lr is).
SWEEP_ALIASES = {"lr": ("lr_g", "lr_d")}


def sweep_points(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cross product of a sweep, first field slowest: {"a": [1, 2], "b": [3]} → [{a: 1, b: 3}, {a: 2, b: 3}]."""
    return [dict(zip(sweep, values)) for values in itertools.product(*sweep.values())]


def plan_sweep(spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """One (label, spec data) per point of the spec's sweep; the caller validates each as a spec of its own.

    A field is a spec field when the spec has it (source_job, priority, gpus...), else a config field
    (dotted for nested ones, `config.` optional). Children are plain jobs: no sweep, no shards of their own.
    """
    if getattr(spec, "shards", 1) > 1:
        raise SpecError("a sweep's jobs cannot also be sharded: drop `shards` or the sweep")
    base = spec.model_dump(mode="json", exclude={"sweep"})
    out = []
    for point in sweep_points(spec.sweep):
        data = copy.deepcopy(base)
        for key, value in point.items():
            for path in _sweep_paths(spec, key):
                _set_path(data, path, value)
        label = " ".join(f"{k}={v}" for k, v in point.items())
        data["name"] = f"{spec.name or spec.kind} {label}"[:200]
        out.append((label, data))
    return out


def _sweep_paths(spec: Any, key: str) -> list[list[str]]:
    parts = key.split(".")
    if parts[0] == "config":
        parts = parts[1:]
    elif len(parts) == 1 and key in type(spec).model_fields:
        return [[key]]
    config_fields = type(spec.config).model_fields
    if len(parts) == 1 and parts[0] in SWEEP_ALIASES and parts[0] not in config_fields:
        return [["config", alias] for alias in SWEEP_ALIASES[parts[0]]]
    if parts[0] not in config_fields:
        raise SpecError(f"cannot sweep {key!r}: {spec.kind} jobs have no such spec or config field")
    return [["config", *parts]]


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[path[-1]] = value


def is_fanout_parent(job: Job) -> bool:
    """A parent of shards or of a sweep: it gets no message, its children carry the work."""
    if job.parent_id is not None:
        return False
    return bool(job.spec.get("sweep")) or (job.kind == "generate" and int(job.spec.get("shards") or 1) > 1)


def _is_sharded(job: Job) -> bool:
    return job.kind == "generate" and int(job.spec.get("shards") or 1) > 1


def mark_parent_running(session: Session, parent_id: str, actor: str) -> None:
    """The first claimed child starts its parent (a no-op for the others: the CAS finds it RUNNING)."""
    states.transition(session, parent_id, S.RUNNING, expect=[S.QUEUED], actor=actor,
                      values={"started_at": utcnow(), "message": None}, reason="first shard started")


def output_prefix(job: Job) -> str:
    """Where a generation's images go: its own prefix, or its parent's shard folder."""
    if job.parent_id is not None and job.shard_index is not None:
        return f"jobs/{job.parent_id}/images/shard-{job.shard_index:04d}"
    return f"jobs/{job.id}/images"


def parent_progress(session: Session, parent_id: str) -> tuple[int, int, dict[str, int]]:
    rows = session.execute(
        select(Job.status, func.count()).where(Job.parent_id == parent_id).group_by(Job.status)
    ).all()
    counts = {status: n for status, n in rows}
    return counts.get(S.SUCCEEDED.value, 0), sum(counts.values()), counts


def maybe_finish_parent(session: Session, store: Store, parent_id: str, actor: str) -> Job | None:
    """After a child ends: update the parent's progress; when all children succeeded, write the
    merged manifest and finish it; when one failed for good, fail the parent (others go on)."""
    # Row lock (PostgreSQL): finishers of the same parent take turns.
    parent = session.get(Job, parent_id, with_for_update=True, populate_existing=True)
    if parent is None or parent.status != S.RUNNING.value:
        return None
    done, total, counts = parent_progress(session, parent_id)
    parent.progress = done / total if total else 0.0
    parent.progress_step, parent.progress_total = done, total
    failed = counts.get(S.FAILED.value, 0) + counts.get(S.CANCELLED.value, 0)
    what = "shards" if _is_sharded(parent) else "jobs of the sweep"
    if failed and done + failed == total:
        return states.transition(session, parent_id, S.FAILED, expect=[S.RUNNING], actor=actor,
                                 reason=f"{failed} of {total} {what} failed; `medgan jobs retry {parent_id}` "
                                        "re-runs only those")
    if done < total:
        return None
    if not _is_sharded(parent):  # a sweep: each child has its own outputs, nothing to merge
        return states.transition(session, parent_id, S.SUCCEEDED, expect=[S.RUNNING], actor=actor)
    key = f"jobs/{parent_id}/manifest.csv"
    info = store.put_bytes(key, merged_manifest(session, store, parent_id))  # same bytes whoever writes it
    done_job = states.transition(session, parent_id, S.SUCCEEDED, expect=[S.RUNNING], actor=actor)
    if done_job is not None:  # the CAS winner records the object
        session.add(Artifact(job_id=parent_id, key=info.key, size=info.size, sha256=info.sha256, kind="manifest"))
    return done_job


def merged_manifest(session: Session, store: Store, parent_id: str) -> bytes:
    rows: list[dict[str, Any]] = []
    children = session.execute(select(Job).where(Job.parent_id == parent_id).order_by(Job.shard_index)).scalars()
    for child in children:
        raw = store.get_bytes(f"{output_prefix(child)}/manifest.csv").decode()
        rows.extend(csv.DictReader(io.StringIO(raw)))
    rows.sort(key=lambda r: int(r["index"]))
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue().encode()


def retry_failed_children(session: Session, parent_id: str, actor: str) -> list[str]:
    """Re-queue only the shards that did not succeed; finished shards are never redone."""
    ids = []
    for child in session.execute(
        select(Job).where(Job.parent_id == parent_id, Job.status.in_([S.FAILED.value, S.CANCELLED.value]))
    ).scalars():
        states.transition(session, child.id, S.QUEUED, expect=[S(child.status)], actor=actor,
                          reason="shard retried", values={"attempt": 0})
        ids.append(child.id)
    return ids
