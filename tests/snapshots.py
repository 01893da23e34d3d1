"""Snapshots of the database and libvirt, to prove that a failure changed nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from kvmvps.models import Base, Job
from kvmvps.services import Context
from kvmvps.services.facts import domain_name_for


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
    """This installation's domains, volumes and DHCP entries.

    Domains are filtered to the ones this installation ever ordered (every
    order leaves a job naming its VPS), so that another kvmvps installation on
    the same libvirtd (a parallel test run) does not show up here.
    """
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    with ctx.db.session() as s:
        ours = {domain_name_for(u) for u in s.scalars(select(Job.vps_uuid)) if u}
    domains = hv.list_domains(prefix="kvmvps-")
    return {
        "domains": {name: state for name, state in domains.items() if name in ours},
        "volumes": hv.list_volumes(ctx.settings.storage_pool),
        "dhcp_live": hv.dhcp_hosts(ctx.settings.network, live=True),
        "dhcp_config": hv.dhcp_hosts(ctx.settings.network, live=False),
    }


def snapshot(ctx: Context) -> tuple[dict, dict]:
    return db_snapshot(ctx), libvirt_snapshot(ctx)
