"""`medgan jobs ls|show|logs|wait|cancel|retry|acct|artifacts|download|url`.

Wherever a job is named, its full id, a unique prefix of 4+ characters or its name (when one job has it) works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli._common import command, console, fmt_duration, follow, jobs_table, print_json

app = typer.Typer(help="List, inspect, cancel, retry and download jobs.", no_args_is_help=True,
                  add_completion=False)
JobId = Annotated[str, typer.Argument(help="job id, a unique prefix of 4+ characters, or the job's name")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


def _client():  # noqa: ANN202 - imported lazily so `--help` stays fast
    from scheduler.client import Client

    return Client()


Status = Annotated[Optional[str], typer.Option(help="only these statuses: QUEUED, RUNNING, CANCELLING, SUCCEEDED, "
                                                      "FAILED, CANCELLED (comma-separated)")]
Kind = Annotated[Optional[str], typer.Option(help="only these kinds: train, generate, enhance, evaluate, script, "
                                                  "noop (comma-separated)")]
Owner = Annotated[Optional[str], typer.Option(help="only this owner's jobs")]
NameF = Annotated[Optional[str], typer.Option("--name", help="only jobs of this name (a glob with * and ?)")]
Since = Annotated[Optional[str], typer.Option(help="submitted since: 90m, 2h, 3d, 1w, today or an ISO time (UTC)")]
Until = Annotated[Optional[str], typer.Option(help="submitted before: the same forms as --since")]


def _filters(status, kind, owner, name, since, until) -> dict:  # noqa: ANN001
    return dict(status=status, kind=kind, owner=owner, name=name, since=since, until=until)


@command(app, "ls", example="medgan jobs ls --status RUNNING,QUEUED --owner alice --since 2d")
def ls(
    status: Status = None, kind: Kind = None, owner: Owner = None, name: NameF = None, since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(help="newest N jobs")] = 50,
    all_: Annotated[bool, typer.Option("--all", help="include shard child jobs")] = False,
    json_: Json = False,
) -> None:
    """List jobs, newest first, with their owner, age and run time."""
    rows = _client().jobs(**_filters(status, kind, owner, name, since, until), limit=limit, include_children=all_)
    if json_:
        print_json(rows)
    else:
        console.print(jobs_table(rows))


@command(app, "show", example="medgan jobs show 3f2a")
def show(job_id: JobId, json_: Json = False) -> None:
    """Everything known about a job: spec, progress, queue position, events."""
    job = _client().job(job_id)
    if json_:
        print_json(job)
        return
    table = Table(show_header=False, box=None)
    for key in ("id", "kind", "status", "name", "owner", "priority", "gpus", "queue", "attempt", "lease_owner",
                "created_at", "started_at", "finished_at"):
        table.add_row(key, str(job.get(key)))
    # Not failures: a requeue after a lost worker or a preemption does not count against --max-attempts.
    table.add_row("requeues", f"{job.get('lease_losses', 0)} lost lease(s), {job.get('preemptions', 0)} preemption(s)"
                  + ("" if job.get("preemptible", True) else "; never preempted (--no-preempt)"))
    table.add_row("progress", f"{100 * job['progress']:.1f}% ({job['step']}/{job['total']})")
    table.add_row("duration", fmt_duration(job["duration_s"]))
    if job.get("queue_position"):
        table.add_row("queue position", f"{job['queue_position']} ({job['waiting_reason']})")
    if job.get("message"):
        table.add_row("message", job["message"])
    if job.get("read"):
        from scheduler.jobs import read_line

        table.add_row("read", read_line(job["read"]))
    if job.get("children"):
        label = "sweep jobs" if (job.get("spec") or {}).get("sweep") else "shards"
        table.add_row(label, ", ".join(f"{k}: {v}" for k, v in sorted(job["children"].items())))
    console.print(table)
    events = Table(title="events")
    for col in ("at", "from", "to", "actor", "reason"):
        events.add_column(col)
    for e in job["events"]:
        events.add_row(e["at"], e["from"] or "", e["to"], e["actor"] or "", e["reason"] or "")
    console.print(events)


@command(app, "logs", example="medgan jobs logs 3f2a -f")
def logs(
    job_id: JobId,
    tail: Annotated[int, typer.Option(help="last N lines of the process log")] = 50,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines until the job ends")] = False,
    json_: Annotated[bool, typer.Option("--json", help="one JSON object per line: events, log lines, metrics")] = False,
) -> None:
    """A job's events, the tail of its process output (live, from any host) and its newest metrics."""
    from cli._common import print_json_line

    client = _client()
    job = client.job(job_id)
    for e in job.events:
        if json_:
            print_json_line({"type": "event", **e})
        else:
            console.print(f"{e['at']}  {e['from'] or '-':>10} → {e['to']:<10} {e['actor'] or ''} {e['reason'] or ''}",
                          highlight=False)
    shown = 0
    for line in client.logs(job.id, follow=follow_, tail=tail):
        shown += 1
        if json_:
            print_json_line({"type": "log", **line.model_dump()})
        else:
            console.print(line.text, highlight=False, markup=False, soft_wrap=True)
    if not shown:  # jobs that ran before live logs existed: the stored log artifact
        _stored_log_tail(client, job.id, tail, json_)
    job = client.job(job.id) if follow_ else job
    for name, value in sorted(client.latest_metrics(job.id).items()):
        if json_:
            print_json_line({"type": "metric", "name": name, "value": value})
        else:
            console.print(f"metric {name} = {value:.6g}", highlight=False)
    if follow_ and not json_:
        console.print(f"job {job.id} {job.status}" + (f": {job.message}" if job.message else ""), highlight=False)


def _stored_log_tail(client, job_id: str, tail: int, json_: bool) -> None:  # noqa: ANN001
    from cli._common import print_json_line

    for art in client.artifacts(job_id):
        if art.kind == "log":
            text = client.store.get_bytes(art.key).decode(errors="replace").splitlines()
            for line in text[-tail:]:
                if json_:
                    print_json_line({"type": "log", "attempt": None, "at": None, "text": line, "key": art.key})
                else:
                    console.print(line, highlight=False, markup=False)


@command(app, "wait", example="medgan jobs wait 3f2a && echo done")
def wait(job_id: JobId, json_: Json = False) -> None:
    """Follow a job to its end (exit 1 unless it SUCCEEDED)."""
    job = follow(_client(), job_id, quiet=json_)
    if json_:
        print_json(job)
    else:
        console.print(f"job {job['id']} {job['status']}" + (f": {job['message']}" if job["message"] else ""))
    if job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@command(app, "cancel", example="medgan jobs cancel 3f2a   |   medgan jobs cancel --owner alice --status QUEUED")
def cancel(
    job_id: Annotated[Optional[str], typer.Argument(help="job id, unique prefix or name; omit to cancel by filter")] = None,
    status: Status = None, kind: Kind = None, owner: Owner = None, name: NameF = None, since: Since = None,
    until: Until = None,
    wait_: Annotated[bool, typer.Option("--wait", help="wait until the cancelled jobs have stopped")] = False,
    json_: Json = False,
) -> None:
    """Cancel a job, or every unfinished job matching the filters: a queued one at once, a running one within
    seconds (it checkpoints first). Jobs waiting for a cancelled one are cancelled too."""
    from scheduler.errors import MedganUserError

    client = _client()
    filters = _filters(status, kind, owner, name, since, until)
    if job_id is not None and any(filters.values()):
        raise MedganUserError("give a job or filters, not both")
    jobs = [client.cancel(job_id)] if job_id is not None else client.cancel_where(**filters)
    if wait_:
        jobs = [client.wait(j.id) for j in jobs]
    if json_:
        print_json(jobs if job_id is None else jobs[0])
        return
    for j in jobs:
        note = " (had already ended: nothing to cancel)" if j.done and j.status != "CANCELLED" else ""
        console.print(f"job {j.id} {j.status}{note}", highlight=False)
    if job_id is None:
        console.print(f"{len(jobs)} job(s) cancelled", highlight=False)


@command(app, "retry", example="medgan jobs retry 3f2a")
def retry(job_id: JobId, json_: Json = False) -> None:
    """Queue a FAILED/CANCELLED job again (training resumes; a fan-out re-runs only its failed shards); the
    later pipeline steps that ended because of it are queued again, waiting for it."""
    job = _client().retry(job_id)
    print_json(job) if json_ else console.print(f"job {job.id} {job.status}")


@command(app, "acct", example="medgan jobs acct --since 30d --by owner")
def acct(
    since: Annotated[str, typer.Option(help="window start: 90m, 2h, 3d, 1w, today or an ISO time (UTC)")] = "7d",
    until: Until = None,
    by: Annotated[str, typer.Option(help="group by owner, kind, or owner,kind")] = "owner,kind",
    owner: Owner = None,
    json_: Json = False,
) -> None:
    """GPU-hours and job-hours per owner/kind over a window (every run of a requeued job counts)."""
    rows = _client().accounting(since=since, until=until, by=by, owner=owner)
    if json_:
        print_json(rows)
        return
    keys = [k for k in ("owner", "kind") if rows and k in rows[0]] or [k.strip() for k in by.split(",")]
    table = Table(title=f"usage since {since}" + (f" until {until}" if until else ""))
    for col in (*keys, "jobs", "runs", "GPU-hours", "job-hours", "succeeded", "failed", "cancelled"):
        table.add_column(col, justify="right" if col not in keys else "left")
    for r in rows:
        table.add_row(*(str(r[k]) for k in keys), str(r["jobs"]), str(r["runs"]), f"{r['gpu_hours']:.2f}",
                      f"{r['job_hours']:.2f}", str(r["succeeded"]), str(r["failed"]), str(r["cancelled"]))
    console.print(table)


@command(app, "artifacts", example="medgan jobs artifacts 3f2a --json")
def artifacts(job_id: JobId, json_: Json = False) -> None:
    """Objects a job wrote, with size and sha256."""
    rows = _client().artifacts(job_id)
    if json_:
        print_json(rows)
        return
    table = Table()
    for col in ("key", "kind", "size", "sha256"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.key, r.kind, f"{r.size:,}", r.sha256[:16])
    console.print(table)


@command(app, "download", example="medgan jobs download 3f2a ./run --prefix samples/")
def download(
    job_id: JobId,
    dest: Annotated[Path, typer.Argument(help="local folder")] = Path("."),
    prefix: Annotated[str, typer.Option(help="only keys under this prefix (relative to jobs/<id>/)")] = "",
    json_: Json = False,
) -> None:
    """Download a job's artifacts (sha256-checked)."""
    paths = _client().download(job_id, dest, prefix=prefix)
    if json_:
        print_json([str(p) for p in paths])
    else:
        console.print(f"downloaded {len(paths)} file(s) to {dest}")


@command(app, "url", example="medgan jobs url 3f2a/train.log --expires 600")
def url(key: Annotated[str, typer.Argument(help="object key (jobs/<id>/…), or JOB/PATH under a job's prefix")],
        expires: Annotated[int, typer.Option(help="seconds the link stays valid")] = 3600) -> None:
    """A presigned, expiring download link for one object (which must exist)."""
    from datetime import timedelta

    print(_client().url(key, timedelta(seconds=expires)))
