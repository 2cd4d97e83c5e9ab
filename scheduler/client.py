"""The Python client: what the CLI does, for notebooks and scripts.

    from scheduler.client import Client
    c = Client()                                    # settings from MEDGAN_* env / .env
    train = c.submit("train", config={"steps": 500}, gpus=1)
    c.wait(train["id"])
    gen = c.submit("generate", source_job=train["id"], config={"count": 1000}, shards=8)
    c.wait(gen["id"])
    c.download(gen["id"], "out/", prefix="images/")

Every method returns plain dicts (JSON-ready). Errors a user can fix raise MedganUserError.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from scheduler import jobs
from scheduler.datasets import upload_dataset
from scheduler.db import TERMINAL, Status
from scheduler.errors import MedganUserError, StoreError
from scheduler.settings import Settings, get_settings
from scheduler.specs import parse_spec
from scheduler.store import Store, make_store, sha256_file, validate_key


class Client:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = make_store(self.settings)
        return self._store

    # -- submitting ---------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, name: str | None = None) -> str:
        """Upload a local file or folder once; returns its dataset key (content-addressed)."""
        return upload_dataset(self.store, Path(path), name)

    def submit(self, kind: str, *, config: dict[str, Any] | None = None, idempotency_key: str | None = None,
               **fields: Any) -> dict[str, Any]:
        """Submit a job. `fields` are spec fields (gpus, priority, source_job, dataset, shards, depends_on...);
        a local path given as `dataset`/`references` is uploaded first. Returns the job as a dict."""
        spec: dict[str, Any] = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
        if config:
            spec["config"] = config
        local = {k: Path(str(spec[k])).expanduser() for k in ("dataset", "references")
                 if spec.get(k) is not None and not str(spec[k]).startswith("datasets/")}
        for key, path in local.items():
            if not path.exists():
                raise MedganUserError(f"{key} path does not exist: {path}")
        # Validate everything else before anything is written (uploads included).
        parse_spec({**spec, **{k: "datasets/local/pending" for k in local}})
        if local:
            jobs.check_database(self.settings)
        for key, path in local.items():
            spec[key] = self.upload_dataset(path)
        job = jobs.submit(self.settings, spec, idempotency_key=idempotency_key)
        return jobs.job_dict(job)

    # -- watching -----------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        return jobs.get_job(self.settings, job_id)

    def jobs(self, *, status: str | None = None, kind: str | None = None, owner: str | None = None,
             limit: int = 50, include_children: bool = False) -> list[dict[str, Any]]:
        return jobs.list_jobs(self.settings, status=status, kind=kind, owner=owner, limit=limit,
                              include_children=include_children)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.5,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Block until the job ends (or `timeout` seconds pass: TimeoutError); returns the final job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if Status(job["status"]) in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return jobs.cancel(self.settings, job_id)

    def retry(self, job_id: str) -> dict[str, Any]:
        return jobs.retry(self.settings, job_id)

    # -- outputs ------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return jobs.list_artifacts(self.settings, job_id)

    def download(self, job_id: str, dest: str | Path, prefix: str = "") -> list[Path]:
        """Download a job's artifacts (those under `prefix`, relative to jobs/<id>/), checking sha256."""
        job = self.job(job_id)
        dest = Path(dest)
        out = []
        base = f"jobs/{job['id']}/"
        for art in self.artifacts(job["id"]) + self._children_artifacts(job):
            rel = art["key"][len(base):] if art["key"].startswith(base) else art["key"]
            if not rel.startswith(prefix):
                continue
            target = dest / validate_key(rel)
            self.store.get_file(art["key"], target)
            if sha256_file(target) != art["sha256"]:
                raise StoreError(f"{art['key']} is corrupt: sha256 does not match its record")
            out.append(target)
        return out

    def _children_artifacts(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        if not job.get("children"):
            return []
        rows = []
        for child in self.jobs(include_children=True, limit=100_000):
            if child["parent_id"] == job["id"]:
                rows.extend(self.artifacts(child["id"]))
        return rows

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A presigned, expiring download link (S3) or a file URL (local store)."""
        return self.store.url(key, expires)
