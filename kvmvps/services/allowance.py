"""The monthly transfer allowance: telling the customer, and holding a VPS over it.

After every sampling round a worker calls :func:`enforce`. For each metered
VPS of the calendar month (UTC) it

- tells the customer once at 80 % and once at 100 % (the dashboard always
  shows it; an e-mail goes out when SMTP is configured). The threshold is
  claimed in the database before the mail is sent, so neither a restarted
  worker nor a second one sends it twice;
- over the allowance, does what the plan says: ``throttle`` holds network in
  and out to the plan's ``over_limit_kibps`` (``Vps.throttle_kibps``: every
  later definition, reinstall, resize or plan edit keeps it, and the change
  is applied live and to the definition), or ``suspend`` suspends it through
  :mod:`kvmvps.services.suspension` with this module's actor;
- lifts its own throttle or suspension when the month turns, when an
  operator resets the count, or when the VPS's plan now allows what it used.
  An operator's suspension is never lifted here.

Claims are conditional UPDATEs, so two workers at once act once. Libvirt is
called outside every write transaction; a hold it refused is rolled back in
the database and tried again on the next round. Every step is audited with
the actor ``system:transfer``.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, literal, or_, select, update
from sqlalchemy.orm import Session

from kvmvps.db import rowcount
from kvmvps.errors import Conflict, KvmvpsError
from kvmvps.limits import throttled
from kvmvps.models import Plan, TransferMonth, User, Vps, VpsState
from kvmvps.services import Context, audit, mail, suspension, tuning
from kvmvps.services.facts import VpsFacts, facts_of, plan_limits
from kvmvps.services.metering import month_of
from kvmvps.services.vps import resolve

log = logging.getLogger(__name__)

ACTOR = "system:transfer"
GIB = 1024**3
THRESHOLDS = (80, 100)
THROTTLED, SUSPENDED = "throttled", "suspended"
OVER_LIMIT_ACTIONS = ("throttle", "suspend")
LIVE = (VpsState.RUNNING, VpsState.STOPPED, VpsState.SUSPENDED)
REASON = "monthly transfer allowance used up ({month}); lifted when the next month begins"

audit.declare("vps.transfer_notice", "vps.throttle", "vps.unthrottle")


@dataclass
class Report:
    notified: list[str] = field(default_factory=list)
    throttled: list[str] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)
    lifted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Metered:
    """A metered VPS that reached 80 % of its allowance this month."""

    vps_id: int
    uuid: str
    hostname: str
    email: str
    used: int
    allowed: int
    notified_pct: int
    enforced: str | None
    over_limit: str
    kibps: int

    @property
    def reached(self) -> int:
        return 100 if self.used >= self.allowed else 80


def enforce(ctx: Context, now: datetime | None = None) -> Report:
    """One round: notices, holds over the allowance, and lifting holds no longer due."""
    month = month_of(now or datetime.now(UTC))
    report = Report()
    for row in _metered(ctx, month):
        if row.reached > row.notified_pct:
            _notify(ctx, row, month, report)
        if row.reached == 100 and row.enforced is None:
            act = _suspend if row.over_limit == "suspend" else _throttle
            act(ctx, row, month, report)
    for vps_id in _due_lifting(ctx, month):
        _lift(ctx, vps_id, month, report, "the allowance applies again")
    return report


def _allowed() -> ColumnElement[int]:
    """A plan's allowance in bytes, as a 64-bit number in SQL."""
    return cast(Plan.transfer_gib, BigInteger) * literal(GIB, BigInteger)


def _metered(ctx: Context, month: str) -> list[Metered]:
    query = (
        select(
            Vps.id,
            Vps.uuid,
            Vps.hostname,
            User.email,
            TransferMonth.bytes,
            Plan.transfer_gib,
            TransferMonth.notified_pct,
            TransferMonth.enforced,
            Plan.over_limit,
            Plan.over_limit_kibps,
        )
        .join(Vps, Vps.id == TransferMonth.vps_id)
        .join(Plan, Plan.id == Vps.plan_id)
        .join(User, User.id == Vps.owner_id)
        .where(TransferMonth.month == month, Plan.transfer_gib.is_not(None))
        .where(TransferMonth.bytes * 5 >= _allowed() * 4)  # 80 %
        .where(Vps.state != VpsState.DELETING)
        .order_by(Vps.id)
    )
    with ctx.db.reading() as s:
        return [
            Metered(
                vps_id=r.id,
                uuid=r.uuid,
                hostname=r.hostname,
                email=r.email,
                used=int(r.bytes),
                allowed=int(r.transfer_gib or 0) * GIB,
                notified_pct=r.notified_pct,
                enforced=r.enforced,
                over_limit=r.over_limit,
                kibps=r.over_limit_kibps,
            )
            for r in s.execute(query)
        ]


# -- telling the customer ----------------------------------------------------------
def _notify(ctx: Context, row: Metered, month: str, report: Report) -> None:
    pct = row.reached
    with ctx.db.session() as s:
        claimed = s.execute(
            update(TransferMonth)
            .where(
                TransferMonth.vps_id == row.vps_id,
                TransferMonth.month == month,
                TransferMonth.notified_pct < pct,
            )
            .values(notified_pct=pct)
        )
        if not rowcount(claimed):
            return  # another worker told them already
    sent = "no e-mail (SMTP not configured)"
    if mail.configured(ctx):
        try:
            mail.send(ctx, row.email, *_message(row, month, pct))
            sent = "e-mailed"
        except (OSError, smtplib.SMTPException) as exc:  # told once: never sent twice
            sent = f"e-mail failed ({type(exc).__name__})"
            report.errors.append(f"{row.hostname}: {sent}")
            log.warning("transfer notice to the owner of %s: %s", row.hostname, sent)
    audit.record(
        ctx, ACTOR, "vps.transfer_notice", row.uuid, audit.OK, f"{pct} % of {month}; {sent}"
    )
    report.notified.append(f"{row.hostname}: {pct} %")


def _message(row: Metered, month: str, pct: int) -> tuple[str, str]:
    allowed = f"{row.allowed / GIB:g} GiB"
    if pct < 100:
        subject = f"{row.hostname}: 80 % of this month's transfer used"
        body = f"Your server {row.hostname} has used {pct} % of its {allowed} transfer for {month}."
    else:
        subject = f"{row.hostname}: this month's transfer is used up"
        then = (
            "It is suspended until the month ends."
            if row.over_limit == "suspend"
            else f"Its network speed is held to {row.kibps} KiB/s until the month ends."
        )
        body = (
            f"Your server {row.hostname} has used all of its {allowed} transfer for {month}. {then}"
        )
    return subject, body + "\n\nThe allowance starts again on the 1st of next month (UTC).\n"


# -- holding a VPS over its allowance ------------------------------------------------
def _claim(s: Session, vps_id: int, month: str, what: str) -> bool:
    done = s.execute(
        update(TransferMonth)
        .where(
            TransferMonth.vps_id == vps_id,
            TransferMonth.month == month,
            TransferMonth.enforced.is_(None),
        )
        .values(enforced=what)
    )
    return bool(rowcount(done))


def _throttle(ctx: Context, row: Metered, month: str, report: Report) -> None:
    with ctx.db.session() as s:
        if month != month_of(datetime.now(UTC)) or not _claim(s, row.vps_id, month, THROTTLED):
            return  # the month turned meanwhile, or another worker holds it already
        vps = s.get_one(Vps, row.vps_id)
        vps.throttle_kibps = row.kibps
        s.flush()
        facts, live = facts_of(vps, ctx.settings), vps.state in LIVE
        unheld = plan_limits(vps.plan)
    try:
        if live:
            tuning.apply(ctx.hypervisor(facts.host_uri), facts, facts.limits, unheld)
    except KvmvpsError as exc:
        _unclaim_throttle(ctx, row.vps_id, month)
        audit.record(ctx, ACTOR, "vps.throttle", row.uuid, audit.FAILED, audit.error_message(exc))
        report.errors.append(f"{row.hostname}: could not throttle: {exc}")
        return
    detail = f"over the {month} allowance: network in and out held to {row.kibps} KiB/s"
    audit.record(ctx, ACTOR, "vps.throttle", row.uuid, audit.OK, detail)
    report.throttled.append(row.hostname)


def _unclaim_throttle(ctx: Context, vps_id: int, month: str) -> None:
    """Libvirt refused the hold: forget it, so the next round tries again."""
    with ctx.db.session() as s:
        s.execute(update(Vps).where(Vps.id == vps_id).values(throttle_kibps=None))
        s.execute(
            update(TransferMonth)
            .where(TransferMonth.vps_id == vps_id, TransferMonth.month == month)
            .where(TransferMonth.enforced == THROTTLED)
            .values(enforced=None)
        )


def _suspend(ctx: Context, row: Metered, month: str, report: Report) -> None:
    try:
        with ctx.db.session() as s:
            if month != month_of(datetime.now(UTC)) or not _claim(s, row.vps_id, month, SUSPENDED):
                return
            vps = s.get_one(Vps, row.vps_id)
            if vps.suspended_reason is not None:
                return  # an operator's suspension holds it already; it stays theirs
            suspension.hold(s, vps, REASON.format(month=month), ACTOR)
    except Conflict as exc:
        audit.record(ctx, ACTOR, "vps.suspend", row.uuid, audit.FAILED, str(exc))
        report.errors.append(f"{row.hostname}: could not suspend: {exc}")
        return
    audit.record(ctx, ACTOR, "vps.suspend", row.uuid, audit.OK, REASON.format(month=month))
    report.suspended.append(row.hostname)


# -- lifting ------------------------------------------------------------------------
def _due_lifting(ctx: Context, month: str) -> list[int]:
    """VPSes held by this module whose month's row no longer calls for it."""
    allowed = _allowed()
    query = (
        select(Vps.id)
        .join(Plan, Plan.id == Vps.plan_id)
        .outerjoin(TransferMonth, (TransferMonth.vps_id == Vps.id) & (TransferMonth.month == month))
        .where(or_(Vps.throttle_kibps.is_not(None), Vps.suspended_by == ACTOR))
        .where(
            or_(
                TransferMonth.enforced.is_(None),
                Plan.transfer_gib.is_(None),
                TransferMonth.bytes < allowed,
            )
        )
        .order_by(Vps.id)
    )
    with ctx.db.reading() as s:
        return list(s.scalars(query))


def _lift(ctx: Context, vps_id: int, month: str, report: Report, why: str) -> None:
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is None:
            return
        s.execute(
            update(TransferMonth)
            .where(TransferMonth.vps_id == vps_id, TransferMonth.month == month)
            .values(enforced=None)
        )
        uuid, hostname = vps.uuid, vps.hostname
        held = _release_throttle(ctx, s, vps)
        unsuspended = _release_suspension(s, vps)
    if held is not None:
        _apply_lift(ctx, held, uuid, hostname, why, report)
    if unsuspended:
        audit.record(ctx, ACTOR, "vps.unsuspend", uuid, audit.OK, why)
        report.lifted.append(f"{hostname}: suspension")


@dataclass(frozen=True)
class Released:
    facts: VpsFacts | None  # None: nothing runs or is defined to change
    kibps: int


def _release_throttle(ctx: Context, s: Session, vps: Vps) -> Released | None:
    kibps = vps.throttle_kibps
    done = s.execute(
        update(Vps)
        .where(Vps.id == vps.id, Vps.throttle_kibps.is_not(None))
        .values(throttle_kibps=None)
    )
    if not rowcount(done) or kibps is None:
        return None  # not held, or another worker lifted it
    s.refresh(vps)
    return Released(facts_of(vps, ctx.settings) if vps.state in LIVE else None, kibps)


def _release_suspension(s: Session, vps: Vps) -> bool:
    """Lift the suspension only if this module made it (an operator's stays)."""
    done = s.execute(
        update(Vps)
        .where(Vps.id == vps.id, Vps.suspended_by == ACTOR)
        .values(suspended_reason=None, suspended_at=None, suspended_by=None)
    )
    if not rowcount(done):
        return False
    s.refresh(vps)
    suspension.resume_held(s, vps, ACTOR)
    return True


def _apply_lift(
    ctx: Context, held: Released, uuid: str, hostname: str, why: str, report: Report
) -> None:
    facts = held.facts
    try:
        if facts is not None:
            was = throttled(facts.limits, held.kibps)
            tuning.apply(ctx.hypervisor(facts.host_uri), facts, facts.limits, was)
    except KvmvpsError as exc:
        with ctx.db.session() as s:  # still held in libvirt: say so, and try again next round
            s.execute(
                update(Vps)
                .where(Vps.uuid == uuid, Vps.throttle_kibps.is_(None))
                .values(throttle_kibps=held.kibps)
            )
        audit.record(ctx, ACTOR, "vps.unthrottle", uuid, audit.FAILED, audit.error_message(exc))
        report.errors.append(f"{hostname}: could not lift the throttle: {exc}")
        return
    audit.record(ctx, ACTOR, "vps.unthrottle", uuid, audit.OK, why)
    report.lifted.append(f"{hostname}: throttle")


# -- an operator's reset -----------------------------------------------------------
@audit.audits("vps.transfer_reset", target="ref")
def reset_transfer(
    ctx: Context, ref: str, *, actor: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """An operator's reset of a VPS's transfer this month: counted from zero again,
    and a throttle or suspension this module made is lifted at once."""
    month = month_of(now or datetime.now(UTC))
    with ctx.db.session() as s:
        vps = resolve(s, ref)
        row = s.get(TransferMonth, (vps.id, month))
        before = 0 if row is None else int(row.bytes)
        if row is not None:
            row.bytes, row.notified_pct, row.enforced = 0, 0, None
        vps_id = vps.id
        done = {"id": vps.uuid, "hostname": vps.hostname, "month": month, "was_bytes": before}
    report = Report()
    _lift(ctx, vps_id, month, report, f"the operator reset the {month} count")
    return {**done, "lifted": report.lifted, "errors": report.errors}
