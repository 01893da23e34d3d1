"""More VPS operations: the serial console and moving to another plan."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps import cpupin
from kvmvps.errors import CapacityError, Conflict, InvalidInput, KvmvpsError
from kvmvps.hypervisor import Hypervisor
from kvmvps.limits import throttled
from kvmvps.models import Job, JobState, Plan, Snapshot, Vps, VpsState
from kvmvps.services import Context, audit, placement, provisioning, tuning
from kvmvps.services.facts import VpsFacts, facts_of, plan_limits
from kvmvps.services.inventory import get_by_name
from kvmvps.services.steps import Build
from kvmvps.services.vps import VpsView, resolve, view
from kvmvps.storage import check_base_image, overlay_capacity

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 4 << 20


# -- console -----------------------------------------------------------------
def console_log_path(ctx: Context, ref: str) -> tuple[str, Path]:
    """The VPS's hostname and the file its serial console is logged to."""
    with ctx.db.session() as s:
        vps = resolve(s, ref)
        return vps.hostname, Path(facts_of(vps, ctx.settings).console_log)


def console_log(ctx: Context, ref: str, max_bytes: int = MAX_LOG_BYTES) -> str:
    """The end of the VPS's console log (at most ``max_bytes``), as text."""
    hostname, path = console_log_path(ctx, ref)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        raise KvmvpsError(
            f"{hostname} has no console log yet (it is written while the VPS runs)"
        ) from None
    except OSError as exc:
        raise KvmvpsError(f"cannot read the console log of {hostname}: {exc.strerror}") from None
    return data.decode("utf-8", errors="replace")


# -- resize ------------------------------------------------------------------
def _check_plans(vps: Vps, old: Plan, new: Plan) -> None:
    if new.id == old.id:
        raise InvalidInput(f"{vps.hostname} already has plan {new.name!r}")
    if new.disk_gib < old.disk_gib:
        raise InvalidInput(
            f"disks only grow: plan {new.name!r} has {new.disk_gib} GiB, "
            f"{vps.hostname} already has {old.disk_gib} GiB"
        )


def _check_stopped(session: Session, vps: Vps, hv: Hypervisor) -> None:
    state = vps.state
    if state == VpsState.STOPPED and hv.state(vps.domain_name) != "shut off":
        state = "running according to libvirt"
    if state != VpsState.STOPPED:
        raise Conflict(
            f"cannot resize {vps.hostname}: it is {state}; stop it first "
            "(only a plan of the same size applies live)"
        )
    if _busy(session, vps):
        raise Conflict(f"cannot resize {vps.hostname}: a job is still working on it")


def _repin(ctx: Context, session: Session, vps: Vps, old: Plan, new: Plan) -> None:
    """Put the VPS on ``new`` and pin its vCPUs afresh, if the host has room."""
    st = ctx.settings
    cpupin.release(session, vps)
    vps.plan = new
    session.flush()
    cap = placement.capacity(session, vps.host, st.cpu_overcommit, st.host_memory_reserve_mib)
    if new.memory_mib > old.memory_mib and cap.memory_committed_mib > cap.memory_limit_mib:
        raise CapacityError(
            f"host {vps.host.name} has {cap.free_memory_mib + new.memory_mib - old.memory_mib} "
            f"MiB free, too little to grow {vps.hostname} to {new.memory_mib} MiB"
        )
    if new.vcpus > old.vcpus and cap.vcpus_pinned + new.vcpus > cap.vcpu_limit:
        raise CapacityError(
            f"host {vps.host.name} has {cap.free_vcpus} vCPU(s) free, too few for {new.vcpus} vCPUs"
        )
    cpupin.allocate(session, vps, vps.host, new.vcpus, st.cpu_overcommit)


def _redefine(ctx: Context, hv: Hypervisor, facts: VpsFacts, grow_to: int | None) -> str:
    """Define the domain afresh from the facts and grow the disk; return the old XML.

    If growing fails the old definition is restored before the error is raised.
    """
    build = Build(ctx=ctx, facts=facts)
    provisioning.render_domain(build)
    old_xml = hv.domain_xml(facts.domain)
    hv.define_domain(build.xml)
    try:
        if grow_to is not None:
            hv.resize_volume(facts.pool, facts.overlay_volume, grow_to)
    except Exception:
        _restore(hv, old_xml, facts.domain)
        raise
    return old_xml


def _restore(hv: Hypervisor, xml: str, domain: str) -> None:
    try:
        hv.define_domain(xml)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        log.error("restoring the definition of %s failed: %s", domain, exc)


def _same_size(old: Plan, new: Plan) -> bool:
    return (old.vcpus, old.memory_mib, old.disk_gib) == (new.vcpus, new.memory_mib, new.disk_gib)


def _busy(session: Session, vps: Vps) -> bool:
    query = select(Job.id).where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED))
    return session.scalar(query) is not None


def _resize_live(ctx: Context, session: Session, vps: Vps, old: Plan, new: Plan) -> None:
    """Same size, other limits: apply them to the running guest (and its definition)."""
    if _busy(session, vps):
        raise Conflict(f"cannot resize {vps.hostname}: a job is still working on it")
    facts = facts_of(vps, ctx.settings)
    held = throttled(plan_limits(new), vps.throttle_kibps)  # over the transfer: still held
    tuning.apply_or_restore(ctx.hypervisor(vps.host), facts, held, facts.limits)
    vps.plan = new


@audit.audits("vps.resize", target="ref")
def resize(ctx: Context, ref: str, plan: str, *, actor: str | None = None) -> VpsView:
    """Move a VPS to another plan: vCPUs and memory follow, the disk only grows.

    A plan of the same size (only other limits) is applied live to a running
    VPS; any other move needs the VPS stopped. Database changes commit only
    after libvirt has the new definition and disk (or limits); any failure
    before that leaves both as they were.
    """
    with ctx.db.session() as s:
        vps = resolve(s, ref)
        if vps.in_rescue:
            raise Conflict(f"cannot resize {vps.hostname}: it is in rescue mode; unrescue it first")
        if s.scalar(select(Snapshot.id).where(Snapshot.vps_id == vps.id).limit(1)) is not None:
            raise Conflict(
                f"cannot resize {vps.hostname}: it has snapshots (their memory and disk fit "
                "the old size); delete them first"
            )
        new = get_by_name(s, Plan, plan, "plan")
        if vps.state in (VpsState.RUNNING, VpsState.SUSPENDED) and _same_size(vps.plan, new):
            _check_plans(vps, vps.plan, new)
            _resize_live(ctx, s, vps, vps.plan, new)
            s.flush()
            return view(vps)
    return _resize_stopped(ctx, ref, plan)


def _resize_stopped(ctx: Context, ref: str, plan: str) -> VpsView:
    hv: Hypervisor | None = None
    old_xml, domain = None, ""
    try:
        with ctx.db.session() as s:
            vps = resolve(s, ref)
            new, old = get_by_name(s, Plan, plan, "plan"), vps.plan
            _check_plans(vps, old, new)
            hv, domain = ctx.hypervisor(vps.host), vps.domain_name
            _check_stopped(s, vps, hv)
            _repin(ctx, s, vps, old, new)
            facts = facts_of(vps, ctx.settings)
            size = overlay_capacity(
                new.disk_gib, check_base_image(Path(facts.base_path)), facts.image_name
            )
            old_xml = _redefine(ctx, hv, facts, size if new.disk_gib > old.disk_gib else None)
            s.flush()
            return view(vps)
    except BaseException:
        if hv is not None and old_xml is not None:
            _restore(hv, old_xml, domain)
        raise
