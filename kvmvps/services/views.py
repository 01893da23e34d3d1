"""The stable JSON shapes of inventory objects, shared by the CLI and the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from kvmvps.models import Host, Image, Network, Plan
from kvmvps.services import Context, inventory
from kvmvps.storage import GIB


def plan_view(plan: Plan, network: str | None = None) -> dict[str, Any]:
    return {
        "name": plan.name,
        "vcpus": plan.vcpus,
        "memory_mib": plan.memory_mib,
        "disk_gib": plan.disk_gib,
        "price_cents": plan.price_cents,
        "network": network,
    }


def plan_admin_view(plan: Plan, network: str | None = None) -> dict[str, Any]:
    """:func:`plan_view` with what only operators see (the CLI's shape)."""
    return {**plan_view(plan, network), "extra_forwards": plan.extra_forwards}


def plan_views(ctx: Context, admin: bool = False) -> list[dict[str, Any]]:
    shape = plan_admin_view if admin else plan_view
    query = select(Plan).options(selectinload(Plan.network))
    with ctx.db.session() as s:
        plans = s.scalars(query.order_by(Plan.vcpus, Plan.memory_mib, Plan.name))
        return [shape(p, p.network.name if p.network else None) for p in plans]


def image_view(image: Image) -> dict[str, Any]:
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
    }


def public_image_view(image: Image) -> dict[str, Any]:
    """An image as customers see it (no paths on the host)."""
    return {
        "name": image.name,
        "os_family": image.os_family,
        "login_user": image.login_user,
        "virtual_size_gib": round(image.virtual_size / GIB, 2),
        "credentials": bool(image.credentials),
    }


def catalogue_images(ctx: Context) -> list[dict[str, Any]]:
    """The OS templates customers may order, by name."""
    return [public_image_view(i) for i in inventory.list_images(ctx)]


def network_view(net: Network) -> dict[str, Any]:
    return {
        "name": net.name,
        "kind": net.kind,
        "libvirt_name": net.libvirt_name,
        "bridge": net.bridge_name,
        "subnet": net.subnet,
        "gateway": net.gateway,
        "pool_start": net.pool_start,
        "pool_end": net.pool_end,
    }


def host_view(host: Host) -> dict[str, Any]:
    return {
        "name": host.name,
        "uri": host.uri,
        "cpus": host.cpus,
        "memory_mib": host.memory_mib,
        "enabled": host.enabled,
        "public_address": host.public_address,
    }
