"""The stable JSON shape of a VPS, from its ORM object or from a listing's row.

:func:`view` builds it from a :class:`~kvmvps.models.Vps` (with its plan,
image, host, network, owner, pins and forwards loaded); :func:`row_view` from
a row of :data:`LIST_COLUMNS`, which the listing reads without building ORM
objects. tests/unit/test_vps_list.py checks that both agree field by field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict, overload

from kvmvps.models import Host, Image, Network, Plan, User, Vps, VpsState
from kvmvps.services import failures

VIEW_KEYS = (
    "id",
    "hostname",
    "state",
    "ip",
    "ipv6",
    "mac",
    "domain",
    "host",
    "plan",
    "image",
    "network",
    "owner",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "pinned_cpus",
    "ssh_host",
    "ssh_port",
    "username",
    "host_key_fingerprint",
    "error",
    "suspended_reason",
    "suspended_at",
    "rescue",
    "rescue_host_key_fingerprint",
    "expires_at",
    "created_at",
    "updated_at",
)


class VpsView(TypedDict):
    """The stable JSON shape of a VPS, shared by the CLI and the API."""

    id: str
    hostname: str
    state: str
    ip: str | None
    ipv6: str | None
    mac: str | None
    domain: str
    host: str
    plan: str
    image: str
    network: str
    owner: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    pinned_cpus: list[int]
    ssh_host: str | None
    ssh_port: int | None
    username: str | None
    host_key_fingerprint: str | None
    error: str | None
    expires_at: str | None
    created_at: str
    updated_at: str
    suspended_reason: str | None
    suspended_at: str | None
    rescue: bool
    rescue_host_key_fingerprint: str | None


# states a host that does not answer makes ``unknown``
SHOWN_UNKNOWN = (VpsState.BUILDING, VpsState.RUNNING, VpsState.STOPPED, VpsState.SUSPENDED)


def shown_state(vps: Vps) -> str:
    """The VPS's state; ``unknown`` for a built or building VPS while its host does not answer."""
    if vps.host.down_since is not None and vps.state in SHOWN_UNKNOWN:
        return VpsState.UNKNOWN
    return vps.state


def view(vps: Vps) -> VpsView:
    """The stable JSON shape of a VPS, shared by the CLI and the API."""
    ssh_host, ssh_port = _ssh_endpoint(vps)
    return {
        "id": vps.uuid,
        "hostname": vps.hostname,
        "state": shown_state(vps),
        "ip": vps.ip,
        "ipv6": vps.ipv6,
        "mac": vps.mac,
        "domain": vps.domain_name,
        "host": vps.host.name,
        "plan": vps.plan.name,
        "image": vps.image.name,
        "network": vps.network.name,
        "owner": vps.owner.email,
        "vcpus": vps.plan.vcpus,
        "memory_mib": vps.plan.memory_mib,
        "disk_gib": vps.plan.disk_gib,
        "pinned_cpus": vps.pinned_cpus,
        "ssh_host": ssh_host,
        "ssh_port": ssh_port,
        "username": vps.username,
        "host_key_fingerprint": vps.host_key_fingerprint,
        "error": vps.error,
        "suspended_reason": vps.suspended_reason,
        "suspended_at": iso(vps.suspended_at),
        "rescue": vps.in_rescue,
        "rescue_host_key_fingerprint": vps.rescue_host_key_fingerprint,
        "expires_at": iso(vps.expires_at),
        "created_at": iso(vps.created_at),
        "updated_at": iso(vps.updated_at),
    }


def _ssh_endpoint(vps: Vps) -> tuple[str | None, int | None]:
    """Where to log in: the public address and port of the SSH forward, else ip and 22."""
    ssh = next((f for f in vps.forwards if f.kind == "ssh" and f.public_address), None)
    if ssh is not None and vps.ip:
        return ssh.public_address, ssh.public_port
    return vps.ip, 22 if vps.ip else None


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: datetime | None) -> str | None: ...
def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


LIST_COLUMNS = (
    Vps.id,
    Vps.uuid,
    Vps.hostname,
    Vps.state,
    Vps.ip,
    Vps.ipv6,
    Vps.mac,
    Vps.domain_name,
    Host.name.label("host"),
    Host.down_since,
    Plan.name.label("plan"),
    Image.name.label("image"),
    Network.name.label("network"),
    User.email,
    Plan.vcpus,
    Plan.memory_mib,
    Plan.disk_gib,
    Vps.username,
    Vps.host_key_fingerprint,
    Vps.error,
    Vps.suspended_reason,
    Vps.suspended_at,
    Vps.rescue_image_id,
    Vps.rescue_host_key_fingerprint,
    Vps.expires_at,
    Vps.created_at,
    Vps.updated_at,
)


def row_view(
    row: Any, pins: list[int], ssh: tuple[str | None, int] | None, owner_id: int | None
) -> VpsView:
    """:func:`view` of a row of ``_LIST_COLUMNS`` (tests check that both agree).

    The row is unpacked in one go: at ten thousand VPSes, reading 27 attributes of
    each row by name cost as much as the query.
    """
    (
        _id,
        uuid,
        hostname,
        state,
        ip,
        ipv6,
        mac,
        domain,
        host,
        down_since,
        plan,
        image,
        network,
        email,
        vcpus,
        memory_mib,
        disk_gib,
        username,
        host_key_fingerprint,
        error,
        suspended_reason,
        suspended_at,
        rescue_image_id,
        rescue_host_key_fingerprint,
        expires_at,
        created_at,
        updated_at,
    ) = row
    if down_since is not None and state in SHOWN_UNKNOWN:
        state = VpsState.UNKNOWN
    ssh_host, ssh_port = ssh if ssh is not None and ip else (ip, 22 if ip else None)
    return {
        "id": uuid,
        "hostname": hostname,
        "state": state,
        "ip": ip,
        "ipv6": ipv6,
        "mac": mac,
        "domain": domain,
        "host": host,
        "plan": plan,
        "image": image,
        "network": network,
        "owner": email,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_gib": disk_gib,
        "pinned_cpus": pins,
        "ssh_host": ssh_host,
        "ssh_port": ssh_port,
        "username": username,
        "host_key_fingerprint": host_key_fingerprint,
        "error": failures.for_owner(error, owner_id),
        "suspended_reason": suspended_reason,
        "suspended_at": iso(suspended_at),
        "rescue": rescue_image_id is not None,
        "rescue_host_key_fingerprint": rescue_host_key_fingerprint,
        "expires_at": iso(expires_at),
        "created_at": iso(created_at),
        "updated_at": iso(updated_at),
    }
