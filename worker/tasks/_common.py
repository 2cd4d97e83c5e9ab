"""Pieces the kind modules share: checkpoints in the store, invocation files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select

from scheduler.db import Artifact, session_scope
from scheduler.settings import Settings
from scheduler.store import Store
from worker.runtime import JobFailed, JobRun

_STEP = re.compile(r"/checkpoints/(step-(\d+))/COMPLETE$")


def stored_checkpoints(store: Store, job_id: str, settings: Settings | None = None) -> list[int]:
    """Steps of a job's COMPLETE checkpoints in the store, ascending. With `settings`, only those of the
    job's lineage: their COMPLETE marker has an artifact row, which only an attempt holding the job's
    current fencing token could write (an object a stale attempt left behind is not a checkpoint)."""
    steps = {int(m.group(2)) for obj in store.list(f"jobs/{job_id}/checkpoints/") if (m := _STEP.search(obj.key))}
    if settings is not None:
        steps &= set(lineage_checkpoints(settings, job_id))
    return sorted(steps)


def lineage_checkpoints(settings: Settings, job_id: str) -> list[int]:
    """Steps whose COMPLETE marker has an artifact row (written under a then-current token), ascending."""
    with session_scope(settings.db_url) as s:
        keys = s.execute(select(Artifact.key).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint",
                                                    Artifact.key.like(f"jobs/{job_id}/checkpoints/%/COMPLETE"))
                         ).scalars().all()
    return sorted({int(m.group(2)) for k in keys if (m := _STEP.search(k))})


def newest_checkpoint(store: Store, job_id: str, settings: Settings | None = None) -> str | None:
    """The newest COMPLETE checkpoint of a job in the store (of its lineage, with `settings`), or None."""
    steps = stored_checkpoints(store, job_id, settings)
    return f"step-{steps[-1]:06d}" if steps else None


def best_step(store: Store, job_id: str) -> int | None:
    """The step best.json names (the training probes' pick), or None."""
    try:
        return int(json.loads(store.get_bytes(f"jobs/{job_id}/best.json"))["step"])
    except Exception:  # noqa: BLE001 - missing object, bad JSON: no best
        return None


def prune_stored_checkpoints(run: JobRun, keep: int, protect: set[int] = frozenset()) -> list[int]:
    """keep_checkpoints in the store too: delete all but the `keep` newest of the job's checkpoints, never
    the newest, never the one best.json names, nor those in `protect`; each one's COMPLETE goes first (fenced: a stale attempt
    deletes nothing). Returns the steps deleted."""
    steps = stored_checkpoints(run.store, run.job_id, run.settings)
    if len(steps) <= max(1, keep):
        return []
    best = best_step(run.store, run.job_id)
    dropped = [s for s in steps[:-max(1, keep)] if s != best and s not in protect]
    for step in dropped:
        prefix = f"{run.prefix}/checkpoints/step-{step:06d}/"
        keys = sorted((o.key for o in run.store.list(prefix)), key=lambda k: not k.endswith("/COMPLETE"))
        run.delete_artifacts(keys)
    return dropped


def choose_checkpoint(store: Store, job_id: str, which: str = "last", settings: Settings | None = None) -> str:
    """'last' | 'best' | 'step-N' -> the stored checkpoint's name; JobFailed naming what exists otherwise.

    'best' is the step in the job's best.json (the training probes' pick, uploaded beside checkpoints)."""
    from medgan.config import parse_checkpoint_choice

    try:
        choice = parse_checkpoint_choice(which)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    steps = stored_checkpoints(store, job_id, settings)
    if not steps:
        raise JobFailed(f"job {job_id} has no complete checkpoint in the store")
    if choice == "last":
        return f"step-{steps[-1]:06d}"
    if choice == "best":
        try:
            choice = int(json.loads(store.get_bytes(f"jobs/{job_id}/best.json"))["step"])
        except Exception:  # noqa: BLE001 - missing object, bad JSON: one clear reason either way
            raise JobFailed(f"job {job_id} has no best checkpoint (no best.json: its probes were off or it "
                            "never reached a checkpoint); use --checkpoint last or step-N") from None
    if choice not in steps:
        raise JobFailed(f"job {job_id} has no stored checkpoint step-{choice:06d}; it has "
                        + ", ".join(f"step-{s:06d}" for s in steps))
    return f"step-{choice:06d}"


def fetch_checkpoint(run: JobRun, job_id: str, dest_root: Path, which: str = "last") -> Path:
    """Download a job's checkpoint chosen by `which` (see choose_checkpoint) to dest_root/<step-name>."""
    name = choose_checkpoint(run.store, job_id, which, run.settings)
    prefix = f"jobs/{job_id}/checkpoints/{name}/"
    dest = dest_root / name
    for obj in run.store.list(prefix):
        run.store.get_file(obj.key, dest / obj.key[len(prefix):])
    return dest


def science_config(run: JobRun):  # noqa: ANN201 - the kind's medgan.config model
    """The job's config with its reader limits lowered to this worker's ceilings (MEDGAN_MAX_*)."""
    cfg = run.spec.config
    read = getattr(cfg, "read", None)
    return cfg if read is None else cfg.model_copy(update={"read": read.capped(**run.settings.read_ceilings())})


def write_invocation(run: JobRun, data: dict) -> Path:
    path = run.work_dir / "invocation.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
