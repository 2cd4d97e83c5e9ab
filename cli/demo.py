"""`medgan demo`: the whole system on the embedded defaults (SQLite, kombu's SQLAlchemy broker,
a local store folder), with nothing running beforehand.

It migrates the database, starts a real worker process and the sweeper, submits
train → generate (fanned out into shards) → enhance (LIME on darkened phantom images, scored
against the originals), follows each job, prints a summary and stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli._common import command, fmt_duration, follow
from scheduler import lazy_module

if TYPE_CHECKING:
    from scheduler.client import Client

# Loaded when the demo runs, not for `medgan --help` (alembic, pydantic-settings, the client).
migrate = lazy_module("scheduler.migrate")
client_module = lazy_module("scheduler.client")
settings_module = lazy_module("scheduler.settings")

console = Console(stderr=True)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in (log.read_bytes() if log.exists() else b""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the demo worker did not start; see {log}")
        time.sleep(0.2)


def make_lowlight_set(root: Path, n: int = 6, size: int = 128) -> tuple[Path, Path]:
    """Darkened phantom images and their originals (same file names), for a scored enhancement."""
    from medgan.config import PhantomSpec
    from medgan.pngio import write_png
    from medgan.enhance.pairs import make_lowlight_pair
    from medgan.phantom import make_phantom

    images, _labels, _masks = make_phantom(PhantomSpec(count=n, size=size, seed=7))
    dark_dir, ref_dir = root / "lowlight", root / "reference"
    for i, img in enumerate(images):
        dark, ref = make_lowlight_pair(img)
        write_png(dark_dir / f"scan-{i:02d}.png", dark)
        write_png(ref_dir / f"scan-{i:02d}.png", ref)
    return dark_dir, ref_dir


def run_demo(steps: int = 300, count: int = 64, shards: int = 2) -> int:
    settings = settings_module.get_settings()
    home = settings.home_dir
    console.print(f"[bold]medgan demo[/] — embedded mode under {home}")
    migrate.upgrade(settings)
    logs = home / "logs"
    worker_log = logs / "demo-worker.log"
    worker = _start(["worker", "--gpus", "none", "--concurrency", "2"], worker_log)
    sweeper = _start(["scheduler"], logs / "demo-sweeper.log")
    client = client_module.Client(settings)
    jobs: list[dict[str, Any]] = []
    try:
        _wait_ready(worker, worker_log)
        console.print("worker and sweeper started")
        train_cfg = {"model": "cgan", "image_size": 32, "steps": steps, "batch_size": 32, "base_channels": 32,
                     "checkpoint_every": max(1, steps // 3), "sample_every": max(1, steps // 6),
                     "phantom": {"count": 512, "size": 32, "seed": 0}}
        train = client.submit("train", config=train_cfg, name="demo: train a conditional GAN on the phantom")
        jobs.append(follow(client, train["id"]))
        if jobs[-1]["status"] != "SUCCEEDED":
            return _summary(client, jobs, settings, 1)
        gen = client.submit("generate", source_job=train["id"], config={"count": count, "with_masks": False},
                            shards=shards, name=f"demo: {count} synthetic images in {shards} shards")
        jobs.append(follow(client, gen["id"]))
        dark, ref = make_lowlight_set(home / "demo-data")
        enh = client.submit("enhance", dataset=str(dark), references=str(ref), config={"method": "lime"},
                            name="demo: LIME on darkened scans, scored against the originals")
        jobs.append(follow(client, enh["id"]))
        ok = all(j["status"] == "SUCCEEDED" for j in jobs)
        return _summary(client, jobs, settings, 0 if ok else 1)
    finally:
        _stop(worker)
        _stop(sweeper)
        console.print("worker and sweeper stopped")


def _summary(client: Client, jobs: list[dict[str, Any]], settings: Any, code: int) -> int:
    table = Table(title="demo jobs")
    for col in ("job", "kind", "status", "duration", "artifacts", "message"):
        table.add_column(col)
    for j in jobs:
        arts = client.artifacts(j["id"])
        n = len(arts) + sum(len(client.artifacts(c["id"])) for c in
                            client.jobs(include_children=True, limit=1000) if c["parent_id"] == j["id"])
        table.add_row(j["id"], j["kind"], j["status"], fmt_duration(j["duration_s"]), str(n), j["message"] or "")
    Console().print(table)
    store = client.store.describe()
    out = Console()
    out.print(f"outputs: {store}, under jobs/<job id>/ (`medgan jobs artifacts <id>`, "
              f"`medgan jobs download <id> DEST`)")
    for j in jobs:
        if j["kind"] == "train":
            samples = [a["key"] for a in client.artifacts(j["id"]) if a["kind"] == "sample"]
            if samples:
                out.print(f"newest sample grid: {samples[-1]}")
        if j["kind"] == "enhance" and j["status"] == "SUCCEEDED":
            summary = json.loads(client.store.get_bytes(f"jobs/{j['id']}/summary.json"))
            for m, unit in (("psnr", " dB"), ("ssim", "")):
                if m in summary and f"input_{m}" in summary:
                    out.print(f"{summary['method'].upper()} {m.upper()}: {summary[m]['mean']:.3f} ± "
                              f"{summary[m]['sd']:.3f}{unit} (dark input {summary['input_' + m]['mean']:.3f}{unit}), "
                              f"{summary['count']} images")
    return code


app = typer.Typer(add_completion=False)


@command(app, "demo", example="medgan demo --steps 100 --count 16")
def demo(
    steps: Annotated[int, typer.Option(help="training steps of the demo GAN")] = 300,
    count: Annotated[int, typer.Option(help="synthetic images to generate")] = 64,
    shards: Annotated[int, typer.Option(help="generation shards (child jobs)")] = 2,
) -> None:
    """Start a worker and the sweeper, run train → generate → enhance, print a summary, stop them."""
    raise typer.Exit(run_demo(steps=steps, count=count, shards=shards))
