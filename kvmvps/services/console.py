"""Serial console sessions: one-use tickets for the web, and the audited session itself.

A ticket is a random secret given to one user for one VPS; only its SHA-256
is stored. It is redeemed once (an atomic update marks it used) within
:data:`TICKET_SECONDS`. Every session, from the web or the CLI, is audited
when it starts (``vps.console``) and when it ends (``vps.console.end``, with
its length).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from kvmvps.errors import Conflict, Forbidden, NotFound
from kvmvps.hypervisor import ConsoleStream
from kvmvps.models import ConsoleTicket, User, Vps, VpsState, utcnow
from kvmvps.services import Context, audit
from kvmvps.services.vps import resolve

TICKET_SECONDS = 30
TICKET_BYTES = 32
MAX_TICKET = 128
OPEN_ACTION, END_ACTION = "vps.console", "vps.console.end"
audit.declare(OPEN_ACTION, END_ACTION)


def digest(ticket: str) -> str:
    """The stored form of a ticket: its SHA-256, in hex."""
    return hashlib.sha256(ticket.encode()).hexdigest()


@dataclass(frozen=True)
class Ticket:
    """A fresh ticket: the secret (shown once) and when it stops working."""

    secret: str
    vps: str
    expires_at: datetime


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


def issue_ticket(ctx: Context, ref: str, user_id: int) -> Ticket:
    """A ticket for ``user_id`` to the console of their VPS ``ref`` (any VPS for operators)."""
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
                ticket_hash=digest(secret), user_id=user.id, vps_uuid=vps.uuid, expires_at=expires
            )
        )
        return Ticket(secret=secret, vps=vps.uuid, expires_at=expires)


@dataclass(frozen=True)
class Redeemed:
    """A ticket accepted: who may now open which console."""

    actor: str
    target: Target


def redeem_ticket(ctx: Context, secret: str) -> Redeemed:
    """Use a ticket up; raise :class:`Forbidden` unless it is live, unused and still allowed."""
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
        return Redeemed(actor=audit.user_actor(user.email), target=_target(vps))


def console_target(ctx: Context, ref: str) -> Target:
    """The console of any VPS (the operator's CLI); it must be running."""
    with ctx.db.reading() as s:
        vps = resolve(s, ref)
        if vps.state not in (VpsState.RUNNING, VpsState.SUSPENDED):
            raise Conflict(f"{vps.hostname} is {vps.state}; start it to reach its console")
        return _target(vps)


class ConsoleSession:
    """An open, audited console session; :meth:`close` records its end."""

    def __init__(self, ctx: Context, target: Target, actor: str) -> None:
        self.ctx, self.target, self.actor = ctx, target, actor
        with audit.audited(ctx, actor, OPEN_ACTION, target.hostname):
            self.stream = ConsoleStream(target.host_uri, target.domain)
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
            f"{self.target.vps}: session of {seconds:.0f} s",
        )

    def __enter__(self) -> ConsoleSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_session(ctx: Context, target: Target, actor: str) -> ConsoleSession:
    """Open the console of ``target`` (a redeemed ticket's, or :func:`console_target`'s)."""
    return ConsoleSession(ctx, target, actor)
