"""Placement: the host with the most free capacity that fits the plan."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kvmvps.errors import CapacityError
from kvmvps.models import Host, Plan
from kvmvps.services import Context, provisioning
from kvmvps.services.placement import available_plans, capacity, choose_host


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
