"""``/metrics`` for Prometheus: parsed with the client library's parser; closed to customers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from kvmvps.hypervisor import DomainStats
from kvmvps.models import Vps
from kvmvps.services import metering
from tests.web.conftest import OP, A, World
from tests.web.helpers import forbid_libvirt

TOKEN = "prometheus-scrape-token-0123456789"


@pytest.fixture
def metered(world: World) -> World:
    world.ctx.settings = dataclasses.replace(world.ctx.settings, metrics_token=TOKEN)
    return world


def _scrape(
    client: FlaskClient, token: str = TOKEN
) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def test_usage_jobs_and_workers_parse(metered: World, monkeypatch: pytest.MonkeyPatch) -> None:
    placed = metered.order(A)
    with metered.ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == placed.uuid)).one()
        host_id, domain = vps.host_id, vps.domain_name
    zero = dict.fromkeys(metering.COUNTERS, 0)
    stats = DomainStats(name=domain, instance=4, memory_kib=2048, **zero)
    stats = dataclasses.replace(stats, cpu_ns=3 * 10**9, rx_bytes=5000, tx_bytes=700)
    metering.record(metered.ctx, host_id, [stats], datetime.now(UTC))
    metering.set_gauges(metered.ctx, {"reconcile_orphan_domains": 2})
    forbid_libvirt(monkeypatch)  # the scrape reads the database only
    found = _scrape(metered.app.test_client())
    ((labels, rx),) = found["kvmvps_vps_network_receive_bytes_total"]
    assert labels["vps"] == placed.uuid and rx == 5000
    assert found["kvmvps_vps_cpu_seconds_total"][0][1] == 3.0
    assert found["kvmvps_vps_memory_bytes"][0][1] == 2048 * 1024
    assert found["kvmvps_host_network_transmit_bytes_total"][0][1] == 700
    assert ({"kind": "orphan_domains"}, 2.0) in found["kvmvps_reconcile_found"]
    assert found["kvmvps_queue_depth"] == [({}, 0.0)]
    assert ({"kind": "create", "state": "succeeded"}, 1.0) in found["kvmvps_jobs"]
    assert "kvmvps_workers_alive" in found


def test_closed_to_everyone_without_the_token(metered: World) -> None:
    """No header, a wrong or mangled token, a customer's or operator's session or API token: 401."""
    anonymous = metered.app.test_client()
    for header in (
        None,
        "Bearer",
        "Bearer wrong-token-wrong-token",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer \udcff\x00" + TOKEN,
    ):
        headers = {} if header is None else {"Authorization": header}
        response = anonymous.get("/metrics", headers=headers)
        assert response.status_code == 401, header
        assert b"kvmvps_" not in response.data
    for email in (A, OP):
        assert metered.client(email).get("/metrics").status_code == 401
        assert anonymous.get("/metrics", headers=metered.bearer(email)).status_code == 401
    # with no token configured the page does not exist at all
    metered.ctx.settings = dataclasses.replace(metered.ctx.settings, metrics_token="")
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404
    assert (
        anonymous.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    )
