"""The Python client: what the CLI does, for notebooks and scripts.

    from scheduler.client import Client

    c = Client()                                    # settings from MEDGAN_* env / .env (embedded defaults)
    train = c.submit("train", config={"steps": 500}, gpus=1, idempotency_key="phantom-cgan-v1")
    train.wait()
    gen = c.submit("generate", source_job=train.id, config={"count": 1000}, shards=8)
    gen.wait(on_progress=lambda j: print(j.status, j.step, "/", j.total))
    gen.download("out/")                            # out/manifest.csv, out/images/shard-0000/000000.png, ...

Methods return typed objects: `Job` (a pydantic model with id, kind, status, message, progress, step, total,
parent_id, created_at/started_at/finished_at, duration_s, spec, ... and `.wait()`, `.refresh()`,
`.artifacts()`, `.download()`, `.cancel()`, `.retry()`, `.logs()`) and `ArtifactInfo`. Both also read as
mappings (`job["id"]`) for scripts written against the older dict results; `.model_dump(mode="json")`
gives JSON. Errors a user can fix (bad spec, unknown job, unreachable database) raise MedganUserError
with one readable line. Complete scripts: examples/bulk_generate.py, examples/user_gan/.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, PrivateAttr

from scheduler import lazy_module
from scheduler.constants import TERMINAL, Status
from scheduler.errors import MedganUserError, NotFound, StoreError

if TYPE_CHECKING:
    from scheduler.settings import Settings
    from scheduler.store import Store

# Loaded on first use: `import scheduler.client` brings neither SQLAlchemy nor Celery nor the store's client
# (tests/scheduler/test_fast_start.py); the first call pays for what it needs.
jobs = lazy_module("scheduler.jobs")
datasets = lazy_module("scheduler.datasets")
specs = lazy_module("scheduler.specs")
store_ = lazy_module("scheduler.store")
settings_ = lazy_module("scheduler.settings")

__all__ = ["ArtifactInfo", "Client", "Job", "LogLine", "MedganUserError"]


class _Record(BaseModel):
    """A typed result that also reads as a mapping (`r["id"]`, `r.get("x")`), as the dict results did."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(self, key)

    def keys(self) -> list[str]:
        return list(self.model_dump().keys())


class ArtifactInfo(_Record):
    """One object a job wrote: its store key (under jobs/<id>/), size in bytes, sha256 and kind."""

    key: str
    size: int
    sha256: str
    kind: str


class LogLine(_Record):
    """One line of a job's process output (stdout and stderr), as the worker shipped it."""

    at: str
    attempt: int
    text: str


class Job(_Record):
    """A job as the database knows it, when it was read; `refresh()` reads it again.

    `events` (status changes with reasons) and `children` (shards per status) are filled by `Client.job`
    and `refresh()`; listings leave them empty.
    """

    id: str
    kind: str
    status: str
    name: str | None = None
    owner: str = ""
    priority: int = 5
    gpus: int = 0
    queue: str = ""
    attempt: int = 0
    max_attempts: int = 0
    lease_losses: int = 0  # not failures
    preemptions: int = 0  # not failures
    preemptible: bool = True
    progress: float = 0.0
    step: int = 0
    total: int = 0
    message: str | None = None
    parent_id: str | None = None
    shard_index: int | None = None
    depends_on: list[str] = []
    lease_owner: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    spec: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    children: dict[str, int] = {}
    queue_position: int | None = None
    waiting_reason: str | None = None
    _client: "Client | None" = PrivateAttr(None)

    @property
    def done(self) -> bool:
        """Whether it has ended (SUCCEEDED, FAILED or CANCELLED)."""
        return Status(self.status) in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == Status.SUCCEEDED.value

    def _c(self) -> "Client":
        if self._client is None:
            raise MedganUserError("this Job was not read through a Client")
        return self._client

    def refresh(self) -> "Job":
        return self._c().job(self.id)

    def wait(self, timeout: float | None = None, poll: float = 0.5,
             on_progress: Callable[["Job"], None] | None = None) -> "Job":
        return self._c().wait(self.id, timeout=timeout, poll=poll, on_progress=on_progress)

    def artifacts(self) -> list[ArtifactInfo]:
        return self._c().artifacts(self.id)

    def download(self, dest: str | Path, prefix: str = "") -> list[Path]:
        return self._c().download(self.id, dest, prefix=prefix)

    def cancel(self) -> "Job":
        return self._c().cancel(self.id)

    def retry(self) -> "Job":
        return self._c().retry(self.id)

    def logs(self, follow: bool = False, **kw: Any) -> Iterable[Any]:
        return self._c().logs(self.id, follow=follow, **kw)


JobDict = Job  # the name older code used for a job result


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
        self.settings = settings or settings_.get_settings()
        self._store: Store | None = None
        self._listener: Any = None  # a jobs.DoneListener, made by the first wait (PostgreSQL)
        self._listening = False

    @property
    def store(self) -> Store:
        """The artifact store (S3/MinIO or the local folder), opened on first use."""
        if self._store is None:
            self._store = store_.make_store(self.settings)
        return self._store

    # -- submitting ---------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, name: str | None = None) -> str:
        """Upload a local file or folder once; returns its dataset key (``datasets/<name>/<version>``,
        content-addressed: the same files give the same key and are not uploaded again)."""
        return datasets.upload_dataset(self.store, Path(path), name, max_file_bytes=self.settings.max_file_bytes)

    def submit(self, kind: str, /, *, config: dict[str, Any] | None = None, idempotency_key: str | None = None,
               **fields: Any) -> Job:
        """Submit one job of `kind` (train, generate, enhance, evaluate, script, noop); returns the `Job`
        (QUEUED). Your own code: `run`.

        `config` is the science config of the kind (medgan.config: TrainConfig, GenerateConfig, ...).
        `fields` are spec fields: gpus, priority (0 = most urgent), name, owner, source_job, dataset,
        references, shards, checkpoint (generate: last, best or step-N), depends_on, max_attempts, preemptible
        (False: never preempted for a more urgent job); noop takes
        sleep and fail. Job references
        (source_job, depends_on) take an id, a unique id prefix of 4+ characters, or a job name. A local path given as
        `dataset`/`references` is uploaded first. With `idempotency_key`, a second submission with the same
        key returns the first job instead of creating another (safe to re-run a script).

        Raises MedganUserError (SpecError) with one readable line when the spec is invalid; nothing is
        written then.

            c.submit("train", config={"steps": 500, "model": "cgan"}, gpus=2, priority=3)
            c.submit("generate", source_job=train_id, config={"count": 5000}, shards=10)
            c.submit("enhance", dataset="scans/dark/", config={"method": "lime"})
        """
        spec = self._upload_local([self._prepare(kind, config, fields)])[0]
        job = self._job(jobs.submit(self.settings, spec, idempotency_key=idempotency_key))
        self._watch([job.id] if idempotency_key is None else [])
        return job

    def run(self, command: str | Sequence[str], /, *, code: str | Path = ".", gpus: int = 0,
            data: str | Path | None = None, env: dict[str, str] | None = None,
            idempotency_key: str | None = None, **fields: Any) -> Job:
        """Queue your own code: snapshot the folder `code` (respecting .gitignore, size-limited, content-addressed;
        scheduler/code.py), then run `command` in a copy of it under `accelerate launch` on `gpus` leased cards
        (one process per card). `data` (a local folder, uploaded once, or a dataset key) arrives as
        $MEDGAN_DATA_DIR; files the script writes to $MEDGAN_OUTPUT_DIR become artifacts; what it writes to
        $MEDGAN_CHECKPOINT_DIR comes back when the job is requeued (worker/tasks/script.py).

            job = c.run("python train.py --lr 2e-4", gpus=2, data="./scans", name="my-gan")
            job.wait().download("runs/my-gan")                  # outputs/..., job.log, stats.jsonl
        """
        import shlex

        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        snapshot = str(code) if str(code).startswith("code/") else None
        spec_fields = dict(fields, command=argv, gpus=gpus, dataset=None if data is None else str(data), env=env)
        # Everything is checked (a placeholder stands for the snapshot) before anything is uploaded.
        self._prepare("script", None, {**spec_fields, "code": snapshot or "code/local/pending"}, check=True)
        if snapshot is None:
            from scheduler.code import snapshot_code

            home = self.settings.home_dir
            snapshot = snapshot_code(self.store, Path(code), exclude=[home, self.settings.local_store])
        return self.submit("script", idempotency_key=idempotency_key, **spec_fields, code=snapshot)

    def validate(self, kind: str, /, *, config: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Check a submission exactly as `submit` would (the same code), writing nothing; returns the spec
        as it would be stored (job references resolved to ids). Raises MedganUserError when invalid."""
        spec, local = self._prepare(kind, config, fields, check=True)
        return {**spec, **{k: str(p) for k, p in local.items()}}

    def _job(self, data: dict[str, Any]) -> Job:
        job = Job(**data)
        job._client = self
        return job

    def submit_many(self, requests: Iterable[dict[str, Any]], *, labels: Sequence[str] | None = None) -> list[Job]:
        """Submit many jobs at once (a dataset of thousands of generations, a hand-made sweep). Each request
        is a dict of `submit`'s arguments, ``kind`` included::

            c.submit_many([{"kind": "noop", "sleep": 0.1}, {"kind": "train", "config": {"steps": 10}}])

        Every request is validated before anything is written, so one bad request submits nothing
        (MedganUserError names its index); then every job goes into the database in one transaction and
        every message to the broker in one pipelined batch (thousands of jobs a second). Idempotency keys
        are respected, within the batch too. Returns the jobs in request order. `labels[i]` names request i
        in error messages (default ``request i``; the CLI says ``FILE line N``).
        """
        def where(i: int) -> str:
            return labels[i] if labels is not None else f"request {i}"

        prepared, keys = [], []
        for i, req in enumerate(requests):
            if not isinstance(req, dict) or "kind" not in req:
                raise MedganUserError(f"{where(i)}: a request is a dict with a 'kind'")
            fields = {k: v for k, v in req.items() if k not in ("kind", "config", "idempotency_key")}
            try:
                prepared.append(self._prepare(req["kind"], req.get("config"), fields))
            except MedganUserError as exc:
                raise type(exc)(f"{where(i)}: {exc}") from None
            keys.append(req.get("idempotency_key"))
        made = jobs.submit_many(self.settings, self._upload_local(prepared), keys=keys, where=where)
        self._watch([j["id"] for j, key in zip(made, keys) if key is None])
        return [self._job(j) for j in made]

    def _watch(self, new_ids: list[str]) -> None:
        """Jobs this call created (no idempotency key: none existed before) are committed after this client's
        LISTEN, if it has one: their waiter needs no first read (`jobs.DoneListener.watch`)."""
        if self._listener is not None and new_ids:
            self._listener.watch(new_ids)

    def _upload_local(self, prepared: list[tuple[dict[str, Any], dict[str, Path]]]) -> list[dict[str, Any]]:
        """Upload the local paths named by validated specs, each file's header checked against its job's
        reader policy first; returns the specs with dataset keys (content-addressed: a folder uploaded
        before, or by an earlier request, is not sent again)."""
        if any(local for _, local in prepared):
            jobs.check_database(self.settings)
        specs = []
        for spec, local in prepared:
            check = self._reader_check(spec, local) if local else None
            for key, path in local.items():
                spec[key] = datasets.upload_dataset(self.store, path, check=check,
                                                    max_file_bytes=self.settings.max_file_bytes)
            specs.append(spec)
        return specs

    def _prepare(self, kind: str, config: dict[str, Any] | None, fields: dict[str, Any],
                 check: bool = False) -> tuple[dict[str, Any], dict[str, Path]]:
        """A spec from `submit`'s arguments: local dataset paths must exist, and a spec that names some (or
        `check`) is validated through `jobs.validate`, the one path every submission takes, before anything
        is uploaded. Returns the spec (job references resolved to ids when validated) and its local paths."""
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
        if local or check:  # before anything is uploaded; else submission itself checks (the same code)
            checked = jobs.validate(self.settings, {**spec, **{k: "datasets/local/pending" for k in local}})
            for key in ("source_job", "depends_on"):
                if key in spec:
                    spec[key] = getattr(checked, key)
        return spec, local

    def _reader_check(self, spec: dict[str, Any], local: dict[str, Path]):  # noqa: ANN202
        """The job's reader policy (capped by this deployment's limits) applied to the headers of every
        file it will read, before anything is uploaded."""
        from scheduler.datasets import header_check

        parsed = specs.parse_spec({**spec, **{k: "datasets/local/pending" for k in local}})
        policy = getattr(getattr(parsed, "config", None), "read", None)
        return header_check(policy.capped(**self.settings.read_ceilings())) if policy is not None else None

    # -- watching -----------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        """One job (by id, a unique id prefix of 4+ characters, or its name), with its ``events`` (status
        changes, reasons) and, for a fan-out parent, ``children`` (shard counts per status). NotFound when
        there is no such job."""
        return self._job(jobs.get_job(self.settings, job_id))

    def jobs(self, *, status: str | Sequence[str] | None = None, kind: str | Sequence[str] | None = None,
             owner: str | None = None, name: str | None = None, since: Any = None, until: Any = None,
             limit: int = 50, include_children: bool = False) -> list[Job]:
        """The newest `limit` jobs, filtered: `status`/`kind` (one value, a list or 'A,B'; unknown values
        raise MedganUserError), `owner`, `name` (exact, or a glob with * and ?), `since`/`until` (created in
        the window: '2h', '3d', 'today', or an ISO time, UTC); fan-out shards only with `include_children`."""
        return [self._job(j) for j in jobs.list_jobs(
            self.settings, status=status, kind=kind, owner=owner, name=name, since=since, until=until,
            limit=limit, include_children=include_children)]

    def children(self, job_id: str) -> list[JobDict]:
        """The shard jobs of a fanned-out generation, by shard index (empty for any other job)."""
        from sqlalchemy import select

        from scheduler.db import Job as JobRow
        from scheduler.db import session_scope

        parent_id = self.job(job_id).id
        with session_scope(self.settings.db_url) as session:
            rows = session.execute(select(JobRow).where(JobRow.parent_id == parent_id).order_by(JobRow.shard_index))
            return [self._job(jobs.job_dict(j)) for j in rows.scalars()]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.5,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Block until the job is SUCCEEDED, FAILED or CANCELLED and return it; check ``status`` (and
        ``message``, the reason of a failure) yourself: a failed job does not raise.

        On PostgreSQL the wait wakes as soon as the job's end is committed (LISTEN/NOTIFY; a worker's finish
        sends the job with it, which is then returned unread), and reads the status every `poll` seconds
        besides; on SQLite it polls. `on_progress(job)` is called at every poll
        (``progress`` 0..1, ``step``/``total``: training steps, or finished/all shards of a fan-out).
        TimeoutError after `timeout` seconds (the job goes on running).
        """
        return self._wait([job_id], timeout, poll, None if on_progress is None else lambda js: on_progress(js[0]))[0]

    def wait_all(self, job_ids: Sequence[str], timeout: float | None = None, poll: float = 0.5,
                 on_progress: Callable[[list[Job]], None] | None = None) -> list[Job]:
        """`wait` for several jobs: returns them all, in the order given, once every one has ended.
        `on_progress(jobs)` gets the current list at every poll. TimeoutError names the jobs still going."""
        return self._wait(list(job_ids), timeout, poll, on_progress)

    def _wait(self, refs: list[str], timeout: float | None, poll: float,
              on_progress: Callable[[list[Job]], None] | None) -> list[Job]:
        """Listen first (an end committed after this is announced to us), then read the statuses (one query,
        or the full jobs when `on_progress` wants them) and sleep on the announcements until all have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._done_listener()
        if listener is not None and listener.watching(refs):
            # Submitted by this client after its LISTEN: their ends are announced to it, none is missed, and
            # there is nothing to read before the first announcement.
            ids, statuses, fresh = list(refs), {r: None for r in refs}, True
        else:
            statuses = jobs.job_statuses(self.settings, refs)  # exact ids: one query for all of them
            ids = [r if r in statuses else self.job(r).id for r in refs]  # prefixes, names: resolved once
            fresh = all(r in statuses for r in refs)  # read just now: no second read in the first round
        ended: set[str] = set()  # announced by the listener: their end is committed, no read needed
        while True:
            if on_progress is not None:
                current = [self.job(i) for i in ids]
                on_progress(current)
                statuses = {j.id: j.status for j in current}
            elif not fresh and not set(ids) <= ended:
                statuses = jobs.job_statuses(self.settings, ids)
            fresh = False
            waiting = [i for i in ids if i not in ended and (statuses[i] is None or Status(statuses[i]) not in TERMINAL)]
            if not waiting:
                done = [self._final(i) for i in ids]
                listener = self._listener  # None if a final read found its connection gone (it was closed)
                # An end announced earlier may have been undone since (a retry re-queued the job): wait on.
                again = {j.id for j in done if not j.done}
                if listener is not None:
                    listener.forget(ids)
                if not again:
                    return done
                ended -= again
                statuses, fresh = {j.id: j.status for j in done}, True
                continue
            if deadline is not None and time.monotonic() > deadline:
                if any(statuses[i] is None for i in waiting):
                    statuses = jobs.job_statuses(self.settings, ids)
                raise TimeoutError(f"job {waiting[0]} still {statuses[waiting[0]]} after {timeout}s" if len(ids) == 1
                                   else f"{len(waiting)} job(s) still going after {timeout}s: "
                                   + ", ".join(f"{i} {statuses[i]}" for i in waiting[:10]))
            nap = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            try:
                if listener is not None:
                    ended |= listener.wait(set(waiting), nap)
                    continue
            except Exception:  # noqa: BLE001 - the database went away: poll (the next wait listens again)
                listener = None
                self._drop_listener()
            time.sleep(nap)

    def _final(self, job_id: str) -> Job:
        """The job as a wait returns it: as the finish announced it (no read), else read on the LISTEN
        connection that announced its end, else (SQLite, or that connection lost) as `job` reads it."""
        listener = self._listener
        if listener is not None:
            announced = listener.announcement(job_id)
            job = None if announced is None else jobs.job_from_announcement(announced)
            if job is not None:  # the finish sent the job with its end: no read
                return self._job(job)
            try:
                with listener.lock:
                    return self._job(jobs.get_job(self.settings, job_id, conn=listener.connection))
            except NotFound:
                raise
            except Exception:  # noqa: BLE001 - the database went away: a pooled connection says how
                self._drop_listener()
        return self.job(job_id)

    def _drop_listener(self) -> None:
        listener, self._listener, self._listening = self._listener, None, False
        try:
            listener.close()
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _done_listener(self):  # noqa: ANN202 - a jobs.DoneListener or None
        """This client's LISTEN connection (made on the first wait, kept for the next ones)."""
        if not self._listening:
            self._listener, self._listening = jobs.done_listener(self.settings), True
        return self._listener

    def cancel(self, job_id: str) -> Job:
        """QUEUED: CANCELLED now; RUNNING: CANCELLING, and the worker stops it (a checkpoint first) within
        seconds. Cancelling a fan-out parent cancels its shards; queued jobs that depend on it are
        CANCELLED too. A finished job is left as it is."""
        return self._job(jobs.cancel(self.settings, job_id))

    def cancel_where(self, **filters: Any) -> list[Job]:
        """Cancel every unfinished job matching `jobs()`'s filters (status, kind, owner, name, since,
        until; at least one); returns them."""
        return [self._job(j) for j in jobs.cancel_where(self.settings, **filters)]

    def retry(self, job_id: str) -> Job:
        """Re-queue a FAILED or CANCELLED job under the same id (training resumes from its newest checkpoint;
        a fan-out re-runs only the shards that did not succeed); the jobs that ended because it did not
        succeed (later pipeline steps) are queued again too, waiting for it."""
        listener = self._listener
        if listener is None:
            return self._job(jobs.retry(self.settings, job_id))
        listener.hold()  # an end announced before this retry must not end a later wait for the job
        retried = None
        try:
            retried = self._job(jobs.retry(self.settings, job_id))
            return retried
        finally:
            listener.held_until(None if retried is None else retried.id)

    def latest_metrics(self, job_id: str, prefix: str = "") -> dict[str, float]:
        """The newest value of each metric series of a job (``prefix="loss"``: the latest losses)."""
        return jobs.latest_metrics(self.settings, job_id, prefix)

    def logs(self, job_id: str, *, follow: bool = False, tail: int | None = None, poll: float = 0.5,
             timeout: float | None = None) -> Iterator[LogLine]:
        """A job's process output, line by line, as the worker streams it into the database (from any host).
        `tail`: only the last N lines written so far; `follow`: keep yielding new lines until the job has
        ended and its last line is read (TimeoutError after `timeout` seconds)."""
        job = self.job(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        after, partial = 0, ""
        first = True
        while True:
            chunks = jobs.log_chunks(self.settings, job.id, after)
            lines: list[LogLine] = []
            for c in chunks:
                after = c["id"]
                text = partial + c["text"]
                parts = text.split("\n")
                partial = parts.pop()  # a chunk cut inside a line (a very long one) waits for the rest
                lines += [LogLine(at=c["at"], attempt=c["attempt"], text=p) for p in parts]
            if first and tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            first = False
            yield from lines
            if len(chunks) == 1000:
                continue  # more are waiting
            if not follow:
                break
            if job.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} still {job.status} after {timeout}s")
            time.sleep(poll)
            job = self.job(job.id)  # read the status before the chunks: nothing written before the end is missed
        if partial:
            yield LogLine(at="", attempt=0, text=partial)

    def accounting(self, *, since: Any = "7d", until: Any = None, by: str = "owner,kind",
                   owner: str | None = None) -> list[dict[str, Any]]:
        """GPU-hours and job-hours per owner and/or kind over [since, until) (scheduler/accounting.py)."""
        from scheduler.accounting import accounting

        return accounting(self.settings, since=since, until=until, by=by, owner=owner)

    # -- outputs ------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[ArtifactInfo]:
        """Every object the job itself recorded (`ArtifactInfo`: key, size, sha256, kind), keys under
        ``jobs/<id>/``. A fan-out parent records only its merged ``manifest.csv``; its images are its
        shards' artifacts (``download`` collects both)."""
        return [ArtifactInfo(**a) for a in jobs.list_artifacts(self.settings, job_id)]

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
            target = dest / store_.validate_key(rel)
            self.store.get_file(art["key"], target)
            if store_.sha256_file(target) != art["sha256"]:
                raise StoreError(f"{art['key']} is corrupt: sha256 does not match its record")
            out.append(target)
        return out

    def _children_artifacts(self, job: Job) -> list[ArtifactInfo]:
        if not job.get("children"):
            return []
        rows = []
        for child in self.children(job["id"]):
            rows.extend(self.artifacts(child["id"]))
        return rows

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A presigned, expiring download link for a store key (S3), or a file URL (local store).
        `key` may also be JOB/PATH (a job reference and a path under its prefix: ``3f2a/train.log``).
        NotFound when no such object exists (a link to nothing is never handed out)."""
        key = self._resolve_key(key)
        if not self.store.exists(key):
            raise NotFound(f"no object {key!r} in the store ({self.store.describe()})")
        return self.store.url(key, expires)

    def _resolve_key(self, key: str) -> str:
        key = key.strip()
        head, sep, rest = key.partition("/")
        if sep and head not in ("jobs", "datasets", "code"):
            key = f"jobs/{self.job(head).id}/{rest}"
        return store_.validate_key(key)
