"""Pieces the kind modules share: checkpoints in the store, invocation files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scheduler.store import Store
from worker.runtime import JobFailed, JobRun

_STEP = re.compile(r"/checkpoints/(step-(\d+))/COMPLETE$")


def stored_checkpoints(store: Store, job_id: str) -> list[int]:
    """Steps of a job's COMPLETE checkpoints in the store, ascending."""
    return sorted({int(m.group(2)) for obj in store.list(f"jobs/{job_id}/checkpoints/")
                   if (m := _STEP.search(obj.key))})


def newest_checkpoint(store: Store, job_id: str) -> str | None:
    """The newest COMPLETE checkpoint of a job in the store, as 'step-000500', or None."""
    steps = stored_checkpoints(store, job_id)
    return f"step-{steps[-1]:06d}" if steps else None


def choose_checkpoint(store: Store, job_id: str, which: str = "last") -> str:
    """'last' | 'best' | 'step-N' -> the stored checkpoint's name; JobFailed naming what exists otherwise.

    'best' is the step in the job's best.json (the training probes' pick, uploaded beside checkpoints)."""
    from medgan.config import parse_checkpoint_choice

    try:
        choice = parse_checkpoint_choice(which)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    steps = stored_checkpoints(store, job_id)
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
    name = choose_checkpoint(run.store, job_id, which)
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
