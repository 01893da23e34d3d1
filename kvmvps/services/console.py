"""Console sessions: one-use tickets for the web, and the audited session itself.

A VPS has two consoles (:data:`KINDS`): the serial one (a libvirt console
stream) and the graphical one (its VNC display on the host's loopback, see
:mod:`kvmvps.vnc`). A ticket is a random secret given to one user for one
console of one VPS; only its SHA-256 is stored. It is redeemed once (an
atomic update marks it used) within :data:`TICKET_SECONDS`, for its own kind
only. Every session, from the web or the CLI, is audited when it starts
(``vps.console``) and when it ends (``vps.console.end``, with its length);
both entries name the kind.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, update

from kvmvps import vnc
from kvmvps.errors import Conflict, Forbidden, InvalidInput, NotFound
from kvmvps.hypervisor import ConsoleStream, get_hypervisor
from kvmvps.models import ConsoleTicket, User, Vps, VpsState, utcnow
from kvmvps.services import Context, audit
from kvmvps.services.vps import resolve

TICKET_SECONDS = 30
TICKET_BYTES = 32
MAX_TICKET = 128
OPEN_ACTION, END_ACTION = "vps.console", "vps.console.end"
SERIAL, VNC = "serial", "vnc"
KINDS = (SERIAL, VNC)
audit.declare(OPEN_ACTION, END_ACTION)


def check_kind(kind: object) -> str:
    """``kind`` if it names a console (:data:`KINDS`), else :class:`InvalidInput`."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidInput(f"a console's type is one of {', '.join(KINDS)}")
    return kind


def digest(ticket: str) -> str:
    """The stored form of a ticket: its SHA-256, in hex."""
    return hashlib.sha256(ticket.encode()).hexdigest()


@dataclass(frozen=True)
class Ticket:
    """A fresh ticket: the secret (shown once) and when it stops working."""

    secret: str
    vps: str
    expires_at: datetime
    kind: str = SERIAL


@dataclass(frozen=True)
class Target:
    """Where a console leads: the VPS and the libvirt domain on its host."""

    vps: str
    hostname: str
    host_uri: str
    domain: str


def _check_reachable(vps: Vps) -> None:
    if vps.suspended_reason is not None or vps.state == VpsState.SUSPENDED:
        raise Forbidden(f"{vps.hostname} is suspended; its console is closed")
    if vps.state != VpsState.RUNNING:
        raise Conflict(f"{vps.hostname} is {vps.state}; start it to reach its console")


def _target(vps: Vps) -> Target:
    return Target(vps.uuid, vps.hostname, vps.host.uri, vps.domain_name)


def issue_ticket(ctx: Context, ref: str, user_id: int, kind: str = SERIAL) -> Ticket:
    """A ticket for ``user_id`` to the ``kind`` console of their VPS ``ref`` (any for operators)."""
    check_kind(kind)
    secret = secrets.token_urlsafe(TICKET_BYTES)
    now = utcnow()
    with ctx.db.session() as s:
        user = s.get(User, user_id)
        if user is None or not user.is_active:
            raise Forbidden("this account may not open consoles")
        vps = resolve(s, ref, None if user.is_admin else user.id)
        _check_reachable(vps)
        s.execute(delete(ConsoleTicket).where(ConsoleTicket.expires_at < now))
        expires = now + timedelta(seconds=TICKET_SECONDS)
        s.add(
            ConsoleTicket(
                ticket_hash=digest(secret),
                user_id=user.id,
                vps_uuid=vps.uuid,
                expires_at=expires,
                kind=kind,
            )
        )
        return Ticket(secret=secret, vps=vps.uuid, expires_at=expires, kind=kind)


@dataclass(frozen=True)
class Redeemed:
    """A ticket accepted: who may now open which console."""

    actor: str
    target: Target
    kind: str = SERIAL


def redeem_ticket(ctx: Context, secret: str, kind: str = SERIAL) -> Redeemed:
    """Use a ticket of ``kind`` up; :class:`Forbidden` unless it is live, unused and allowed.

    A ticket of another kind stays unused (and refused here).
    """
    check_kind(kind)
    if not isinstance(secret, str) or not 0 < len(secret) <= MAX_TICKET:
        raise Forbidden("no valid console ticket")
    now = utcnow()
    with ctx.db.session() as s:
        used = s.execute(
            update(ConsoleTicket)
            .where(
                ConsoleTicket.ticket_hash == digest(secret),
                ConsoleTicket.used_at.is_(None),
                ConsoleTicket.expires_at >= now,
                ConsoleTicket.kind == kind,
            )
            .values(used_at=now)
            .returning(ConsoleTicket.user_id, ConsoleTicket.vps_uuid)
        ).first()
    if used is None:
        raise Forbidden("the console ticket is unknown, expired or already used")
    with ctx.db.reading() as s:
        user = s.get(User, used.user_id)
        if user is None or not user.is_active:
            raise Forbidden("this account may not open consoles")
        try:
            vps = resolve(s, used.vps_uuid, None if user.is_admin else user.id)
        except NotFound:
            raise Forbidden("the VPS of this ticket is gone or no longer yours") from None
        _check_reachable(vps)
        return Redeemed(actor=audit.user_actor(user.email), target=_target(vps), kind=kind)


def console_target(ctx: Context, ref: str) -> Target:
    """The console of any VPS (the operator's CLI); it must be running."""
    with ctx.db.reading() as s:
        vps = resolve(s, ref)
        if vps.state not in (VpsState.RUNNING, VpsState.SUSPENDED):
            raise Conflict(f"{vps.hostname} is {vps.state}; start it to reach its console")
        return _target(vps)


class Channel(Protocol):
    """What a session reads and writes: a serial console stream or a VNC display."""

    def read(self, timeout: float) -> bytes | None: ...
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def _open_channel(target: Target, kind: str) -> Channel:
    if kind == VNC:
        xml = get_hypervisor(target.host_uri).domain_xml(target.domain)
        return vnc.VncChannel(target.host_uri, vnc.display_port(xml))
    return ConsoleStream(target.host_uri, target.domain)


class ConsoleSession:
    """An open, audited console session; :meth:`close` records its end."""

    def __init__(self, ctx: Context, target: Target, actor: str, kind: str = SERIAL) -> None:
        self.ctx, self.target, self.actor, self.kind = ctx, target, actor, check_kind(kind)
        try:
            self.stream = _open_channel(target, kind)
        except Exception as exc:
            detail = f"{target.vps}: {kind} console: {audit.error_message(exc)}"
            audit.record(ctx, actor, OPEN_ACTION, target.hostname, audit.FAILED, detail)
            raise
        audit.record(ctx, actor, OPEN_ACTION, target.hostname, audit.OK, f"{target.vps}: {kind}")
        self.started = time.monotonic()
        self._closed = False

    def read(self, timeout: float) -> bytes | None:
        return self.stream.read(timeout)

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stream.close()
        seconds = time.monotonic() - self.started
        audit.record(
            self.ctx,
            self.actor,
            END_ACTION,
            self.target.hostname,
            audit.OK,
            f"{self.target.vps}: {self.kind} session of {seconds:.0f} s",
        )

    def __enter__(self) -> ConsoleSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_session(ctx: Context, target: Target, actor: str, kind: str = SERIAL) -> ConsoleSession:
    """Open the ``kind`` console of ``target`` (a redeemed ticket's, or :func:`console_target`'s)."""
    return ConsoleSession(ctx, target, actor, kind)
