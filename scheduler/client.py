"""The Python client: what the CLI does, for notebooks and scripts.

    from scheduler.client import Client

    c = Client()                                    # settings from MEDGAN_* env / .env (embedded defaults)
    train = c.submit("train", config={"steps": 500}, gpus=1, idempotency_key="phantom-cgan-v1")
    c.wait(train["id"])
    gen = c.submit("generate", source_job=train["id"], config={"count": 1000}, shards=8)
    c.wait(gen["id"], on_progress=lambda j: print(j["status"], j["step"], "/", j["total"]))
    c.download(gen["id"], "out/")                   # out/manifest.csv, out/images/shard-0000/000000.png, ...

Every method returns plain dicts (JSON-ready); a job dict has at least id, kind, status, message, progress,
step, total, parent_id, created_at/started_at/finished_at, duration_s and spec. Errors a user can fix
(bad spec, unknown job, unreachable database) raise MedganUserError with one readable line.
A complete script: examples/bulk_generate.py.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from scheduler import jobs
from scheduler.datasets import upload_dataset
from scheduler.db import TERMINAL, Status
from scheduler.errors import MedganUserError, StoreError
from scheduler.settings import Settings, get_settings
from scheduler.specs import parse_spec
from scheduler.store import Store, make_store, sha256_file, validate_key

__all__ = ["Client", "MedganUserError"]

JobDict = dict[str, Any]


class Client:
    """Submit jobs, watch them and fetch their outputs, from Python. The CLI is a thin layer over the same calls.

    Example (a tiny class-conditional GAN on the bundled phantom, then 100 class-balanced images in 4 shards)::

        from scheduler.client import Client

        c = Client()
        train = c.submit("train", idempotency_key="demo-train",      # the same key again: the same job
                         config={"steps": 200, "image_size": 32, "phantom": {"count": 256, "size": 32}})
        train = c.wait(train["id"], timeout=3600)
        assert train["status"] == "SUCCEEDED", train["message"]
        gen = c.submit("generate", source_job=train["id"], shards=4,
                       config={"count": 100, "class_counts": {0: 50, 1: 50}})
        gen = c.wait(gen["id"], on_progress=lambda j: print(f"{j['step']}/{j['total']} shards"))
        files = c.download(gen["id"], "synthetic/")                 # sha256 of every file checked

    Methods, by task:

    - submitting: ``submit`` (one job), ``submit_many`` (several, all validated before any is written),
      ``upload_dataset`` (a local folder, once, content-addressed)
    - watching: ``job`` (one job, with events and children), ``jobs`` (a listing), ``children`` (the shards
      of a fan-out), ``wait`` / ``wait_all`` (block until done, with a progress callback)
    - controlling: ``cancel``, ``retry``
    - outputs: ``artifacts`` (key, size, sha256, kind of every object a job wrote), ``download`` (to a folder,
      checked), ``url`` (a presigned link)

    `settings` default to ``get_settings()``: the MEDGAN_* environment and ``.env``; without any, the embedded
    mode under ``$MEDGAN_HOME`` (run ``medgan db upgrade`` once, and start ``medgan worker``).
    """

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The artifact store (S3/MinIO or the local folder), opened on first use."""
        if self._store is None:
            self._store = make_store(self.settings)
        return self._store

    # -- submitting ---------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, name: str | None = None) -> str:
        """Upload a local file or folder once; returns its dataset key (``datasets/<name>/<version>``,
        content-addressed: the same files give the same key and are not uploaded again)."""
        return upload_dataset(self.store, Path(path), name, max_file_bytes=self.settings.max_file_bytes)

    def submit(self, kind: str, /, *, config: dict[str, Any] | None = None, idempotency_key: str | None = None,
               **fields: Any) -> JobDict:
        """Submit one job of `kind` (train, generate, enhance, evaluate, noop); returns the job dict (QUEUED,
        or RUNNING for a fanned-out generation's parent).

        `config` is the science config of the kind (medgan.config: TrainConfig, GenerateConfig, ...).
        `fields` are spec fields: gpus, priority (0 = most urgent), name, owner, source_job, dataset,
        references, shards, depends_on, max_attempts; noop takes sleep and fail. A local path given as
        `dataset`/`references` is uploaded first. With `idempotency_key`, a second submission with the same
        key returns the first job instead of creating another (safe to re-run a script).

        Raises MedganUserError (SpecError) with one readable line when the spec is invalid; nothing is
        written then.

            c.submit("train", config={"steps": 500, "model": "cgan"}, gpus=2, priority=3)
            c.submit("generate", source_job=train_id, config={"count": 5000}, shards=10)
            c.submit("enhance", dataset="scans/dark/", config={"method": "lime"})
        """
        spec, local = self._prepare(kind, config, fields)
        check = None
        if local:
            jobs.check_database(self.settings)
            check = self._reader_check(spec, local)
        for key, path in local.items():
            spec[key] = upload_dataset(self.store, path, check=check, max_file_bytes=self.settings.max_file_bytes)
        job = jobs.submit(self.settings, spec, idempotency_key=idempotency_key)
        return jobs.job_dict(job)

    def submit_many(self, requests: Iterable[dict[str, Any]]) -> list[JobDict]:
        """Submit several jobs. Each request is a dict of `submit`'s arguments, ``kind`` included::

            c.submit_many([{"kind": "noop", "sleep": 0.1}, {"kind": "train", "config": {"steps": 10}}])

        Every spec is validated before the first job is written, so one bad request submits nothing
        (MedganUserError names its index). Returns the jobs in request order.
        """
        items = [dict(r) for r in requests]
        for i, req in enumerate(items):
            if "kind" not in req:
                raise MedganUserError(f"request {i}: no 'kind'")
            try:
                self._prepare(req["kind"], req.get("config"), {k: v for k, v in req.items()
                                                                if k not in ("kind", "config", "idempotency_key")})
            except MedganUserError as exc:
                raise type(exc)(f"request {i}: {exc}") from None
        return [self.submit(req.pop("kind"), **req) for req in items]

    def _prepare(self, kind: str, config: dict[str, Any] | None,
                 fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
        """Validate a spec (local dataset paths must exist); returns it and its local paths to upload."""
        spec: dict[str, Any] = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
        if config:
            spec["config"] = config
        local = {k: Path(str(spec[k])).expanduser() for k in ("dataset", "references")
                 if spec.get(k) is not None and not str(spec[k]).startswith("datasets/")}
        for key, path in local.items():
            if not str(spec[key]).strip():
                raise MedganUserError(f"{key} must name a file, a folder or a dataset key, not an empty string")
            if not path.exists():
                raise MedganUserError(f"{key} path does not exist: {path}")
        # Validate everything else before anything is written (uploads included).
        parse_spec({**spec, **{k: "datasets/local/pending" for k in local}})
        return spec, local

    def _reader_check(self, spec: dict[str, Any], local: dict[str, Path]):  # noqa: ANN202
        """The job's reader policy (capped by this deployment's limits) applied to the headers of every
        file it will read, before anything is uploaded."""
        from scheduler.datasets import header_check

        parsed = parse_spec({**spec, **{k: "datasets/local/pending" for k in local}})
        policy = getattr(getattr(parsed, "config", None), "read", None)
        return header_check(policy.capped(**self.settings.read_ceilings())) if policy is not None else None

    # -- watching -----------------------------------------------------------------------
    def job(self, job_id: str) -> JobDict:
        """One job (a unique id prefix is enough), with its ``events`` (status changes, reasons) and, for a
        fan-out parent, ``children`` (shard counts per status). NotFound when there is no such job."""
        return jobs.get_job(self.settings, job_id)

    def jobs(self, *, status: str | None = None, kind: str | None = None, owner: str | None = None,
             limit: int = 50, include_children: bool = False) -> list[JobDict]:
        """The newest `limit` jobs, filtered by status / kind / owner; fan-out shards only with
        `include_children`."""
        return jobs.list_jobs(self.settings, status=status, kind=kind, owner=owner, limit=limit,
                              include_children=include_children)

    def children(self, job_id: str) -> list[JobDict]:
        """The shard jobs of a fanned-out generation, by shard index (empty for any other job)."""
        from sqlalchemy import select

        from scheduler.db import Job, session_scope

        parent_id = self.job(job_id)["id"]
        with session_scope(self.settings.db_url) as session:
            rows = session.execute(select(Job).where(Job.parent_id == parent_id).order_by(Job.shard_index))
            return [jobs.job_dict(j) for j in rows.scalars()]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.5,
             on_progress: Callable[[JobDict], None] | None = None) -> JobDict:
        """Block until the job is SUCCEEDED, FAILED or CANCELLED and return it; check ``status`` (and
        ``message``, the reason of a failure) yourself: a failed job does not raise.

        `on_progress(job)` is called at every poll (``progress`` 0..1, ``step``/``total``: training steps, or
        finished/all shards of a fan-out). TimeoutError after `timeout` seconds (the job goes on running).
        """
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

    def wait_all(self, job_ids: Sequence[str], timeout: float | None = None, poll: float = 0.5,
                 on_progress: Callable[[list[JobDict]], None] | None = None) -> list[JobDict]:
        """`wait` for several jobs: returns them all, in the order given, once every one has ended.
        `on_progress(jobs)` gets the current list at every poll. TimeoutError names the jobs still going."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = [self.job(j) for j in job_ids]
            if on_progress is not None:
                on_progress(current)
            waiting = [j for j in current if Status(j["status"]) not in TERMINAL]
            if not waiting:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} job(s) still going after {timeout}s: "
                                   + ", ".join(f"{j['id']} {j['status']}" for j in waiting[:10]))
            time.sleep(poll)

    def cancel(self, job_id: str) -> JobDict:
        """QUEUED: CANCELLED now; RUNNING: CANCELLING, and the worker stops it (a checkpoint first) within
        seconds. Cancelling a fan-out parent cancels its shards."""
        return jobs.cancel(self.settings, job_id)

    def retry(self, job_id: str) -> JobDict:
        """Re-queue a FAILED or CANCELLED job under the same id (training resumes from its newest checkpoint;
        a fan-out re-runs only the shards that did not succeed)."""
        return jobs.retry(self.settings, job_id)

    # -- outputs ------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[JobDict]:
        """Every object the job itself recorded: ``{"key", "size", "sha256", "kind"}``, keys under
        ``jobs/<id>/``. A fan-out parent records only its merged ``manifest.csv``; its images are its
        shards' artifacts (``download`` collects both)."""
        return jobs.list_artifacts(self.settings, job_id)

    def download(self, job_id: str, dest: str | Path, prefix: str = "") -> list[Path]:
        """Download a job's artifacts (a fan-out's shards' too) into `dest`, keeping their paths relative to
        ``jobs/<id>/`` (``prefix="images/"`` keeps only those), and check every file's sha256 against its
        record (StoreError when one does not match). Returns the local paths written."""
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

    def _children_artifacts(self, job: JobDict) -> list[JobDict]:
        if not job.get("children"):
            return []
        rows = []
        for child in self.children(job["id"]):
            rows.extend(self.artifacts(child["id"]))
        return rows

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A presigned, expiring download link for a store key (S3), or a file URL (local store)."""
        return self.store.url(key, expires)
