"""Plans, images, networks, hosts and users: the things a VPS is made from."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from kvmvps import ipam, limits, validation, xmlrender
from kvmvps.config import MAX_TB_CACHE_MIB
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.images import BuiltImage
from kvmvps.models import Host, Image, ImageTest, IpLease, Network, Plan, User, Vps
from kvmvps.services import Context, audit
from kvmvps.storage import check_base_image
from kvmvps.xmlspec import BridgeNetworkSpec, DhcpHost, nat_network_spec

# The models that have a unique ``name``.
M = TypeVar("M", bound=Plan | Image | Network | Host)
log = logging.getLogger(__name__)

MAX_VCPUS = 64
MAX_MEMORY_MIB = 1 << 20
MAX_DISK_GIB = 1 << 14
MAX_EXTRA_FORWARDS = 100
MAX_PRICE_CENTS = 10**9
MAX_TRANSFER_GIB = 1 << 20  # a PiB a month
OVER_LIMIT_ACTIONS = ("throttle", "suspend")
MAX_OVER_LIMIT_KIBPS = 1 << 24  # the bound of a plan's own network limits


def get_by_name(session: Session, model: type[M], name: str, what: str) -> M:
    """The row of ``model`` named ``name``, or :class:`NotFound`."""
    row = session.scalar(select(model).where(model.name == name))
    if row is None:
        raise NotFound(f"no {what} named {name!r}")
    return row


def for_sale(session: Session, model: type[Plan] | type[Image], name: str, what: str) -> None:
    """:class:`NotFound` for a plan or image that is unknown or hidden from the shop.

    A hidden one is refused with the words an unknown one gets: the shop does not have it.
    An image whose last self-test failed is hidden too (until a test passes).
    """
    row = get_by_name(session, model, name, what)
    if row.hidden or (isinstance(row, Image) and row.test_failed):
        raise NotFound(f"no {what} named {name!r}")


def _refuse_duplicate(session: Session, model: type[M], name: str, what: str) -> None:
    if session.scalar(select(model).where(model.name == name)) is not None:
        raise Conflict(f"a {what} named {name!r} already exists")


def _refuse_in_use(
    session: Session, column: InstrumentedAttribute[int], row_id: int, what: str
) -> None:
    count = session.scalar(select(func.count()).select_from(Vps).where(column == row_id))
    if count:
        raise Conflict(f"{what} is used by {count} VPS(es); delete or move them first")


# -- plans ------------------------------------------------------------------
@audit.audits("plan.add", target="name")
def add_plan(
    ctx: Context,
    name: str,
    vcpus: int,
    memory_mib: int,
    disk_gib: int,
    network: str | None = None,
    price_cents: int = 0,
    extra_forwards: int = 0,
    resource_limits: Mapping[str, int | None] | None = None,
    *,
    transfer_gib: int | None = None,
    over_limit: str = "throttle",
    over_limit_kibps: int = 128,
    actor: str | None = None,
) -> Plan:
    """Record a plan; ``resource_limits`` maps kvmvps.limits fields to numbers (None: unlimited).

    ``transfer_gib`` is the monthly transfer (in + out) shown to customers; None: unmetered.
    Over it, ``over_limit`` says what happens: ``throttle`` (network in and out held to
    ``over_limit_kibps`` KiB/s) or ``suspend``.
    """
    name = validation.object_name(name, "plan name")
    checked = limits.check(resource_limits or {})
    validation.positive_int(vcpus, "vcpus", MAX_VCPUS)
    validation.positive_int(memory_mib, "memory (MiB)", MAX_MEMORY_MIB)
    validation.positive_int(disk_gib, "disk (GiB)", MAX_DISK_GIB)
    validation.whole_number(price_cents, "price (cents)", 0, MAX_PRICE_CENTS)
    if extra_forwards != 0:
        validation.positive_int(extra_forwards, "extra forwards", MAX_EXTRA_FORWARDS)
    if transfer_gib is not None:
        validation.positive_int(transfer_gib, "monthly transfer (GiB)", MAX_TRANSFER_GIB)
    if over_limit not in OVER_LIMIT_ACTIONS:
        raise InvalidInput(
            f"over the transfer a plan may only throttle or suspend, not {over_limit!r}"
        )
    validation.positive_int(over_limit_kibps, "over-limit speed (KiB/s)", MAX_OVER_LIMIT_KIBPS)
    with ctx.db.session() as s:
        _refuse_duplicate(s, Plan, name, "plan")
        net = get_by_name(s, Network, network, "network") if network else None
        plan = Plan(
            name=name,
            vcpus=vcpus,
            memory_mib=memory_mib,
            disk_gib=disk_gib,
            price_cents=price_cents,
            extra_forwards=extra_forwards,
            transfer_gib=transfer_gib,
            over_limit=over_limit,
            over_limit_kibps=over_limit_kibps,
            network_id=net.id if net else None,
            **checked.as_dict(),
        )
        s.add(plan)
        return plan


def list_plans(ctx: Context) -> list[Plan]:
    with ctx.db.session() as s:
        return list(s.scalars(select(Plan).order_by(Plan.vcpus, Plan.memory_mib, Plan.name)))


@audit.audits("plan.remove", target="name")
def remove_plan(ctx: Context, name: str, *, actor: str | None = None) -> None:
    with ctx.db.session() as s:
        plan = get_by_name(s, Plan, name, "plan")
        _refuse_in_use(s, Vps.plan_id, plan.id, f"plan {name!r}")
        s.delete(plan)


# -- images -----------------------------------------------------------------
STORE_MODE = 0o644  # QEMU (another user) reads the store's copies


def _copy_into_store(ctx: Context, name: str, src: Path, dest_name: str) -> Path:
    """A copy of ``src`` in the image store (a new file); ``src`` itself is never changed.

    When ``src`` is already the store's file (a built image), it is left as it is.
    """
    dest_dir = ctx.settings.images_dir / name
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / dest_name
    if src.resolve() == dest.resolve():
        return dest
    with _open_regular(src, dest_name) as source:
        tmp = dest.with_name(f".{dest_name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, STORE_MODE)
        try:
            os.fchmod(fd, STORE_MODE)  # our own new file, whatever the umask
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return dest


@contextmanager
def _open_regular(path: Path, what: str) -> Iterator[BinaryIO]:
    """``path`` opened for reading if it is a regular file (symlinks followed).

    A device, FIFO, socket or directory is refused; opening never blocks (a
    FIFO with no writer) and the check is made on what was opened, not on a
    name that could be swapped meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise InvalidInput(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{what} {path} is not a regular file")
        os.set_blocking(fd, True)
        yield fh


def check_regular(path: str | Path | None, what: str) -> Path | None:
    """``path`` (None stays None) if it names a regular file; InvalidInput otherwise."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InvalidInput(f"{what} {p} does not exist")
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise InvalidInput(f"{what} {p} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{what} {p} is not a regular file")
    return p


@audit.audits("image.add", target="name")
def add_image(
    ctx: Context,
    name: str,
    path: str | Path,
    *,
    kernel: str | Path | None = None,
    initrd: str | Path | None = None,
    cmdline: str | None = None,
    login_user: str = "root",
    cloud_init: bool = False,
    os_family: str = "linux",
    credentials: bool = True,
    rescue: bool = False,
    tcg_cache_mib: str | int | None = None,
    actor: str | None = None,
) -> Image:
    """Register a qcow2 base image (copied into the image store); ``rescue``: a rescue system.

    ``tcg_cache_mib``: see :func:`tcg_cache_size`.
    """
    name = validation.object_name(name, "image name")
    validation.unix_user(login_user)
    cache_mib = tcg_cache_size(tcg_cache_mib)
    kernel_p, initrd_p = check_regular(kernel, "kernel"), check_regular(initrd, "initrd")
    info = check_base_image(check_regular(path, "base image") or Path(path))
    if initrd_p and not kernel_p:
        raise InvalidInput("an initrd needs a kernel (--kernel) for direct kernel boot")
    if cmdline is not None:
        cmdline = validation.one_line(cmdline, "kernel command line", 1000)
    with ctx.db.session() as s:
        _refuse_duplicate(s, Image, name, "image")
    image = Image(
        name=name,
        base_path=str(_copy_into_store(ctx, name, Path(path), "disk.qcow2")),
        virtual_size=info.virtual_size,
        kernel_path=str(_copy_into_store(ctx, name, kernel_p, "vmlinuz")) if kernel_p else None,
        initrd_path=str(_copy_into_store(ctx, name, initrd_p, "initrd.img")) if initrd_p else None,
        cmdline=cmdline if kernel_p else None,
        login_user=login_user,
        cloud_init=cloud_init,
        os_family=os_family,
        credentials=credentials,
        rescue=rescue,
        tcg_tb_cache_mib=cache_mib,
    )
    with ctx.db.session() as s:
        _refuse_duplicate(s, Image, name, "image")
        s.add(image)
    return image


def tcg_cache_size(value: str | int | None) -> int | None:
    """An image's TCG code-cache size in MiB, 0 (QEMU's own) to MAX_TB_CACHE_MIB.

    None or ``default``: none of its own, KVMVPS_TCG_TB_CACHE_MIB applies. Used
    only under emulation (domain type ``qemu``); a VPS of the image gets it when
    its domain is next defined (an order, a reinstall, a migration; a rescue
    boot takes the rescue image's).
    """
    if value is None:
        return None
    text = str(value)
    if text == "default":
        return None
    head = text[: len(str(MAX_TB_CACHE_MIB)) + 1]
    if not (text.isascii() and text.isdigit()) or int(head) > MAX_TB_CACHE_MIB:
        raise InvalidInput(
            f"the code cache must be a whole number of MiB from 0 to {MAX_TB_CACHE_MIB}, "
            "or 'default'"
        )
    return int(text)


@audit.audits("image.edit", target="name")
def edit_image(
    ctx: Context,
    name: str,
    *,
    rescue: bool | None = None,
    tcg_cache_mib: str | int | None = None,
    actor: str | None = None,
) -> Image:
    """Change an image's settings: whether it is a rescue system, its code-cache size.

    ``tcg_cache_mib`` None leaves the size as it is; ``default`` removes it.
    """
    if rescue is None and tcg_cache_mib is None:
        raise InvalidInput("nothing to change (--rescue, --no-rescue or --tcg-cache-mib)")
    cache_mib = tcg_cache_size(tcg_cache_mib)
    with ctx.db.session() as s:
        image = get_by_name(s, Image, name, "image")
        if rescue is not None:
            image.rescue = rescue
        if tcg_cache_mib is not None:
            image.tcg_tb_cache_mib = cache_mib
        return image


def register_built_image(
    ctx: Context, name: str, built: BuiltImage, *, rescue: bool = False
) -> Image:
    """Register an image a builder produced (``rescue``: as a rescue system)."""
    return add_image(
        ctx,
        name,
        built.base_path,
        kernel=built.kernel_path,
        initrd=built.initrd_path,
        cmdline=built.cmdline,
        login_user=built.login_user,
        cloud_init=built.cloud_init,
        os_family=built.os_family,
        rescue=rescue,
        tcg_cache_mib=built.tcg_tb_cache_mib,
    )


def list_images(ctx: Context) -> list[Image]:
    with ctx.db.reading() as s:
        return list(s.scalars(select(Image).order_by(Image.name)))


@audit.audits("image.remove", target="name")
def remove_image(ctx: Context, name: str, *, actor: str | None = None) -> None:
    with ctx.db.session() as s:
        image = get_by_name(s, Image, name, "image")
        _refuse_in_use(s, Vps.image_id, image.id, f"image {name!r}")
        s.execute(delete(ImageTest).where(ImageTest.image_id == image.id))
        s.delete(image)
    shutil.rmtree(ctx.settings.images_dir / name, ignore_errors=True)


# -- networks ---------------------------------------------------------------
def network_xml(session: Session, network: Network) -> str:
    """The libvirt XML of a network, with a DHCP entry per leased VPS."""
    if network.kind == "bridge":
        return xmlrender.bridge_network_xml(
            BridgeNetworkSpec(name=network.libvirt_name, bridge=network.bridge_name)
        )
    rows = session.execute(
        select(IpLease.mac, IpLease.address, Vps.domain_name)
        .join(Vps, Vps.id == IpLease.vps_id)
        .where(IpLease.network_id == network.id)
    )
    hosts = tuple(DhcpHost(mac=m, ip=ip, name=n) for m, ip, n in rows if m is not None)
    spec = nat_network_spec(
        network.libvirt_name,
        network.bridge_name,
        network.subnet,
        network.gateway,
        hosts,
        ipv6_gateway=ipam.ipv6_for(network, network.gateway),
    )
    return xmlrender.nat_network_xml(spec)


@audit.audits("network.add", target="name")
def add_network(
    ctx: Context,
    name: str,
    kind: str,
    subnet: str,
    *,
    bridge: str | None = None,
    gateway: str | None = None,
    pool_start: str | None = None,
    pool_end: str | None = None,
    allow_guest_traffic: bool = False,
    ipv6: str | None = None,
    actor: str | None = None,
) -> Network:
    """Record a NAT or bridge network and create it on every enabled host.

    Guests' bridge ports are isolated from each other unless
    ``allow_guest_traffic``; they always reach the host (and so each
    other's public forwards). A NAT network gets the IPv6 /64 ``ipv6``
    (routed, not NATed), by default a unique local one derived from its
    name; ``"none"`` leaves it IPv4 only.
    """
    name = validation.object_name(name, "network name")
    if kind not in ("nat", "bridge"):
        raise InvalidInput(f"network kind must be 'nat' or 'bridge', not {kind!r}")
    net = validation.ipv4_network(subnet)
    bridge_name = validation.bridge_name(bridge or f"kv-{name}"[:15])
    if kind == "bridge" and not bridge:
        raise InvalidInput("a bridge network needs --bridge, the name of an existing host bridge")
    start, end = validation.address_range(net, pool_start, pool_end)
    _wanted_prefix(kind, ipv6)  # bad input refused before anything else
    network = Network(
        name=name,
        kind=kind,
        libvirt_name=name,
        bridge_name=bridge_name,
        subnet=str(net),
        gateway=ipam.gateway_for(net, gateway),
        pool_start=start,
        pool_end=end,
        allow_guest_traffic=bool(allow_guest_traffic),
    )
    with ctx.db.reading() as s:
        _refuse_duplicate(s, Network, name, "network")
        _refuse_overlap(s, net, bridge_name, kind)
        prefix = network.ipv6_prefix = ipv6_prefix_for(s, name, kind, ipv6)
        xml = network_xml(s, network)  # a new network: no DHCP entries yet
        uris = list(s.scalars(select(Host.uri).where(Host.enabled).order_by(Host.id)))
    made: list[str] = []
    try:
        for uri in uris:  # libvirt first, outside the write transaction
            hv = ctx.hypervisor(uri)
            if not hv.network_exists(network.libvirt_name):
                hv.ensure_network(network.libvirt_name, xml)
                made.append(uri)
        with ctx.db.session() as s:
            _refuse_duplicate(s, Network, name, "network")  # again: another may have won
            _refuse_overlap(s, net, bridge_name, kind)
            _refuse_prefix_overlap(s, prefix)
            s.add(network)
    except BaseException:
        _remove_networks(ctx, made, network.libvirt_name)  # nothing half-made stays
        raise
    return network


def ipv6_prefix_for(session: Session, name: str, kind: str, ipv6: str | None) -> str | None:
    """The IPv6 /64 of a new network ``name``: checked, derived (``auto``) or None (``none``).

    Refuses one that overlaps another network's prefix.
    """
    prefix = _wanted_prefix(kind, ipv6)
    if prefix == "auto":
        taken = session.scalars(select(Network.ipv6_prefix).where(Network.ipv6_prefix.is_not(None)))
        prefix = ipam.default_ipv6_prefix(name, {str(p) for p in taken})
    _refuse_prefix_overlap(session, prefix)
    return prefix


def _wanted_prefix(kind: str, ipv6: str | None) -> str | None:
    """The IPv6 prefix asked for: "auto" (derive one), None (IPv4 only) or a checked /64."""
    if ipv6 is not None and ipv6.strip().lower() == "none":
        return None
    if kind != "nat":
        if ipv6 is not None:
            raise InvalidInput("only NAT networks take an IPv6 prefix (--ipv6)")
        return None
    if ipv6 is None or ipv6.strip().lower() == "auto":
        return "auto"
    return str(validation.ipv6_prefix(ipv6.strip()))


def _refuse_prefix_overlap(session: Session, prefix: str | None) -> None:
    if prefix is None:
        return
    mine = ipaddress.IPv6Network(prefix)
    for other in session.scalars(select(Network).where(Network.ipv6_prefix.is_not(None))):
        if ipaddress.IPv6Network(other.ipv6_prefix or "").overlaps(mine):
            raise Conflict(
                f"IPv6 prefix {prefix} overlaps network {other.name!r} ({other.ipv6_prefix})"
            )


def _remove_networks(ctx: Context, uris: list[str], name: str) -> None:
    for uri in uris:
        try:
            ctx.hypervisor(uri).remove_network(name)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.error("removing network %s from %s again failed: %s", name, uri, exc)


def _refuse_overlap(session: Session, net: object, bridge: str, kind: str) -> None:
    for other in session.scalars(select(Network)):
        if validation.ipv4_network(other.subnet).overlaps(net):  # type: ignore[arg-type]
            raise Conflict(f"subnet {net} overlaps network {other.name!r} ({other.subnet})")
        if kind == "nat" and other.bridge_name == bridge:
            raise Conflict(f"bridge {bridge} is already used by network {other.name!r}")


def list_networks(ctx: Context) -> list[Network]:
    with ctx.db.session() as s:
        return list(s.scalars(select(Network).order_by(Network.name)))


@audit.audits("network.remove", target="name")
def remove_network(ctx: Context, name: str, *, actor: str | None = None) -> None:
    """Forget a network no VPS or plan uses, and remove it from every enabled host.

    The check is made twice: before libvirt is asked (outside the write
    transaction) and in it; if a VPS took the network meanwhile, the network
    is created again where it was removed and the removal is refused.
    """
    with ctx.db.reading() as s:
        network = _removable_network(s, name)
        libvirt_name, xml = network.libvirt_name, network_xml(s, network)
        uris = list(s.scalars(select(Host.uri).where(Host.enabled).order_by(Host.id)))
    removed: list[str] = []
    try:
        for uri in uris:  # libvirt first, outside the write transaction
            if ctx.hypervisor(uri).remove_network(libvirt_name):
                removed.append(uri)
        with ctx.db.session() as s:
            network = _removable_network(s, name)
            s.execute(delete(IpLease).where(IpLease.network_id == network.id))
            s.delete(network)
    except BaseException:
        for uri in removed:
            ctx.hypervisor(uri).ensure_network(libvirt_name, xml)
        raise


def _removable_network(session: Session, name: str) -> Network:
    network = get_by_name(session, Network, name, "network")
    _refuse_in_use(session, Vps.network_id, network.id, f"network {name!r}")
    if session.scalar(select(func.count()).select_from(Plan).where(Plan.network_id == network.id)):
        raise Conflict(f"network {name!r} is named by a plan; remove or change the plan first")
    return network


def default_network(ctx: Context, session: Session) -> Network:
    return get_by_name(session, Network, ctx.settings.network, "network")


# -- hosts and users --------------------------------------------------------
def list_hosts(ctx: Context) -> list[Host]:
    with ctx.db.session() as s:
        return list(s.scalars(select(Host).order_by(Host.name)))


def user_by_email(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == validation.email(email)))
    if user is None:
        raise NotFound(f"no user with e-mail {email!r}")
    return user
