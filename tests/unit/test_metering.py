"""Usage sampling: counter resets, rollups, totals, pruning (test driver, SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from kvmvps import cpupin, ipam
from kvmvps.errors import InvalidInput, NotFound
from kvmvps.hypervisor import DomainStats
from kvmvps.models import MetricHourly, MetricSample, TransferMonth, Vps
from kvmvps.services import Context, allowance, audit, inventory, metering, provisioning, usage

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
ZERO = dict.fromkeys(metering.COUNTERS, 0)


def stats(name: str, instance: int, rx: int, cpu: int = 0, wr: int = 0) -> DomainStats:
    base = DomainStats(name=name, instance=instance, memory_kib=1000, **ZERO)
    return dataclasses.replace(base, rx_bytes=rx, cpu_ns=cpu, write_bytes=wr)


# -- the increments alone ----------------------------------------------------------
@pytest.mark.parametrize(
    ("sequence", "expected_total"),
    [
        # (instance, raw rx) in order; the guest's real traffic in the comment
        ([(1, 100), (1, 250), (1, 400)], 400),  # steady: 100 + 150 + 150
        ([(1, 100), (1, 300), (2, 50), (2, 80)], 380),  # restarted: 300 then 80 more
        ([(1, 500), (2, 900)], 1400),  # restarted and grew past the old value: no loss
        ([(1, 500), (1, 20)], 520),  # a device replaced within one instance
        ([(1, 100), (1, 100), (1, 100)], 100),  # idle: nothing counted twice
        ([(1, 100), (2, 0), (3, 0), (3, 40)], 140),  # restarts in a row
    ],
)
def test_totals_never_go_backwards_nor_double_count(
    sequence: list[tuple[int, int]], expected_total: int
) -> None:
    last_instance: int | None = None
    last: dict[str, int] = {}
    total = 0
    for instance, rx in sequence:
        inc = metering.increments(last_instance, last, instance, {**ZERO, "rx_bytes": rx})
        assert all(v >= 0 for v in inc.values())
        total += inc["rx_bytes"]
        last_instance, last = instance, {**ZERO, "rx_bytes": rx}
    assert total == expected_total


def test_negative_or_missing_counters_count_nothing() -> None:
    inc = metering.increments(1, {"rx_bytes": 10}, 1, {"rx_bytes": -5})
    assert inc["rx_bytes"] == 0 and inc["cpu_ns"] == 0


# -- recorded into the database ------------------------------------------------------
def _vps(ctx: Context, *names: str) -> list[Vps]:
    for name in names:
        provisioning.record_order(ctx, provisioning.OrderRequest("small", "base", name))
    with ctx.db.session() as s:
        return list(s.scalars(select(Vps).order_by(Vps.id)))


def test_samples_rollups_transfer_and_restart(td_ctx: Context) -> None:
    a, b = _vps(td_ctx, "a", "b")
    host = a.host_id
    rounds = [
        (T0, [stats(a.domain_name, 7, 1000, cpu=60 * 10**9), stats(b.domain_name, 3, 10)]),
        (T0 + timedelta(minutes=1), [stats(a.domain_name, 7, 3000, cpu=90 * 10**9)]),
        # a restarted: its counters began again
        (T0 + timedelta(minutes=2), [stats(a.domain_name, 8, 500, cpu=10**9)]),
        (T0 + timedelta(minutes=61), [stats(a.domain_name, 8, 700, cpu=2 * 10**9)]),
        # an unknown domain (not ours) is ignored
        (T0 + timedelta(minutes=62), [stats("kvmvps-stranger", 1, 10**9)]),
    ]
    for at, round_stats in rounds:
        metering.record(td_ctx, host, round_stats, at)
    total = metering.totals(td_ctx, a.id)
    assert total["rx_bytes"] == 3000 + 500 + 200
    assert total["cpu_ns"] == 90 * 10**9 + 2 * 10**9
    assert metering.totals(td_ctx, b.id)["rx_bytes"] == 10
    with td_ctx.db.session() as s:
        hours = {
            h.hour.replace(tzinfo=UTC): h.rx_bytes
            for h in s.scalars(select(MetricHourly).where(MetricHourly.vps_id == a.id))
        }
        assert hours == {T0: 3500, T0 + timedelta(hours=1): 200}
        month = s.get(TransferMonth, (a.id, "2026-11"))
        assert month is not None and month.bytes == 3700
        seconds = s.scalars(select(MetricSample.seconds).where(MetricSample.vps_id == a.id))
        assert sorted(seconds) == [60.0, 60.0, 60.0, 60.0 * 59]


def test_pruning_keeps_a_day_of_samples_and_90_days_of_hours_deleting_drops_all(
    td_ctx: Context,
) -> None:
    (a,) = _vps(td_ctx, "a")
    for days in (100, 2, 0):
        at = T0 - timedelta(days=days)
        metering.record(td_ctx, a.host_id, [stats(a.domain_name, days, 10)], at)
    fine, hourly = metering.prune(td_ctx, T0 + timedelta(minutes=1))
    assert (fine, hourly) == (2, 1)
    with td_ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(MetricSample)) == 1
        assert s.scalar(select(func.count()).select_from(MetricHourly)) == 2
    assert metering.totals(td_ctx, a.id)["rx_bytes"] == 30  # totals are not pruned
    # deleting the VPS drops its usage with it
    with td_ctx.db.session() as s:
        vps = s.get(Vps, a.id)
        assert vps is not None
        ipam.release(s, vps)  # as provisioning's delete does
        cpupin.release(s, vps)
        s.delete(vps)
    with td_ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(MetricSample)) == 0
        assert s.scalar(select(func.count()).select_from(TransferMonth)) == 0


def test_sample_reads_the_test_driver_in_one_call(td_ctx: Context) -> None:
    """The bulk call on test:///default: running domains are sampled, others not."""
    a, b = _vps(td_ctx, "a", "b")
    hv = td_ctx.hypervisor(inventory.list_hosts(td_ctx)[0])
    for vps in (a, b):
        hv.define_domain(
            f"<domain type='test'><name>{vps.domain_name}</name><memory>65536</memory>"
            "<os><type>hvm</type></os></domain>"
        )
    hv.start(a.domain_name)
    report = metering.sample(td_ctx, T0)
    assert (report.hosts, report.vps, report.failed_hosts) == (1, 1, ())
    with td_ctx.db.session() as s:
        assert list(s.scalars(select(MetricSample.vps_id))) == [a.id]


def test_transfer_allowance_shown_as_used_of_allowed(td_ctx: Context) -> None:
    for bad in (0, -1, 10**30, True):
        with pytest.raises(InvalidInput, match="monthly transfer"):
            inventory.add_plan(td_ctx, f"bad{abs(int(bad)) % 7}", 1, 256, 1, transfer_gib=bad)
    assert "bad0" not in [p.name for p in inventory.list_plans(td_ctx)]
    inventory.add_plan(td_ctx, "metered", 1, 256, 1, transfer_gib=2)
    provisioning.record_order(td_ctx, provisioning.OrderRequest("metered", "base", "m"))
    with td_ctx.db.session() as s:
        vps = s.scalars(select(Vps)).one()
        host_id, name, uuid, owner = vps.host_id, vps.domain_name, vps.uuid, vps.owner_id
    metering.record(td_ctx, host_id, [stats(name, 1, usage.GIB)], T0)
    _series, transfer = usage.vps_series(td_ctx, uuid, owner, "month", now=T0)
    assert (transfer.used_bytes, transfer.allowed_bytes) == (usage.GIB, 2 * usage.GIB)
    assert transfer.percent == 50.0
    with pytest.raises(NotFound):
        usage.vps_series(td_ctx, uuid, owner + 1000, "hour", now=T0)
    # an operator's reset: counted from zero again, and recorded
    done = allowance.reset_transfer(td_ctx, uuid, actor="user:ops@example.com", now=T0)
    assert done["was_bytes"] == usage.GIB
    assert usage.vps_series(td_ctx, uuid, owner, "hour", now=T0)[1].used_bytes == 0
    entry = audit.list_entries(td_ctx, limit=1)[0]
    assert (entry["action"], entry["actor"], entry["result"]) == (
        "vps.transfer_reset",
        "user:ops@example.com",
        "ok",
    )
    with pytest.raises(NotFound):
        allowance.reset_transfer(td_ctx, "no-such-vps", actor="user:ops@example.com")
