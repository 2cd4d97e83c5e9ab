"""What a task needs while it runs a job: the process's clients, the claim, the heartbeat,
uploads with artifact rows, progress, and the final transition.

Clients (engine, store, Celery app) are made once per worker process (`WorkerContext`).
A task is thin: `execute_job(ctx, job_id, handler)` does claim → handler → finish.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from medgan.errors import MedganError
from scheduler import fanout, states
from scheduler.broker import make_celery, send_job
from scheduler.datasets import download_dataset, object_key
from scheduler.db import Artifact, Job, LogChunk, MetricPoint, Status, Worker, session_scope, utcnow
from scheduler.errors import MedganUserError, StoreError
from scheduler.jobs import dispatch_ready
from scheduler.settings import Settings
from scheduler.specs import parse_spec
from scheduler.store import Store, make_store
from scheduler.policy import admit
from worker.gpus import Inventory
from worker.launcher import child_env

log = logging.getLogger("medgan.worker")
S = Status


class JobFailed(Exception):
    """The job cannot succeed; its message is the FAILED reason shown to the user."""


class JobStopped(Exception):
    """The job stopped early because it was cancelled or lost its lease."""


@dataclass
class WorkerContext:
    settings: Settings
    inventory: Inventory
    name: str  # unique per worker process: the lease owner
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = make_store(self.settings)
        self.work_root = self.settings.home_dir / "work"
        self.cache_root = self.settings.home_dir / "cache"

    @classmethod
    def create(cls, settings: Settings, inventory: Inventory, name: str | None = None) -> "WorkerContext":
        # pid alone repeats across containers; the suffix keeps lease owners unique.
        return cls(settings, inventory, name or f"medgan{os.getpid()}-{uuid.uuid4().hex[:4]}@{inventory.host}")

    def register(self, queues: list[str]) -> None:
        """Declare this worker (host, cards, queues) so submission and `medgan status` can see it."""
        with session_scope(self.settings.db_url) as s:
            row = s.get(Worker, self.name) or Worker(name=self.name, started_at=utcnow())
            row.host, row.gpus, row.queues, row.last_seen = (
                self.inventory.host, list(self.inventory.cards), queues, utcnow())
            s.merge(row)

    def unregister(self) -> None:
        with session_scope(self.settings.db_url) as s:
            row = s.get(Worker, self.name)
            if row is not None:
                s.delete(row)

    def touch(self) -> None:
        with session_scope(self.settings.db_url) as s:
            s.execute(update(Worker).where(Worker.name == self.name).values(last_seen=utcnow()))


def default_host() -> str:
    return socket.gethostname()


class JobRun:
    """One claimed job as the handler sees it."""

    def __init__(self, ctx: WorkerContext, job: Job, cards: list[int]):
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.job_id = job.id
        self.kind = job.kind
        self.attempt = job.attempt
        self._log_seq = 0
        self.spec = parse_spec(job.spec)
        self.cards = cards
        self.parent_id = job.parent_id
        self.shard_index = job.shard_index
        self.prefix = f"jobs/{job.id}"
        self.work_dir = ctx.work_root / job.id
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.stop_reason: str | None = None  # set by the heartbeat: "cancelled" or "lease lost"
        self._last_progress = 0.0

    @property
    def uses_gpu(self) -> bool:
        """Whether the leased cards are real (a fake inventory runs its "cards" as CPU processes)."""
        return bool(self.cards) and not self.ctx.inventory.fake

    def child_env(self, processes: int = 1) -> dict[str, str]:
        """The science subprocess's environment: exactly the leased cards, and this job's CPU threads."""
        return child_env(self.cards if self.uses_gpu else None, self.ctx.inventory.cpu_threads, processes)

    # -- inputs -------------------------------------------------------------------------
    def dataset(self, key: str) -> Path:
        return download_dataset(self.store, key, self.ctx.cache_root)

    # -- outputs ------------------------------------------------------------------------
    def upload(self, path: Path, key: str, kind: str) -> None:
        """Upload, then record the row: a row exists only for an object fully written (sha256 checked)."""
        info = self.store.put_file(key, path)
        with session_scope(self.settings.db_url) as s:
            row = s.execute(select(Artifact).where(Artifact.job_id == self.job_id, Artifact.key == key)).scalar_one_or_none()
            if row is None:
                s.add(Artifact(job_id=self.job_id, key=key, size=info.size, sha256=info.sha256, kind=kind))
            else:
                row.size, row.sha256, row.kind = info.size, info.sha256, kind

    def upload_tree(self, root: Path, prefix: str, kind: str, skip: Callable[[Path], bool] = lambda p: False) -> int:
        n = 0
        for path in sorted(root.rglob("*")):
            if path.is_file() and not skip(path):
                # Output names follow input names, which may be anything: keys are made safe the
                # way dataset keys are (a safe name is kept as it is).
                self.upload(path, f"{prefix}/{object_key(path.relative_to(root).as_posix())}", kind)
                n += 1
        return n

    # -- progress -----------------------------------------------------------------------
    def progress(self, step: int, total: int, stats: dict[str, Any] | None = None, force: bool = False) -> None:
        """Record progress (throttled to 2 writes/s) and numeric stats as metric points."""
        now = time.monotonic()
        numeric = {k: float(v) for k, v in (stats or {}).items()
                   if isinstance(v, (int, float)) and k not in ("step", "total")}
        if not force and now - self._last_progress < 0.5 and not numeric:
            return
        self._last_progress = now
        with session_scope(self.settings.db_url) as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(
                progress=(step / total) if total else 0.0, progress_step=step, progress_total=total))
            for name, value in numeric.items():
                s.add(MetricPoint(job_id=self.job_id, name=name, step=step, value=value))

    def append_log(self, chunks: list[str]) -> None:
        """Append chunks of process output to the job's live log, while this attempt still holds the job
        (a stale attempt's output is dropped, never mixed into the current one's)."""
        if not chunks:
            return
        with session_scope(self.settings.db_url) as s:
            holder = s.execute(select(Job.lease_owner, Job.attempt).where(Job.id == self.job_id)).one_or_none()
            if holder is None or tuple(holder) != (self.ctx.name, self.attempt):
                return
            for text in chunks:
                s.add(LogChunk(job_id=self.job_id, attempt=self.attempt, seq=self._log_seq, text=text, at=utcnow()))
                self._log_seq += 1

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        with session_scope(self.settings.db_url) as s:
            s.add(MetricPoint(job_id=self.job_id, name=name, step=step, value=float(value)))

    def should_stop(self) -> bool:
        return self.stop_reason is not None

    def holds_lease(self) -> bool:
        """Whether this attempt still owns the job (same lease owner and attempt): a stale attempt (its lease
        expired and the job was requeued, maybe to another host) must not write into the job's prefix."""
        if self.stop_reason == "lease lost":
            return False
        with session_scope(self.settings.db_url) as s:
            holder = s.execute(select(Job.lease_owner, Job.attempt, Job.status).where(Job.id == self.job_id)).one_or_none()
        return holder is not None and (holder[0], holder[1]) == (self.ctx.name, self.attempt) \
            and holder[2] in (S.RUNNING.value, S.CANCELLING.value)


class Heartbeat(threading.Thread):
    """Renews the lease; notices a cancel request or a lost lease and tells the run to stop."""

    def __init__(self, run: JobRun):
        super().__init__(daemon=True, name=f"heartbeat-{run.job_id}")
        self.run_ = run
        self.done = threading.Event()

    def run(self) -> None:
        st = self.run_.settings
        while not self.done.wait(st.heartbeat_seconds):
            try:
                with session_scope(st.db_url) as s:
                    ok = states.renew_lease(s, self.run_.job_id, self.run_.ctx.name, st.lease_seconds)
                    cancel = s.execute(select(Job.cancel_requested).where(Job.id == self.run_.job_id)).scalar()
                if not ok:
                    self.run_.stop_reason = "lease lost"
                elif cancel:
                    self.run_.stop_reason = "cancelled"
            except OperationalError as exc:  # a database blip: keep trying until the lease runs out
                log.warning("heartbeat for %s failed: %s", self.run_.job_id, exc)


def _claim(ctx: WorkerContext, job_id: str) -> tuple[Job, list[int]] | str | None:
    """Claim the job with its cards. None: nothing to claim (duplicate, cancelled). 'busy': not now."""
    with session_scope(ctx.settings.db_url) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != S.QUEUED.value:
            return None
        decision = admit(s, job, ctx.inventory.host, ctx.inventory.cards,
                         quota=ctx.settings.quota_gpus_per_owner, reserve_after=ctx.settings.reserve_after_seconds)
        if decision.cards is None:
            job.message = decision.reason
            return "busy"
        cards = decision.cards
        try:
            claimed = states.claim(s, job_id, owner=ctx.name, lease_seconds=ctx.settings.lease_seconds,
                                   gpus=[(ctx.inventory.host, c) for c in cards])
            s.flush()
        except IntegrityError:
            return "busy"  # another worker leased a card between our read and our insert
        if claimed is None:
            return None
        if claimed.parent_id is not None:
            fanout.mark_parent_running(s, claimed.parent_id, actor=ctx.name)
        return claimed, cards


def execute_job(ctx: WorkerContext, job_id: str, handler: Callable[[JobRun], None]) -> str:
    """Claim, run, record, finish. Returns what happened (for logs and tests); never raises for a job's failure."""
    try:
        got = _claim(ctx, job_id)
    except IntegrityError:
        got = "busy"
    except OperationalError as exc:  # a database blip: hand the job to whoever can reach it next
        log.warning("job %s: could not claim (%s); sending it back", job_id, str(exc).splitlines()[0])
        got = "busy"
    if got is None:
        log.info("job %s: nothing to claim (duplicate delivery or no longer queued)", job_id)
        return "skipped"
    if got == "busy":
        _send_back(ctx, job_id)
        return "busy"
    job, cards = got
    run = JobRun(ctx, job, cards)
    beat = Heartbeat(run)
    beat.start()
    log.info("job %s (%s) claimed by %s with cards %s", job_id, job.kind, ctx.name, cards)
    outcome, reason = S.SUCCEEDED, None
    try:
        handler(run)
        if run.stop_reason == "cancelled":
            outcome, reason = S.CANCELLED, "cancelled by user"
    except JobStopped as exc:
        outcome, reason = (S.CANCELLED, "cancelled by user") if run.stop_reason == "cancelled" else (None, str(exc))
    except (JobFailed, MedganError, MedganUserError, StoreError, ValueError) as exc:
        outcome, reason = S.FAILED, _one_line(exc)
    except Exception as exc:  # a bug: fail the job with the error, keep the worker serving
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        outcome, reason = S.FAILED, f"internal error: {_one_line(exc)}"
    finally:
        beat.done.set()
        beat.join()
    if run.stop_reason == "lease lost" or outcome is None:
        log.warning("job %s lost its lease; leaving it to the sweeper", job_id)
        return "lost"
    _finish(ctx, run, outcome, reason)
    if outcome is S.SUCCEEDED:
        shutil.rmtree(run.work_dir, ignore_errors=True)
    return outcome.value


def _finish(ctx: WorkerContext, run: JobRun, outcome: Status, reason: str | None) -> None:
    with session_scope(ctx.settings.db_url) as s:
        states.finish(s, run.job_id, outcome, owner=ctx.name, reason=reason)
    if run.parent_id:
        # A transaction of its own, after the child's commit: of two shards ending together,
        # the later one then sees both (and the sweeper catches anything missed).
        with session_scope(ctx.settings.db_url) as s:
            fanout.maybe_finish_parent(s, ctx.store, run.parent_id, actor=ctx.name)
    log.info("job %s %s%s", run.job_id, outcome.value, f": {reason}" if reason else "")
    dispatch_ready(ctx.settings)  # dependents of this job may be ready now


def _send_back(ctx: WorkerContext, job_id: str) -> None:
    """Not startable here now: put a fresh message back so any worker with room takes it;
    the job stays QUEUED in the database. The pause keeps a lone busy worker from spinning."""
    time.sleep(1.0)
    with session_scope(ctx.settings.db_url) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != S.QUEUED.value:
            return
        kind, priority = job.kind, job.priority
        job.enqueued_at = utcnow()  # the message is alive: the sweeper need not re-send it
    send_job(make_celery(ctx.settings), job_id, kind, priority)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch's messages carry terminal colour codes


def _one_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:1000] if "\n" not in text else " | ".join(text.splitlines())[:1000]
