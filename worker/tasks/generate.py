"""`generate` jobs: sample a range of images from a train job's checkpoint (`checkpoint`: last, best, step-N).

A fan-out child writes its shard under the parent's prefix; image i depends only on
(checkpoint, seed, i), so the shards of N workers equal one worker's run byte for byte.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from pathlib import Path

from scheduler.fanout import output_prefix, shard_range
from worker.runtime import JobFailed, JobRun
from worker.subproc import run_science
from worker.tasks._common import fetch_checkpoint, write_invocation


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def handle(run: JobRun) -> None:
    spec = run.spec
    if spec.source_job is None:
        raise JobFailed("a generate job needs --from <train job id>")
    ckpt = fetch_checkpoint(run, spec.source_job, run.work_dir / "checkpoint", spec.checkpoint)
    if run.shard_index is not None:
        start, stop = shard_range(spec.config.count, spec.shards, run.shard_index)
    else:
        start, stop = 0, spec.config.count
    out_dir = run.work_dir / "out"
    provenance = {
        "job": run.parent_id or run.job_id,
        "source_job": spec.source_job,
        "checkpoint": ckpt.name,
        "checkpoint_choice": spec.checkpoint,
        "checkpoint_sha256": _tree_sha256(ckpt),
        "seed": str(spec.config.seed),
    }
    inv = write_invocation(run, {
        "run_dir": str(run.work_dir / "run"), "checkpoint_dir": str(ckpt), "out_dir": str(out_dir),
        "config": spec.config.model_dump(mode="json"), "start": start, "count": stop - start,
        "provenance": provenance,
    })
    cmd = [sys.executable, "-m", "worker.science", "generate", str(inv)]
    run_science(run, cmd, run.work_dir / "run", run.child_env())
    if run.should_stop():
        return
    prefix = output_prefix(_JobRef(run))
    job_prefix = f"jobs/{run.parent_id or run.job_id}"
    n = run.upload_tree(out_dir, prefix, "image", skip=lambda p: p.name == "manifest.csv")
    manifest = out_dir / "manifest.csv"
    if not manifest.exists():
        raise JobFailed("generation wrote no manifest")
    # File names in the manifest become keys relative to the job's prefix.
    rel = prefix[len(job_prefix) + 1:]
    fixed = _rewrite_files(manifest.read_text(), rel)
    manifest.write_text(fixed)
    key = f"{prefix}/manifest.csv" if run.parent_id else f"{run.prefix}/manifest.csv"
    run.upload(manifest, key, "manifest")
    run.progress(stop - start, stop - start, {"images": n}, force=True)


def _rewrite_files(text: str, rel: str) -> str:
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for col in ("file", "mask_file"):
            if row.get(col):
                row[col] = f"{rel}/{row[col]}"
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


class _JobRef:
    """The two fields output_prefix reads, from a JobRun."""

    def __init__(self, run: JobRun):
        self.id, self.parent_id, self.shard_index = run.job_id, run.parent_id, run.shard_index
