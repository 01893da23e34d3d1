"""Credentials: the cloud-init seed, the pinned host key, the pushed password.

The password is generated at order time and shown once. Until the build has
pushed it, it is kept only sealed (Fernet, key in the state dir); after the
push, or a failed build, the sealed copy is erased.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kvmvps import cloudinit, guest, interrupt, keys, xmlrender
from kvmvps.errors import Conflict, GuestError, HostKeyMismatch, NotFound
from kvmvps.hypervisor import ConsoleStream
from kvmvps.interrupt import Interrupted
from kvmvps.models import Vps, VpsState
from kvmvps.services import Context
from kvmvps.services.steps import Build
from kvmvps.services.vps import resolve
from kvmvps.xmlspec import RawVolumeSpec

log = logging.getLogger(__name__)


def seal(ctx: Context, password: str) -> str:
    return keys.seal_key(ctx.settings).encrypt(password.encode()).decode()


def unseal(ctx: Context, token: str) -> str:
    return keys.seal_key(ctx.settings).decrypt(token.encode()).decode()


def _pin(ctx: Context, vps_id: int, host_key: str | None) -> None:
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is None:
            return  # deleted meanwhile: nothing to pin the key to
        vps.host_key = host_key
        vps.host_key_fingerprint = guest.fingerprint(host_key) if host_key else None


# -- steps ------------------------------------------------------------------
def make_seed(b: Build) -> None:
    """Cloud-init images: build the NoCloud seed with a host key we generated."""
    f = b.facts
    if not f.cloud_init:
        return
    if b.host_key and b.hv.volume_exists(f.pool, f.seed_volume):
        return  # resumed build: the guest may already have read this seed
    host_key = cloudinit.generate_host_key()
    user_data = cloudinit.render_user_data(
        hostname=f.hostname,
        login_user=f.login_user,
        provisioning_pubkey=keys.provisioning_public_key(b.ctx.settings),
        host_keys=[host_key],
    )
    meta_data = cloudinit.render_meta_data(instance_id=f.uuid, hostname=f.hostname)
    network_config = None
    if f.ipv6 and f.ipv6_gateway and f.mac:
        network_config = cloudinit.render_network_config(
            mac=f.mac, ipv6=f.ipv6, ipv6_gateway=f.ipv6_gateway
        )
    iso = cloudinit.build_seed_iso(
        user_data=user_data, meta_data=meta_data, network_config=network_config
    )
    b.hv.delete_volume(f.pool, f.seed_volume)
    xml = xmlrender.raw_volume_xml(RawVolumeSpec(name=f.seed_volume, capacity_bytes=len(iso)))
    b.hv.upload_volume(f.pool, f.seed_volume, xml, iso)
    b.host_key = host_key.public_openssh
    _pin(b.ctx, f.vps_id, b.host_key)


def remove_seed(b: Build) -> None:
    b.hv.delete_volume(b.facts.pool, b.facts.seed_volume)
    _pin(b.ctx, b.facts.vps_id, None)


def start_watching_console(b: Build) -> None:
    """Start the guest; an image without cloud-init is started paused, its console attached.

    Attaching before the first instruction runs means nothing the guest prints
    at boot is missed, whether the host is local or reached over SSH.
    """
    f = b.facts
    if f.cloud_init or not f.credentials:
        _start(b, paused=False)
        return
    if not _start(b, paused=True):
        return  # this host cannot start it paused: the key is read from the console log
    b.close_console()
    try:
        b.console = b.hv.open_console(f.domain)
    finally:
        b.hv.resume(f.domain)


def _start(b: Build, paused: bool) -> bool:
    """Start the domain as defined, or as its first boot (``b.boot_xml``) where there is one."""
    if b.boot_xml is not None:
        return b.hv.start_as(b.facts.domain, b.boot_xml, paused=paused)
    return b.hv.start(b.facts.domain, paused=paused)


def read_host_key(b: Build) -> None:
    """Other images: read the host key the guest prints on its serial console.

    From the console stream attached at boot; a resumed build whose guest was
    already running reads the local console log instead (local hosts only).
    """
    if b.facts.cloud_init or not b.facts.credentials:
        return
    if b.console is not None:
        key = host_key_from_console(b.console, b.deadline, Path(b.facts.console_log))
        b.close_console()
    else:
        key = guest.wait_for_console_host_key(Path(b.facts.console_log), b.deadline)
    b.host_key = key
    _pin(b.ctx, b.facts.vps_id, key)


def _keys_in_log(path: Path) -> list[str]:
    try:
        return guest.parse_console_host_keys(path.read_text(errors="replace"))
    except OSError:
        return []  # a remote host's log is on that host


CONSOLE_KEEP = 256 * 1024  # the tail of the boot output searched for the key block


def host_key_from_console(stream: ConsoleStream, deadline: float, log_path: Path) -> str:
    """Read the console until the guest has printed its host keys; the preferred one.

    Where the host is this machine, the console's log file is looked at too.
    """
    text = ""
    while True:
        interrupt.check()
        data = stream.read(0.2)
        if data:
            text = (text + data.decode("utf-8", errors="replace"))[-CONSOLE_KEEP:]
        keys = guest.parse_console_host_keys(text) or _keys_in_log(log_path)
        if keys:
            return guest.preferred_key(keys)
        if data == b"":
            raise GuestError("the serial console closed before the guest printed its SSH host key")
        if time.monotonic() >= deadline:
            raise GuestError("the guest never printed its SSH host key on the serial console")


def forget_host_key(b: Build) -> None:
    if not b.facts.cloud_init:
        _pin(b.ctx, b.facts.vps_id, None)


def push(b: Build) -> None:
    """Push hostname, password and keys over SSH, then prove the password works."""
    f = b.facts
    if not f.credentials:
        return
    with b.ctx.db.session() as s:
        vps = s.get(Vps, f.vps_id)
        if vps is None:
            raise NotFound(f"VPS {f.uuid} no longer exists")
        token, ssh_keys = vps.pending_password, vps.ssh_keys.splitlines()
    if token is None:
        if b.host_key:
            return  # pushed before a crash; the build is being resumed
        raise GuestError("no pending password to push")
    password = unseal(b.ctx, token)
    target = guest.Target(host=f.ip or "", port=22, host_key=b.host_key or "")
    key_path = keys.provisioning_key_path(b.ctx.settings)
    phases = guest.deliver_credentials(
        target,
        key_path,
        b.deadline,
        hostname=f.hostname,
        user=f.login_user,
        password=password,
        ssh_keys=ssh_keys,
        ipv6=f.ipv6_config,
    )
    log.debug("credentials of %s: %s", f.domain, {k: round(v, 3) for k, v in phases.items()})
    erase_pending_password(b.ctx, f.vps_id)


def erase_pending_password(ctx: Context, vps_id: int) -> None:
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is not None:
            vps.pending_password = None


# -- password reset ---------------------------------------------------------
def apply_password_reset(ctx: Context, uuid: str) -> None:
    """Push the password sealed by a reset request, prove it works, erase it."""
    with ctx.db.session() as s:
        vps = resolve(s, uuid)
        if vps.state != VpsState.RUNNING:
            raise Conflict(f"cannot reset the password of {vps.hostname}: it is {vps.state}")
        if vps.pending_password is None:
            raise GuestError(f"no new password is waiting for {vps.hostname}")
        target = guest.Target(host=vps.ip or "", port=22, host_key=vps.host_key or "")
        vps_id, user, token = vps.id, vps.username or "root", vps.pending_password
    password = unseal(ctx, token)
    deadline = time.monotonic() + 30
    try:
        with guest.root_session(target, keys.provisioning_key_path(ctx.settings), deadline) as c:
            line = f"{user}:{guest.hash_password(password)}\n".encode()
            guest.run(c, "chpasswd -e", [], stdin=line)
        guest.verify_password_login(target, user, password)
    except Interrupted:
        raise  # the worker is stopping: the next one pushes the same password
    except HostKeyMismatch as exc:
        _record_error(ctx, vps_id, str(exc))
        erase_pending_password(ctx, vps_id)
        raise
    except BaseException:
        erase_pending_password(ctx, vps_id)
        raise
    erase_pending_password(ctx, vps_id)


def _record_error(ctx: Context, vps_id: int, message: str) -> None:
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is not None:
            vps.state, vps.error = VpsState.ERROR, message
