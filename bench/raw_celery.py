"""The baseline: a plain Celery app with a no-op task on the same Redis (no database, no claim)."""

import os

from celery import Celery

app = Celery("raw", broker=os.environ["RAW_BROKER"], backend=os.environ["RAW_BACKEND"])
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                worker_prefetch_multiplier=1, task_acks_late=True, worker_hijack_root_logger=False)


@app.task(name="raw.noop")
def noop() -> int:
    return 1
