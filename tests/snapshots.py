"""Snapshots of the database and libvirt, to prove that a failure changed nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from kvmvps.models import Base
from kvmvps.services import Context


def db_snapshot(ctx: Context) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit log (which records failures too)."""
    out = {}
    with ctx.db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name == "audit_log":
                continue
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


def libvirt_snapshot(ctx: Context) -> dict[str, Any]:
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    return {
        "domains": hv.list_domains(prefix="kvmvps-"),
        "volumes": hv.list_volumes(ctx.settings.storage_pool),
        "dhcp_live": hv.dhcp_hosts(ctx.settings.network, live=True),
        "dhcp_config": hv.dhcp_hosts(ctx.settings.network, live=False),
    }


def snapshot(ctx: Context) -> tuple[dict, dict]:
    return db_snapshot(ctx), libvirt_snapshot(ctx)
