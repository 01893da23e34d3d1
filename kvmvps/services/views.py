"""The stable JSON shapes of inventory objects, shared by the CLI and the API."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from kvmvps import limits
from kvmvps.models import Host, Image, Network, Plan
from kvmvps.services import Context, inventory, placement
from kvmvps.services.facts import plan_limits
from kvmvps.storage import GIB


class PlanView(TypedDict):
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    price_cents: int
    network: str | None
    limits: dict[str, int | None]
    limits_summary: list[str]
    available: NotRequired[bool]  # only in the shop's listing (plan_views)


class PlanAdminView(PlanView):
    """:class:`PlanView` with what only operators see."""

    extra_forwards: int
    hidden: bool
    transfer_gib: int | None
    over_limit: str
    over_limit_kibps: int


class ImageView(TypedDict):
    name: str
    base_path: str
    virtual_size_gib: float
    kernel_boot: bool
    kernel: str | None
    initrd: str | None
    cmdline: str | None
    login_user: str
    cloud_init: bool
    credentials: bool
    os_family: str
    hidden: bool
    rescue: bool
    tcg_cache_mib: int | None


class PublicImageView(TypedDict):
    """An image as customers see it (no paths on the host)."""

    name: str
    os_family: str
    login_user: str
    virtual_size_gib: float
    credentials: bool
    root_access: str
    fills_disk: bool


# what the login user of kvmvps's own images may do as root ("image add" images: unknown)
ROOT_ACCESS = {"debian": "sudo", "tiny": "none"}
# kvmvps's own images grow their root filesystem to the plan's disk at boot
FILLS_DISK = frozenset({"debian", "tiny"})


class NetworkView(TypedDict):
    name: str
    kind: str
    libvirt_name: str
    bridge: str
    subnet: str
    gateway: str
    pool_start: str | None
    pool_end: str | None
    ipv6_prefix: str | None
    allow_guest_traffic: bool


class HostView(TypedDict):
    name: str
    uri: str
    cpus: int
    memory_mib: int
    enabled: bool
    maintenance: bool
    public_address: str | None
    agent: bool


def plan_view(plan: Plan, network: str | None = None) -> PlanView:
    """A plan as customers see it; ``limits`` holds every limit (None: unlimited)."""
    lim = plan_limits(plan)
    return {
        "name": plan.name,
        "vcpus": plan.vcpus,
        "memory_mib": plan.memory_mib,
        "disk_gib": plan.disk_gib,
        "price_cents": plan.price_cents,
        "network": network,
        "limits": lim.as_dict(),
        "limits_summary": limits.summary(lim),
    }


def plan_admin_view(plan: Plan, network: str | None = None) -> PlanAdminView:
    """:func:`plan_view` with what only operators see (the CLI's shape)."""
    return {
        **plan_view(plan, network),
        "extra_forwards": plan.extra_forwards,
        "hidden": bool(plan.hidden),
        "transfer_gib": plan.transfer_gib,
        "over_limit": plan.over_limit,
        "over_limit_kibps": plan.over_limit_kibps,
    }


def plan_views(ctx: Context, admin: bool = False) -> list[PlanView]:
    """The shop's plans (every plan for ``admin``); ``available``: some host has room.

    Plans hidden from the shop are left out unless ``admin``. Database only.
    """
    shape = plan_admin_view if admin else plan_view
    query = select(Plan).options(selectinload(Plan.network))
    if not admin:
        query = query.where(Plan.hidden.is_(False))
    st = ctx.settings
    with ctx.db.reading() as s:
        plans = list(s.scalars(query.order_by(Plan.vcpus, Plan.memory_mib, Plan.name)))
        room = placement.available_plans(s, plans, st.cpu_overcommit, st.host_memory_reserve_mib)
        return [
            {**shape(p, p.network.name if p.network else None), "available": p.id in room}
            for p in plans
        ]


def image_view(image: Image) -> ImageView:
    return {
        "name": image.name,
        "base_path": image.base_path,
        "virtual_size_gib": round(image.virtual_size / GIB, 2),
        "kernel_boot": bool(image.kernel_path),
        "kernel": image.kernel_path,
        "initrd": image.initrd_path,
        "cmdline": image.cmdline,
        "login_user": image.login_user,
        "cloud_init": image.cloud_init,
        "credentials": image.credentials,
        "os_family": image.os_family,
        "hidden": bool(image.hidden),
        "rescue": image.rescue,
        "tcg_cache_mib": image.tcg_tb_cache_mib,
    }


def public_image_view(image: Image) -> PublicImageView:
    """An image as customers see it (no paths on the host)."""
    return {
        "name": image.name,
        "os_family": image.os_family,
        "login_user": image.login_user,
        "virtual_size_gib": round(image.virtual_size / GIB, 2),
        "credentials": bool(image.credentials),
        "root_access": ROOT_ACCESS.get(image.os_family, "unknown"),
        "fills_disk": image.os_family in FILLS_DISK,
    }


def catalogue_images(ctx: Context) -> list[PublicImageView]:
    """The OS templates customers may order (none hidden from the shop), by name."""
    shown = [i for i in inventory.list_images(ctx) if not i.hidden and not i.test_failed]
    return [public_image_view(i) for i in shown]


def network_view(net: Network) -> NetworkView:
    return {
        "name": net.name,
        "kind": net.kind,
        "libvirt_name": net.libvirt_name,
        "bridge": net.bridge_name,
        "subnet": net.subnet,
        "gateway": net.gateway,
        "pool_start": net.pool_start,
        "pool_end": net.pool_end,
        "ipv6_prefix": net.ipv6_prefix,
        "allow_guest_traffic": net.allow_guest_traffic,
    }


def host_view(host: Host) -> HostView:
    return {
        "name": host.name,
        "uri": host.uri,
        "cpus": host.cpus,
        "memory_mib": host.memory_mib,
        "enabled": host.enabled,
        "maintenance": bool(host.maintenance),
        "public_address": host.public_address,
        "agent": host.agent,
    }
