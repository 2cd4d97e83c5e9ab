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


def command(app: typer.Typer, *args: Any, example: str | None = None,
            **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` plus the error boundary: user errors become one line and exit 1.
    `example` is shown at the end of the command's --help (every command has one: tests/cli)."""
    if example:
        kwargs.setdefault("epilog", "Example:  " + example)

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


def jsonable(data: Any) -> Any:
    """Typed results (pydantic models) and lists of them as plain JSON data."""
    from pydantic import BaseModel

    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, (list, tuple)):
        return [jsonable(d) for d in data]
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    return data


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str) + "\n")


def print_json_line(data: Any) -> None:
    """One compact JSON object per line (`--json` of streaming commands, e.g. `jobs logs -f`)."""
    sys.stdout.write(json.dumps(jsonable(data), default=str) + "\n")
    sys.stdout.flush()


def fmt_age(iso: str | None) -> str:
    """'5m ago', '2h ago', '3d ago' for an ISO UTC time (the jobs table's time column)."""
    if not iso:
        return "-"
    from datetime import datetime

    from scheduler.db import utcnow

    seconds = (utcnow() - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(0, int(seconds))}s ago"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


STATUS_STYLE = {"QUEUED": "yellow", "RUNNING": "cyan", "CANCELLING": "magenta", "SUCCEEDED": "green",
                "FAILED": "red", "CANCELLED": "dim"}


def jobs_table(rows: list[Any], title: str | None = None) -> Table:
    table = Table(title=title)
    for col, width in (("id", 12), ("kind", 8), ("status", 14), ("owner", 6), ("submitted", 9), ("ran", 6)):
        table.add_column(col, no_wrap=True, min_width=width)
    table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("message", no_wrap=True, overflow="ellipsis", max_width=36)
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "")
        pct = f" {100 * r.get('progress', 0):.0f}%" if r["status"] in ("RUNNING", "CANCELLING") else ""
        table.add_row(r["id"], r["kind"], f"[{style}]{r['status']}[/]{pct}", r.get("owner") or "",
                      fmt_age(r.get("created_at")), fmt_duration(r.get("duration_s")), r.get("name") or "",
                      r.get("message") or "", )
    return table


class Rate:
    """Steps per second over a sliding window of observations, and the ETA it implies."""

    def __init__(self, window: float = 30.0):
        self.window = window
        self.points: list[tuple[float, int]] = []

    def add(self, now: float, step: int) -> None:
        if self.points and step < self.points[-1][1]:  # a requeued run restarts its count
            self.points.clear()
        if not self.points or step != self.points[-1][1]:
            self.points.append((now, step))
        while len(self.points) > 2 and now - self.points[0][0] > self.window:
            self.points.pop(0)

    def per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def eta(self, total: int) -> float | None:
        rate = self.per_second()
        if not rate or not self.points or total <= 0:
            return None
        return max(0.0, (total - self.points[-1][1]) / rate)


def progress_line(job: Any, rate: Rate, losses: dict[str, float], since_change: float) -> str:
    """'RUNNING 120/500 · 3.2 step/s · ETA 2m01s · loss_d 0.81 loss_g 1.20' (what the bar shows beside it).

    A job whose counter reached its total but which still runs is 'finishing' (uploading, writing reports),
    and a counter that has not moved for a while says for how long, so a bar never sits frozen at 100%."""
    status, step, total = job["status"], job["step"], job["total"]
    parts = [status]
    if total:
        parts[0] += f" {step}/{total}"
        if status == "RUNNING" and step >= total:
            parts.append("finishing (outputs, uploads)")
        else:
            per_s = rate.per_second()
            if per_s:
                parts.append(f"{per_s:.3g} step/s" if per_s >= 1 or per_s == 0 else f"{1 / per_s:.3g} s/step")
                eta = rate.eta(total)
                if eta is not None:
                    parts.append(f"ETA {fmt_duration(eta)}")
    if status == "RUNNING" and since_change > 30:
        parts.append(f"no progress for {fmt_duration(since_change)}")
    if losses:
        parts.append(" ".join(f"{k} {v:.3g}" for k, v in sorted(losses.items())[:4]))
    if status == "QUEUED" and job.get("message"):
        parts.append(job["message"])
    return " · ".join(parts)


def follow(client: Any, job_id: str, quiet: bool = False) -> Any:
    """Show a progress bar (step/total, rate, ETA, latest losses) until the job ends; returns the final job."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return client.wait(job_id)
    rate, state = Rate(), {"step": -1, "changed": time.monotonic()}
    with Progress(TextColumn("[bold]{task.fields[jid]}[/] {task.fields[kind]}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=err_console, transient=False) as progress:
        task = progress.add_task("job", total=1.0, jid=job_id, kind="", status="")

        def update(job: Any) -> None:
            now = time.monotonic()
            if job["step"] != state["step"]:
                state["step"], state["changed"] = job["step"], now
            if job["status"] == "RUNNING":
                rate.add(now, job["step"])
            losses = client.latest_metrics(job["id"], prefix="loss") if job["status"] == "RUNNING" else {}
            shown = job["progress"] if job["status"] == "SUCCEEDED" else min(job["progress"], 0.999)
            progress.update(task, completed=shown, kind=job["kind"],
                            status=progress_line(job, rate, losses, now - state["changed"]))

        return client.wait(job_id, on_progress=update)
