"""`medgan report JOB`: gather a job and the jobs it came from (evaluate → generate → train) out of
the store, render one self-contained HTML file, store it as `jobs/<id>/report.html`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from scheduler.client import Client
from scheduler.db import Artifact, session_scope

MAX_IMAGES = 64  # synthetic images fetched for the grid


def lineage(client: Client, job_id: str) -> list[dict[str, Any]]:
    """The job and its sources, newest first (evaluate, generate, train)."""
    chain = [client.job(job_id)]
    while chain[-1]["spec"].get("source_job"):
        chain.append(client.job(chain[-1]["spec"]["source_job"]))
    return chain


def _fetch(client: Client, job: dict[str, Any], dest: Path) -> Path:
    base = f"jobs/{job['id']}/"
    images = 0
    for obj in client.store.list(base):
        rel = obj.key[len(base):]
        if rel.startswith("checkpoints/"):
            continue
        if job["kind"] == "generate" and rel.startswith("images/"):
            if images >= MAX_IMAGES or not rel.endswith(".png"):
                continue
            images += 1
            rel = Path(rel).name  # the report reads a flat folder of NNNNNN.png
        elif job["kind"] == "enhance" and rel.startswith("images/"):
            continue
        client.store.get_file(obj.key, dest / rel)
    return dest


def build_report(client: Client, job_id: str, out: Path | None = None) -> dict[str, Any]:
    from medgan.evaluate.report import render_report

    chain = lineage(client, job_id)
    top = chain[0]
    out_dir = Path(out) if out else Path(f"report-{top['id']}")
    with tempfile.TemporaryDirectory() as tmp:
        run_dirs = {}
        for job in reversed(chain):  # train first, as the story goes
            label = f"{job['kind']} {job['id']}" + (f" — {job['name']}" if job.get("name") else "")
            run_dirs[label] = _fetch(client, job, Path(tmp) / job["id"])
        path = render_report(run_dirs, out_dir / "report.html", f"medgan report: {top['kind']} job {top['id']}")
    key = f"jobs/{top['id']}/report.html"
    info = client.store.put_file(key, path)
    with session_scope(client.settings.db_url) as s:
        row = s.query(Artifact).filter_by(job_id=top["id"], key=key).one_or_none()
        if row is None:
            s.add(Artifact(job_id=top["id"], key=key, size=info.size, sha256=info.sha256, kind="report"))
        else:
            row.size, row.sha256 = info.size, info.sha256
    return {"path": str(path), "key": key, "size": info.size, "sha256": info.sha256,
            "jobs": [j["id"] for j in chain]}
