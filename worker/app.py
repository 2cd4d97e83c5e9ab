"""The Celery app with one task per job kind, and `medgan worker`'s process set-up.

Tasks are thin: `execute_job` claims, calls the kind's handler, records and finishes.
The pool is threads: the science runs in subprocesses, so a worker thread only supervises.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Callable

from celery import Celery

from scheduler import constants as C
from scheduler.broker import make_celery
from scheduler.settings import Settings
from worker.gpus import Inventory
from worker.runtime import JobRun, WorkerContext, execute_job

log = logging.getLogger("medgan.worker")
_CTX: WorkerContext | None = None


def handler_for(kind: str) -> Callable[[JobRun], None]:
    return importlib.import_module(f"worker.tasks.{kind}").handle


def create_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    for kind, name in C.TASK_NAMES.items():
        if name in app.tasks:
            continue

        def run(job_id: str, _kind: str = kind) -> str:
            if _CTX is None:
                raise RuntimeError("worker context not initialised (start workers with `medgan worker`)")
            return execute_job(_CTX, job_id, handler_for(_kind))

        app.task(name=name, acks_late=True, ignore_result=True)(run)
    return app


def start_worker(settings: Settings, inventory: Inventory, queues: list[str], concurrency: int,
                 name: str | None = None, loglevel: str = "INFO") -> None:
    """Run a worker in this process until it is stopped (blocks)."""
    global _CTX
    _CTX = WorkerContext.create(settings, inventory, name)
    _CTX.register(queues)
    stop = threading.Event()

    def keepalive() -> None:
        while not stop.wait(settings.heartbeat_seconds):
            try:
                _CTX.touch()
            except Exception as exc:  # a database blip must not kill the worker
                log.warning("worker keep-alive failed: %s", exc)

    threading.Thread(target=keepalive, daemon=True, name="worker-keepalive").start()
    app = create_app(settings)
    argv = ["worker", "-Q", ",".join(queues), "--pool", "threads", "--concurrency", str(concurrency),
            "-n", _CTX.name,
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    try:
        app.worker_main(argv)
    finally:
        stop.set()
        try:
            _CTX.unregister()
        except Exception:
            pass
