"""Operating the system: `medgan db …`, `medgan worker`, `medgan scheduler`, `medgan status`."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from scheduler import constants as C
from cli._common import command, console, fail, jobs_table, print_json

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True, add_completion=False)
app = typer.Typer(add_completion=False)


def _settings():  # noqa: ANN202
    from scheduler.settings import get_settings

    try:
        return get_settings()
    except Exception as exc:  # pydantic's message names the bad variable
        fail(f"bad settings: {str(exc).splitlines()[0]} ({' '.join(str(exc).split())[:300]})")


def _db_errors(fn: Any) -> Any:
    from sqlalchemy.exc import OperationalError

    try:
        return fn()
    except OperationalError as exc:
        fail(f"cannot reach the database: {str(exc.orig or exc).splitlines()[0]}")


@command(db_app, "upgrade", example="medgan db upgrade")
def upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Migrate the database schema up (creates it on first use)."""
    from scheduler import migrate

    settings = _settings()
    _db_errors(lambda: migrate.upgrade(settings, revision))
    console.print(f"database at revision {_db_errors(lambda: migrate.current(settings))}")


@command(db_app, "downgrade", example="medgan db downgrade -1")
def downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. -1 or base")]) -> None:
    """Migrate the database schema down."""
    from scheduler import migrate

    settings = _settings()
    _db_errors(lambda: migrate.downgrade(settings, revision))
    console.print(f"database at revision {_db_errors(lambda: migrate.current(settings))}")


@command(db_app, "current", example="medgan db current")
def current() -> None:
    """Print the schema revision."""
    from scheduler import migrate

    print(_db_errors(lambda: migrate.current(_settings())))


@command(app, "worker", example="medgan worker --gpus 0,1 --concurrency 2")
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues to consume")] = ",".join(C.QUEUES.values()),
    gpus: Annotated[Optional[str], typer.Option(help="cards this worker owns: 0,1,2 | none | all (default)")] = None,
    fake_gpus: Annotated[bool, typer.Option("--fake-gpus", help="the --gpus cards do not exist: run leased "
                                                                 "jobs as CPU processes (tests, laptops)")] = False,
    concurrency: Annotated[Optional[int], typer.Option(help="jobs at once (default: one per card, else 1)")] = None,
    hostname: Annotated[Optional[str], typer.Option(help="host name for GPU leases (default: this machine)")] = None,
    cpu_threads: Annotated[Optional[int], typer.Option(help="CPU threads per job (default: cores / concurrency; "
                                                            "lower it when several workers share a host)")] = None,
    loglevel: Annotated[Optional[str], typer.Option(help="log level (default: MEDGAN_LOG_LEVEL)")] = None,
) -> None:
    """Start a worker: claims jobs from the queues and runs them on its cards."""
    from scheduler.jobs import check_database
    from worker.app import start_worker
    from worker.gpus import Inventory, parse_gpus
    from worker.runtime import default_host

    settings = _settings()
    check_database(settings)
    try:
        cards = parse_gpus(gpus)
    except ValueError as exc:
        fail(str(exc))
    unknown = [q for q in queues.split(",") if q not in C.QUEUES.values()]
    if unknown:
        fail(f"unknown queue(s) {unknown}; choose from {', '.join(C.QUEUES.values())}")
    import os

    slots = concurrency or max(1, len(cards))
    threads = cpu_threads or max(1, (os.cpu_count() or 1) // slots)
    inv = Inventory(host=hostname or default_host(), cards=tuple(cards), fake=fake_gpus, cpu_threads=threads)
    loglevel = (loglevel or settings.log_level).upper()
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start_worker(settings, inv, queues.split(","), slots, loglevel=loglevel)


@command(app, "scheduler", example="medgan scheduler --metrics-port 9108")
def scheduler(
    metrics_port: Annotated[Optional[int], typer.Option(help="serve Prometheus /metrics on this port")] = None,
    once: Annotated[bool, typer.Option("--once", help="sweep once and exit")] = False,
) -> None:
    """Run the sweeper: requeue expired leases, re-send lost messages, finish fan-outs."""
    from scheduler.jobs import check_database
    from scheduler.sweeper import run_forever, sweep_once

    settings = _settings()
    check_database(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if once:
        print_json(sweep_once(settings))
        return
    if metrics_port is not None:
        from scheduler.metrics import serve_metrics

        serve_metrics(settings, metrics_port)
    run_forever(settings)


@command(app, "status", example="medgan status --json")
def status(json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Cluster overview: workers, cards busy/free per host, queue depth, running jobs."""
    from scheduler.overview import cluster_status

    data = cluster_status(_settings())
    if json_:
        print_json(data)
        return
    hosts = Table(title="hosts")
    for col in ("host", "workers", "cards", "busy", "free"):
        hosts.add_column(col)
    for h in data["hosts"]:
        hosts.add_row(h["host"], str(len(h["workers"])), ",".join(map(str, h["cards"])) or "-",
                      ",".join(map(str, h["busy"])) or "-", ",".join(map(str, h["free"])) or "-")
    console.print(hosts)
    queues = Table(title="queues")
    for col in ("queue", "queued", "running"):
        queues.add_column(col)
    for q in data["queues"]:
        queues.add_row(q["queue"], str(q["queued"]), str(q["running"]))
    console.print(queues)
    fair = data["fair_share"]
    if fair["owners"]:
        share = Table(title=f"fair share (GPU time in the last {fair['window_s'] / 3600:g} h; at equal priority "
                            "the least-used owner goes first)")
        for col in ("order", "owner", "GPU-hours", "share", "GPUs held", "GPU jobs waiting"):
            share.add_column(col)
        for o in fair["owners"]:
            share.add_row(str(o["order"]), o["owner"], f"{o['gpu_hours']:.2f}", f"{o['share']:.0%}",
                          str(o["gpus_held"]), str(o["gpu_jobs_waiting"]))
        console.print(share)
    console.print(jobs_table(data["running"], title="running jobs"))


@command(app, "auth-proxy", example="medgan auth-proxy --route 5555=http://flower:5555")
def auth_proxy(
    route: Annotated[list[str], typer.Option("--route", help="PORT=UPSTREAM_URL to protect (repeatable), "
                                                             "e.g. 5555=http://flower:5555")],
    user_env: Annotated[str, typer.Option(help="environment variable holding the user name")] = "FLOWER_USER",
    password_env: Annotated[str, typer.Option(help="environment variable holding the password")] = "FLOWER_PASSWORD",
    address: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",
) -> None:
    """Serve endpoints that have no login of their own (Flower's /metrics, medgan's /metrics) behind basic auth."""
    import os

    from scheduler.authproxy import serve

    routes: dict[int, str] = {}
    for item in route:
        port, sep, upstream = item.partition("=")
        if not sep or not port.isdigit() or not upstream.startswith(("http://", "https://")):
            fail(f"--route takes PORT=http://host:port, not {item!r}")
        routes[int(port)] = upstream
    user, password = os.environ.get(user_env, ""), os.environ.get(password_env, "")
    if not user or not password:
        fail(f"set {user_env} and {password_env}: the proxy never serves without a login")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(routes, user, password, address)
