"""Pin each vCPU to a host CPU, least-pinned CPUs first."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kvmvps.errors import CapacityError
from kvmvps.models import CpuPin, Host, Vps


def pin_counts(session: Session, host: Host) -> Counter[int]:
    """How many vCPUs are pinned to each of the host's CPUs."""
    rows = session.execute(
        select(CpuPin.host_cpu, func.count())
        .where(CpuPin.host_id == host.id)
        .group_by(CpuPin.host_cpu)
    )
    counts: Counter[int] = Counter({cpu: 0 for cpu in range(host.cpus)})
    counts.update({cpu: n for cpu, n in rows})
    return counts


def choose_cpus(counts: Counter[int], host_cpus: int, vcpus: int, overcommit: float) -> list[int]:
    """``vcpus`` distinct host CPUs, least-pinned first, lowest index on ties."""
    if vcpus > host_cpus:
        raise CapacityError(f"the plan wants {vcpus} vCPUs but the host has only {host_cpus} CPUs")
    limit = max(1, int(overcommit))
    ranked = sorted(range(host_cpus), key=lambda cpu: (counts[cpu], cpu))
    chosen = sorted(ranked[:vcpus])
    if any(counts[cpu] >= limit for cpu in chosen):
        raise CapacityError(f"the host has no CPUs left (each CPU already carries {limit} vCPUs)")
    return chosen


def allocate(session: Session, vps: Vps, host: Host, vcpus: int, overcommit: float) -> list[int]:
    """Pin the VPS's vCPUs on ``host`` and record the pins (flushed, not committed)."""
    chosen = choose_cpus(pin_counts(session, host), host.cpus, vcpus, overcommit)
    for vcpu, cpu in enumerate(chosen):
        vps.pins.append(CpuPin(host_id=host.id, vcpu=vcpu, host_cpu=cpu))
    session.flush()
    return chosen


def release(session: Session, vps: Vps) -> None:
    vps.pins.clear()
    session.flush()
