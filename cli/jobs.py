"""`medgan jobs ls|show|logs|wait|cancel|retry|artifacts|download|url`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli._common import command, console, fmt_duration, follow, jobs_table, print_json

app = typer.Typer(help="List, inspect, cancel, retry and download jobs.", no_args_is_help=True,
                  add_completion=False)
JobId = Annotated[str, typer.Argument(help="job id (or a unique prefix of at least 4 characters)")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


def _client():  # noqa: ANN202 - imported lazily so `--help` stays fast
    from scheduler.client import Client

    return Client()


@command(app, "ls")
def ls(
    status: Annotated[Optional[str], typer.Option(help="only this status")] = None,
    kind: Annotated[Optional[str], typer.Option(help="only this kind")] = None,
    owner: Annotated[Optional[str], typer.Option(help="only this owner")] = None,
    limit: Annotated[int, typer.Option(help="newest N jobs")] = 50,
    all_: Annotated[bool, typer.Option("--all", help="include shard child jobs")] = False,
    json_: Json = False,
) -> None:
    """List jobs, newest first."""
    rows = _client().jobs(status=status, kind=kind, owner=owner, limit=limit, include_children=all_)
    if json_:
        print_json(rows)
    else:
        console.print(jobs_table(rows))


@command(app, "show")
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
        table.add_row("shards", ", ".join(f"{k}: {v}" for k, v in sorted(job["children"].items())))
    console.print(table)
    events = Table(title="events")
    for col in ("at", "from", "to", "actor", "reason"):
        events.add_column(col)
    for e in job["events"]:
        events.add_row(e["at"], e["from"] or "", e["to"], e["actor"] or "", e["reason"] or "")
    console.print(events)


@command(app, "logs")
def logs(job_id: JobId, tail: Annotated[int, typer.Option(help="last N lines of the process log")] = 50) -> None:
    """A job's events, its newest metrics and the tail of its process log."""
    client = _client()
    job = client.job(job_id)
    for e in job["events"]:
        console.print(f"{e['at']}  {e['from'] or '-':>10} → {e['to']:<10} {e['actor'] or ''} {e['reason'] or ''}",
                      highlight=False)
    from scheduler.jobs import metric_series

    for name, points in sorted(metric_series(client.settings, job["id"]).items()):
        step, value = points[-1]
        console.print(f"metric {name} = {value:.6g}" + (f" (step {step})" if step is not None else ""), highlight=False)
    for art in client.artifacts(job["id"]):
        if art["kind"] == "log":
            text = client.store.get_bytes(art["key"]).decode(errors="replace").splitlines()
            console.print(f"--- {art['key']} (last {tail} lines)", highlight=False)
            for line in text[-tail:]:
                console.print(line, highlight=False, markup=False)


@command(app, "wait")
def wait(job_id: JobId, json_: Json = False) -> None:
    """Follow a job to its end (exit 1 unless it SUCCEEDED)."""
    job = follow(_client(), job_id, quiet=json_)
    if json_:
        print_json(job)
    else:
        console.print(f"job {job['id']} {job['status']}" + (f": {job['message']}" if job["message"] else ""))
    if job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@command(app, "cancel")
def cancel(job_id: JobId, json_: Json = False) -> None:
    """Cancel a job: a queued one at once, a running one within seconds (it checkpoints first)."""
    job = _client().cancel(job_id)
    print_json(job) if json_ else console.print(f"job {job['id']} {job['status']}")


@command(app, "retry")
def retry(job_id: JobId, json_: Json = False) -> None:
    """Queue a FAILED/CANCELLED job again (training resumes; a fan-out re-runs only its failed shards)."""
    job = _client().retry(job_id)
    print_json(job) if json_ else console.print(f"job {job['id']} {job['status']}")


@command(app, "artifacts")
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
        table.add_row(r["key"], r["kind"], f"{r['size']:,}", r["sha256"][:16])
    console.print(table)


@command(app, "download")
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


@command(app, "url")
def url(key: Annotated[str, typer.Argument(help="object key")],
        expires: Annotated[int, typer.Option(help="seconds the link stays valid")] = 3600) -> None:
    """A presigned, expiring download link for one object."""
    from datetime import timedelta

    print(_client().url(key, timedelta(seconds=expires)))
