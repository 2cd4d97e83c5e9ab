"""What a task needs while it runs a job: the process's clients, the claim, the heartbeat,
uploads with artifact rows, progress, and the final transition.

Clients (engine, store, Celery app) are made once per worker process (`WorkerContext`).
A task is thin: `execute_job(ctx, job_id, handler)` does claim → handler → finish.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from medgan.errors import MedganError
from scheduler import constants as C
from scheduler import fanout, states
from scheduler.broker import make_celery, send_job
from scheduler.datasets import download_dataset, object_key
from scheduler.db import (Artifact, Job, LogChunk, MetricPoint, Status, Worker, autocommit, session_scope, status_is,
                          utcnow)
from scheduler.errors import MedganUserError, StoreError
from scheduler.jobs import dispatch_dependents, dispatch_ready
from scheduler.settings import Settings
from scheduler.specs import parse_spec
from scheduler.store import Store, make_store
from scheduler.policy import admit
from worker.gpus import Inventory
from worker.launcher import child_env, kill_tree

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
        # PostgreSQL: a CPU job's claim and finish are one autocommitted statement each (scheduler/states.py).
        self.one_statement = self.settings.db_url.startswith("postgresql")
        self._heartbeat: Heartbeat | None = None
        self._heartbeat_lock = threading.Lock()

    @property
    def heartbeat(self) -> "Heartbeat":
        """The process's one heartbeat thread (started on first use): it renews every running job's lease."""
        with self._heartbeat_lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = Heartbeat(self)
                self._heartbeat.start()
            return self._heartbeat

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


class StaleAttempt(JobStopped):
    """An effect of this attempt was refused: its fencing token is no longer the job's (the lease was lost
    and the job requeued, maybe to another host). The attempt stops; nothing it still had to write lands."""


class JobRun:
    """One claimed job as the handler sees it. Every effect it has (objects, artifact and metric rows, log
    chunks, progress, the final transition) carries its fencing token `fence` and is refused when stale."""

    def __init__(self, ctx: WorkerContext, job: Job, cards: list[int]):
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.job_id = job.id
        self.kind = job.kind
        self.attempt = job.attempt
        self.fence = job.fence
        self._log_seq = 0
        self.spec = parse_spec(job.spec)
        self.cards = cards
        self.parent_id = job.parent_id
        self.shard_index = job.shard_index
        self.prefix = f"jobs/{job.id}"
        self.staging = f"{self.prefix}/{STAGING}/{self.fence:06d}"  # this attempt's writes before promotion
        self._work_dir = ctx.work_root / job.id
        self._work_dir_made = False
        self._lease_lock = threading.Lock()
        self._lease_deadline = 0.0
        self.stop_reason: str | None = None  # set by the heartbeat: "cancelled", "preempted" or "lease lost"
        self.child: subprocess.Popen | None = None  # the science's guardian while one runs
        self.refused = 0  # stale effects refused (figures, logs)
        self.preemption_declined = False
        self._last_progress = 0.0
        self._staged = 0
        self.left_staged = False  # a promoted object's staged copy could not be deleted
        self.last_renewal = time.time()  # the claim took the lease: the heartbeat's last success for this run
        self.renewed(self.last_renewal)

    @property
    def uses_gpu(self) -> bool:
        """Whether the leased cards are real (a fake inventory runs its "cards" as CPU processes)."""
        return bool(self.cards) and not self.ctx.inventory.fake

    def child_env(self, processes: int = 1) -> dict[str, str]:
        """The science subprocess's environment: exactly the leased cards, and this job's CPU threads."""
        return child_env(self.cards if self.uses_gpu else None, self.ctx.inventory.cpu_threads, processes)

    @property
    def work_dir(self) -> Path:
        """This job's folder on this host (kept across its attempts here), made on first use, with the lease
        file in it. A job that never writes a file (no science process, no download: `noop`) never makes
        one, and the worker spends no filesystem calls on it."""
        if not self._work_dir_made:
            with self._lease_lock:
                if not self._work_dir_made:
                    self._work_dir.mkdir(parents=True, exist_ok=True)
                    self._write_lease_file()
                    self._work_dir_made = True
        return self._work_dir

    @property
    def lease_file(self) -> Path:
        """The renewal deadline for the science's guardian (worker/launcher.py): the file's mtime."""
        return self.work_dir / C.LEASE_FILE

    def remove_work_dir(self) -> None:
        """Delete the work dir (and what earlier attempts here left in it), if there is one."""
        if self._work_dir_made or self._work_dir.exists():
            shutil.rmtree(self._work_dir, ignore_errors=True)

    # -- the fence ----------------------------------------------------------------------
    def renewed(self, at: float) -> None:
        """The lease was renewed at `at` (epoch s): the lease file's mtime becomes the moment by which the
        science must be gone if no renewal follows (the guardian, worker/launcher.py, watches it). The file
        lives in the work dir; before that exists no science can run, and it is written when it is made."""
        with self._lease_lock:
            self._lease_deadline = at + self.settings.lease_seconds * (1 - C.SELF_FENCE_MARGIN)
            if self._work_dir_made:
                self._write_lease_file()

    def _write_lease_file(self) -> None:  # under _lease_lock
        path = self._work_dir / C.LEASE_FILE
        path.touch()
        os.utime(path, (self._lease_deadline, self._lease_deadline))

    def _holds(self, s) -> bool:  # noqa: ANN001 - a Session
        return states.fence_holds(s, self.job_id, self.ctx.name, self.fence)

    def _refuse(self, what: str) -> StaleAttempt:
        self.refused += 1
        self.stop_reason = self.stop_reason or "lease lost"
        log.warning("job %s: refused a stale write of attempt %d (token %d): %s", self.job_id, self.attempt,
                    self.fence, what)
        return StaleAttempt(f"lease lost: attempt {self.attempt} (token {self.fence}) no longer holds the job")

    def holds_lease(self) -> bool:
        """Whether this attempt's token is still the job's current one (read through the fence)."""
        if self.stop_reason == "lease lost":
            return False
        with session_scope(self.settings.db_url) as s:
            return self._holds(s)

    def kill_science(self, grace: float) -> None:
        """Self-fencing: SIGTERM the science's process group, SIGKILL its whole tree after `grace` s. Safe from
        any thread (the heartbeat calls it whatever the task's thread is doing)."""
        proc = self.child
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            kill_tree(proc.pid)

    # -- inputs -------------------------------------------------------------------------
    def dataset(self, key: str) -> Path:
        return download_dataset(self.store, key, self.ctx.cache_root)

    # -- outputs ------------------------------------------------------------------------
    def upload(self, path: Path, key: str, kind: str) -> None:
        """Upload to this attempt's staging prefix, then, in one transaction that checks the token (and holds
        the job row's lock), promote the object to `key` and record its row. A stale attempt's object is
        deleted and never reaches `key`: it raises StaleAttempt."""
        self._staged += 1
        staged = f"{self.staging}/{self._staged:08d}"
        try:
            info = self.store.put_file(staged, path)
        except StoreError as exc:  # say which object failed, not where it was staged
            raise StoreError(str(exc).replace(staged, key)) from exc
        promoted = False
        try:
            with session_scope(self.settings.db_url) as s:
                if not self._holds(s):
                    raise self._refuse(f"object {key}")
                if not self.store.promote(staged, key):
                    self.left_staged = True  # the server went away after the copy: clean up at the end
                promoted = True
                row = s.execute(select(Artifact).where(Artifact.job_id == self.job_id, Artifact.key == key)
                                ).scalar_one_or_none()
                if row is None:
                    s.add(Artifact(job_id=self.job_id, key=key, size=info.size, sha256=info.sha256, kind=kind,
                                   fence=self.fence))
                else:
                    row.size, row.sha256, row.kind, row.fence = info.size, info.sha256, kind, self.fence
        finally:
            if not promoted:
                self._forget(staged)

    def _forget(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception as exc:  # noqa: BLE001 - the next claim's clean-up removes it
            log.warning("job %s: could not delete staged %s: %s", self.job_id, key, exc)

    def delete_artifacts(self, keys: list[str]) -> None:
        """Delete objects with their rows, fenced like a write (a stale attempt deletes nothing). Rows go
        first, in key order given: a checkpoint's COMPLETE first, so a half-deleted one is never used."""
        if not keys:
            return
        with session_scope(self.settings.db_url) as s:
            if not self._holds(s):
                raise self._refuse(f"deletion of {len(keys)} object(s)")
            s.execute(delete(Artifact).where(Artifact.job_id == self.job_id, Artifact.key.in_(keys)))
        for key in keys:
            self._forget(key)

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
        """Record progress (throttled to 2 writes/s) and numeric stats as metric points, under the fence."""
        now = time.monotonic()
        numeric = {k: float(v) for k, v in (stats or {}).items()
                   if isinstance(v, (int, float)) and k not in ("step", "total")}
        if not force and now - self._last_progress < 0.5 and not numeric:
            return
        self._last_progress = now
        with session_scope(self.settings.db_url) as s:
            res = s.execute(update(Job).where(Job.id == self.job_id, *states.holder_guard(self.ctx.name, self.fence))
                            .values(progress=(step / total) if total else 0.0, progress_step=step,
                                    progress_total=total).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise self._refuse(f"progress at step {step}")
            for name, value in numeric.items():
                s.add(MetricPoint(job_id=self.job_id, name=name, step=step, value=value))

    def append_log(self, chunks: list[str]) -> None:
        """Append chunks of process output to the job's live log, while this attempt still holds the job
        (a stale attempt's output is dropped, never mixed into the current one's)."""
        if not chunks:
            return
        with session_scope(self.settings.db_url) as s:
            if not self._holds(s):
                self.refused += 1
                return
            for text in chunks:
                s.add(LogChunk(job_id=self.job_id, attempt=self.attempt, seq=self._log_seq, text=text, at=utcnow()))
                self._log_seq += 1

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        with session_scope(self.settings.db_url) as s:
            if not self._holds(s):
                raise self._refuse(f"metric {name}")
            s.add(MetricPoint(job_id=self.job_id, name=name, step=step, value=float(value)))

    def should_stop(self) -> bool:
        return self.stop_reason is not None

    def decline_preemption(self, why: str) -> None:
        """The run finished anyway: it is not requeued, and the heartbeat asks for no preemption again."""
        if self.stop_reason == "preempted":
            log.info("job %s: preemption moot (%s)", self.job_id, why)
            self.stop_reason = None
        self.preemption_declined = True


STAGING = "_attempts"  # jobs/<id>/_attempts/<token>/…: objects of an attempt not yet promoted (never read)


def clean_staging(store: Store, job_id: str, keep_fence: int | None = None) -> int:
    """Delete staged objects of a job's attempts (all, or all but token `keep_fence`'s); returns how many."""
    n = 0
    keep = f"jobs/{job_id}/{STAGING}/{keep_fence:06d}/" if keep_fence is not None else None
    for obj in list(store.list(f"jobs/{job_id}/{STAGING}/")):
        if keep is None or not obj.key.startswith(keep):
            store.delete(obj.key)
            n += 1
    return n


def drop_unrecorded(ctx: WorkerContext, job_id: str) -> int:
    """Delete the objects under a finished job's own prefix that no artifact row records (an object promoted
    by an attempt whose transaction then failed: its session ended while it was frozen, say). Returns how many."""
    prefix = f"jobs/{job_id}/"
    objects = [o.key for o in ctx.store.list(prefix) if f"/{STAGING}/" not in o.key]
    if not objects:
        return 0
    with session_scope(ctx.settings.db_url) as s:
        recorded = set(s.execute(select(Artifact.key).where(Artifact.key.like(f"{prefix}%"))).scalars())
    stray = [k for k in objects if k not in recorded]
    for key in stray:
        log.warning("job %s: deleting %s (no artifact row: an attempt's write that did not commit)", job_id, key)
        ctx.store.delete(key)
    return len(stray)


class Heartbeat(threading.Thread):
    """The worker process's one heartbeat: every `heartbeat_seconds` it renews the leases of all the jobs
    this process runs, under each attempt's token, in ONE statement (`states.renew_leases`), and reads their
    cancel and preemption requests with it. A run whose job was taken away is told to stop. Self-fencing:
    when a lease cannot be renewed (taken away, or the database unreachable long enough that it may expire),
    the heartbeat kills that run's science itself, whatever the task's thread is doing, before another worker
    can be given the job. No thread is started per job: `add` at the claim, `remove` at the end."""

    def __init__(self, ctx: WorkerContext):
        super().__init__(daemon=True, name=f"heartbeat-{ctx.name}")
        self.ctx = ctx
        self.done = threading.Event()
        self._runs: dict[str, JobRun] = {}
        self._runs_lock = threading.Lock()
        self._beat_lock = threading.Lock()  # held while a renewal is in flight

    def add(self, run: JobRun) -> None:
        with self._runs_lock:
            self._runs[run.job_id] = run

    def remove(self, run: JobRun) -> None:
        """Stop renewing `run`; returns once no renewal that includes it is in flight (its stop_reason is then
        final)."""
        with self._runs_lock:
            if self._runs.get(run.job_id) is run:
                del self._runs[run.job_id]
        with self._beat_lock:
            pass

    def run(self) -> None:
        while not self.done.wait(self.ctx.settings.heartbeat_seconds):
            self.beat()

    def beat(self) -> None:
        """One renewal of every live run's lease (one statement, one transaction)."""
        st = self.ctx.settings
        with self._beat_lock:
            with self._runs_lock:
                runs = [r for r in self._runs.values() if r.stop_reason != "lease lost"]
            if not runs:
                return
            t0 = time.time()
            try:
                with session_scope(st.db_url) as s:
                    held = states.renew_leases(s, self.ctx.name, {r.job_id: r.fence for r in runs}, st.lease_seconds)
            except Exception as exc:  # a database blip: keep trying until a lease is about to run out
                log.warning("heartbeat of %d job(s) failed: %s", len(runs), str(exc).splitlines()[0])
                fence_after = st.lease_seconds * (1 - C.SELF_FENCE_MARGIN)
                for run in runs:
                    if t0 - run.last_renewal > fence_after:
                        self._lost(run)
                return
            for run in runs:
                flags = held.get(run.job_id)
                if flags is None:
                    self._lost(run)
                    continue
                run.last_renewal = t0
                run.renewed(t0)
                cancel, preempt = flags
                if cancel:
                    run.stop_reason = "cancelled"
                elif preempt and run.stop_reason is None and not run.preemption_declined:
                    run.stop_reason = "preempted"
                    log.warning("job %s: %s", run.job_id, preempt)

    def _lost(self, run: JobRun) -> None:
        run.stop_reason = "lease lost"
        log.warning("job %s: lease lost; stopping its science (self-fencing)", run.job_id)
        grace = min(1.0, self.ctx.settings.lease_seconds * C.SELF_FENCE_MARGIN / 2)
        # Its own thread: the other runs' renewals do not wait for this one's kill.
        threading.Thread(target=run.kill_science, args=(grace,), daemon=True,
                         name=f"self-fence-{run.job_id}").start()


CLAIM_TRIES = 5  # a claim that loses a race (a card leased meanwhile) or hits a blip is retried at once


def _claim(ctx: WorkerContext, job_id: str) -> tuple[Job, list[int]] | str | None:
    """Claim the job with its cards. None: nothing to claim (duplicate, cancelled). 'busy': not now.

    Any database error (another owner leasing a card between our admission and our insert, a lock timeout,
    a connection lost, the commit failing) rolls the whole claim back and is retried at once, with a fresh
    look at which cards are free; after CLAIM_TRIES the job goes back to the queue ('busy'). A claim never
    raises: a message is only acknowledged once its job is claimed here or sent again."""
    for i in range(CLAIM_TRIES):
        try:
            return _claim_once(ctx, job_id)
        except SQLAlchemyError as exc:
            log.info("job %s: claim %d of %d failed (%s); retrying", job_id, i + 1, CLAIM_TRIES,
                     str(exc).splitlines()[0][:200])
            time.sleep(random.uniform(0, 0.02 * (i + 1)))  # two racing owners should not collide again
    return "busy"


def _claim_once(ctx: WorkerContext, job_id: str) -> tuple[Job, list[int]] | str | None:
    if ctx.one_statement:  # a CPU job: claim, event and parent in one statement; anything else below
        # Not waiting for the disk: a claim lost in a database crash is a job QUEUED again (see `autocommit`);
        # the finish, that a user reads as the result, waits for it.
        with autocommit(ctx.settings.db_url, durable=False) as conn:
            job = states.claim_cpu(conn, job_id, owner=ctx.name, lease_seconds=ctx.settings.lease_seconds)
        if job is not None:
            return job, []
    with session_scope(ctx.settings.db_url) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != S.QUEUED.value:
            return None
        decision = admit(s, job, ctx.inventory.host, ctx.inventory.cards,
                         quota=ctx.settings.quota_gpus_per_owner, reserve_after=ctx.settings.reserve_after_seconds,
                         fair_share_window=ctx.settings.fair_share_window_seconds)
        if decision.cards is None:
            job.message = decision.reason
            return "busy"
        cards = decision.cards
        claimed = states.claim(s, job_id, owner=ctx.name, lease_seconds=ctx.settings.lease_seconds,
                               gpus=[(ctx.inventory.host, c) for c in cards])
        if claimed is None:
            return None
        if claimed.parent_id is not None:
            fanout.mark_parent_running(s, claimed.parent_id, actor=ctx.name)
        s.flush()
        return claimed, cards


def execute_job(ctx: WorkerContext, job_id: str, handler: Callable[[JobRun], None]) -> str:
    """Claim, run, record, finish. Returns what happened (for logs and tests); never raises for a job's failure."""
    got = _claim(ctx, job_id)
    if got is None:
        log.info("job %s: nothing to claim (duplicate delivery or no longer queued)", job_id)
        return "skipped"
    if got == "busy":
        _send_back(ctx, job_id)
        return "busy"
    job, cards = got
    run = JobRun(ctx, job, cards)
    _clean_stale_staging(ctx, run)  # what earlier attempts staged and never promoted
    beat = ctx.heartbeat
    beat.add(run)
    log.info("job %s (%s) claimed by %s with cards %s (token %d)", job_id, job.kind, ctx.name, cards, run.fence)
    outcome, reason = S.SUCCEEDED, None
    try:
        handler(run)
        if run.stop_reason == "cancelled":
            outcome, reason = S.CANCELLED, "cancelled by user"
        elif run.stop_reason is not None:
            outcome, reason = None, run.stop_reason
    except JobStopped as exc:
        outcome, reason = (S.CANCELLED, "cancelled by user") if run.stop_reason == "cancelled" else (None, str(exc))
    except (JobFailed, MedganError, MedganUserError, StoreError, ValueError) as exc:
        outcome, reason = S.FAILED, _one_line(exc)
    except Exception as exc:  # a bug: fail the job with the error, keep the worker serving
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        outcome, reason = S.FAILED, f"internal error: {_one_line(exc)}"
    finally:
        beat.remove(run)
    if run.stop_reason == "preempted" and outcome is None:
        return _requeue_preempted(ctx, run)
    if run.stop_reason == "lease lost" or outcome is None:
        log.warning("job %s lost its lease (%d stale write(s) refused); leaving it to the sweeper", job_id,
                    run.refused)
        return "lost"
    if not _finish(ctx, run, outcome, reason):
        return "lost"
    if outcome is S.SUCCEEDED:
        run.remove_work_dir()
    return outcome.value


def _requeue_preempted(ctx: WorkerContext, run: JobRun) -> str:
    """The science stopped for a preemption and its final checkpoint is stored: back to the queue."""
    with session_scope(ctx.settings.db_url) as s:
        why = s.execute(select(Job.preempt_requested).where(Job.id == run.job_id)).scalar()
        job = states.requeue_preempted(s, run.job_id, owner=ctx.name, fence=run.fence, reason=why or "preempted")
    if job is None:
        log.warning("job %s: preempted, but its lease was lost meanwhile; leaving it to the sweeper", run.job_id)
        return "lost"
    log.info("job %s preempted (%s); requeued", run.job_id, why)
    dispatch_ready(ctx.settings, [run.job_id])
    return "preempted"


def _finish(ctx: WorkerContext, run: JobRun, outcome: Status, reason: str | None) -> bool:
    fast = None  # (parent id, dependents) from the one-statement finish
    if ctx.one_statement and not run.cards:
        with autocommit(ctx.settings.db_url) as conn:
            fast = states.finish_cpu(conn, run.job_id, outcome, owner=ctx.name, fence=run.fence, reason=reason)
    if fast is None:  # SQLite, cards to free, a CANCELLING job, or a stale token: the general path decides
        with session_scope(ctx.settings.db_url) as s:
            done = states.finish(s, run.job_id, outcome, owner=ctx.name, reason=reason, fence=run.fence,
                                 holds_cards=bool(run.cards))
        if done is None:
            log.warning("job %s: the final %s was refused (its token %d is stale)", run.job_id, outcome.value,
                        run.fence)
            return False
    _clean_stale_staging(ctx, run)  # stale attempts that staged after this one's claim
    if outcome is S.SUCCEEDED and (run.fence > 1 or run._staged):  # a first attempt that staged nothing has
        # nothing under its prefix to check (no other attempt ever wrote there): no store LIST
        try:
            drop_unrecorded(ctx, run.job_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: could not clean unrecorded objects: %s", run.job_id, exc)
    if run.parent_id:
        # A transaction of its own, after the child's commit: of two shards ending together,
        # the later one then sees both (and the sweeper catches anything missed).
        with session_scope(ctx.settings.db_url) as s:
            fanout.maybe_finish_parent(s, ctx.store, run.parent_id, actor=ctx.name)
    log.info("job %s %s%s", run.job_id, outcome.value, f": {reason}" if reason else "")
    # Jobs that depend on this one (or on its parent, which it may just have finished) may be ready now; the
    # one-statement finish has read this job's already.
    if fast is None:
        dispatch_dependents(ctx.settings, [run.job_id, *([run.parent_id] if run.parent_id else [])])
    else:
        if fast[1]:
            dispatch_ready(ctx.settings, fast[1])
        if run.parent_id:
            dispatch_dependents(ctx.settings, [run.parent_id])
    return True


def _clean_stale_staging(ctx: WorkerContext, run: JobRun) -> None:
    """Delete what other attempts of the job staged and never promoted, and this attempt's staged copies of
    objects it promoted while their delete failed (`run.left_staged`). Token 1 is a job's first claim ever
    (tokens only grow, a retry included): no other attempt exists, so unless this one left a copy there is
    nothing to list (one store LIST fewer at each end of most jobs)."""
    if run.fence <= 1 and not run.left_staged:
        return
    try:
        clean_staging(ctx.store, run.job_id)
    except Exception as exc:  # noqa: BLE001 - the store may be down now; the next clean-up removes them
        log.warning("job %s: could not clean staged objects: %s", run.job_id, exc)


def _send_back(ctx: WorkerContext, job_id: str) -> None:
    """Not startable here now: put a fresh message back so any worker with room takes it;
    the job stays QUEUED in the database. The pause keeps a lone busy worker from spinning.
    When the broker cannot take it, the job is marked never sent: the next sweep sends it."""
    time.sleep(SEND_BACK_PAUSE_SECONDS)
    try:
        with session_scope(ctx.settings.db_url) as s:
            job = s.get(Job, job_id)
            if job is None or job.status != S.QUEUED.value:
                return
            kind, priority = job.kind, job.priority
            job.enqueued_at = utcnow()  # the message is alive: the sweeper need not re-send it
        send_job(make_celery(ctx.settings), job_id, kind, priority)
    except Exception as exc:  # noqa: BLE001 - never lose the job: the sweeper sends what is marked unsent
        log.warning("job %s: could not send it back (%s); the sweeper will", job_id, str(exc).splitlines()[0])
        try:
            with session_scope(ctx.settings.db_url) as s:
                s.execute(update(Job).where(Job.id == job_id, status_is(S.QUEUED.value))
                          .values(enqueued_at=None).execution_options(synchronize_session=False))
        except Exception:  # noqa: BLE001 - the database is down too: the resend timer covers it
            pass


SEND_BACK_PAUSE_SECONDS = 0.5  # a job no worker can start now bounces at most twice a second


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch's messages carry terminal colour codes


def _one_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:1000] if "\n" not in text else " | ".join(text.splitlines())[:1000]
