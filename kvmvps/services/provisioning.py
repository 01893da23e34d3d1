"""Turning an order into a running guest, and a guest back into nothing.

An order is recorded first (:mod:`kvmvps.services.ordering`): the VPS row, its
address, MAC and pinned CPUs in one transaction. The build then runs ordered steps; each step knows how to
undo itself, and a failure undoes every step already done (and the failing
one) in reverse before the allocation is released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from sqlalchemy import delete as sa_delete
from sqlalchemy import select

from kvmvps import cpupin, ipam, logs, xmlrender
from kvmvps.errors import (
    HypervisorError,
    HypervisorUnavailable,
    KvmvpsError,
    NotFound,
    StepFailed,
)
from kvmvps.hypervisor import DhcpEntry
from kvmvps.interrupt import Interrupted
from kvmvps.models import Image, Snapshot, Vps, VpsState
from kvmvps.services import (
    Context,
    backup_work,
    credentials,
    forwards,
    hostwait,
    inventory,
    isolation,
)
from kvmvps.services.facts import (
    VpsFacts,
    domain_spec,
    load_facts,
    overlay_spec,
    rescue_volume_of,
)

# what was here before the order's recording had a module of its own
from kvmvps.services.ordering import MAX_NAME as MAX_NAME
from kvmvps.services.ordering import MAX_SSH_KEYS_TEXT as MAX_SSH_KEYS_TEXT
from kvmvps.services.ordering import Order as Order
from kvmvps.services.ordering import OrderRequest as OrderRequest
from kvmvps.services.ordering import check_order as check_order
from kvmvps.services.ordering import place_order as place_order
from kvmvps.services.ordering import record_order as record_order
from kvmvps.services.steps import Background, Build, Progress, Step
from kvmvps.storage import check_base_image, overlay_capacity
from kvmvps.xmlspec import DhcpHost, filters_after_start

log = logging.getLogger(__name__)


# -- the steps ---------------------------------------------------------------
def _clone(b: Build) -> None:
    base = check_base_image(Path(b.facts.base_path))
    capacity = overlay_capacity(b.facts.disk_gib, base, b.facts.image_name)
    xml = xmlrender.overlay_volume_xml(overlay_spec(b.facts, capacity))
    b.hv.create_volume(b.facts.pool, b.facts.overlay_volume, xml)
    if b.backup is not None and not b.hv.domain_exists(b.facts.domain):
        backup_work.fill_from_backup(b.ctx, b.facts, b.backup)  # not again once it may boot


def _unclone(b: Build) -> None:
    b.hv.delete_volume(b.facts.pool, b.facts.overlay_volume)


def render_domain(b: Build) -> None:
    """Render and validate the domain XML of the build's facts into ``b.xml``."""
    gateway = isolation.gateway_mac(b.hv, b.facts)
    spec = domain_spec(
        b.facts,
        b.ctx.domain_type,
        b.facts.cloud_init,
        gateway,
        tb_cache_mib=b.ctx.settings.tcg_tb_cache_mib,
    )
    b.xml = xmlrender.domain_xml(spec)
    boot = filters_after_start(spec) if isolation.filters_supported(b.hv) else None
    if boot is not None and b.facts.mac:
        b.boot_xml = xmlrender.domain_xml(boot)
        b.nic_xml = xmlrender.interface_xml(spec, b.facts.mac)


def _add_dhcp(b: Build) -> None:
    """Start adding the DHCP entry, right after the domain started; ``dhcp-ready`` waits.

    A live DHCP change makes libvirt reload dnsmasq (about 0.3 s) and holds
    the network's lock meanwhile, which would delay the domain's start; so the
    entry is written while the guest's firmware and kernel boot. The guest's
    first DHCP request comes later than that, and DHCP clients retry anyway.
    """
    host = b.facts.dhcp_host
    if host is not None:
        xml = xmlrender.dhcp_host_xml(host)
        b.dhcp = Background(b.hv.add_dhcp_host, b.facts.network_libvirt, _entry(host), xml)


def _dhcp_ready(b: Build) -> None:
    """Wait for the entry :func:`_add_dhcp` is writing; a retry of this step writes it here."""
    if b.dhcp is not None:
        pending, b.dhcp = b.dhcp, None
        pending.result()
        return
    host = b.facts.dhcp_host
    if host is not None:  # the first try failed (its host went away): write it now
        b.hv.add_dhcp_host(b.facts.network_libvirt, _entry(host), xmlrender.dhcp_host_xml(host))


def _remove_dhcp(b: Build) -> None:
    if b.dhcp is not None:
        b.dhcp.wait()
    host = b.facts.dhcp_host
    if host is not None:
        b.hv.remove_dhcp_host(b.facts.network_libvirt, _entry(host), xmlrender.dhcp_host_xml(host))


def _entry(host: DhcpHost) -> DhcpEntry:
    return DhcpEntry(mac=host.mac, ip=host.ip, name=host.name)


def _define(b: Build) -> None:
    b.hv.define_domain(b.xml)


def _undefine(b: Build) -> None:
    b.hv.undefine(b.facts.domain)
    Path(b.facts.console_log).unlink(missing_ok=True)


def _start(b: Build) -> None:
    """Start the guest; its NIC's filter is built while it boots (see ``filter``)."""
    if b.hv.state(b.facts.domain) != "running":
        credentials.start_watching_console(b)
        if b.boot_xml is not None and b.nic_xml is not None:
            b.filters = Background(b.hv.update_device_live, b.facts.domain, b.nic_xml)
    b.deadline = time.monotonic() + b.ctx.settings.ssh_timeout
    if b.job_deadline is not None:
        b.deadline = min(b.deadline, b.job_deadline)


def _filter_ready(b: Build) -> None:
    """The NIC has its traffic filter and its link is up.

    libvirt builds a NIC's filter (an ebtables and iptables process per rule,
    about 3 s on an idle 2-core machine) while it starts the domain, before
    the guest runs. The first boot starts the NIC unfiltered and unplugged
    instead, and :func:`_start` puts the filter in place and plugs it in live
    while the guest boots; here the build waits for that. A resumed build
    whose guest was already running checks the NIC and puts it right itself.
    """
    if b.filters is not None:
        pending, b.filters = b.filters, None
        pending.result()
        return
    if b.nic_xml is None:
        return
    nic = next((n for n in b.hv.interfaces(b.facts.domain) if n.mac == b.facts.mac), None)
    if nic is None or nic.filter is None or nic.link_down:
        b.hv.update_device_live(b.facts.domain, b.nic_xml)


def _stop(b: Build) -> None:
    if b.filters is not None:
        b.filters.wait()
        b.filters = None
    b.close_console()
    if b.hv.domain_exists(b.facts.domain) and b.hv.state(b.facts.domain) != "shut off":
        b.hv.destroy(b.facts.domain)


def _nothing(_b: Build) -> None:
    """Rendering leaves nothing behind to undo."""


def _forward_ports(b: Build) -> None:
    """Write the host's forwarding rules, this VPS's among them, before it boots.

    Nothing to undo here: the rules go when the ports are released.
    """
    forwards.apply_for_vps(b.ctx, b.facts.vps_id)


STEPS: tuple[Step, ...] = (
    Step("clone", _clone, _unclone),
    Step("seed", credentials.make_seed, credentials.remove_seed),
    Step("render", render_domain, _nothing),
    Step("forwards", _forward_ports, _nothing),
    Step("define", _define, _undefine),
    Step("start", _start, _stop),
    Step("dhcp", _add_dhcp, _remove_dhcp),
    Step("dhcp-ready", _dhcp_ready, _nothing),
    Step("filter", _filter_ready, _nothing),
    Step("host-key", credentials.read_host_key, credentials.forget_host_key),
    Step("credentials", credentials.push, _nothing),
)


# -- running the steps -------------------------------------------------------
def build(
    ctx: Context,
    uuid: str,
    progress: Progress | None = None,
    *,
    checkpoint: Callable[[], None] | None = None,
    deadline: float | None = None,
    backup: str | None = None,
) -> dict[str, float]:
    """Run every step for the VPS; roll back and raise :class:`StepFailed` on failure.

    ``backup`` (a backup's uuid) makes its content the new disk. ``checkpoint`` runs before each step and may raise :class:`~kvmvps.services.steps.Interrupted`;
    ``deadline`` (``time.monotonic()``) is the job's time limit. Every step is
    idempotent, so a build interrupted anywhere can simply be run again.
    """
    b = _load(ctx, uuid, deadline)
    b.backup = backup
    with ctx.db.session() as s:
        vps = s.get(Vps, b.facts.vps_id)
        if vps is not None:  # a reinstall of a VPS whose last build waits for its rollback
            vps.state, vps.error, vps.rollback_pending = VpsState.BUILDING, None, False
    try:
        return _run_steps(b, progress, checkpoint, deadline)
    finally:
        b.close_console()


def _run_steps(
    b: Build,
    progress: Progress | None,
    checkpoint: Callable[[], None] | None,
    deadline: float | None,
) -> dict[str, float]:
    done: list[Step] = []
    for index, step in enumerate(STEPS):
        if checkpoint:
            checkpoint()
        if progress:
            progress(step.name, index, len(STEPS))
        started = time.perf_counter()
        try:
            if deadline is not None and time.monotonic() > deadline:
                raise StepFailed("the build passed its time limit")
            _do_with_retries(step, b)
        except Interrupted:
            raise  # the worker is stopping: the next one resumes at this step
        except Exception as exc:  # noqa: BLE001 - every failure rolls back
            _log_step(step.name, time.perf_counter() - started, exc)
            _fail(b, done + [step], step.name, exc)
        b.timings[step.name] = time.perf_counter() - started
        _log_step(step.name, b.timings[step.name])
        done.append(step)
    _set_state(b.ctx, b.facts.vps_id, VpsState.RUNNING)
    return b.timings


def _log_step(name: str, seconds: float, exc: Exception | None = None) -> None:
    """One line per step: its name and duration (and why it failed)."""
    rounded = round(seconds, 3)
    if exc is None:
        logs.event(log, "step", f"step {name} done in {seconds:.2f} s", step=name, seconds=rounded)
        return
    reason = str(exc) if isinstance(exc, KvmvpsError) else f"{type(exc).__name__}: {exc}"
    logs.event(
        log,
        "step-failed",
        f"step {name} failed after {seconds:.2f} s: {reason}; rolling back",
        logging.WARNING,
        step=name,
        seconds=rounded,
        error=reason,
    )


def _load(ctx: Context, uuid: str, deadline: float | None) -> Build:
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            raise NotFound(f"VPS {uuid} no longer exists")
        b = Build(ctx=ctx, facts=load_facts(s, vps.id, ctx.settings), host_key=vps.host_key)
    b.job_deadline = deadline
    return b


def _do_with_retries(step: Step, b: Build) -> None:
    """Run a step; while its host does not answer, wait for it (KVMVPS_HOST_WAIT), then give up.

    Every step is idempotent, so a step cut off by its host going away simply
    runs again once the host answers.
    """
    until = hostwait.limit(b.ctx, b.job_deadline)
    while True:
        try:
            step.do(b)
            return
        except HypervisorUnavailable as exc:
            log.warning("step %s of %s: %s", step.name, b.facts.domain, exc)
            if not hostwait.wait_for(b.hv, until):
                raise


def _fail(b: Build, steps: list[Step], step_name: str, exc: Exception) -> NoReturn:
    """Roll back ``steps`` and mark the VPS failed; while its host is away, defer the rollback.

    A host that does not answer cannot undo anything; releasing the address
    and CPUs meanwhile would hand them to another VPS while the half-made
    guest may still run there. So the VPS keeps them, is marked failed with
    ``rollback_pending``, and reconcile rolls it back once the host answers.
    """
    b.close_console()
    message = _failure_message(b.facts, step_name, exc)
    gone = isinstance(exc, HypervisorUnavailable)  # it was waited for already
    until = time.monotonic() if gone else hostwait.limit(b.ctx, b.job_deadline)
    if not hostwait.wait_for(b.hv, until):
        _defer_rollback(b, message, exc)
    leftovers, unreachable = _undo(b, steps)
    if unreachable:
        _defer_rollback(b, message, exc)
    if leftovers:
        message += f" (cleanup left: {'; '.join(leftovers)})"
    _mark_failed(b.ctx, b.facts.vps_id, message)
    raise StepFailed(message) from exc


DEFERRED = "; its host does not answer: it is rolled back when the host answers again"


def _defer_rollback(b: Build, message: str, exc: Exception) -> NoReturn:
    message = message.removesuffix("; rolled back") + DEFERRED
    _mark_waiting(b.ctx, b.facts.vps_id, message)
    raise StepFailed(message) from exc


def _mark_waiting(ctx: Context, vps_id: int, message: str) -> None:
    """Failed, its allocations kept, its rollback left to reconcile (see :func:`_fail`)."""
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is not None:
            vps.state, vps.error = VpsState.ERROR, message
            vps.rollback_pending, vps.pending_password = True, None


def _failure_message(facts: VpsFacts, step: str, exc: Exception) -> str:
    reason = str(exc) if isinstance(exc, KvmvpsError) else f"{type(exc).__name__}: {exc}"
    return f"building {facts.hostname} failed at step '{step}': {reason}; rolled back"


def _roll_back(b: Build, steps: list[Step]) -> list[str]:
    """Undo ``steps`` in reverse; return what could not be undone."""
    return _undo(b, steps)[0]


def _undo(b: Build, steps: list[Step]) -> tuple[list[str], bool]:
    """Undo ``steps`` in reverse: what could not be undone, and whether the host was away."""
    leftovers, unreachable = [], False
    for step in reversed(steps):
        try:
            step.undo(b)
        except Exception as exc:  # noqa: BLE001 - keep undoing the rest
            log.error("undoing step %s of %s failed: %s", step.name, b.facts.domain, exc)
            leftovers.append(f"{step.name}: {exc}")
            unreachable = unreachable or isinstance(exc, HypervisorUnavailable)
    return leftovers, unreachable


def _mark_failed(ctx: Context, vps_id: int, message: str) -> None:
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is None:
            return
        ipam.release(s, vps)
        cpupin.release(s, vps)
        forwards.release(s, vps)
        vps.state, vps.error = VpsState.ERROR, message
        vps.pending_password, vps.rollback_pending = None, False
        host_id = vps.host_id
    forwards.apply_quietly(ctx, host_id)


def _set_state(ctx: Context, vps_id: int, state: str, error: str | None = None) -> None:
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is not None:
            vps.state, vps.error = state, error


# -- deleting and reinstalling ----------------------------------------------
def delete(ctx: Context, uuid: str) -> None:
    """The full reverse of create: domain, DHCP entry, volumes, leases, row.

    Raises :class:`NotFound` when the row is gone already (a resumed delete
    whose first run got that far); the delete job then simply succeeds.
    """
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            raise NotFound(f"VPS {uuid} no longer exists")
        facts = load_facts(s, vps.id, ctx.settings)
        vps.state = VpsState.DELETING
    b = Build(ctx=ctx, facts=facts)
    leftovers = _roll_back(b, list(STEPS))
    b.hv.delete_volume(facts.pool, rescue_volume_of(facts.domain))  # deleted in rescue mode
    if leftovers:
        _set_state(ctx, facts.vps_id, VpsState.ERROR, "delete incomplete: " + "; ".join(leftovers))
        raise HypervisorError(f"deleting {facts.hostname} left work undone: {leftovers[0]}")
    with ctx.db.session() as s:
        vps = s.get(Vps, facts.vps_id)
        if vps is None:
            return  # another run of this delete removed the row meanwhile
        ipam.release(s, vps)
        cpupin.release(s, vps)
        forwards.release(s, vps)
        host_id = vps.host_id
        s.delete(vps)
    forwards.apply_quietly(ctx, host_id)


def reinstall(
    ctx: Context,
    uuid: str,
    image: str | None = None,
    progress: Progress | None = None,
    *,
    checkpoint: Callable[[], None] | None = None,
    deadline: float | None = None,
) -> dict[str, float]:
    """A fresh overlay from the image (or another one), new host key, new credentials.

    The address, MAC, pinned CPUs and DHCP entry stay; the old disk is gone.
    """
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            raise NotFound(f"VPS {uuid} no longer exists")
        if image:
            new = inventory.get_by_name(s, Image, image, "image")
            overlay_capacity(vps.plan.disk_gib, check_base_image(Path(new.base_path)), new.name)
            vps.image_id, vps.username = new.id, new.login_user
        vps.host_key = vps.host_key_fingerprint = None
        vps.state = VpsState.BUILDING
        s.execute(sa_delete(Snapshot).where(Snapshot.vps_id == vps.id))  # the volume is new
        facts = load_facts(s, vps.id, ctx.settings)
    b = Build(ctx=ctx, facts=facts)
    b.hv.undefine(facts.domain)
    Path(facts.console_log).unlink(missing_ok=True)
    for volume in (facts.overlay_volume, facts.seed_volume):
        b.hv.delete_volume(facts.pool, volume)
    return build(ctx, uuid, progress, checkpoint=checkpoint, deadline=deadline)


def abandon(ctx: Context, uuid: str, reason: str) -> None:
    """Roll back every step of a build nobody can finish, and mark the VPS failed."""
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            return
        facts = load_facts(s, vps.id, ctx.settings)
    leftovers, unreachable = _undo(Build(ctx=ctx, facts=facts), list(STEPS))
    message = f"building {facts.hostname} failed: {reason}"
    if unreachable:
        _mark_waiting(ctx, facts.vps_id, message + DEFERRED)
        return
    message += "; rolled back"
    if leftovers:
        message += f" (cleanup left: {'; '.join(leftovers)})"
    _mark_failed(ctx, facts.vps_id, message)


def finish_rollback(ctx: Context, uuid: str) -> bool:
    """Roll back a failed build that waited for its host; True when done.

    Reconcile calls this once the host answers again. False: the host went
    away again, and the VPS keeps waiting (and holding its allocations).
    """
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid, Vps.rollback_pending))
        if vps is None:
            return True
        facts = load_facts(s, vps.id, ctx.settings)
        reason = (vps.error or "").removesuffix(DEFERRED)
    b = Build(ctx=ctx, facts=facts)
    leftovers, unreachable = _undo(b, list(STEPS))
    if unreachable:
        return False
    message = f"{reason}; rolled back once its host answered again"
    if leftovers:
        message += f" (cleanup left: {'; '.join(leftovers)})"
    _mark_failed(ctx, facts.vps_id, message)
    return True
