"""`medgan report JOB`: one self-contained HTML report for a job and the jobs it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli._common import command, console, print_json

app = typer.Typer(add_completion=False)


@command(app, "report", example="medgan report 7d0e --out ./report")
def report(
    job_id: Annotated[str, typer.Argument(help="an evaluate, generate or train job")],
    out: Annotated[Optional[Path], typer.Option(help="local folder for report.html (default: ./report-<id>)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Build report.html (loss curves, samples across training, real vs synthetic, metric and utility
    tables), store it as the job's artifact and write it locally."""
    from scheduler.client import Client
    from worker.report import build_report  # renders with medgan; imported only when asked

    client = Client()
    info = build_report(client, job_id, out)
    if json_:
        print_json(info)
    else:
        console.print(f"report: {info['path']}  (stored as {info['key']})")
