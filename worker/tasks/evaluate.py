"""`evaluate` jobs: quality (FID/KID/precision-recall) and utility of a generate job's images."""

from __future__ import annotations

import json
import sys

from sqlalchemy import select

from scheduler.client import Client
from scheduler.db import Job, session_scope
from worker.report import build_report
from worker.runtime import JobFailed, JobRun
from worker.subproc import run_science
from worker.tasks._common import science_config, write_invocation


def _training_phantom(run: JobRun, generate_job: str) -> dict | None:
    """The phantom the generator was trained on (the default real set when no dataset is named)."""
    with session_scope(run.settings.db_url) as s:
        gen = s.execute(select(Job.spec).where(Job.id == generate_job)).scalar_one()
        train = s.execute(select(Job.spec).where(Job.id == gen.get("source_job"))).scalar_one_or_none()
    if train is None or train.get("dataset"):
        return None
    return train["config"].get("phantom")


def handle(run: JobRun) -> None:
    spec = run.spec
    synth = run.work_dir / "synthetic"
    n = 0
    for obj in run.store.list(f"jobs/{spec.source_job}/"):
        rel = obj.key[len(f"jobs/{spec.source_job}/"):]
        if rel.startswith("images/") or rel == "manifest.csv":
            run.store.get_file(obj.key, synth / rel)
            n += 1
    if n == 0:
        raise JobFailed(f"generate job {spec.source_job} has no images in the store")
    real_dir = run.dataset(spec.dataset) if spec.dataset else None
    config = science_config(run).model_dump(mode="json")
    phantom = None if real_dir else _training_phantom(run, spec.source_job)
    if real_dir is None and phantom is None:
        raise JobFailed("no real data: name --real <dataset> (the generator did not train on the phantom)")
    if phantom is not None and config.get("real_train_count") is None:
        # The phantom's images are a prefix-stable sequence: extend the GAN's training set with fresh
        # images of the same distribution, which become the held-out test split.
        trained = phantom["count"]
        phantom = {**phantom, "count": trained + max(trained, 200)}
        config["real_train_count"] = trained
    out_dir = run.work_dir / "out"
    inv = write_invocation(run, {
        "run_dir": str(run.work_dir / "run"), "synthetic_dir": str(synth), "out_dir": str(out_dir),
        "real_dir": str(real_dir) if real_dir else None, "phantom": phantom,
        "config": config,
    })
    cmd = [sys.executable, "-m", "worker.science", "evaluate", str(inv)]
    run_science(run, cmd, run.work_dir / "run", run.child_env())
    if run.should_stop():
        return
    run.upload_tree(out_dir, run.prefix, "evaluation")
    metrics = out_dir / "metrics.json"
    if metrics.exists():
        for name, value in _flatten(json.loads(metrics.read_text())).items():
            run.metric(name, value)
    # The evaluation's report covers its lineage (train → generate → evaluate): jobs/<id>/report.html.
    build_report(Client(run.settings), run.job_id, run.work_dir / "report")


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key[:100]] = float(v)
    return out
