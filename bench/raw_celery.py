"""The baseline: a plain Celery app with a no-op task, on the same Redis and with the same Celery
configuration as medgan's (JSON, late acks, prefetch 1, priority queues, task events; scheduler.broker),
plus a result backend so a caller can wait for a result. No database, no claim, no events rows.

The worker side is `celery -A bench.raw_celery worker --pool threads -c N` (medgan's pool and concurrency),
configured from RAW_BROKER / RAW_BACKEND; the benchmark's own side makes its app with `make_app`.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

QUEUE = "raw"
TASK = "raw.noop"


def make_app(broker: str, backend: str | None) -> Celery:
    from scheduler.broker import celery_config
    from scheduler.settings import Settings

    conf = celery_config(Settings(broker_url=broker))
    conf.update(result_backend=backend, task_ignore_result=False, task_default_queue=QUEUE,
                task_queues=[Queue(QUEUE, routing_key=QUEUE)], task_routes={})
    app = Celery("raw")
    app.conf.update(conf)
    app.task(name=TASK)(noop)
    return app


def noop() -> int:
    return 1


app = make_app(os.environ.get("RAW_BROKER", "memory://"), os.environ.get("RAW_BACKEND"))
