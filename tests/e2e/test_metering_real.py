"""Usage sampling of a real tiny guest: a known transfer is counted, a restart loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree
from sqlalchemy import select

from kvmvps import guest, keys
from kvmvps.models import TransferMonth, Vps
from kvmvps.services import (
    Context,
    allowance,
    inventory,
    metering,
    orders,
    provisioning,
    vps_extra,
)
from tests.e2e.test_tenants_real import tc_police_available

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def metered(real_ctx: Context, tiny_image: str) -> Iterator[Vps]:
    if "small" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "small", 1, 256, 1)
    order = orders.create(real_ctx, provisioning.OrderRequest("small", tiny_image, "meter"))
    with real_ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == order.uuid)).one()
    yield vps
    provisioning.delete(real_ctx, order.uuid)


def _round(ctx: Context, at: datetime) -> int:
    report = metering.sample(ctx, at)
    assert not report.failed_hosts
    return report.vps


def test_transfer_and_disk_are_counted_and_a_restart_continues(
    real_ctx: Context, metered: Vps
) -> None:
    t0 = datetime.now(UTC)
    assert _round(real_ctx, t0) >= 1
    before = metering.totals(real_ctx, metered.id)
    assert before["cpu_ns"] > 0 and before["rx_bytes"] > 0  # the boot and SSH checks

    target = guest.Target(host=metered.ip or "", port=22, host_key=metered.host_key or "")
    key = keys.provisioning_key_path(real_ctx.settings)
    with guest.root_session(target, key, time.monotonic() + 30) as client:
        guest.run(client, "cat >/root/blob && sync", [], stdin=b"k" * MIB)  # 1 MiB in
        sent = guest.run(client, "cat /root/blob", [])  # 1 MiB out
    assert len(sent) == MIB
    _round(real_ctx, t0 + timedelta(minutes=1))
    after = metering.totals(real_ctx, metered.id)
    rx, tx = after["rx_bytes"] - before["rx_bytes"], after["tx_bytes"] - before["tx_bytes"]
    # SSH, TCP and IP framing add a few per cent; a second session's handshake a little more
    assert MIB <= rx <= 1.15 * MIB, rx
    assert MIB <= tx <= 1.15 * MIB, tx
    assert after["write_bytes"] - before["write_bytes"] >= MIB
    assert after["cpu_ns"] > before["cpu_ns"]

    hv = real_ctx.hypervisor(real_ctx.settings.libvirt_uri)
    hv.destroy(metered.domain_name)  # a new instance: every counter begins again
    hv.start(metered.domain_name)
    _round(real_ctx, t0 + timedelta(minutes=2))
    restarted = metering.totals(real_ctx, metered.id)
    assert all(restarted[k] >= after[k] for k in metering.COUNTERS), (after, restarted)


def _bandwidth(ctx: Context, domain: str, inactive: bool) -> str | None:
    xml = ctx.hypervisor(ctx.settings.libvirt_uri).domain_xml(domain, inactive=inactive)
    node = etree.fromstring(xml.encode()).find("devices/interface/bandwidth/inbound")
    return None if node is None else node.get("average")


def _seconds_to_send(ctx: Context, vps: Vps, size: int) -> float:
    """Traffic to the guest (shaped by sch_htb on its tap): how long ``size`` bytes take."""
    target = guest.Target(host=vps.ip or "", port=22, host_key=vps.host_key or "")
    key = keys.provisioning_key_path(ctx.settings)
    with guest.root_session(target, key, time.monotonic() + 120) as client:  # it may be booting
        started = time.monotonic()
        guest.run(client, "cat >/dev/null", [], stdin=b"t" * size)
        return time.monotonic() - started


def test_over_the_allowance_the_real_guest_is_throttled_or_left_as_it_was(
    real_ctx: Context, metered: Vps
) -> None:
    """The hold goes to the real libvirtd. A kernel without act_police refuses outbound
    shaping: then nothing is held, the database says so (the next round tries again), and
    the guest runs on."""
    inventory.add_plan(real_ctx, "capped1", 1, 256, 1, transfer_gib=1, over_limit_kibps=64)
    vps_extra.resize(real_ctx, metered.uuid, "capped1")
    now = datetime.now(UTC)
    with real_ctx.db.session() as s:
        s.merge(TransferMonth(vps_id=metered.id, month=metering.month_of(now), bytes=2 << 30))
    report = allowance.enforce(real_ctx, now)
    try:
        if not tc_police_available():
            assert report.throttled == [] and "could not throttle" in report.errors[0]
            with real_ctx.db.reading() as s:
                assert s.get_one(Vps, metered.id).throttle_kibps is None
                assert (
                    s.get_one(TransferMonth, (metered.id, metering.month_of(now))).enforced is None
                )
            assert _bandwidth(real_ctx, metered.domain_name, True) is None
            assert real_ctx.hypervisor(real_ctx.settings.libvirt_uri).is_active(metered.domain_name)
            pytest.skip("this kernel has no tc police action (act_police): libvirt cannot shape")
        assert report.throttled == ["meter"], report
        assert _bandwidth(real_ctx, metered.domain_name, False) == "64"
        assert _bandwidth(real_ctx, metered.domain_name, True) == "64"
        seconds = _seconds_to_send(real_ctx, metered, 512 << 10)
        assert seconds >= 0.6 * (512 / 64), seconds  # 8 s at 64 KiB/s, less the burst
    finally:
        allowance.reset_transfer(real_ctx, metered.uuid)
        vps_extra.resize(real_ctx, metered.uuid, "small")
    assert _bandwidth(real_ctx, metered.domain_name, False) is None
