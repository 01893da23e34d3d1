"""Asking for a VPS to move to another host, and emptying a host (evacuation).

Everything is checked when asked, in the database only, and a refusal
changes nothing: the target is another enabled host, not in maintenance and
answering, with room for the VPS's plan (and, for a live move, an address
for the migration traffic); the VPS is running or stopped, not suspended,
not in rescue mode, without snapshots and with no job at work on it. The
move itself is a ``migrate`` job (see :mod:`~kvmvps.services.migration_work`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps.errors import CapacityError, Conflict, InvalidInput, NotFound
from kvmvps.models import Host, Job, JobState, Snapshot, Vps, VpsState
from kvmvps.services import Context, audit, guard, jobs
from kvmvps.services.inventory import get_by_name
from kvmvps.services.migration_work import migration_address
from kvmvps.services.placement import Capacity, capacity, choose_host, fits
from kvmvps.services.vps import resolve

MOVABLE = (VpsState.RUNNING, VpsState.STOPPED)


@dataclass(frozen=True)
class Requested:
    """A queued move: its job, the VPS, where it goes and how."""

    job: str
    vps: str
    source: str
    target: str
    live: bool


def _check_vps(session: Session, vps: Vps) -> None:
    """Refuse a VPS that cannot move now (one line saying why)."""
    guard.check_action(vps, "migrate", operator=True)
    if vps.in_rescue:
        raise Conflict(f"cannot migrate {vps.hostname}: it is in rescue mode; unrescue it first")
    if vps.state not in MOVABLE:
        raise Conflict(f"cannot migrate {vps.hostname}: it is {vps.state}, not running or stopped")
    if session.scalar(select(Snapshot.id).where(Snapshot.vps_id == vps.id).limit(1)) is not None:
        raise Conflict(f"cannot migrate {vps.hostname}: it has snapshots; delete them first")
    busy = select(Job.id).where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED))
    if session.scalar(busy.limit(1)) is not None:
        raise Conflict(f"cannot migrate {vps.hostname}: a job is still working on it")


def _mode(vps: Vps, live: bool | None) -> bool:
    """Live for a running VPS unless asked cold; a stopped one only moves cold."""
    running = vps.state == VpsState.RUNNING
    if live and not running:
        raise Conflict(f"cannot migrate {vps.hostname} live: it is {vps.state}; use --cold")
    return running if live is None else live


def _check_address(host: Host, live: bool) -> None:
    if live and not migration_address(host):
        raise Conflict(
            f"host {host.name} has no address for migration traffic: give it one with "
            f"'kvmvps-admin host public-address {host.name} ADDRESS'"
        )


def _enqueue(session: Session, vps: Vps, target: Host, live: bool, actor: str) -> Requested:
    _check_address(target, live)
    if live:
        _check_address(vps.host, live)  # a failed move goes back the same way
    job = jobs.enqueue(session, "migrate", vps.uuid, vps.host_id, actor, to=target.name, live=live)
    return Requested(job.uuid, vps.hostname, vps.host.name, target.name, live)


@audit.audits("vps.migrate", target="ref")
def request(
    ctx: Context, ref: str, to: str, *, live: bool | None = None, actor: str | None = None
) -> Requested:
    """Queue the move of VPS ``ref`` to host ``to`` (live: None picks by its state)."""
    name = to or ""
    if not name.strip():
        raise InvalidInput("name the host to migrate to")
    with ctx.db.session() as s:
        vps = resolve(s, ref)
        if name == vps.host.name:
            raise Conflict(f"{vps.hostname} is on host {name} already")
        _check_vps(s, vps)
        moving = _mode(vps, live)
        if s.scalar(select(Host.id).where(Host.name == name, Host.enabled)) is None:
            raise NotFound(f"there is no enabled host named {name[:64]!r}")
        st = ctx.settings
        target = choose_host(s, vps.plan, st.cpu_overcommit, st.host_memory_reserve_mib, name)
        return _enqueue(s, vps, target, moving, actor or "")


# -- evacuation -------------------------------------------------------------------------
def _placeable(session: Session, source: Host) -> list[Host]:
    query = select(Host).where(
        Host.id != source.id,
        Host.enabled,
        Host.maintenance.is_(False),
        Host.down_since.is_(None),
    )
    return list(session.scalars(query.order_by(Host.id)))


def _plan_targets(ctx: Context, session: Session, source: Host, vpses: list[Vps]) -> list[Host]:
    """A target for each VPS (largest first, the host with most free memory), as if all moved."""
    st = ctx.settings
    room: dict[int, tuple[Host, Capacity]] = {
        h.id: (h, capacity(session, h, st.cpu_overcommit, st.host_memory_reserve_mib))
        for h in _placeable(session, source)
    }
    if not room:
        raise CapacityError(f"no other host can take VPSes; nothing of {source.name} was moved")
    chosen: dict[int, Host] = {}
    for vps in sorted(vpses, key=lambda v: (-v.plan.memory_mib, v.id)):
        fitting = [(cap.free_memory_mib, -h.id, h, cap) for h, cap in room.values()]
        fitting = [f for f in fitting if fits(f[3], vps.plan)]
        if not fitting:
            raise CapacityError(
                f"no other host has room for {vps.hostname} (plan {vps.plan.name}); "
                f"nothing of {source.name} was moved"
            )
        _free, _id, host, cap = max(fitting, key=lambda f: f[:2])
        room[host.id] = (host, _take(cap, vps))
        chosen[vps.id] = host
    return [chosen[v.id] for v in vpses]


def _take(cap: Capacity, vps: Vps) -> Capacity:
    return replace(
        cap,
        vcpus_pinned=cap.vcpus_pinned + vps.plan.vcpus,
        memory_committed_mib=cap.memory_committed_mib + vps.plan.memory_mib,
    )


@audit.audits("host.evacuate", target="name")
def evacuate(ctx: Context, name: str, *, actor: str | None = None) -> list[Requested]:
    """Put host ``name`` in maintenance and queue a move of each of its VPSes to other hosts.

    Running VPSes move live, stopped ones cold. All or nothing: if any VPS
    cannot move (no room elsewhere, a job at work on it...), nothing is queued.
    """
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        vpses = list(
            s.scalars(
                select(Vps)
                .where(Vps.host_id == host.id, Vps.state.not_in((VpsState.DELETING,)))
                .order_by(Vps.id)
            )
        )
        for vps in vpses:
            _check_vps(s, vps)
        targets = _plan_targets(ctx, s, host, vpses) if vpses else []
        host.maintenance = True
        return [
            _enqueue(s, vps, target, vps.state == VpsState.RUNNING, actor or "")
            for vps, target in zip(vpses, targets, strict=True)
        ]
