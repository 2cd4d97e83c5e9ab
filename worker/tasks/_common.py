"""Pieces the kind modules share: checkpoints in the store, invocation files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scheduler.store import Store
from worker.runtime import JobFailed, JobRun

_STEP = re.compile(r"/checkpoints/(step-(\d+))/COMPLETE$")


def newest_checkpoint(store: Store, job_id: str) -> str | None:
    """The newest COMPLETE checkpoint of a job in the store, as 'step-000500', or None."""
    best: tuple[int, str] | None = None
    for obj in store.list(f"jobs/{job_id}/checkpoints/"):
        m = _STEP.search(obj.key)
        if m and (best is None or int(m.group(2)) > best[0]):
            best = (int(m.group(2)), m.group(1))
    return best[1] if best else None


def fetch_checkpoint(run: JobRun, job_id: str, dest_root: Path) -> Path:
    """Download a job's newest checkpoint to dest_root/<step-name>; JobFailed if it has none."""
    name = newest_checkpoint(run.store, job_id)
    if name is None:
        raise JobFailed(f"job {job_id} has no complete checkpoint in the store")
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
