"""The checks of an image self-test (see :mod:`kvmvps.services.imagetest`), each timed.

``order``          the order is built (credentials pushed and proven);
``ssh-banner``     seconds from the order until the guest's sshd greeted;
``password-login`` the password shown at order time logs in (host key pinned);
``key-login``      the SSH key given with the order logs in;
``ssh-forward``    the same key logs in through the host's public address and
                   the VPS's forwarded port (skipped without a public address);
``filesystem``     the root filesystem is at least 90 % of the VPS's disk;
``acpi-shutdown``  the guest powers off within a minute of the power button.

The first failing check ends the test. Images without credentials get only
``order`` and ``acpi-shutdown``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from sqlalchemy import select, update

from kvmvps import cloudinit, guest
from kvmvps.errors import CapacityError, GuestError
from kvmvps.interrupt import Interrupted
from kvmvps.models import Forward, ImageTest, Vps, VpsState
from kvmvps.services import Context, audit
from kvmvps.services import vps as vps_service
from kvmvps.services.forwards import SSH
from kvmvps.services.provisioning import OrderRequest, record_order
from kvmvps.storage import GIB

ACTOR = "system:image-test"
HOSTNAME_PREFIX = "imagetest-"
CHECKS = (
    "order",
    "ssh-banner",
    "password-login",
    "key-login",
    "ssh-forward",
    "filesystem",
    "acpi-shutdown",
)
SHUTDOWN_TIMEOUT = 60.0
FORWARD_TIMEOUT = 20.0
FILESYSTEM_SHARE = 0.9
# images grow their root filesystem in the background at first boot (sshd does
# not wait for it); the check waits this long for the growth to show in df
FILESYSTEM_GROW_TIMEOUT = 60.0
TTL_SECONDS = 3 * 3600  # a throwaway VPS nothing else removed is deleted by expiry then

Follow = Callable[[str], None]
"""Run (or wait for) a job until it ends; raise a :class:`KvmvpsError` if it failed."""
Progress = Callable[[str, int, int], None]


class CheckResult(TypedDict):
    """One check of a test: passed (True), failed (False) or skipped (None), and its time."""

    name: str
    ok: bool | None
    seconds: float
    detail: str


@dataclass
class Run:
    """What one run of a test learns as it goes."""

    ctx: Context
    test: str
    image: str
    plan: str
    credentials: bool
    checks: list[CheckResult] = field(default_factory=list)
    vps: str | None = None
    password: str | None = field(default=None, repr=False)  # secrets: never shown
    key: cloudinit.HostKey = field(default_factory=cloudinit.generate_host_key, repr=False)
    banner: _BannerWatch | None = None
    target: guest.Target | None = None
    user: str = "root"
    disk_bytes: int = 0
    seconds: float | None = None  # a check's own measure of its time, when it has one
    inconclusive: bool = False  # the VPS could not be placed: the image is neither good nor bad

    def record(self, name: str, ok: bool | None, seconds: float, detail: str = "") -> None:
        self.checks.append(
            {"name": name, "ok": ok, "seconds": round(seconds, 3), "detail": detail[:500]}
        )


class CheckFailed(Exception):
    """A check failed; the test stops there (its message is in the check)."""


def _timed(r: Run, name: str, check: Callable[[Run], str | None]) -> None:
    """Run one check and record it; a check returning None was skipped."""
    started = time.perf_counter()
    try:
        detail = check(r)
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - the check failed: say why, stop the test
        r.record(name, False, time.perf_counter() - started, audit.error_message(exc))
        raise CheckFailed(name) from None
    seconds, r.seconds = r.seconds, None
    if detail is None:
        r.record(name, None, 0.0, "not applicable")
    else:
        r.record(name, True, time.perf_counter() - started if seconds is None else seconds, detail)


def run_checks(r: Run, follow: Follow, progress: Progress | None) -> None:
    steps: list[tuple[str, Callable[[Run], str | None]]] = [
        ("order", lambda run: _order(run, follow)),
        ("ssh-banner", _banner),
        ("password-login", _password_login),
        ("key-login", _key_login),
        ("ssh-forward", _forward),
        ("filesystem", _filesystem),
        ("acpi-shutdown", _shutdown),
    ]
    for index, (name, check) in enumerate(steps):
        if progress is not None:
            progress(name, index, len(steps))
        _timed(r, name, check)


def hostname_for(test_uuid: str) -> str:
    """The throwaway VPS's name: from the test's id only (no user text)."""
    return HOSTNAME_PREFIX + test_uuid.replace("-", "")[:12]


def _order(r: Run, follow: Follow) -> str:
    request_ = OrderRequest(
        plan=r.plan,
        image=r.image,
        hostname=hostname_for(r.test),
        ssh_keys=(r.key.public_openssh,),
        ttl_seconds=TTL_SECONDS,
        testing=True,
    )
    try:
        order = record_order(r.ctx, request_, ACTOR)
    except CapacityError:
        r.inconclusive = True  # no host could take it: that says nothing about the image
        raise
    r.vps, r.password = order.uuid, order.password
    with r.ctx.db.session() as s:
        s.execute(update(ImageTest).where(ImageTest.uuid == r.test).values(vps_uuid=order.uuid))
        vps = s.scalars(select(Vps).where(Vps.uuid == order.uuid)).one()
        ip, r.disk_bytes = vps.ip or "", vps.plan.disk_gib * GIB
    if r.credentials:
        r.banner = _BannerWatch(ip, 22, time.monotonic() + r.ctx.settings.ssh_timeout)
    follow(order.job)
    with r.ctx.db.reading() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == order.uuid)).one()
        if vps.state != VpsState.RUNNING:
            raise GuestError(f"the VPS is {vps.state} after its build, not running")
        r.user = vps.username or "root"
        if vps.host_key:
            r.target = guest.Target(host=ip, port=22, host_key=vps.host_key)
    return f"plan {r.plan}"


def _banner(r: Run) -> str | None:
    if r.banner is None:
        return None
    seconds, banner = r.banner.result()
    r.seconds = seconds  # from the order on
    return f"{banner[:60]} after {seconds:.2f} s"


def _pinned(r: Run) -> guest.Target:
    if r.target is None:
        raise GuestError("the build pinned no SSH host key")
    return r.target


def _password_login(r: Run) -> str | None:
    if not r.credentials or r.password is None:
        return None
    guest.verify_password_login(_pinned(r), r.user, r.password)
    return f"as {r.user}"


def _key_login(r: Run) -> str | None:
    if not r.credentials:
        return None
    with guest.key_session(_pinned(r), r.user, r.key.private_openssh) as client:
        guest.run(client, "true", [])
    return f"as {r.user}"


def _forward(r: Run) -> str | None:
    """Log in with the key through the host's public address and the forwarded port."""
    if not r.credentials:
        return None
    with r.ctx.db.reading() as s:
        row = s.scalar(
            select(Forward)
            .join(Vps, Vps.id == Forward.vps_id)
            .where(Vps.uuid == r.vps, Forward.kind == SSH)
        )
        where = (row.public_address, row.public_port) if row and row.public_address else None
    if where is None:
        return None
    pinned = _pinned(r)
    target = guest.Target(host=where[0], port=where[1], host_key=pinned.host_key)
    guest.wait_for_ssh_banner(target.host, target.port, time.monotonic() + FORWARD_TIMEOUT)
    with guest.key_session(target, r.user, r.key.private_openssh) as client:
        guest.run(client, "true", [])
    return f"{where[0]}:{where[1]}"


def _filesystem(r: Run) -> str | None:
    """The root filesystem fills the plan's disk (waiting out a first-boot grow)."""
    if not r.credentials:
        return None
    want = FILESYSTEM_SHARE * r.disk_bytes
    started = time.monotonic()
    deadline = started + FILESYSTEM_GROW_TIMEOUT
    with guest.key_session(_pinned(r), r.user, r.key.private_openssh) as client:
        while True:
            size = root_size_bytes(guest.run(client, "df -Pk /", []))
            if size >= want or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    detail = f"{size / GIB:.2f} GiB of a {r.disk_bytes / GIB:.2f} GiB disk"
    if size < want:
        waited = time.monotonic() - started
        raise GuestError(f"the root filesystem is only {detail} (under 90 %) after {waited:.0f} s")
    return detail


def root_size_bytes(df_output: str) -> int:
    """The size of the filesystem in ``df -Pk /`` output, in bytes."""
    lines = [line.split() for line in df_output.strip().splitlines()]
    try:
        return int(lines[1][1]) * 1024
    except (IndexError, ValueError):
        raise GuestError(f"cannot read the size of / from df: {df_output[:80]!r}") from None


def _shutdown(r: Run) -> str:
    """Press the power button; the guest must power off by itself (never forced)."""
    if r.vps is None:
        raise GuestError("there is no VPS to shut down")
    vps_service.shutdown(r.ctx, r.vps, timeout=SHUTDOWN_TIMEOUT, force=False)
    return "powered off"


class _BannerWatch:
    """Polls a guest's SSH port in a thread from the order on: when did sshd first greet?"""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.started = time.monotonic()
        self.host, self.port, self.deadline = host, port, deadline
        self.stopped = threading.Event()
        self.seconds: float | None = None
        self.banner = ""
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    sock.settimeout(5)
                    data = sock.recv(256).decode(errors="replace")
                    banner = (data.splitlines() or [""])[0].strip()
                    if banner.startswith("SSH-"):
                        self.seconds, self.banner = time.monotonic() - self.started, banner
                        return
            except OSError:
                pass
            self.stopped.wait(0.2)

    def result(self) -> tuple[float, str]:
        self._thread.join(max(0.0, self.deadline - time.monotonic()))
        if self.seconds is None:
            raise GuestError(f"the guest never answered SSH on {self.host}:{self.port}")
        return self.seconds, self.banner

    def stop(self) -> None:
        self.stopped.set()
