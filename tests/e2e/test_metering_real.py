"""Usage sampling of a real tiny guest: a known transfer is counted, a restart loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from kvmvps import guest, keys
from kvmvps.models import Vps
from kvmvps.services import Context, inventory, metering, orders, provisioning

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
