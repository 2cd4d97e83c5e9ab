"""`noop` jobs: no science, so a benchmark sees the platform's own cost per job."""

from __future__ import annotations

import time

from worker.runtime import JobFailed, JobRun


def handle(run: JobRun) -> None:
    spec = run.spec
    deadline = time.monotonic() + spec.sleep
    while time.monotonic() < deadline and not run.should_stop():
        time.sleep(min(0.05, spec.sleep))
    if spec.fail:
        raise JobFailed(spec.fail)
