"""The Celery app, configured from Settings: JSON only, late acks, prefetch 1, no results.

Both sides use it: the client sends messages by task name (it never imports worker code),
the worker registers the tasks. The message carries the job id only.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from scheduler import constants as C
from scheduler.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.broker
    conf: dict[str, Any] = dict(
        broker_url=broker,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # the database is the truth
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a killed child's message goes back (PITFALLS)
        worker_prefetch_multiplier=1,
        task_default_queue=C.QUEUE_GENERATE,
        task_queues=[Queue(q, routing_key=q) for q in C.QUEUES.values()],
        task_routes={C.TASK_NAMES[k]: {"queue": q} for k, q in C.QUEUES.items()},
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        enable_utc=True,
    )
    if broker.startswith("redis"):
        conf["broker_transport_options"] = {
            # Redis priorities only work with this strategy; 0 is the most urgent.
            "queue_order_strategy": "priority",
            "priority_steps": list(range(C.PRIORITY_MIN, C.PRIORITY_MAX + 1)),
            # No "sep": kombu's default separator is what every other Redis client of this broker assumes
            # (Flower, a plain `celery --broker=… inspect`). With another one here, their control replies
            # crash the worker's pidbox and Flower lists no workers (tests/integration/test_stack.py).
            # Redelivery after this many seconds; the claim makes a redelivery harmless anyway.
            "visibility_timeout": settings.visibility_timeout,
        }
    if settings.embedded_broker:
        _tune_sqlalchemy_transport(settings.broker_poll_seconds)
    return conf


def _tune_sqlalchemy_transport(poll_seconds: float) -> None:
    """kombu passes broker_transport_options to create_engine, so the poll interval is a class attribute."""
    from kombu.transport import sqlalchemy as sqla

    sqla.Transport.polling_interval = poll_seconds


_APPS: dict[tuple[Any, ...], Celery] = {}


def make_celery(settings: Settings) -> Celery:
    """One Celery app per broker configuration per process."""
    if settings.embedded_broker:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
    key = (settings.broker, settings.visibility_timeout, settings.broker_poll_seconds)
    if key not in _APPS:
        app = Celery("medgan")
        app.conf.update(celery_config(settings))
        _APPS[key] = app
    return _APPS[key]


def send_job(app: Celery, job_id: str, kind: str, priority: int) -> None:
    """Send the message for a committed job: its id only, to its kind's queue, with its priority."""
    app.send_task(
        C.TASK_NAMES[kind],
        args=[job_id],
        queue=queue_for(kind),
        priority=priority,
    )


def queue_for(kind: str) -> str:
    return C.QUEUES.get(kind, C.QUEUE_GENERATE)
