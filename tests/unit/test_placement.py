"""Placement: the host with the most free capacity that fits the plan."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kvmvps.errors import CapacityError
from kvmvps.models import Host, Network, Plan, Vps
from kvmvps.services import Context, inventory, provisioning
from kvmvps.services.placement import available_plans, capacities, capacity, choose_host
from kvmvps.xmlspec import SENTINEL_MAC


def test_most_free_memory_wins_and_full_hosts_are_skipped(td_ctx: Context) -> None:
    with td_ctx.db.session() as s:
        s.execute(Host.__table__.update().values(enabled=False))  # the test driver host
        s.add_all(
            [
                Host(name="small", uri="qemu+ssh://small/system", cpus=2, memory_mib=1024),
                Host(name="big", uri="qemu+ssh://big/system", cpus=2, memory_mib=4096),
                Host(name="narrow", uri="qemu+ssh://narrow/system", cpus=1, memory_mib=65536),
            ]
        )
    with td_ctx.db.session() as s:
        plan = s.scalar(select(Plan).where(Plan.name == "small"))
        plan.vcpus = 2
        plan.memory_mib = 1024
        # 'narrow' has the most memory but one CPU: a 2-vCPU plan cannot go there
        assert choose_host(s, plan, overcommit=1, reserve_mib=0).name == "big"
        plan.memory_mib = 3000
        assert choose_host(s, plan, overcommit=1, reserve_mib=0).name == "big"
        plan.memory_mib = 5000
        with pytest.raises(CapacityError, match="no host has 2 vCPU"):
            choose_host(s, plan, overcommit=1, reserve_mib=0)
        s.rollback()


def test_capacity_counts_pins_and_committed_memory(td_ctx: Context) -> None:
    provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "a"))
    provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "b"))
    with td_ctx.db.session() as s:
        host = s.scalar(select(Host))
        cap = capacity(s, host, overcommit=4, reserve_mib=100)
    assert cap.vcpus_pinned == 2 and cap.memory_committed_mib == 512
    assert cap.vcpu_limit == host.cpus * 4 and cap.memory_limit_mib == host.memory_mib - 100
    assert cap.free_memory_mib == host.memory_mib - 100 - 512


def test_a_host_in_maintenance_gets_no_new_vps(td_ctx: Context) -> None:
    with td_ctx.db.session() as s:
        s.execute(Host.__table__.update().values(maintenance=True))  # the test driver host
        s.add(Host(name="spare", uri="qemu+ssh://spare/system", cpus=1, memory_mib=512))
    with td_ctx.db.session() as s:
        plan = s.scalar(select(Plan).where(Plan.name == "small"))
        assert plan is not None
        # the roomier test-driver host is in maintenance: the small spare one is chosen
        assert choose_host(s, plan, overcommit=1, reserve_mib=0).name == "spare"
        s.execute(Host.__table__.update().values(maintenance=True))
        with pytest.raises(CapacityError, match="disabled or in maintenance"):
            choose_host(s, plan, overcommit=1, reserve_mib=0)
        assert available_plans(s, [plan], overcommit=1, reserve_mib=0) == set()
        s.rollback()


def test_capacities_of_many_hosts_equal_each_hosts_own(td_ctx: Context) -> None:
    """The batched reading (two queries for every host) says what one host's reading says."""
    for name in ("web1", "web2", "web3"):
        provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", name))
    with td_ctx.db.session() as s:
        s.add(Host(name="empty", uri="qemu+ssh://empty/system", cpus=4, memory_mib=8192))
    with td_ctx.db.session() as s:
        hosts = list(s.scalars(select(Host).order_by(Host.id)))
        together = capacities(s, hosts, overcommit=2, reserve_mib=512)
        alone = [capacity(s, h, overcommit=2, reserve_mib=512) for h in hosts]
    assert together == alone
    assert together[0].vcpus_pinned == 3 and together[0].memory_committed_mib == 3 * 256
    assert together[1].vcpus_pinned == 0 and together[1].memory_committed_mib == 0


def test_an_order_renders_its_network_only_for_a_host_that_lacks_it(
    td_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every order prepares its host; the network's XML (a DHCP entry per VPS) is rendered
    only when the host has no such network, not at each order."""
    provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "web1"))
    real = inventory.network_xml
    rendered: list[str] = []

    def counting(session, network):
        rendered.append(network.libvirt_name)
        return real(session, network)

    monkeypatch.setattr(inventory, "network_xml", counting)
    provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "web2"))
    assert rendered == []
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    with td_ctx.db.session() as s:
        name = s.scalar(select(Network.libvirt_name))
    assert hv.remove_network(name)
    provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "web3"))
    assert rendered == [name] and hv.network_exists(name)
    with td_ctx.db.session() as s:  # the network came back with the DHCP entries it had
        macs = set(s.scalars(select(Vps.mac).where(Vps.hostname.in_(["web1", "web2"]))))
    entries = {e.mac for e in hv.dhcp_hosts(name, live=False)} - {SENTINEL_MAC}
    assert entries == macs and len(macs) == 2
