"""Usage sampling: libvirt's counters into per-interval samples, hourly rollups and totals.

Every ``KVMVPS_METRICS_INTERVAL`` seconds the worker calls :func:`sample`. It
reads every running VPS's counters on each host with one bulk libvirt call
(outside any write transaction), turns them into increments against the
counters seen last time, and writes, in one transaction per host: a fine
sample per VPS (kept 24 hours), the VPS's row of the current hour (kept 90
days), its running totals and its transfer of the current month.

Counters restart from zero when a guest starts again (a new domain id, a new
tap device). An increment is then the new counter itself, never the
difference: totals never go backwards and nothing is counted twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from kvmvps.db import rowcount
from kvmvps.errors import KvmvpsError
from kvmvps.hypervisor import DomainStats
from kvmvps.models import (
    Host,
    MetricCounter,
    MetricGauge,
    MetricHourly,
    MetricSample,
    TransferMonth,
    Vps,
)
from kvmvps.services import Context

log = logging.getLogger(__name__)

# counters libvirt keeps growing; memory is a level, not a counter
COUNTERS = (
    "cpu_ns",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "read_bytes",
    "write_bytes",
    "read_reqs",
    "write_reqs",
)
FINE_KEEP = timedelta(hours=24)
HOURLY_KEEP = timedelta(days=90)
DOMAIN_PREFIX = "kvmvps-"


@dataclass(frozen=True)
class SampleReport:
    hosts: int
    vps: int
    seconds: float
    failed_hosts: tuple[str, ...] = ()


def increments(
    last_instance: int | None, last: Mapping[str, int], instance: int, now: Mapping[str, int]
) -> dict[str, int]:
    """What each counter grew by since ``last``; never negative, never counted twice.

    A different instance (the guest was started again) or a counter lower
    than before (a device replaced) means the counter began again at zero:
    all of its present value is new. Without a last reading (the first
    sample of a VPS), the whole value is new as well: it is what this guest
    used since it started.
    """
    fresh = last_instance is None or last_instance != instance
    out: dict[str, int] = {}
    for name in COUNTERS:
        value = max(0, int(now.get(name, 0)))
        before = int(last.get(name, 0))
        out[name] = value if fresh or value < before else value - before
    return out


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def _raw(stats: DomainStats) -> dict[str, int]:
    return {name: int(getattr(stats, name)) for name in COUNTERS}


def sample(ctx: Context, now: datetime | None = None) -> SampleReport:
    """Sample every running VPS on every enabled host once."""
    started = time.perf_counter()
    with ctx.db.reading() as s:
        hosts = [(h.id, h.name, h.uri) for h in s.scalars(select(Host).where(Host.enabled))]
    count, failed = 0, []
    for host_id, name, uri in hosts:
        try:
            stats = ctx.hypervisor(uri).domain_stats(DOMAIN_PREFIX)
        except KvmvpsError as exc:
            log.warning("no usage samples from %s: %s", name, exc)
            failed.append(name)
            continue
        count += record(ctx, host_id, stats, now or datetime.now(UTC))
    return SampleReport(len(hosts), count, time.perf_counter() - started, tuple(failed))


def record(ctx: Context, host_id: int, stats: Iterable[DomainStats], now: datetime) -> int:
    """Write one round of ``stats`` of a host's domains; return how many VPSes it covered."""
    interval = float(ctx.settings.metrics_interval) or 60.0
    with ctx.db.session() as s:
        ids = dict(s.execute(select(Vps.domain_name, Vps.id).where(Vps.host_id == host_id)).all())
        known = {c.vps_id: c for c in _counters(s, host_id)}
        rows, deltas = [], {}
        for st in stats:
            vps_id = ids.get(st.name)
            if vps_id is None:
                continue
            last = known.get(vps_id)
            seconds = interval if last is None else _seconds(last.at, now, interval)
            inc = increments(
                None if last is None else last.instance,
                {} if last is None else json.loads(last.raw),
                st.instance,
                _raw(st),
            )
            deltas[vps_id] = (inc, st, seconds)
            rows.append({"vps_id": vps_id, "at": now, "seconds": seconds, **inc})
            rows[-1]["memory_kib"] = st.memory_kib
        if not rows:
            return 0
        s.execute(insert(MetricSample), rows)
        _write_counters(s, known, deltas, now)
        _add_hourly(s, host_id, rows, now)
        _add_transfer(s, host_id, deltas, now)
    return len(rows)


def _seconds(last: datetime, now: datetime, interval: float) -> float:
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    gap = (now - last).total_seconds()
    return gap if gap > 0 else interval  # a gap (no worker for a while) spreads its use


def _counters(s: Session, host_id: int) -> list[MetricCounter]:
    query = select(MetricCounter).join(Vps, Vps.id == MetricCounter.vps_id)
    return list(s.scalars(query.where(Vps.host_id == host_id)))


def _write_counters(
    s: Session,
    known: dict[int, MetricCounter],
    deltas: dict[int, tuple[dict[str, int], DomainStats, float]],
    now: datetime,
) -> None:
    changed: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for vps_id, (inc, st, _seconds) in deltas.items():
        last = known.get(vps_id)
        total = {} if last is None else json.loads(last.total)
        total = {k: int(total.get(k, 0)) + inc[k] for k in COUNTERS}
        row = {
            "vps_id": vps_id,
            "at": now,
            "instance": st.instance,
            "raw": json.dumps({**_raw(st), "memory_kib": st.memory_kib}),
            "total": json.dumps(total),
        }
        (new if last is None else changed).append(row)
    if changed:
        s.execute(update(MetricCounter), changed)
    if new:
        s.execute(insert(MetricCounter), new)


def _add_hourly(s: Session, host_id: int, rows: list[dict[str, Any]], now: datetime) -> None:
    hour = hour_of(now)
    query = select(MetricHourly).join(Vps, Vps.id == MetricHourly.vps_id)
    query = query.where(Vps.host_id == host_id, MetricHourly.hour == hour)
    have = {h.vps_id: h for h in s.scalars(query)}
    changed, new = [], []
    for row in rows:
        old = have.get(row["vps_id"])
        if old is None:
            new.append({**row, "hour": hour})
            new[-1].pop("at")
            continue
        summed = {k: getattr(old, k) + row[k] for k in COUNTERS}
        changed.append(
            {
                "vps_id": old.vps_id,
                "hour": old.hour,
                "seconds": old.seconds + row["seconds"],
                "memory_kib": max(old.memory_kib, row["memory_kib"]),
                **summed,
            }
        )
    if changed:
        s.execute(update(MetricHourly), changed)
    if new:
        s.execute(insert(MetricHourly), new)


def _add_transfer(
    s: Session,
    host_id: int,
    deltas: dict[int, tuple[dict[str, int], DomainStats, float]],
    now: datetime,
) -> None:
    month = month_of(now)
    query = select(TransferMonth).join(Vps, Vps.id == TransferMonth.vps_id)
    have = {
        t.vps_id: t
        for t in s.scalars(query.where(Vps.host_id == host_id, TransferMonth.month == month))
    }
    new = []
    for vps_id, (inc, _st, _seconds) in deltas.items():
        used = inc["rx_bytes"] + inc["tx_bytes"]
        if vps_id in have:
            have[vps_id].bytes += used
        else:
            new.append({"vps_id": vps_id, "month": month, "bytes": used, "notified_pct": 0})
    if new:
        s.execute(insert(TransferMonth), new)


def prune(ctx: Context, now: datetime | None = None) -> tuple[int, int]:
    """Drop fine samples older than 24 hours and hourly rows older than 90 days."""
    now = now or datetime.now(UTC)
    with ctx.db.session() as s:
        fine = rowcount(s.execute(delete(MetricSample).where(MetricSample.at < now - FINE_KEEP)))
        hourly = rowcount(
            s.execute(delete(MetricHourly).where(MetricHourly.hour < hour_of(now - HOURLY_KEEP)))
        )
    return fine, hourly


def totals(ctx: Context, vps_id: int) -> dict[str, int]:
    """A VPS's counters since it was made (zeros before its first sample)."""
    with ctx.db.reading() as s:
        row = s.get(MetricCounter, vps_id)
        total = {} if row is None else json.loads(row.total)
    return {k: int(total.get(k, 0)) for k in COUNTERS}


def set_gauges(ctx: Context, values: Mapping[str, float], now: datetime | None = None) -> None:
    """Keep figures a worker found (``/metrics`` shows them), replacing older ones."""
    now = now or datetime.now(UTC)
    with ctx.db.session() as s:
        for name, value in values.items():
            row = s.get(MetricGauge, name)
            if row is None:
                s.add(MetricGauge(name=name, value=float(value), at=now))
            else:
                row.value, row.at = float(value), now
