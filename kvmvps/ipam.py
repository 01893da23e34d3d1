"""IP addresses and MAC addresses for guests.

Allocation happens inside the caller's transaction; the unique constraints on
``ip_leases`` make a double allocation impossible even with concurrent orders.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import secrets
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps.errors import CapacityError, InvalidInput
from kvmvps.models import IpLease, Network, Vps
from kvmvps.xmlspec import SENTINEL_MAC, sentinel_address


def usable_addresses(network: Network) -> Iterator[ipaddress.IPv4Address]:
    """Addresses that may be handed out: never network, gateway or broadcast.

    On NAT networks the last host address is reserved for the sentinel DHCP
    entry (see :mod:`kvmvps.xmlspec`).
    """
    net = ipaddress.IPv4Network(network.subnet)
    gateway = ipaddress.IPv4Address(network.gateway)
    reserved = {gateway}
    if network.kind == "nat":
        reserved.add(ipaddress.IPv4Address(sentinel_address(network.subnet)))
    first = ipaddress.IPv4Address(network.pool_start) if network.pool_start else None
    last = ipaddress.IPv4Address(network.pool_end) if network.pool_end else None
    for addr in net.hosts():
        if addr in reserved or (first and addr < first) or (last and addr > last):
            continue
        yield addr


def next_free_address(session: Session, network: Network, exclude: set[str]) -> str:
    """A never-used address (lowest first), else the one released longest ago.

    Reads plain columns of the network's leases, not an object per lease:
    every order runs this over a network of thousands.
    """
    query = select(
        IpLease.address, IpLease.vps_id, IpLease.released_at, IpLease.created_at, IpLease.id
    ).where(IpLease.network_id == network.id)
    rows = {
        address: (vps_id, released or created, row_id)
        for address, vps_id, released, created, row_id in session.execute(query)
    }
    released = []
    for addr in map(str, usable_addresses(network)):
        if addr in exclude:
            continue
        row = rows.get(addr)
        if row is None:
            return addr
        vps_id, since, row_id = row
        if vps_id is None:
            released.append((since, row_id, addr))
    if not released:
        raise CapacityError(f"network {network.name!r} has no free addresses left")
    return min(released)[2]


def random_mac(session: Session) -> str:
    """A locally unique MAC in QEMU's 52:54:00 range."""
    for _ in range(64):
        mac = "52:54:00:" + ":".join(f"{secrets.randbelow(256):02x}" for _ in range(3))
        if mac == SENTINEL_MAC:
            continue
        taken = session.scalar(select(IpLease.id).where(IpLease.mac == mac))
        if taken is None and session.scalar(select(Vps.id).where(Vps.mac == mac)) is None:
            return mac
    raise CapacityError("could not find a free MAC address")


def allocate(
    session: Session, vps: Vps, network: Network, exclude: AbstractSet[str] = frozenset()
) -> IpLease:
    """Lease an address and a fresh MAC to ``vps`` (flushed, not committed).

    ``exclude`` names addresses that must not be handed out now, such as ones
    the host's DHCP server still leases to another MAC.
    """
    address = next_free_address(session, network, set(exclude))
    lease = session.scalar(
        select(IpLease).where(IpLease.network_id == network.id, IpLease.address == address)
    )
    if lease is None:
        lease = IpLease(network_id=network.id, address=address)
        session.add(lease)
    lease.mac, lease.vps_id, lease.released_at = random_mac(session), vps.id, None
    lease.ipv6 = ipv6_for(network, lease.address)
    vps.ip, vps.mac, vps.ipv6 = lease.address, lease.mac, lease.ipv6
    session.flush()
    return lease


def release(session: Session, vps: Vps) -> None:
    """Give the VPS's address back to the pool, remembering when."""
    lease = session.scalar(select(IpLease).where(IpLease.vps_id == vps.id))
    if lease is not None:
        lease.vps_id, lease.mac, lease.released_at = None, None, datetime.now(UTC)
    vps.ip = None
    vps.ipv6 = None
    vps.mac = None
    session.flush()


def ipv6_for(network: Network, address: str) -> str | None:
    """The IPv6 address that goes with an IPv4 address of ``network`` (None: no prefix).

    The host part is the IPv4 address's offset in its subnet: 10.0.0.23 in
    10.0.0.0/24 is PREFIX::17. The IPv6 address is so allocated, released and
    reused with the IPv4 address, and unique wherever the IPv4 address is.
    """
    return ipv6_in(network.ipv6_prefix, network.subnet, address)


@functools.lru_cache(maxsize=4096)
def ipv6_in(ipv6_prefix: str | None, subnet: str, address: str) -> str | None:
    """:func:`ipv6_for` from a network's columns (the same few, over and over: the
    network's gateway for every VPS's facts)."""
    if not ipv6_prefix:
        return None
    v6_base, v4_base = _bases(ipv6_prefix, subnet)
    offset = int(ipaddress.IPv4Address(address)) - v4_base
    return str(ipaddress.IPv6Address(v6_base + offset))


@functools.lru_cache(maxsize=256)
def _bases(ipv6_prefix: str, subnet: str) -> tuple[int, int]:
    """A network's first IPv6 and IPv4 addresses, as numbers (parsed once per network)."""
    v6 = ipaddress.IPv6Network(ipv6_prefix).network_address
    return int(v6), int(ipaddress.IPv4Network(subnet).network_address)


def default_ipv6_prefix(name: str, taken: AbstractSet[str]) -> str:
    """A unique local /64 (fd00::/8) derived from the network's name, not in ``taken``."""
    for attempt in range(64):
        digest = hashlib.sha256(f"kvmvps-network:{name}:{attempt}".encode()).digest()
        high = int.from_bytes(b"\xfd" + digest[:7], "big")
        prefix = ipaddress.IPv6Network((high << 64, 64))
        if str(prefix) not in taken:
            return str(prefix)
    raise CapacityError(f"could not derive a free IPv6 prefix for network {name!r}")


def gateway_for(subnet: ipaddress.IPv4Network, gateway: str | None) -> str:
    """The gateway: the given one (checked to be inside), or the first host address."""
    if gateway is None:
        return str(next(subnet.hosts()))
    try:
        addr = ipaddress.IPv4Address(gateway)
    except ValueError:
        raise InvalidInput(f"gateway {gateway!r} is not an IPv4 address") from None
    if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
        raise InvalidInput(f"gateway {gateway} is not a host address inside {subnet}")
    return str(addr)
