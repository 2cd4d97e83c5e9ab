"""Run a job's science in a watched subprocess and translate its run directory into job state.

The child writes `stats.jsonl` (progress), `checkpoints/*/COMPLETE` and `result.json`
(docs/INTERFACES.md); the worker reads them on every tick, uploads what is new, and stops
the child (SIGTERM → final checkpoint) when the job is cancelled or its lease is lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from scheduler import constants as C
from worker.launcher import STOP, run_watched
from worker.runtime import JobFailed, JobRun, JobStopped


class StatsTail:
    """Reads the lines appended to stats.jsonl since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a half-written one waits for the next tick
        self.offset += end
        out = []
        for line in data[:end].decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


class LogShipper:
    """Appends what the process wrote to its log since the last call to the job's log chunks in the
    database (whole lines; a line longer than a chunk is cut), so `medgan jobs logs -f` sees it live from
    any host. After LOG_DB_MAX_BYTES per attempt it stops, saying so; the job.log artifact keeps it all."""

    def __init__(self, run: JobRun, path: Path, limit: int = C.LOG_DB_MAX_BYTES):
        self.run, self.path, self.limit = run, path, limit
        self.offset = path.stat().st_size if path.exists() else 0  # an earlier attempt's part is shipped
        self.shipped = 0

    def ship(self, final: bool = False) -> None:
        if self.shipped >= self.limit or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.limit - self.shipped + 1)
        end = len(data) if final else data.rfind(b"\n") + 1
        if end == 0 and len(data) >= C.LOG_CHUNK_BYTES:
            end = len(data)  # one very long line: cut it rather than hold the log back
        if end == 0:
            return
        body = data[:end]
        self.offset += end
        self.shipped += end
        if self.shipped >= self.limit:
            body += (f"\n[medgan: the live log stops after {self.limit} bytes; the whole log is the job's "
                     f"log artifact when it ends]\n").encode()
        chunks = [body[i:i + C.LOG_CHUNK_BYTES] for i in range(0, len(body), C.LOG_CHUNK_BYTES)]
        self.run.append_log([c.decode(errors="replace") for c in chunks])


def run_science(run: JobRun, cmd: Sequence[str], run_dir: Path, env: dict[str, str],
                extra_tick: Callable[[], None] | None = None, *, cwd: Path | None = None,
                expect_result: bool = True) -> dict:
    """Run `cmd` until it ends; returns result.json. Raises JobFailed / JobStopped as the run ended.
    With `expect_result=False` (a user's script) the exit code alone decides: 0 is success."""
    tail = StatsTail(run_dir / "stats.jsonl")
    log_path = run.work_dir / "job.log"
    read_report = run_dir / "read.json"  # every dataset the child reads adds its counts here (medgan.data)
    read_report.unlink(missing_ok=True)
    env = {**env, "MEDGAN_READ_REPORT": str(read_report)}
    shipper = LogShipper(run, log_path)

    def tick() -> str | None:
        rows = tail.read()
        for row in rows[-20:]:  # a burst after a slow tick: keep the newest points
            run.progress(int(row.get("step", 0)), int(row.get("total", 0)), row, force=True)
        shipper.ship()
        if extra_tick is not None:
            extra_tick()
        return STOP if run.should_stop() else None

    try:
        code = run_watched(cmd, env=env, log_path=log_path, on_tick=tick, cwd=cwd, lease_file=run.lease_file,
                           on_start=lambda proc: setattr(run, "child", proc))
    finally:
        run.child = None
        shipper.ship(final=True)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if run.stop_reason == "preempted" and code == 0 and (result or {}).get("status") == "completed":
        run.decline_preemption("the science completed before it could stop")  # nothing left to preempt
    if run.should_stop():
        raise JobStopped(run.stop_reason or "stopped")
    if not expect_result:
        if code != 0:
            raise JobFailed(f"the script exited with code {code}: {_log_tail(log_path)}")
        return {"status": "completed", "exit_code": code}
    if result is None:
        raise JobFailed(f"the {run.kind} process exited with code {code} without a result: {_log_tail(log_path)}")
    if result.get("status") == "failed":
        raise JobFailed(result.get("reason") or f"the {run.kind} process failed (exit code {code})")
    if code != 0:
        raise JobFailed(f"the {run.kind} process exited with code {code}: {_log_tail(log_path)}")
    record_read_report(run, read_report)
    return result


def record_read_report(run: JobRun, path: Path) -> None:
    """Files read and skipped by reason: metric rows `read.*` (shown by `medgan jobs show`) and the
    report itself as `jobs/<id>/read.json`."""
    if not path.exists():
        return
    try:
        report = json.loads(path.read_text())
    except ValueError:
        return
    for name in ("files_read", "images", "skipped_total"):
        run.metric(f"{C.READ_PREFIX}{name}", float(report.get(name, 0)))
    for reason, count in sorted(report.get("skipped", {}).items()):
        run.metric(f"{C.READ_PREFIX}skipped.{reason}", float(count))
    run.upload(path, f"{run.prefix}/read.json", "summary")


def _log_tail(path: Path, lines: int = 3) -> str:
    if not path.exists():
        return "no log"
    text = path.read_text(errors="replace").strip().splitlines()
    interesting = [l for l in text if l.strip()][-lines:]
    return " | ".join(interesting)[-800:] or "empty log"
