"""Setting a machine up: state dir, database, pool, network, local host."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps import keys, validation, xmlrender
from kvmvps.models import Host, Network, User
from kvmvps.services import Context, audit, inventory, isolation

log = logging.getLogger(__name__)

OPERATOR_EMAIL = "operator@localhost"


@dataclass(frozen=True)
class InitReport:
    state_dir: str
    database: str
    host: str
    network: str
    pool: str
    domain_type: str
    provisioning_key: str


def make_state_dirs(ctx: Context) -> None:
    s = ctx.settings
    s.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(s.state_dir, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    for path, mode in (
        (s.images_dir, 0o755),
        (s.pool_dir, 0o711),
        (s.console_dir, 0o700),
        (s.download_cache, 0o700),
        (s.keys_dir, 0o700),
    ):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)


def init(ctx: Context, *, actor: str | None = None) -> InitReport:
    """Idempotently prepare everything kvmvps needs on this machine.

    Recorded as ``init`` of ``actor`` once the database exists.
    """
    make_state_dirs(ctx)
    keys.ensure_provisioning_key(ctx.settings)
    keys.seal_key(ctx.settings)
    ctx.db.migrate()  # a SQLite file, in the state dir or not, is made 0600
    with audit.audited(ctx, actor, "init", ""):
        return _init_rows(ctx)


audit.declare("init")


def _init_rows(ctx: Context) -> InitReport:
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    info = hv.host_info()
    with ctx.db.session() as s:
        host = s.scalar(select(Host).where(Host.uri == ctx.settings.libvirt_uri))
        if host is None:
            name = validation.object_name(_host_name(info.hostname), "host name")
            host = Host(
                name=name, uri=ctx.settings.libvirt_uri, cpus=info.cpus, memory_mib=info.memory_mib
            )
            s.add(host)
        _ensure_default_network(ctx, s)
        _ensure_operator(s)
        s.flush()
    with ctx.db.reading() as s:
        prep = host_prep(s, host.uri)
    prepare_host(ctx, prep)  # after the commit: no write transaction waits on libvirt
    return InitReport(
        state_dir=str(ctx.settings.state_dir),
        database=ctx.settings.effective_database_url,
        host=host.name,
        network=ctx.settings.network,
        pool=ctx.settings.storage_pool,
        domain_type=ctx.domain_type,
        provisioning_key=str(keys.provisioning_key_path(ctx.settings).with_suffix(".pub")),
    )


def _host_name(hostname: str) -> str:
    short = hostname.split(".")[0].lower()
    return short if short and short[0].isalnum() else "local"


def _ensure_default_network(ctx: Context, session: Session) -> Network:
    st = ctx.settings
    net = session.scalar(select(Network).where(Network.name == st.network))
    if net is None:
        subnet = validation.ipv4_network(st.network_subnet)
        net = Network(
            name=validation.object_name(st.network, "network name"),
            kind="nat",
            libvirt_name=st.network,
            bridge_name=validation.bridge_name(st.network_bridge),
            subnet=str(subnet),
            gateway=str(next(subnet.hosts())),
        )
        net.ipv6_prefix = inventory.ipv6_prefix_for(session, net.name, "nat", st.network_ipv6)
        session.add(net)
        session.flush()
    return net


def _ensure_operator(session: Session) -> User:
    user = session.scalar(select(User).where(User.email == OPERATOR_EMAIL))
    if user is None:
        user = User(email=OPERATOR_EMAIL, is_admin=True)
        session.add(user)
    return user


@dataclass(frozen=True)
class HostPrep:
    """What a host needs from kvmvps: its pool and every network (libvirt names)."""

    uri: str
    networks: tuple[str, ...]


def host_prep(session: Session, uri: str) -> HostPrep:
    """Read from the database what :func:`prepare_host` makes sure of (no libvirt call)."""
    names = session.scalars(select(Network.libvirt_name).order_by(Network.id))
    return HostPrep(uri=uri, networks=tuple(names))


def _network_xml(ctx: Context, name: str) -> str:
    """A network's XML, with a DHCP entry per VPS: read only for a host that lacks it.

    Every order prepares its host; rendering and validating a network of
    thousands of DHCP entries each time would cost more than the order.
    """
    with ctx.db.reading() as s:
        network = s.scalars(select(Network).where(Network.libvirt_name == name)).one()
        return inventory.network_xml(s, network)


def prepare_host(ctx: Context, prep: HostPrep) -> None:
    """Make sure the host has kvmvps's storage pool and every network, running.

    Called outside any write transaction: libvirt may take seconds (qemu+ssh).
    """
    hv = ctx.hypervisor(prep.uri)
    isolation.ensure_filters(hv)
    hv.ensure_pool(
        ctx.settings.storage_pool,
        xmlrender.pool_xml(ctx.settings.storage_pool, str(ctx.settings.pool_dir)),
    )
    for name in prep.networks:
        hv.ensure_network(name, functools.partial(_network_xml, ctx, name))


def owner_for(ctx: Context, session: Session, email: str | None) -> User:
    """The VPS owner: the named user, or the local operator."""
    if email:
        return inventory.user_by_email(session, email)
    return _ensure_operator(session)
