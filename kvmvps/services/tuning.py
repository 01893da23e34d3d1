"""Applying a plan's resource limits to a defined or running guest.

Provisioning renders the limits into the domain XML. When a VPS moves to
another plan while it runs, or a plan's limits change, the differences are
applied through the hypervisor adapter: live where the guest runs, and in
its definition, so the next start keeps them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from kvmvps import limits
from kvmvps.errors import Conflict, InvalidInput, KvmvpsError
from kvmvps.hypervisor import Hypervisor
from kvmvps.limits import PlanLimits, throttled
from kvmvps.models import Plan, Vps, VpsState
from kvmvps.services import Context, audit, views
from kvmvps.services.facts import VpsFacts, facts_of, plan_limits
from kvmvps.services.inventory import get_by_name
from kvmvps.xmlspec import Bandwidth, BandwidthLimit, IoTune

log = logging.getLogger(__name__)

DEFAULT_CPU_SHARES = 1024
NO_QUOTA = -1
DISK = "vda"


def _cpu(lim: PlanLimits) -> tuple[int, int, int]:
    tune = lim.cputune()
    return (
        tune.shares if tune.shares is not None else DEFAULT_CPU_SHARES,
        tune.period_us or 100_000,
        tune.quota_us if tune.quota_us is not None else NO_QUOTA,
    )


def _io(lim: PlanLimits) -> dict[str, int]:
    return {k: v or 0 for k, v in (lim.iotune() or IoTune()).values().items()}


def _net(lim: PlanLimits) -> dict[str, int]:
    bandwidth = lim.bandwidth() or Bandwidth()
    values: dict[str, int] = {}
    for way, limit in (("inbound", bandwidth.inbound), ("outbound", bandwidth.outbound)):
        limit = limit or BandwidthLimit(0)
        values[f"{way}.average"] = limit.average_kibps
        values[f"{way}.peak"] = limit.peak_kibps or 0
        values[f"{way}.burst"] = limit.burst_kib or 0
    return values


def apply(hv: Hypervisor, facts: VpsFacts, new: PlanLimits, old: PlanLimits | None) -> list[str]:
    """Apply what differs between ``old`` and ``new`` (all of it if ``old`` is None).

    Returns the kinds changed (``cpu``, ``disk``, ``network``).
    """
    changed = []
    if old is None or _cpu(new) != _cpu(old):
        hv.set_cpu_tune(facts.domain, *_cpu(new))
        changed.append("cpu")
    if old is None or _io(new) != _io(old):
        hv.set_block_iotune(facts.domain, DISK, _io(new))
        changed.append("disk")
    if (old is None or _net(new) != _net(old)) and facts.mac:
        hv.set_interface_bandwidth(facts.domain, facts.mac, _net(new))
        changed.append("network")
    return changed


def apply_or_restore(hv: Hypervisor, facts: VpsFacts, new: PlanLimits, old: PlanLimits) -> None:
    """:func:`apply`; on failure put ``old`` back (as far as it goes) and re-raise."""
    try:
        apply(hv, facts, new, old)
    except KvmvpsError:
        try:
            apply(hv, facts, old, new)
        except KvmvpsError as exc:
            log.error("restoring the limits of %s failed: %s", facts.domain, exc)
        raise


# -- changing a plan's limits -------------------------------------------------
LIVE_STATES = (VpsState.RUNNING, VpsState.STOPPED, VpsState.SUSPENDED)


def edit_plan(
    ctx: Context, name: str, changes: Mapping[str, int | None], *, actor: str | None = None
) -> dict[str, Any]:
    """Change a plan's limits and apply them to its VPSes; the plan's admin view.

    The view's ``vps_updated`` counts the VPSes that took the limits.

    libvirt is asked first, outside any write transaction; the plan is
    written only after every VPS took the new limits (and only if nobody
    changed it meanwhile). Any failure gives the VPSes already changed their
    old limits back and leaves the plan as it was.
    """
    with audit.audited(ctx, actor, "plan.edit", name):
        if not changes:
            raise InvalidInput("nothing to change: give at least one limit option")
        with ctx.db.reading() as s:
            plan = get_by_name(s, Plan, name, "plan")
            old = plan_limits(plan)
            new = limits.check({**old.as_dict(), **changes})
            vpses = s.scalars(select(Vps).where(Vps.plan_id == plan.id, Vps.state.in_(LIVE_STATES)))
            all_facts = [facts_of(v, ctx.settings) for v in vpses]
        _apply_all(ctx, all_facts, new, old)
        try:
            return _write_limits(ctx, name, old, new, len(all_facts))
        except BaseException:
            _restore(ctx, all_facts, old, new)
            raise


audit.declare("plan.edit")


def _write_limits(
    ctx: Context, name: str, old: PlanLimits, new: PlanLimits, updated: int
) -> dict[str, Any]:
    with ctx.db.session() as s:
        plan = get_by_name(s, Plan, name, "plan")
        if plan_limits(plan) != old:
            raise Conflict(f"plan {name!r} was changed meanwhile; try again")
        for key, value in new.as_dict().items():
            setattr(plan, key, value)
        s.flush()
        network = plan.network.name if plan.network else None
        return {**views.plan_admin_view(plan, network), "vps_updated": updated}


def _apply_all(ctx: Context, all_facts: list[VpsFacts], new: PlanLimits, old: PlanLimits) -> None:
    done: list[VpsFacts] = []
    try:
        for facts in all_facts:
            hv = ctx.hypervisor(facts.host_uri)
            held = facts.throttle_kibps  # a VPS over its transfer stays held down
            apply_or_restore(hv, facts, throttled(new, held), throttled(old, held))
            done.append(facts)
    except KvmvpsError:
        _restore(ctx, done, old, new)
        raise


def _restore(ctx: Context, done: list[VpsFacts], old: PlanLimits, new: PlanLimits) -> None:
    for facts in done:
        try:
            held = facts.throttle_kibps
            apply(ctx.hypervisor(facts.host_uri), facts, throttled(old, held), throttled(new, held))
        except KvmvpsError as exc:
            log.error("restoring the limits of %s failed: %s", facts.domain, exc)
