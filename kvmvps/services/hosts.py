"""libvirt hosts: registering them, their capacity, taking them out of service."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kvmvps import validation
from kvmvps.config import Settings
from kvmvps.errors import Conflict, InvalidInput
from kvmvps.models import Host, Job, JobState, Vps
from kvmvps.services import Context, audit, forwards, http_names, placement, setup, views
from kvmvps.services.audit import iso
from kvmvps.services.inventory import get_by_name

_URI = re.compile(r"[a-z][a-z0-9+.-]*:/[^\s\x00-\x1f\x7f]*")

SHOW_KEYS = (
    "name",
    "uri",
    "enabled",
    "maintenance",
    "public_address",
    "agent",
    "cpus",
    "vcpus_pinned",
    "vcpu_limit",
    "memory_mib",
    "memory_committed_mib",
    "memory_limit_mib",
    "vps_count",
    "created_at",
)


def libvirt_uri(value: str) -> str:
    """A libvirt connection URI such as ``qemu+ssh://root@kvm2/system``."""
    uri = (value or "").strip()
    if len(uri) > 1024 or not _URI.fullmatch(uri):
        raise InvalidInput(
            f"{value!r} is not a libvirt URI (such as qemu:///system or qemu+ssh://root@kvm2/system)"
        )
    return uri


def _refuse_duplicate(session: Session, name: str, uri: str) -> None:
    for column, value, what in ((Host.name, name, "name"), (Host.uri, uri, "URI")):
        other = session.scalar(select(Host).where(column == value))
        if other is not None:
            raise Conflict(f"host {other.name!r} already has the {what} {value!r}")


@audit.audits("host.add", target="name")
def add_host(ctx: Context, name: str, uri: str, *, actor: str | None = None) -> Host:
    """Register a host: read its CPUs and memory, create the pool and every network there.

    An unreachable host raises :class:`HypervisorUnavailable` and nothing is recorded.
    """
    name = validation.object_name(name, "host name")
    uri = libvirt_uri(uri)
    with ctx.db.reading() as s:
        _refuse_duplicate(s, name, uri)
        prep = setup.host_prep(s, uri)
    info = ctx.hypervisor(uri).host_info()
    setup.prepare_host(ctx, prep)
    with ctx.db.session() as s:
        _refuse_duplicate(s, name, uri)
        host = Host(name=name, uri=uri, cpus=info.cpus, memory_mib=info.memory_mib, enabled=True)
        s.add(host)
        s.flush()
        return host


class HostDetail(views.HostView):
    """A host with what it carries against what it has."""

    vcpus_pinned: int
    vcpu_limit: int
    memory_committed_mib: int
    memory_limit_mib: int
    vps_count: int
    created_at: str | None


def list_hosts(ctx: Context) -> list[views.HostView]:
    with ctx.db.session() as s:
        return [views.host_view(h) for h in s.scalars(select(Host).order_by(Host.name))]


def _vps_count(session: Session, host: Host) -> int:
    count = session.scalar(select(func.count()).select_from(Vps).where(Vps.host_id == host.id))
    return count or 0


def _capacity_view(ctx: Context, session: Session, host: Host) -> HostDetail:
    """A host with what it carries against what it has (``SHOW_KEYS``)."""
    st = ctx.settings
    cap = placement.capacity(session, host, st.cpu_overcommit, st.host_memory_reserve_mib)
    return {
        **views.host_view(host),
        "vcpus_pinned": cap.vcpus_pinned,
        "vcpu_limit": cap.vcpu_limit,
        "memory_committed_mib": cap.memory_committed_mib,
        "memory_limit_mib": cap.memory_limit_mib,
        "vps_count": _vps_count(session, host),
        "created_at": iso(host.created_at),
    }


def show_host(ctx: Context, name: str) -> HostDetail:
    """A host with what it carries against what it has."""
    with ctx.db.reading() as s:
        return _capacity_view(ctx, s, get_by_name(s, Host, name, "host"))


def host_capacities(ctx: Context) -> list[HostDetail]:
    """Every host, by name, as :func:`show_host` shows it."""
    with ctx.db.reading() as s:
        return [_capacity_view(ctx, s, h) for h in s.scalars(select(Host).order_by(Host.name))]


@audit.audits("host.remove", target="name")
def remove_host(ctx: Context, name: str, *, actor: str | None = None) -> None:
    """Forget a host that carries no VPS; nothing on the host itself is touched."""
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        count = _vps_count(s, host)
        if count:
            raise Conflict(f"host {name!r} carries {count} VPS(es); delete them first")
        unfinished = s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.host_id == host.id, Job.state.in_(JobState.UNFINISHED))
        )
        if unfinished:
            raise Conflict(f"host {name!r} has {unfinished} unfinished job(s); wait for them")
        s.execute(update(Job).where(Job.host_id == host.id).values(host_id=None))
        s.delete(host)


@audit.audits("host.public-address", target="name")
def set_public_address(
    ctx: Context, name: str, address: str | None, *, actor: str | None = None
) -> HostDetail:
    """Set (None: clear) the host's own public IPv4 for port forwards and HTTP names.

    Forwards already held move to the new address at the next rule update.
    """
    if address is not None:
        try:
            address = str(ipaddress.IPv4Address((address or "").strip()))
        except ValueError:
            raise InvalidInput(f"public address {address!r} is not an IPv4 address") from None
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        host.public_address = address
        host_id = host.id
    forwards.apply(ctx, host_id)
    http_names.apply_proxy(ctx)
    return show_host(ctx, name)


def agent_settings(ctx: Context, name: str) -> Settings:
    """The settings of ``name``'s agent; refused unless the host is handed to an agent."""
    with ctx.db.reading() as s:
        host = get_by_name(s, Host, name, "host")
        if not host.agent:
            raise Conflict(
                f"host {name!r} is not run by an agent; first: kvmvps-admin host agent {name} on"
            )
    return dataclasses.replace(ctx.settings, agent_host=name)


@audit.audits("host.agent", target="name")
def set_agent(ctx: Context, name: str, on: bool, *, actor: str | None = None) -> HostDetail:
    """Hand the host's jobs and host-local work to its own agent (``on``), or take them back.

    With an agent, ``kvmvps-admin worker --host NAME`` runs on the host itself
    and does everything that must happen there (iptables forwards, the HTTP
    proxy, reaching its guests); central workers leave the host's jobs to it.
    Jobs queued before the switch wait for whoever now runs the host's jobs.
    """
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        host.agent = on
        host_id = host.id
    forwards.apply(ctx, host_id)  # writes here, or asks the agent
    return show_host(ctx, name)


@audit.audits("host.disable", target="name")
def disable_host(ctx: Context, name: str, *, actor: str | None = None) -> views.HostView:
    """Place no new VPSes on the host; those it carries keep running."""
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        host.enabled = False
        return views.host_view(host)


@audit.audits("host.maintenance", target="name")
def set_maintenance(
    ctx: Context, name: str, on: bool, *, actor: str | None = None
) -> views.HostView:
    """Maintenance on: place no new VPSes on the host (those it carries keep running)."""
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        host.maintenance = bool(on)
        return views.host_view(host)


@audit.audits("host.enable", target="name")
def enable_host(ctx: Context, name: str, *, actor: str | None = None) -> views.HostView:
    """Put the host back in service, after making sure its pool and networks exist."""
    with ctx.db.reading() as s:
        prep = setup.host_prep(s, get_by_name(s, Host, name, "host").uri)
    setup.prepare_host(ctx, prep)
    with ctx.db.session() as s:
        host = get_by_name(s, Host, name, "host")
        host.enabled = True
        return views.host_view(host)
