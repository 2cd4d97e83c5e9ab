"""`enhance` jobs: a dataset in, enhanced images, per-image metrics and a summary out."""

from __future__ import annotations

import json
from pathlib import Path
import sys

from worker.runtime import JobFailed, JobRun
from worker.subproc import run_science
from worker.tasks._common import fetch_checkpoint, science_config, write_invocation



def _images(run: JobRun, key: str) -> list[str]:
    """The dataset's image files, chosen by content as every job kind chooses them (medgan.data)."""
    from medgan.data import list_inputs
    from medgan.errors import DataError

    try:
        return [str(e.path) for e in list_inputs(run.dataset(key)).images]
    except DataError as exc:
        raise JobFailed(f"dataset {key}: {exc}") from None


def handle(run: JobRun) -> None:
    spec = run.spec
    inputs = _images(run, spec.dataset)
    refs = _images(run, spec.references) if spec.references else None
    model_dir = None  # learned methods without a source job use the model shipped with medgan
    if spec.config.method in ("zerodce", "esrgan") and spec.source_job:
        model_dir = str(fetch_checkpoint(run, spec.source_job, run.work_dir / "model"))
    out_dir = run.work_dir / "out"
    inv = write_invocation(run, {
        "run_dir": str(run.work_dir / "run"), "inputs": [str(p) for p in inputs], "out_dir": str(out_dir),
        "references": refs, "model_dir": model_dir, "config": science_config(run).model_dump(mode="json"),
    })
    cmd = [sys.executable, "-m", "worker.science", "enhance", str(inv)]
    run_science(run, cmd, run.work_dir / "run", run.child_env())
    if run.should_stop():
        return
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("count", 0) == 0:
        failed = summary.get("failed") or [Path(p).name for p in inputs]
        first = _first_error(out_dir / "metrics.csv")
        raise JobFailed(f"no image could be enhanced ({len(failed)} unreadable, e.g. {failed[0]}: {first})")
    run.upload_tree(out_dir / "images", f"{run.prefix}/images", "image")
    for name, kind in (("metrics.csv", "metrics"), ("summary.json", "summary")):
        if (out_dir / name).exists():
            run.upload(out_dir / name, f"{run.prefix}/{name}", kind)
    for name, value in summary.items():
        if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            run.metric(f"{name}_mean", value["mean"])


def _first_error(metrics_csv) -> str:
    import csv

    if not metrics_csv.exists():
        return "no metrics written"
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("status", "ok") != "ok":
                return row["status"].removeprefix("error: ")
    return "unknown error"
