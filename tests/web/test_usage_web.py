"""Usage graphs (server page, admin host page) and ``GET /api/v1/servers/{id}/metrics``."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from kvmvps.hypervisor import DomainStats
from kvmvps.models import Plan, TransferMonth, Vps
from kvmvps.services import metering
from tests.web.conftest import OP, A, B, World
from tests.web.helpers import forbid_libvirt

ZERO = dict.fromkeys(metering.COUNTERS, 0)


def _sampled(world: World) -> str:
    """A's VPS with two samples a minute apart: 60 KB/s in, half a vCPU busy."""
    placed = world.order(A)
    with world.ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == placed.uuid)).one()
        host_id, domain = vps.host_id, vps.domain_name
    now = datetime.now(UTC)
    base = DomainStats(name=domain, instance=1, memory_kib=1, **ZERO)
    for minutes, rx, cpu in ((3, 0, 0), (2, 3_600_000, 30 * 10**9)):
        stats = dataclasses.replace(base, rx_bytes=rx, cpu_ns=cpu)
        metering.record(world.ctx, host_id, [stats], now - timedelta(minutes=minutes))
    return placed.uuid


def test_graphs_and_api(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    uuid = _sampled(world)
    forbid_libvirt(monkeypatch)  # pages and API read the database only
    alice = world.client(A)
    page = alice.get(f"/servers/{uuid}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert html.count("<svg") == 3 and "<polyline" in html
    usage = html[html.index('id="usage"') :]
    assert "<script" not in usage and "style=" not in usage  # CSP: no inline script or style
    assert "3.4 MiB" in usage  # this month's transfer
    assert "data-transfer-notice" not in usage  # unmetered
    for period in ("day", "month"):
        assert alice.get(f"/servers/{uuid}?period={period}").status_code == 200
    # a 1 GiB allowance: 85 % used shows a notice; all of it, another
    with world.ctx.db.session() as s:
        s.execute(update(Plan).where(Plan.name == "nano").values(transfer_gib=1))
        s.execute(update(TransferMonth).values(bytes=int(0.85 * 1024**3)))
    assert 'data-transfer-notice="80"' in alice.get(f"/servers/{uuid}").get_data(as_text=True)
    with world.ctx.db.session() as s:
        s.execute(update(TransferMonth).values(bytes=1024**3))
    assert 'data-transfer-notice="100"' in alice.get(f"/servers/{uuid}").get_data(as_text=True)

    api = world.app.test_client()
    body = api.get(f"/api/v1/servers/{uuid}/metrics", headers=world.bearer(A)).get_json()
    assert body["period"] == "hour" and len(body["points"]) == 60
    filled = [p for p in body["points"] if p["net_in_bytes_per_second"] is not None]
    assert [p["net_in_bytes_per_second"] for p in filled][-1] == pytest.approx(60_000)
    assert filled[-1]["cpu_percent"] == pytest.approx(50.0)
    assert body["transfer"]["used_bytes"] == 1024**3
    assert body["transfer"]["allowed_bytes"] == 1024**3 and body["transfer"]["percent"] == 100
    month = api.get(
        f"/api/v1/servers/{uuid}/metrics?period=month&step=86400", headers=world.bearer(A)
    )
    assert month.status_code == 200 and len(month.get_json()["points"]) == 30


def test_hostile_callers(world: World) -> None:
    uuid = _sampled(world)
    api = world.app.test_client()
    url = f"/api/v1/servers/{uuid}/metrics"
    # another customer: as if it did not exist, on the API and the page
    assert api.get(url, headers=world.bearer(B)).status_code == 404
    assert world.client(B).get(f"/servers/{uuid}").status_code == 404
    assert api.get(url).status_code == 401
    for query in (
        "period=year",
        "period=%00",
        "step=-1",
        "step=0",
        "step=59",
        "step=1e3",
        "step=" + "9" * 40,
        "period=hour&step=3601",
        "period=month&step=60",
    ):
        response = api.get(f"{url}?{query}", headers=world.bearer(A))
        assert response.status_code == 400, query
        assert re.match(r"(period|step) must be", response.get_json()["error"]), query
    assert world.client(A).get(f"/servers/{uuid}?period=decade").status_code == 400
    # an operator sees any server's usage, and each host's; a customer no host's
    assert api.get(url, headers=world.bearer(OP)).status_code == 200
    host = _host_name(world, uuid)
    operator = world.client(OP)
    page = operator.get(f"/admin/hosts/{host}/usage?period=day")
    assert page.status_code == 200 and page.get_data(as_text=True).count("<svg") == 3
    assert operator.get("/admin/hosts/no-such-host/usage").status_code == 404
    assert world.client(A).get(f"/admin/hosts/{host}/usage").status_code == 403


def _host_name(world: World, uuid: str) -> str:
    with world.ctx.db.session() as s:
        return s.scalars(select(Vps).where(Vps.uuid == uuid)).one().host.name
