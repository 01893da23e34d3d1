"""Address, MAC and CPU allocation against a real SQLite database."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from kvmvps import cpupin, ipam
from kvmvps.errors import CapacityError
from kvmvps.models import IpLease, Network, Vps
from kvmvps.services import Context


def test_usable_addresses_skip_network_gateway_and_broadcast() -> None:
    net = Network(
        name="n",
        kind="nat",
        libvirt_name="n",
        bridge_name="b",
        subnet="10.5.0.0/29",
        gateway="10.5.0.1",
    )
    # .6 is the NAT network's sentinel DHCP entry
    assert [str(a) for a in ipam.usable_addresses(net)] == [
        "10.5.0.2",
        "10.5.0.3",
        "10.5.0.4",
        "10.5.0.5",
    ]
    net.kind = "bridge"
    assert [str(a) for a in ipam.usable_addresses(net)][-1] == "10.5.0.6"
    net.gateway, net.pool_start, net.pool_end = "10.5.0.5", "10.5.0.3", "10.5.0.7"
    assert [str(a) for a in ipam.usable_addresses(net)] == ["10.5.0.3", "10.5.0.4", "10.5.0.6"]


def test_double_allocation_is_impossible(td_ctx: Context) -> None:
    """The unique constraint refuses a second lease of the same address."""
    with td_ctx.db.session() as s:
        vps_ids = [v.id for v in s.scalars(select(Vps))]
        net_id = s.scalar(select(Network.id))
    assert vps_ids == []
    from kvmvps.services import provisioning

    uuid = provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "a")).uuid
    with pytest.raises(IntegrityError), td_ctx.db.session() as s:
        taken = s.scalar(select(IpLease))
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        s.add(
            IpLease(
                network_id=net_id, address=taken.address, mac="52:54:00:00:00:01", vps_id=vps.id
            )
        )


def test_concurrent_orders_get_distinct_addresses(td_ctx: Context) -> None:
    from kvmvps.services import provisioning

    errors: list[Exception] = []

    def order(i: int) -> None:
        try:
            provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", f"c{i}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=order, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with td_ctx.db.session() as s:
        addresses = list(s.scalars(select(IpLease.address)))
    assert errors == []
    assert len(addresses) == len(set(addresses)) == 8


def test_least_pinned_first() -> None:
    counts = Counter({0: 2, 1: 0, 2: 1, 3: 0})
    assert cpupin.choose_cpus(counts, 4, 2, overcommit=4) == [1, 3]
    assert cpupin.choose_cpus(counts, 4, 3, overcommit=4) == [1, 2, 3]
    assert cpupin.choose_cpus(Counter({0: 0, 1: 0}), 2, 1, overcommit=1) == [0]


def test_cpu_capacity_errors() -> None:
    with pytest.raises(CapacityError, match="only 2 CPUs"):
        cpupin.choose_cpus(Counter({0: 0, 1: 0}), 2, 3, overcommit=4)
    with pytest.raises(CapacityError, match="no CPUs left"):
        cpupin.choose_cpus(Counter({0: 1, 1: 1}), 2, 1, overcommit=1)


def test_pins_spread_over_host_cpus(td_ctx: Context) -> None:
    from kvmvps.services import provisioning

    for i in range(4):
        provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", f"p{i}"))
    with td_ctx.db.session() as s:
        pinned = [v.pinned_cpus for v in s.scalars(select(Vps).order_by(Vps.id))]
    assert pinned == [[0], [1], [2], [3]]  # each on the least-pinned CPU


def test_released_addresses_are_reused_oldest_first(td_ctx: Context) -> None:
    """A /29 with four addresses: once all were used, the longest-free comes back first."""
    from kvmvps.services import inventory, orders, provisioning

    inventory.add_network(td_ctx, "small29", "nat", "10.240.0.0/29", bridge="kvsmall29")

    def order(name: str) -> str:
        req = provisioning.OrderRequest("small", "base", name, network="small29")
        return orders.create(td_ctx, req).uuid

    from kvmvps.services import vps as vps_service

    uuids = {n: order(n) for n in ("a", "b", "c", "d")}
    assert [vps_service.show(td_ctx, u)["ip"] for u in uuids.values()] == [
        "10.240.0.2",
        "10.240.0.3",
        "10.240.0.4",
        "10.240.0.5",
    ]
    for name in ("d", "b"):
        provisioning.delete(td_ctx, uuids[name])
    assert vps_service.show(td_ctx, order("f"))["ip"] == "10.240.0.5"  # d was released first
    assert vps_service.show(td_ctx, order("g"))["ip"] == "10.240.0.3"
    with pytest.raises(CapacityError, match="no free addresses"):
        order("h")
