"""The Celery app, configured from Settings: JSON only, late acks, prefetch 1, no results.

Both sides use it: the client sends messages by task name (it never imports worker code),
the worker registers the tasks. The message carries the job id only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from scheduler import constants as C
from scheduler.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

# Celery and kombu are imported by the functions that use them: importing this module (the submission
# path, the client, the CLI) costs nothing until a message is actually built.


def celery_config(settings: Settings) -> dict[str, Any]:
    from kombu import Queue

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
        # No task-sent event per message: it doubled the broker writes of a submission (bench_platform), and
        # what is queued is in the database (`medgan jobs`); Flower sees a task from its receipt on.
        task_send_sent_event=False,
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


_APPS: dict[tuple[Any, ...], "Celery"] = {}


def make_celery(settings: Settings) -> Celery:
    """One Celery app per broker configuration per process."""
    if settings.embedded_broker:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
    key = (settings.broker, settings.visibility_timeout, settings.broker_poll_seconds)
    if key not in _APPS:
        from celery import Celery

        app = Celery("medgan")
        app.conf.update(celery_config(settings))
        _APPS[key] = app
    return _APPS[key]


def send_job(app: Celery, job_id: str, kind: str, priority: int) -> None:
    """Send the message for a committed job: its id only, to its kind's queue, with its priority."""
    send_jobs(app, [(job_id, kind, priority)])


def send_jobs(app: Celery, jobs: Sequence[tuple[str, str, int]]) -> None:
    """Send the messages of committed jobs (id, kind, priority) in one pipelined batch: on Redis, kombu
    buffers the pushes and writes `PUBLISH_BATCH` at a time in one round trip each.

    A batch that fails is sent once more as a whole: a message delivered twice is harmless (the claim drops
    the second), one never sent is re-sent by the sweeper. Raises when the second try fails too.
    """
    if not jobs:
        return
    try:
        _publish(app, jobs)
    except Exception:
        _publish(app, jobs)


def _publish(app: Celery, jobs: Sequence[tuple[str, str, int]]) -> None:
    # Celery's own message building and sending (app.amqp), without `send_task`'s per-call option
    # resolution, routing and result objects: a third of the CPU per message, the same message.
    from kombu.utils.uuid import uuid

    amqp, declared = app.amqp, set()
    with app.producer_or_acquire() as producer, producer.batch(max_size=C.PUBLISH_BATCH):
        for job_id, kind, priority in jobs:
            name, queue, args = C.TASK_NAMES[kind], queue_for(kind), [job_id]
            message = amqp.create_task_message(uuid(), name, args, {}, argsrepr=repr(args), kwargsrepr="{}",
                                               reply_to=app.thread_oid)
            # The first message of a queue declares it; kombu's per-message declare check is costly.
            # retry=False: inside a batch nothing is written until the flush, which send_jobs retries.
            amqp.send_task_message(producer, name, message, queue=queue, priority=priority, retry=False,
                                   **({} if queue not in declared else {"declare": []}))
            declared.add(queue)


def queue_depths(app: Celery, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue, every priority step counted (kombu's passive declare); a queue the
    broker has never seen, or has emptied, holds 0. Messages a worker has taken but not acknowledged are
    not counted. Raises when the broker cannot be reached."""
    from kombu.exceptions import ChannelError

    out = {}
    with app.connection_for_read() as conn:
        for queue in queues:
            try:
                out[queue] = conn.default_channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:  # NOT_FOUND: no message was ever left in it
                out[queue] = 0
    return out


def queue_for(kind: str) -> str:
    return C.QUEUES.get(kind, C.QUEUE_GENERATE)
