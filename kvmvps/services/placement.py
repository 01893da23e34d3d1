"""Choose a host for a plan: the one with the most free capacity."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kvmvps.errors import CapacityError
from kvmvps.models import CpuPin, Host, Plan, Vps, VpsState


@dataclass(frozen=True)
class Capacity:
    """What a host carries against what it has."""

    host: str
    cpus: int
    vcpus_pinned: int
    vcpu_limit: int
    memory_mib: int
    memory_committed_mib: int
    memory_limit_mib: int

    @property
    def free_vcpus(self) -> int:
        return self.vcpu_limit - self.vcpus_pinned

    @property
    def free_memory_mib(self) -> int:
        return self.memory_limit_mib - self.memory_committed_mib


def capacity(session: Session, host: Host, overcommit: float, reserve_mib: int) -> Capacity:
    return capacities(session, [host], overcommit, reserve_mib)[0]


def capacities(
    session: Session, hosts: list[Host], overcommit: float, reserve_mib: int
) -> list[Capacity]:
    """Each host's capacity, in two queries for all of them (not two per host)."""
    ids = [h.id for h in hosts]
    pinned: dict[int, int] = {
        host_id: count
        for host_id, count in session.execute(
            select(CpuPin.host_id, func.count())
            .where(CpuPin.host_id.in_(ids))
            .group_by(CpuPin.host_id)
        )
    }
    committed: dict[int, int] = {
        host_id: int(total or 0)
        for host_id, total in session.execute(
            select(Vps.host_id, func.sum(Plan.memory_mib))
            .join(Plan, Plan.id == Vps.plan_id)
            .where(Vps.host_id.in_(ids), Vps.state != VpsState.ERROR)
            .group_by(Vps.host_id)
        )
    }
    return [
        Capacity(
            host=host.name,
            cpus=host.cpus,
            vcpus_pinned=pinned.get(host.id, 0),
            vcpu_limit=int(host.cpus * overcommit),
            memory_mib=host.memory_mib,
            memory_committed_mib=committed.get(host.id, 0),
            memory_limit_mib=max(0, host.memory_mib - reserve_mib),
        )
        for host in hosts
    ]


def fits(cap: Capacity, plan: Plan) -> bool:
    """Whether a host with capacity ``cap`` has room for one more VPS of ``plan``."""
    return (
        plan.vcpus <= cap.cpus
        and cap.free_vcpus >= plan.vcpus
        and cap.free_memory_mib >= plan.memory_mib
    )


def _enabled_hosts(session: Session) -> list[Host]:
    """The hosts new VPSes may go to: enabled, not in maintenance, answering."""
    query = (
        select(Host)
        .where(Host.enabled, Host.maintenance.is_(False), Host.down_since.is_(None))
        .order_by(Host.id)
    )
    return list(session.scalars(query))


def available_plans(
    session: Session, plans: list[Plan], overcommit: float, reserve_mib: int
) -> set[int]:
    """The ids of the plans some placeable host has room for now (database only)."""
    caps = capacities(session, _enabled_hosts(session), overcommit, reserve_mib)
    return {plan.id for plan in plans if any(fits(cap, plan) for cap in caps)}


def choose_host(
    session: Session, plan: Plan, overcommit: float, reserve_mib: int, only: str | None = None
) -> Host:
    """The placeable host with the most free memory that fits the plan (host ``only``, if given)."""
    hosts = _enabled_hosts(session)
    if only is not None:
        pinned = session.scalar(select(Host).where(Host.name == only, Host.enabled))
        if pinned is None:
            raise CapacityError(f"there is no enabled host named {only!r}")
        if pinned.down_since is not None:
            raise CapacityError(f"host {only!r} is not answering; no new VPSes go there")
        if pinned.maintenance:
            raise CapacityError(f"host {only!r} is in maintenance; no new VPSes go there")
        hosts = [pinned]
    if not hosts:
        if session.scalar(select(Host.id).limit(1)) is not None:
            raise CapacityError("every host is disabled or in maintenance; no VPS can be placed")
        raise CapacityError("no hosts are registered; run 'kvmvps-admin init' first")
    fitting = []
    for host, cap in zip(hosts, capacities(session, hosts, overcommit, reserve_mib), strict=True):
        if fits(cap, plan):
            fitting.append((cap.free_memory_mib, cap.free_vcpus, -host.id, host))
    if not fitting:
        raise CapacityError(
            f"no host has {plan.vcpus} vCPU(s) and {plan.memory_mib} MiB of memory free "
            f"for plan {plan.name!r}"
        )
    return max(fitting, key=lambda item: item[:3])[3]
