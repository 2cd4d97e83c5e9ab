"""Every constant of the job system in one place, each with its unit."""

from __future__ import annotations

import enum

# Celery queues: one per job kind so operators can dedicate workers (GPU vs CPU).
QUEUE_TRAIN = "medgan.train"
QUEUE_GENERATE = "medgan.generate"
QUEUE_ENHANCE = "medgan.enhance"
QUEUE_EVALUATE = "medgan.evaluate"
QUEUE_SCRIPT = "medgan.script"  # users' own code (`medgan run`)
QUEUES = {
    "train": QUEUE_TRAIN,
    "generate": QUEUE_GENERATE,
    "enhance": QUEUE_ENHANCE,
    "evaluate": QUEUE_EVALUATE,
    "script": QUEUE_SCRIPT,
}
# The metric rows of what a job's science read: worker.subproc writes them, jobs.get_job and the finish's
# announcement (states.FINISH_CPU_SQL) read them.
READ_PREFIX = "read."
TASK_NAMES = {kind: f"medgan.run_{kind}" for kind in (*QUEUES, "noop")}  # noop: overhead probe

# Priorities: 0 is most urgent (Redis `queue_order_strategy='priority'` semantics), 9 least.
PRIORITY_MIN = 0
PRIORITY_MAX = 9
PRIORITY_DEFAULT = 5

# Store key prefixes (DESIGN.md "Store layout").
PREFIX_DATASETS = "datasets"
PREFIX_PENDING_UPLOADS = "datasets/_pending"  # one marker per upload in progress (no dataset name starts with _)
PREFIX_JOBS = "jobs"
PREFIX_CODE = "code"  # code snapshots of `medgan run`: code/<name>/<version>/… + manifest.jsonl

# Time, in seconds.
HEARTBEAT_SECONDS = 5.0  # how often a running job renews its lease
LEASE_SECONDS = 30.0  # a lease not renewed for this long is expired
SWEEP_SECONDS = 5.0  # how often the sweeper runs
RESEND_AFTER_SECONDS = 60.0  # a QUEUED job without a claim for this long has its message re-sent
PROGRESS_POLL_SECONDS = 0.5  # how often the worker reads a subprocess's stats
CANCEL_GRACE_SECONDS = 30.0  # SIGTERM → SIGKILL grace for a training subprocess
SELF_FENCE_MARGIN = 0.25  # a worker stops its science once this fraction of the lease is left unrenewed
LEASE_FILE = "lease"  # in a job's work dir: touched at each renewal; the guardian kills the science if it ages
DB_IDLE_IN_TRANSACTION_SECONDS = 15.0  # PostgreSQL ends a session idle this long inside a transaction
DB_PING_IDLE_SECONDS = 1.0  # a pooled connection unused this long is pinged before it is handed out again
VISIBILITY_TIMEOUT_SECONDS = 3600  # Redis redelivery of an unacknowledged message (see Settings)
PREEMPT_GRACE_SECONDS = 30.0  # a higher-priority job waits this long for cards before it preempts
FAIR_SHARE_WINDOW_SECONDS = 7 * 24 * 3600.0  # GPU time this recent counts for fair share

UPLOAD_STALE_SECONDS = 3600.0  # a dataset upload whose marker is not refreshed for this long is removed
UPLOAD_REFRESH_SECONDS = 60.0  # how often an upload in progress refreshes its marker

MAX_ATTEMPTS = 3  # failed attempts a job may have (lost leases and preemptions are not failures)
MAX_LEASE_LOSSES = 20  # a job whose lease was lost this many times is FAILED (it may be what kills its workers)

# Counts.
MAX_SWEEP_CHILDREN = 10_000  # jobs one sweep may create
PUBLISH_BATCH = 1000  # broker operations buffered per pipelined round trip (bulk submission)

# Sizes, in bytes.
UPLOAD_PART_SIZE = 16 * 1024 * 1024
CODE_MAX_BYTES = 100 * 1024 * 1024  # a code snapshot larger than this is refused (data goes in --data)
CODE_MAX_FILES = 20_000
LOG_CHUNK_BYTES = 64 * 1024  # one log_chunks row holds at most this much of a job's output
LOG_DB_MAX_BYTES = 32 * 1024 * 1024  # per attempt; the rest is in the job.log artifact only

# Job ids: 12 hex characters; a unique prefix of at least this many works wherever an id is taken.
ID_PREFIX_MIN = 4


# Job statuses (DESIGN.md "Job lifecycle").
class Status(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"  # only inside the transaction that requeues a preempted attempt (an event, not a state)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.RUNNING, Status.CANCELLING})
