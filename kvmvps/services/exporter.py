"""``/metrics`` in Prometheus's exposition format, read from the database at each scrape.

Every web worker answers alike: nothing is kept in process memory. Per VPS
and per host: the usage totals the sampler keeps (counters) and memory;
then the job queue (jobs per kind and state, queue depth, durations of
jobs finished in the last day), worker liveness and the drift the last
reconcile pass found. Only operators' Prometheus reads it (the web route
checks ``KVMVPS_METRICS_TOKEN``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kvmvps.models import Host, Job, JobState, MetricCounter, MetricGauge, Vps, Worker
from kvmvps.services import Context

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# counter name in the sampler -> (metric suffix, help, scale to the unit)
USAGE = {
    "cpu_ns": ("cpu_seconds_total", "CPU time used", 1e-9),
    "rx_bytes": ("network_receive_bytes_total", "bytes received by the guest", 1.0),
    "tx_bytes": ("network_transmit_bytes_total", "bytes sent by the guest", 1.0),
    "rx_packets": ("network_receive_packets_total", "packets received by the guest", 1.0),
    "tx_packets": ("network_transmit_packets_total", "packets sent by the guest", 1.0),
    "read_bytes": ("disk_read_bytes_total", "bytes read from disks", 1.0),
    "write_bytes": ("disk_write_bytes_total", "bytes written to disks", 1.0),
    "read_reqs": ("disk_reads_total", "disk read requests", 1.0),
    "write_reqs": ("disk_writes_total", "disk write requests", 1.0),
}
DURATION_WINDOW = timedelta(days=1)
ALIVE_HEARTBEATS = 3  # a worker is alive while its heartbeat is this many periods old at most


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class KvmvpsCollector(Collector):
    """Builds every family afresh from the database at each collect()."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        with self.ctx.db.reading() as s:
            yield from _usage(s)
            yield from _jobs(s, now)
            yield from _workers(s, now, self.ctx.settings.worker_heartbeat_seconds)
            yield from _gauges(s)


def _usage(s: Session) -> Iterator[Metric]:
    vps_labels = ["vps", "hostname", "host"]
    per_vps = {
        k: CounterMetricFamily(f"kvmvps_vps_{m}", f"Per VPS: {h}.", labels=vps_labels)
        for k, (m, h, _x) in USAGE.items()
    }
    per_host = {
        k: CounterMetricFamily(f"kvmvps_host_{m}", f"Per host, its VPSes': {h}.", labels=["host"])
        for k, (m, h, _x) in USAGE.items()
    }
    memory = GaugeMetricFamily(
        "kvmvps_vps_memory_bytes", "Per VPS: memory in use (last sample).", labels=vps_labels
    )
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    query = (
        select(Vps.uuid, Vps.hostname, Host.name, MetricCounter.total, MetricCounter.raw)
        .join(Vps, Vps.id == MetricCounter.vps_id)
        .join(Host, Host.id == Vps.host_id)
        .order_by(Vps.id)
    )
    for uuid, hostname, host, total_json, raw_json in s.execute(query):
        total, raw = json.loads(total_json), json.loads(raw_json)
        labels = [uuid, hostname, host]
        for key, (_m, _h, scale) in USAGE.items():
            value = float(total.get(key, 0)) * scale
            per_vps[key].add_metric(labels, value)
            sums[host][key] += value
        memory.add_metric(labels, float(raw.get("memory_kib", 0)) * 1024)
    for host, values in sorted(sums.items()):
        for key, value in values.items():
            per_host[key].add_metric([host], value)
    yield from per_vps.values()
    yield memory
    yield from per_host.values()
    yield _vps_states(s)


def _vps_states(s: Session) -> Metric:
    family = GaugeMetricFamily("kvmvps_vps", "VPSes per host and state.", labels=["host", "state"])
    query = select(Host.name, Vps.state, func.count()).join(Host, Host.id == Vps.host_id)
    for host, state, count in s.execute(query.group_by(Host.name, Vps.state)):
        family.add_metric([host, state], count)
    return family


def _jobs(s: Session, now: datetime) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("kvmvps_jobs", "Jobs per kind and state.", labels=["kind", "state"])
    depth = 0
    for kind, state, count in s.execute(
        select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
    ):
        jobs.add_metric([kind, state], count)
        depth += count if state == JobState.QUEUED else 0
    yield jobs
    yield GaugeMetricFamily("kvmvps_queue_depth", "Jobs queued, not yet started.", value=depth)
    durations = SummaryMetricFamily(
        "kvmvps_job_duration_seconds",
        "Run time of the jobs finished in the last 24 hours.",
        labels=["kind", "state"],
    )
    spent: dict[tuple[str, str], list[float]] = defaultdict(list)
    query = select(Job.kind, Job.state, Job.started_at, Job.finished_at).where(
        Job.finished_at >= now - DURATION_WINDOW, Job.started_at.is_not(None)
    )
    for kind, state, started, finished in s.execute(query):
        if started is None or finished is None:
            continue
        spent[(kind, state)].append((_aware(finished) - _aware(started)).total_seconds())
    for (kind, state), values in sorted(spent.items()):
        durations.add_metric([kind, state], count_value=len(values), sum_value=sum(values))
    yield durations


def _workers(s: Session, now: datetime, heartbeat: float) -> Iterator[Metric]:
    age = GaugeMetricFamily(
        "kvmvps_worker_heartbeat_age_seconds",
        "Seconds since each worker's last heartbeat.",
        labels=["worker"],
    )
    alive = 0
    for name, beat in s.execute(select(Worker.name, Worker.heartbeat_at).order_by(Worker.name)):
        seconds = max(0.0, (now - _aware(beat)).total_seconds())
        age.add_metric([name], seconds)
        alive += seconds <= ALIVE_HEARTBEATS * max(heartbeat, 1.0)
    yield age
    yield GaugeMetricFamily("kvmvps_workers_alive", "Workers with a recent heartbeat.", alive)


def _gauges(s: Session) -> Iterator[Metric]:
    drift = GaugeMetricFamily(
        "kvmvps_reconcile_found",
        "What the last periodic reconcile pass found, per kind (power drift, orphans...).",
        labels=["kind"],
    )
    rows = s.execute(select(MetricGauge.name, MetricGauge.value).order_by(MetricGauge.name))
    for name, value in rows:
        if name.startswith("reconcile_"):
            drift.add_metric([name.removeprefix("reconcile_")], value)
    yield drift


def exposition(ctx: Context) -> bytes:
    """The text Prometheus scrapes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KvmvpsCollector(ctx))
    return generate_latest(registry)
