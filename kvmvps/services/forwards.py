"""Port forwards: public ports of a host that reach a NAT VPS from outside.

Every VPS on a NAT network gets a public TCP port to its port 22 when its
order is recorded (in the same transaction as its address), provided the
host has a public address (``KVMVPS_PUBLIC_ADDRESS`` or the host's own). A
plan's ``extra_forwards`` lets its VPSes add more, to guest ports of their
choice; kvmvps picks the public port. A public port is unique per host and
protocol (a unique constraint), is never handed out while held, and when it
is released, the one released longest ago is reused first.

The iptables rules are written from the database by :func:`apply`, on the
local libvirt host only (iptables lives there); where that is, and the
host's public address, :mod:`~kvmvps.services.host_edge` says.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, TypedDict

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kvmvps import bridgeports, firewall
from kvmvps.db import rowcount
from kvmvps.errors import (
    CapacityError,
    Conflict,
    HypervisorError,
    InvalidInput,
    NotFound,
)
from kvmvps.models import Forward, Host, HttpName, Network, Vps, VpsState
from kvmvps.services import Context, audit, guard, host_edge, http_names, jobs
from kvmvps.services.vps import resolve

log = logging.getLogger(__name__)

PROTOCOLS = ("tcp", "udp")
SSH, EXTRA = "ssh", "extra"
ALLOCATION_ATTEMPTS = 5


# -- where forwards apply -----------------------------------------------------
def iptables_for(host: Host) -> firewall.Iptables:
    """How to run iptables for ``host`` (from the process that does its host-local work)."""
    return firewall.Iptables()


# -- allocation ---------------------------------------------------------------
def allocate_ssh(
    ctx: Context, session: Session, vps: Vps, host: Host, network: Network
) -> Forward | None:
    """The SSH forward of a new NAT VPS (flushed, not committed); None without forwarding."""
    address = host_edge.public_address(ctx, host)
    if network.kind != "nat" or not address or not host_edge.serves_forwards(host):
        return None
    return _allocate(ctx, session, vps, host, address, "tcp", 22, SSH)


def _allocate(
    ctx: Context,
    session: Session,
    vps: Vps,
    host: Host,
    address: str,
    protocol: str,
    guest_port: int,
    kind: str,
) -> Forward:
    """Claim a free public port for ``vps`` (flushed, not committed).

    A port that a concurrent transaction took meanwhile (a unique-constraint
    error, or a released row no longer free) is skipped for the next one.
    """
    values = {
        "vps_id": vps.id,
        "guest_port": guest_port,
        "kind": kind,
        "public_address": address,
        "released_at": None,
    }
    for _attempt in range(ALLOCATION_ATTEMPTS):
        port, row_id = _next_free_port(ctx, session, host, protocol)
        if row_id is None:
            try:
                with session.begin_nested():
                    row = Forward(host_id=host.id, protocol=protocol, public_port=port, **values)
                    session.add(row)
                return row
            except IntegrityError:
                continue
        claimed = session.execute(
            update(Forward)
            .where(Forward.id == row_id, Forward.vps_id.is_(None))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if rowcount(claimed) == 1:
            taken = session.get(Forward, row_id, populate_existing=True)
            if taken is not None:
                return taken
    raise Conflict(
        f"public {protocol} ports of host {host.name!r} are being taken by other "
        "orders right now; try again"
    )


def _next_free_port(
    ctx: Context, session: Session, host: Host, protocol: str
) -> tuple[int, int | None]:
    """A never-used port (lowest first), else the one released longest ago (and its row id)."""
    first, last = ctx.settings.forward_port_range
    rows = {
        r.public_port: r
        for r in session.scalars(
            select(Forward).where(
                Forward.host_id == host.id,
                Forward.protocol == protocol,
                Forward.public_port.between(first, last),
            )
        )
    }
    for port in range(first, last + 1):
        if port not in rows:
            return port, None
    released = [r for r in rows.values() if r.vps_id is None]
    if not released:
        raise CapacityError(
            f"host {host.name!r} has no free public {protocol} ports left "
            f"(KVMVPS_FORWARD_PORTS is {first}-{last})"
        )
    row = min(released, key=lambda r: (r.released_at or r.created_at, r.id))
    return row.public_port, row.id


def release(session: Session, vps: Vps) -> None:
    """Give back the VPS's public ports and drop its HTTP names (flushed, not committed)."""
    for row in list(session.scalars(select(Forward).where(Forward.vps_id == vps.id))):
        row.vps_id, row.guest_port, row.kind = None, None, None
        row.released_at = datetime.now(UTC)
    for name in list(session.scalars(select(HttpName).where(HttpName.vps_id == vps.id))):
        session.delete(name)
    session.flush()


def move(ctx: Context, session: Session, vps: Vps, target: Host) -> list[str]:
    """Give back the VPS's public ports and take new ones on ``target`` (flushed, not committed).

    Each forward keeps its protocol, guest port and kind; its public address
    and port become the target's. Where the target cannot serve forwards,
    they are dropped; a NAT VPS that lost its SSH forward so gets a new one
    on a target that can. Returns one line per change for the customer's notice.
    HTTP names stay: they follow the VPS's host.
    """
    address = host_edge.public_address(ctx, target)
    serves = bool(address) and host_edge.serves_forwards(target)
    told, has_ssh = [], False
    held = session.scalars(select(Forward).where(Forward.vps_id == vps.id).order_by(Forward.id))
    for row in list(held):
        was = f"{row.protocol} {row.public_address}:{row.public_port}"
        protocol, guest, kind = row.protocol, row.guest_port or 0, row.kind or EXTRA
        row.vps_id, row.guest_port, row.kind = None, None, None
        row.released_at = datetime.now(UTC)
        session.flush()
        if not serves:
            told.append(f"{was} -> guest port {guest}: removed (host {target.name} has none)")
            continue
        new = _allocate(ctx, session, vps, target, address, protocol, guest, kind)
        told.append(f"{was} -> guest port {guest}: now {new.public_address}:{new.public_port}")
        has_ssh = has_ssh or kind == SSH
    if serves and not has_ssh:
        ssh = allocate_ssh(ctx, session, vps, target, vps.network)  # dropped on an earlier move
        if ssh is not None:
            told.append(f"SSH (guest port 22): now {ssh.public_address}:{ssh.public_port}")
    return told


# -- the customer's forwards --------------------------------------------------
class ForwardView(TypedDict):
    """The stable JSON shape of a forward."""

    vps: str
    hostname: str
    protocol: str
    public_address: str | None
    public_port: int
    guest_ip: str | None
    guest_port: int | None
    kind: str | None


def forward_view(row: Forward, vps: Vps) -> ForwardView:
    """The stable JSON shape of a forward."""
    return {
        "vps": vps.uuid,
        "hostname": vps.hostname,
        "protocol": row.protocol,
        "public_address": row.public_address,
        "public_port": row.public_port,
        "guest_ip": vps.ip,
        "guest_port": row.guest_port,
        "kind": row.kind,
    }


def guest_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInput(f"guest port must be a whole number from 1 to 65535, not {value!r}")
    return value


def protocol(value: str) -> str:
    proto = (value or "").strip().lower()
    if proto not in PROTOCOLS:
        raise InvalidInput(f"protocol must be tcp or udp, not {value!r}")
    return proto


@audit.audits("vps.forward.add", target="ref")
def add(
    ctx: Context,
    ref: str,
    port: int,
    proto: str = "tcp",
    owner_id: int | None = None,
    *,
    actor: str | None = None,
) -> ForwardView:
    """Forward a new public port to ``port`` of the VPS; the rules are in place on return.

    If writing the rules fails, nothing is recorded and no rule changed.
    """
    port, proto = guest_port(port), protocol(proto)
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        guard.check_action(vps, "forward_add", operator=owner_id is None)
        address = _forwardable(ctx, vps)
        same = [f for f in vps.forwards if (f.protocol, f.guest_port) == (proto, port)]
        if same:
            raise Conflict(
                f"{vps.hostname} already forwards {proto} port {port} "
                f"(public port {same[0].public_port})"
            )
        extras = [f for f in vps.forwards if f.kind == EXTRA]
        if len(extras) >= vps.plan.extra_forwards:
            raise Conflict(
                f"{vps.hostname} has {len(extras)} extra forward(s); its plan "
                f"{vps.plan.name!r} allows {vps.plan.extra_forwards}"
            )
        row = _allocate(ctx, s, vps, vps.host, address, proto, port, EXTRA)
        _apply_in(ctx, s, vps.host)
        return forward_view(row, vps)


def _forwardable(ctx: Context, vps: Vps) -> str:
    """The public address forwards of ``vps`` use; or why it can have none."""
    if vps.network.kind != "nat":
        raise Conflict(
            f"{vps.hostname} is on bridge network {vps.network.name!r}: it has a "
            "public address of its own and needs no forwards"
        )
    if vps.state in (VpsState.DELETING, VpsState.ERROR) or not vps.ip:
        raise Conflict(f"cannot forward ports to {vps.hostname}: it is {vps.state}")
    address = host_edge.public_address(ctx, vps.host)
    if not address:
        raise Conflict(
            f"port forwarding is not configured on host {vps.host.name!r} "
            "(set KVMVPS_PUBLIC_ADDRESS or the host's public address)"
        )
    if not host_edge.serves_forwards(vps.host):
        raise Conflict(
            f"{vps.hostname} is on remote host {vps.host.name!r}, which has no agent; port "
            "forwards work on the local libvirt host and on hosts with an agent "
            "(kvmvps-admin host agent NAME on)"
        )
    return address


def list_forwards(ctx: Context, ref: str, owner_id: int | None = None) -> list[ForwardView]:
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        return [forward_view(f, vps) for f in vps.forwards]


@audit.audits("vps.forward.remove", target="ref")
def remove(
    ctx: Context,
    ref: str,
    public_port: int,
    proto: str | None = None,
    owner_id: int | None = None,
    *,
    actor: str | None = None,
) -> ForwardView:
    """Release one extra forward of the VPS and remove its rules."""
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        guard.check_action(vps, "forward_remove", operator=owner_id is None)
        rows = [
            f
            for f in vps.forwards
            if f.public_port == public_port and (proto is None or f.protocol == protocol(proto))
        ]
        if not rows:
            raise NotFound(f"{vps.hostname} has no forward on public port {public_port!r}")
        if len(rows) > 1:
            raise InvalidInput(
                f"{vps.hostname} forwards tcp and udp on public port "
                f"{public_port}; give the protocol"
            )
        row = rows[0]
        if row.kind == SSH:
            raise Conflict(
                f"public port {public_port} is the SSH forward of {vps.hostname}; "
                "it goes when the VPS goes"
            )
        shown = forward_view(row, vps)
        row.vps_id, row.guest_port, row.kind = None, None, None
        row.released_at = datetime.now(UTC)
        s.flush()
        s.expire(vps, ["forwards"])
        _apply_in(ctx, s, vps.host)
        return shown


# -- the rules ----------------------------------------------------------------
def _port_forwards(session: Session, host: Host) -> list[firewall.PortForward]:
    rows = session.execute(
        select(Forward, Vps, Network)
        .join(Vps, Vps.id == Forward.vps_id)
        .join(Network, Network.id == Vps.network_id)
        .where(Forward.host_id == host.id, Vps.ip.is_not(None), Network.kind == "nat")
    )
    return [
        firewall.PortForward(
            protocol=f.protocol,
            public_address=f.public_address or "",
            public_port=f.public_port,
            guest_ip=v.ip,
            guest_port=f.guest_port,
            bridge=n.bridge_name,
            subnet=n.subnet,
            tag=f"kvmvps:{v.uuid}",
        )
        for f, v, n in rows
        if f.public_address and v.ip is not None and f.guest_port is not None
    ]


def _rehome(ctx: Context, session: Session, host: Host) -> None:
    """Move held forwards to the host's current public address, if it has changed."""
    address = host_edge.public_address(ctx, host)
    if not address:
        return
    for row in session.scalars(
        select(Forward).where(
            Forward.host_id == host.id,
            Forward.vps_id.is_not(None),
            Forward.public_address != address,
        )
    ):
        log.info("forward %s/%d moves to %s", row.protocol, row.public_port, address)
        row.public_address = address


def _apply_in(ctx: Context, session: Session, host: Host) -> bool:
    """Write the host's rules from what ``session`` sees (uncommitted rows included)."""
    _rehome(ctx, session, host)
    session.flush()
    if not host_edge.runs_here(ctx, host):
        if host.agent:
            jobs.request_edge(session, host)
        return False
    ipt = iptables_for(host)
    forwards = _port_forwards(session, host)
    if not forwards and not host_edge.public_address(ctx, host):
        return False  # forwarding is not used here: leave iptables alone
    prefix = ctx.settings.chain_prefix
    return firewall.apply(ipt, prefix, firewall.desired(prefix, forwards))


def apply(ctx: Context, host_id: int) -> bool:
    """Write the iptables rules of a host from the database; False when they were right.

    The one function that writes forwarding rules. Idempotent; raises
    :class:`FirewallError` (and changes no rule) when iptables fails.
    """
    with ctx.db.session() as s:
        host = s.get(Host, host_id)
        return host is not None and _apply_in(ctx, s, host)


def apply_for_vps(ctx: Context, vps_id: int) -> bool:
    """:func:`apply` for the host of a VPS (a provisioning step)."""
    with ctx.db.session() as s:
        host_id = s.scalar(select(Vps.host_id).where(Vps.id == vps_id))
    return host_id is not None and apply(ctx, host_id)


def apply_quietly(ctx: Context, host_id: int) -> None:
    """:func:`apply` and the proxy after a release; failures are logged, reconcile retries."""
    try:
        apply(ctx, host_id)
        http_names.apply_proxy(ctx)
    except HypervisorError as exc:
        log.error("updating the forwarding rules failed (reconcile will retry): %s", exc)


def sync(ctx: Context, host: Host) -> list[dict[str, str]]:
    """A reconcile pass's share: bridge ports, forwarding rules and proxy of one host.

    Returns what it had to put right (nothing when all was in order).
    """
    if not host_edge.runs_here(ctx, host):
        if host.agent:
            return []  # its own agent keeps them
        with ctx.db.statement() as conn:  # one round trip: every remote host, every pass
            held = conn.scalar(
                select(Forward.id)
                .where(Forward.host_id == host.id, Forward.vps_id.is_not(None))
                .limit(1)
            )
        return (
            [
                {
                    "host": host.name,
                    "action": "skipped: forwarding rules are written on the local host only",
                }
            ]
            if held
            else []
        )
    done = [
        {"host": host.name, "action": f"{dev} put back on bridge {bridge}"}
        for dev, bridge in _reattach(ctx, host)
    ]
    if apply(ctx, host.id):
        done.append({"host": host.name, "action": "forwarding rules rewritten"})
    if http_names.apply_proxy(ctx):
        done.append({"host": host.name, "action": "proxy configuration rewritten"})
    return done


def _reattach(ctx: Context, host: Host) -> list[tuple[str, str]]:
    """Put running guests' taps back on their bridges (cut off by a network restart)."""
    with ctx.db.session() as s:
        domains = list(
            s.scalars(
                select(Vps.domain_name).where(Vps.host_id == host.id, Vps.state == VpsState.RUNNING)
            )
        )
    hv = ctx.hypervisor(host.uri)
    fixed = []
    for domain in domains:
        try:
            xml = hv.domain_xml(domain)
        except HypervisorError:
            continue  # gone meanwhile: the power check reports it
        fixed += [(dev, br) for dev, br in bridgeports.ports(xml) if bridgeports.reattach(dev, br)]
    return fixed


def remove_rules(ctx: Context, host_id: int) -> bool:
    """Delete kvmvps's chains and jumps from a local host (e.g. before uninstalling)."""
    with ctx.db.session() as s:
        host = s.get(Host, host_id)
        if host is None or not host_edge.runs_here(ctx, host):
            return False
    return firewall.remove(iptables_for(host), ctx.settings.chain_prefix)
