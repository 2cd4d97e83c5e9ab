"""medgan's own Prometheus endpoint: queue depth, jobs by state, cards busy/free, durations, failures.

Values are read from the database at scrape time (a custom collector), so every scheduler
replica reports the same truth and nothing is lost across restarts.

    medgan scheduler --metrics-port 9108          # the sweeper, plus http://<host>:9108/metrics

Families (docs/monitoring.md has the table and example queries): medgan_queue_depth{queue},
medgan_queue_running{queue}, medgan_jobs{status}, medgan_gpus{host,state}, medgan_workers{host},
medgan_job_duration_seconds{kind} (histogram; `le` labels in Prometheus' float form: "60.0", "+Inf"),
medgan_job_failures{kind}. The endpoint has no authentication: publish it on a private address only.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from sqlalchemy import select

from scheduler.db import Job, Status, session_scope
from scheduler.overview import cluster_status
from scheduler.settings import Settings

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600)


class MedganCollector(Collector):
    """Reads the database at every scrape (one `cluster_status` call and one query over finished jobs)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        data = cluster_status(self.settings)
        depth = GaugeMetricFamily("medgan_queue_depth", "Jobs waiting per queue", labels=["queue"])
        running = GaugeMetricFamily("medgan_queue_running", "Jobs running per queue", labels=["queue"])
        for q in data["queues"]:
            depth.add_metric([q["queue"]], q["queued"])
            running.add_metric([q["queue"]], q["running"])
        yield depth
        yield running
        jobs = GaugeMetricFamily("medgan_jobs", "Jobs by status", labels=["status"])
        for status in Status:
            jobs.add_metric([status.value], data["jobs_by_status"].get(status.value, 0))
        yield jobs
        cards = GaugeMetricFamily("medgan_gpus", "GPU cards per host and state", labels=["host", "state"])
        workers = GaugeMetricFamily("medgan_workers", "Live worker processes per host", labels=["host"])
        for h in data["hosts"]:
            cards.add_metric([h["host"], "busy"], len(h["busy"]))
            cards.add_metric([h["host"], "free"], len(h["free"]))
            workers.add_metric([h["host"]], len(h["workers"]))
        yield cards
        yield workers
        yield from self._durations()

    def _durations(self) -> Iterator[HistogramMetricFamily]:
        with session_scope(self.settings.db_url) as s:
            rows = s.execute(select(Job.kind, Job.status, Job.started_at, Job.finished_at).where(
                Job.finished_at.is_not(None), Job.started_at.is_not(None))).all()
        hist = HistogramMetricFamily("medgan_job_duration_seconds", "Run time of finished jobs", labels=["kind"])
        failures = GaugeMetricFamily("medgan_job_failures", "Finished jobs that FAILED", labels=["kind"])
        per_kind: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        for kind, status, start, end in rows:
            per_kind.setdefault(kind, []).append((end - start).total_seconds())
            failed[kind] = failed.get(kind, 0) + (status == Status.FAILED.value)
        for kind, values in sorted(per_kind.items()):
            buckets = [(floatToGoString(b), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            hist.add_metric([kind], buckets, sum_value=sum(values))
            failures.add_metric([kind], failed.get(kind, 0))
        yield hist
        yield failures


def make_registry(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(MedganCollector(settings))
    return registry


def serve_metrics(settings: Settings, port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on `addr:port` in a background (daemon) thread; returns at once."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=make_registry(settings))
