"""Rescue mode: the VPS boots a rescue system, with its own disk as the second disk.

Entering rescue mode is a table of ordered, undoable steps like a build: the
VPS's own system is powered off, an overlay of the rescue image is made, the
domain is defined afresh with the rescue system on vda and the VPS's own disk
on vdb, started, its host key read and pinned (beside the VPS's own pinned
key, never instead of it), and a one-time root password pushed. A failure
undoes every step done, so the VPS is left as it was. Leaving rescue mode
powers the rescue system off, defines the VPS's own domain again from its
facts, boots it and deletes the rescue overlay; every part of it may be run
again after a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sqlalchemy import select

from kvmvps import guest, interrupt, keys, xmlrender
from kvmvps.errors import GuestError, KvmvpsError, NotFound, StepFailed
from kvmvps.hypervisor import Hypervisor
from kvmvps.interrupt import Interrupted
from kvmvps.models import Image, Vps, VpsState
from kvmvps.services import Context, credentials, inventory, isolation, provisioning
from kvmvps.services.facts import (
    RescueFacts,
    VpsFacts,
    facts_of,
    rescue_domain_spec,
    rescue_facts,
    rescue_overlay_spec,
    rescue_volume_of,
)
from kvmvps.services.steps import Build
from kvmvps.storage import check_base_image

log = logging.getLogger(__name__)

POWER_OFF_SECONDS = 30.0
RESCUE_USER = "root"
# Let root log in with a password in the rescue system (its provisioning key
# session runs this once; the password itself goes through chpasswd -e).
# Dropbear (kvmvps's tiny image) runs with -g from /etc/inittab: drop it, have
# init re-read the table (starting the new dropbear) and stop the old one
# (not this session's own dropbear, which init may have inherited meanwhile).
# OpenSSH: a drop-in allowing root's password, and a reload.
ROOT_LOGIN_SCRIPT = (
    "if grep -q 'dropbear.* -g ' /etc/inittab 2>/dev/null; then "
    "sed -i 's/^\\(.*dropbear.*\\) -g /\\1 /' /etc/inittab; kill -HUP 1; sleep 1; "
    "for d in /proc/[0-9]*; do "
    '[ "${d#/proc/}" != "$PPID" ] || continue; '
    '[ "$(cut -d" " -f4 "$d/stat" 2>/dev/null)" = 1 ] || continue; '
    "case \"$(tr '\\000' ' ' <\"$d/cmdline\" 2>/dev/null)\" in "
    '*dropbear*" -g "*) kill "${d#/proc/}" ;; esac; done; '
    "elif [ -f /etc/ssh/sshd_config ]; then mkdir -p /etc/ssh/sshd_config.d; "
    "printf 'PermitRootLogin yes\\nPasswordAuthentication yes\\n' "
    ">/etc/ssh/sshd_config.d/00-kvmvps-rescue.conf; "
    'systemctl reload ssh 2>/dev/null || kill -HUP "$(cat /run/sshd.pid)"; fi'
)


@dataclass
class Rescue:
    """The state of one entry into rescue mode while its steps run."""

    ctx: Context
    facts: VpsFacts
    rescue: RescueFacts
    was_running: bool
    xml: str = ""
    host_key: str | None = None
    deadline: float = 0.0

    @property
    def hv(self) -> Hypervisor:
        return self.ctx.hypervisor(self.facts.host_uri)


@dataclass(frozen=True)
class RescueStep:
    name: str
    do: Callable[[Rescue], None]
    undo: Callable[[Rescue], None]


# -- powering off and defining -------------------------------------------------------
def power_off(hv: Hypervisor, domain: str, seconds: float = POWER_OFF_SECONDS) -> None:
    """Press the power button and wait (the guest flushes its disks); then pull the plug."""
    if not hv.domain_exists(domain) or hv.state(domain) == "shut off":
        return
    if hv.state(domain) == "running":
        hv.shutdown(domain)
        deadline = time.monotonic() + seconds
        while hv.state(domain) != "shut off" and time.monotonic() < deadline:
            interrupt.sleep(0.2)
    if hv.state(domain) != "shut off":
        hv.destroy(domain)


def define_own(ctx: Context, facts: VpsFacts) -> None:
    """Define the VPS's own domain from its facts (what it was before rescue mode)."""
    b = Build(ctx=ctx, facts=facts)
    provisioning.render_domain(b)
    b.hv.define_domain(b.xml)


def _start_fresh(hv: Hypervisor, facts: VpsFacts) -> None:
    """Start the domain with an empty console log (the host key read next is this boot's)."""
    Path(facts.console_log).unlink(missing_ok=True)
    if hv.state(facts.domain) != "running":
        hv.start(facts.domain)


# -- the steps of entering -----------------------------------------------------------
def _stop_own(r: Rescue) -> None:
    power_off(r.hv, r.facts.domain)


def _restart_own(r: Rescue) -> None:
    if r.was_running and r.hv.state(r.facts.domain) != "running":
        r.hv.start(r.facts.domain)


def _clone(r: Rescue) -> None:
    base = check_base_image(Path(r.rescue.base_path))
    xml = xmlrender.overlay_volume_xml(rescue_overlay_spec(r.rescue, base.virtual_size))
    r.hv.delete_volume(r.facts.pool, r.rescue.volume)  # a resumed entry starts it afresh
    r.hv.create_volume(r.facts.pool, r.rescue.volume, xml)


def _unclone(r: Rescue) -> None:
    r.hv.delete_volume(r.facts.pool, r.rescue.volume)


def _render(r: Rescue) -> None:
    gateway = isolation.gateway_mac(r.hv, r.facts)
    spec = rescue_domain_spec(
        r.facts, r.rescue, r.ctx.domain_type, gateway, r.ctx.settings.tcg_tb_cache_mib
    )
    r.xml = xmlrender.domain_xml(spec)


def _nothing(_r: Rescue) -> None:
    """Nothing to undo."""


def _define(r: Rescue) -> None:
    r.hv.define_domain(r.xml)


def _define_own(r: Rescue) -> None:
    define_own(r.ctx, r.facts)


def _start(r: Rescue) -> None:
    _start_fresh(r.hv, r.facts)
    r.deadline = time.monotonic() + r.ctx.settings.ssh_timeout


def _stop(r: Rescue) -> None:
    if r.hv.domain_exists(r.facts.domain) and r.hv.state(r.facts.domain) != "shut off":
        r.hv.destroy(r.facts.domain)


def _read_host_key(r: Rescue) -> None:
    if not r.rescue.credentials:
        return
    r.host_key = guest.wait_for_console_host_key(Path(r.facts.console_log), r.deadline)
    _pin(r.ctx, r.facts.vps_id, r.host_key)


def _forget_host_key(r: Rescue) -> None:
    _pin(r.ctx, r.facts.vps_id, None)


def _pin(ctx: Context, vps_id: int, host_key: str | None) -> None:
    """Pin the rescue system's host key; the VPS's own pinned key stays as it is."""
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is not None:
            vps.rescue_host_key = host_key
            vps.rescue_host_key_fingerprint = guest.fingerprint(host_key) if host_key else None


def _push_password(r: Rescue) -> None:
    """Set the one-time root password in the rescue system and prove it works."""
    if not r.rescue.credentials:
        return
    with r.ctx.db.session() as s:
        vps = s.get(Vps, r.facts.vps_id)
        if vps is None:
            raise NotFound(f"VPS {r.facts.uuid} no longer exists")
        token = vps.pending_password
    if token is None:
        raise GuestError("no rescue password is waiting to be set")
    password = credentials.unseal(r.ctx, token)
    target = guest.Target(host=r.facts.ip or "", port=22, host_key=r.host_key or "")
    guest.wait_for_ssh_banner(target.host, target.port, r.deadline)
    key_path = keys.provisioning_key_path(r.ctx.settings)
    with guest.root_session(target, key_path, r.deadline) as client:
        line = f"{RESCUE_USER}:{guest.hash_password(password)}\n".encode()
        guest.run(client, "chpasswd -e", [], stdin=line)
        guest.run(client, ROOT_LOGIN_SCRIPT, [])
    _verify(target, password, r.deadline)
    credentials.erase_pending_password(r.ctx, r.facts.vps_id)


def _verify(target: guest.Target, password: str, deadline: float) -> None:
    """Log in with the password (pinned key) until it works: the SSH server may be restarting."""
    while True:
        try:
            guest.verify_password_login(target, RESCUE_USER, password)
            return
        except GuestError:
            if time.monotonic() >= deadline:
                raise
            interrupt.sleep(0.3)


ENTER_STEPS: tuple[RescueStep, ...] = (
    RescueStep("stop", _stop_own, _restart_own),
    RescueStep("clone-rescue", _clone, _unclone),
    RescueStep("render-rescue", _render, _nothing),
    RescueStep("define-rescue", _define, _define_own),
    RescueStep("start-rescue", _start, _stop),
    RescueStep("host-key", _read_host_key, _forget_host_key),
    RescueStep("password", _push_password, _nothing),
)


# -- entering and leaving ------------------------------------------------------------
def enter(
    ctx: Context,
    uuid: str,
    image: str,
    *,
    checkpoint: Callable[[], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Boot the VPS into the rescue system ``image``; on failure leave it as it was."""
    with ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            raise NotFound(f"VPS {uuid} no longer exists")
        if vps.in_rescue:
            return  # a resumed job whose first run finished
        facts = facts_of(vps, ctx.settings)
        chosen = inventory.get_by_name(s, Image, image, "image")
        r = Rescue(ctx, facts, rescue_facts(chosen, facts), was_running=False)
        image_id, old_state = chosen.id, vps.state
    r.was_running = r.hv.domain_exists(facts.domain) and r.hv.state(facts.domain) == "running"
    done: list[RescueStep] = []
    for index, step in enumerate(ENTER_STEPS):
        if checkpoint:
            checkpoint()
        if progress:
            progress(step.name, index, len(ENTER_STEPS))
        try:
            step.do(r)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure rolls back
            _fail(r, done + [step], step.name, exc, old_state)
        done.append(step)
    with ctx.db.session() as s:
        row = s.get(Vps, facts.vps_id)
        if row is not None:
            row.rescue_image_id, row.state, row.error = image_id, VpsState.RUNNING, None


def _fail(r: Rescue, steps: list[RescueStep], name: str, exc: Exception, state: str) -> NoReturn:
    leftovers = []
    for step in reversed(steps):
        try:
            step.undo(r)
        except Exception as undo_exc:  # noqa: BLE001 - keep undoing the rest
            log.error(
                "undoing rescue step %s of %s failed: %s", step.name, r.facts.domain, undo_exc
            )
            leftovers.append(f"{step.name}: {undo_exc}")
    credentials.erase_pending_password(r.ctx, r.facts.vps_id)
    reason = str(exc) if isinstance(exc, KvmvpsError) else f"{type(exc).__name__}: {exc}"
    message = f"rescuing {r.facts.hostname} failed at step '{name}': {reason}; rolled back"
    if leftovers:
        message += f" (cleanup left: {'; '.join(leftovers)})"
    with r.ctx.db.session() as s:
        vps = s.get(Vps, r.facts.vps_id)
        if vps is not None:
            vps.state = state if not leftovers else VpsState.ERROR
            vps.error = message if leftovers else None
    raise StepFailed(message) from exc


def leave(ctx: Context, uuid: str) -> None:
    """Power the rescue system off and boot the VPS's own system, as it was defined."""
    with ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            raise NotFound(f"VPS {uuid} no longer exists")
        if not vps.in_rescue:
            return  # a resumed job whose first run finished
        facts = facts_of(vps, ctx.settings)
    hv = ctx.hypervisor(facts.host_uri)
    power_off(hv, facts.domain)
    define_own(ctx, facts)
    _start_fresh(hv, facts)
    hv.delete_volume(facts.pool, rescue_volume_of(facts.domain))
    with ctx.db.session() as s:
        row = s.get(Vps, facts.vps_id)
        if row is not None:
            row.rescue_image_id = None
            row.rescue_host_key = row.rescue_host_key_fingerprint = None
            row.state, row.error = VpsState.RUNNING, None
