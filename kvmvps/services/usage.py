"""Usage over time, read from the sampler's tables: per VPS (its owner or an operator) or per host.

The last hour and day come from the fine samples, the month from the hourly
rollups. Points are rates over equal steps (CPU in % of the VPS's vCPUs or
the host's CPUs, bytes per second); a step without samples is a gap (None),
never a zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from kvmvps.errors import InvalidInput
from kvmvps.models import Host, MetricHourly, MetricSample, TransferMonth, Vps
from kvmvps.services import Context
from kvmvps.services.inventory import get_by_name
from kvmvps.services.metering import month_of
from kvmvps.services.vps import resolve

GIB = 1024**3
RATES = ("rx_bytes", "tx_bytes", "read_bytes", "write_bytes")


@dataclass(frozen=True)
class Period:
    name: str
    span: timedelta
    step: int  # default seconds per point
    min_step: int
    hourly: bool


PERIODS = {
    "hour": Period("hour", timedelta(hours=1), 60, 60, False),
    "day": Period("day", timedelta(days=1), 900, 60, False),
    "month": Period("month", timedelta(days=30), 6 * 3600, 3600, True),
}


@dataclass(frozen=True)
class Point:
    at: datetime
    cpu_pct: float | None
    rx_bps: float | None
    tx_bps: float | None
    read_bps: float | None
    write_bps: float | None


@dataclass(frozen=True)
class Transfer:
    month: str
    used_bytes: int
    allowed_bytes: int | None  # None: not metered
    percent: float | None
    # over it: "throttled" (network held to ``throttle_kibps`` KiB/s), "suspended" or None
    enforced: str | None = None
    throttle_kibps: int | None = None
    over_limit: str = "throttle"


@dataclass(frozen=True)
class Series:
    period: str
    step: int
    start: datetime
    end: datetime
    points: list[Point]


def period_of(name: str | None) -> Period:
    period = PERIODS.get(name or "hour")
    if period is None:
        raise InvalidInput(f"period must be one of {', '.join(PERIODS)}")
    return period


def step_of(period: Period, raw: str | int | None) -> int:
    """Seconds per point: the period's default, or a whole number within its bounds."""
    if raw is None or raw == "":
        return period.step
    most = int(period.span.total_seconds())
    text = str(raw).strip()
    if not text.isdecimal() or len(text) > 10 or not period.min_step <= int(text) <= most:
        raise InvalidInput(
            f"step must be a whole number of seconds from {period.min_step} to {most} "
            f"for the last {period.name}"
        )
    return int(text)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rows(
    s: Session, period: Period, start: datetime, where: list[ColumnElement[bool]], joined: bool
) -> list[Any]:
    model: Any = MetricHourly if period.hourly else MetricSample
    at = model.hour if period.hourly else model.at
    query = select(
        at,
        func.max(model.seconds),
        func.sum(model.cpu_ns),
        *(func.sum(getattr(model, name)) for name in RATES),
    )
    if joined:
        query = query.join(Vps, Vps.id == model.vps_id)
    return list(s.execute(query.where(at >= start, *where).group_by(at)))


def _points(rows: list[Any], start: datetime, step: int, count: int, cpus: int) -> list[Point]:
    sums = [[0.0] * 6 for _ in range(count)]  # seconds, cpu_ns, rates...
    for at, seconds, cpu_ns, *rates in rows:
        index = int((_aware(at) - start).total_seconds() // step)
        if 0 <= index < count:
            bucket = sums[index]
            for i, value in enumerate((seconds, cpu_ns, *rates)):
                bucket[i] += float(value or 0)
    points = []
    for i, (seconds, cpu_ns, *rates) in enumerate(sums):
        at = start + timedelta(seconds=i * step)
        if seconds <= 0:
            points.append(Point(at, None, None, None, None, None))
            continue
        cpu = 100.0 * cpu_ns / (seconds * 1e9 * max(cpus, 1))
        rx, tx, rd, wr = (value / seconds for value in rates)
        points.append(Point(at, round(cpu, 2), rx, tx, rd, wr))
    return points


def _series(
    s: Session,
    period: Period,
    step: int,
    where: list[ColumnElement[bool]],
    cpus: int,
    now: datetime,
    joined: bool = False,
) -> Series:
    count = max(1, int(period.span.total_seconds()) // step)
    end = now
    if period.hourly:  # hourly rows sit at the start of their hour
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(seconds=count * step)
    rows = _rows(s, period, start, where, joined)
    return Series(period.name, step, start, end, _points(rows, start, step, count, cpus))


def vps_series(
    ctx: Context,
    ref: str,
    owner_id: int | None,
    period: str | None = None,
    step: str | int | None = None,
    now: datetime | None = None,
) -> tuple[Series, Transfer]:
    """A VPS's usage (its owner's, or any for an operator: ``owner_id`` None)."""
    chosen = period_of(period)
    seconds = step_of(chosen, step)
    now = now or datetime.now(UTC)
    with ctx.db.reading() as s:
        vps = resolve(s, ref, owner_id)
        where = [(MetricHourly.vps_id if chosen.hourly else MetricSample.vps_id) == vps.id]
        series = _series(s, chosen, seconds, where, vps.plan.vcpus, now)
        return series, transfer_of(s, vps, now)


def host_series(
    ctx: Context,
    host_name: str,
    period: str | None = None,
    step: str | int | None = None,
    now: datetime | None = None,
) -> tuple[str, Series]:
    """The summed usage of every VPS of a host (operators only: the caller checks)."""
    chosen = period_of(period)
    seconds = step_of(chosen, step)
    now = now or datetime.now(UTC)
    with ctx.db.reading() as s:
        host = get_by_name(s, Host, host_name, "host")
        series = _series(s, chosen, seconds, [Vps.host_id == host.id], host.cpus, now, True)
        return host.name, series


def transfer_of(s: Session, vps: Vps, now: datetime | None = None) -> Transfer:
    """This month's transfer of ``vps``: used / allowed, and what it led to."""
    plan = vps.plan
    month = month_of(now or datetime.now(UTC))
    row = s.get(TransferMonth, (vps.id, month))
    used = 0 if row is None else int(row.bytes)
    allowed = None if plan.transfer_gib is None else plan.transfer_gib * GIB
    percent = None if not allowed else round(100.0 * used / allowed, 1)
    enforced = None if row is None else row.enforced
    if vps.throttle_kibps is not None:
        enforced = "throttled"
    return Transfer(month, used, allowed, percent, enforced, vps.throttle_kibps, plan.over_limit)


def series_dict(series: Series) -> dict[str, Any]:
    """The JSON form (the API's ``Metrics`` schema)."""
    return {
        "period": series.period,
        "step_seconds": series.step,
        "start": series.start.isoformat(),
        "end": series.end.isoformat(),
        "points": [
            {
                "at": p.at.isoformat(),
                "cpu_percent": p.cpu_pct,
                "net_in_bytes_per_second": p.rx_bps,
                "net_out_bytes_per_second": p.tx_bps,
                "disk_read_bytes_per_second": p.read_bps,
                "disk_write_bytes_per_second": p.write_bps,
            }
            for p in series.points
        ],
    }


def transfer_dict(transfer: Transfer) -> dict[str, Any]:
    return {
        "month": transfer.month,
        "used_bytes": transfer.used_bytes,
        "allowed_bytes": transfer.allowed_bytes,
        "percent": transfer.percent,
        "enforced": transfer.enforced,
        "throttle_kibps": transfer.throttle_kibps,
        "over_limit": transfer.over_limit,
    }
