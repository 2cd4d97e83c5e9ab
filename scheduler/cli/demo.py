"""`medgan demo`: the whole system on the embedded defaults, with nothing running beforehand."""

from __future__ import annotations

from typing import Annotated

import typer

from scheduler.cli._common import command

app = typer.Typer(add_completion=False)


@command(app, "demo")
def demo(
    steps: Annotated[int, typer.Option(help="training steps of the demo GAN")] = 300,
    count: Annotated[int, typer.Option(help="synthetic images to generate")] = 64,
    shards: Annotated[int, typer.Option(help="generation shards (child jobs)")] = 2,
) -> None:
    """Start a worker and the sweeper, run train → generate → enhance, print a summary, stop them."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(steps=steps, count=count, shards=shards))
