"""What every command shares: the error boundary, JSON/table output, following a job."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from scheduler.errors import MedganUserError, StoreError

console = Console()
err_console = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")


def fail(message: str) -> None:
    """One clear line on stderr, exit code 1."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def command(app: typer.Typer, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` plus the error boundary: user errors become one line and exit 1."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            try:
                return fn(*a, **k)
            except MedganUserError as exc:
                fail(str(exc))
            except StoreError as exc:  # the store is down or an object is corrupt: still one line
                fail(f"artifact store: {exc}")
            except ValidationError as exc:
                from scheduler.specs import format_validation_error

                fail(format_validation_error(exc))

        app.command(*args, **kwargs)(wrapper)
        return fn

    return deco


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


STATUS_STYLE = {"QUEUED": "yellow", "RUNNING": "cyan", "CANCELLING": "magenta", "SUCCEEDED": "green",
                "FAILED": "red", "CANCELLED": "dim"}


def jobs_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title)
    for col, width in (("id", 12), ("kind", 8), ("status", 14), ("time", 6)):
        table.add_column(col, no_wrap=True, min_width=width)
    table.add_column("message / name", no_wrap=True, overflow="ellipsis", max_width=24)
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "")
        pct = f" {100 * r.get('progress', 0):.0f}%" if r["status"] in ("RUNNING", "CANCELLING") else ""
        table.add_row(r["id"], r["kind"], f"[{style}]{r['status']}[/]{pct}", fmt_duration(r.get("duration_s")),
                      r.get("message") or r.get("name") or "")
    return table


def follow(client: Any, job_id: str, quiet: bool = False) -> dict[str, Any]:
    """Show a progress bar until the job ends; returns the final job."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return client.wait(job_id)
    with Progress(TextColumn("[bold]{task.fields[jid]}[/] {task.fields[kind]}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=err_console, transient=False) as progress:
        task = progress.add_task("job", total=1.0, jid=job_id, kind="", status="")

        def update(job: dict[str, Any]) -> None:
            progress.update(task, completed=job["progress"], kind=job["kind"],
                            status=f"{job['status']} {job['step']}/{job['total']}" if job["total"] else job["status"])

        return client.wait(job_id, on_progress=update)
