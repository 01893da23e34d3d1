"""An operator's suspension of a VPS: made and lifted by operators only.

Suspending records the reason (which the customer sees), cancels the VPS's
queued customer actions and queues a job that pauses the guest if it runs.
While suspended, :mod:`kvmvps.services.guard` refuses every customer action,
and anything that finds the domain running anyway (a libvirt event, a
reconcile pass, the next power action) pauses it again. The suspension is a
column in the database, so worker restarts and host reboots do not lift it.
Lifting it resumes a paused guest; a stopped one stays stopped.

This is distinct from pausing a guest (the ``suspend``/``resume`` power
actions): a paused VPS without a suspension reason may be resumed.
"""

from __future__ import annotations

import unicodedata
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from kvmvps.db import rowcount
from kvmvps.errors import Conflict, InvalidInput
from kvmvps.models import Job, JobState, Vps, VpsState
from kvmvps.services import Context, audit, jobs
from kvmvps.services.vps import resolve, view

MAX_REASON = 500
# queued jobs a suspension cancels: the customer's actions that would change the VPS
CANCELLED_KINDS = ("start", "shutdown", "reboot", "resume", "reinstall", "password_reset")


audit.declare("vps.suspend", "vps.unsuspend")  # recorded with audit.audited below


def reason_text(value: str | None) -> str:
    """The reason as the customer will read it: one line of printable text."""
    text = (value or "").strip()
    if not text:
        raise InvalidInput("give a reason for the suspension; the customer sees it")
    if len(text) > MAX_REASON:
        raise InvalidInput(f"the reason is too long (at most {MAX_REASON} characters)")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise InvalidInput("the reason holds control characters; give one line of plain text")
    return text


def suspend(ctx: Context, ref: str, reason: str, actor: str) -> dict[str, Any]:
    """Suspend the VPS named ``ref``; its view with the job that pauses it (or None)."""
    with audit.audited(ctx, actor, "vps.suspend", ref[:300]):
        text = reason_text(reason)
        with ctx.db.session() as s:
            vps = resolve(s, ref)
            job = hold(s, vps, text, actor)
            return {**view(vps), "job": job.uuid}


def hold(session: Session, vps: Vps, text: str, actor: str) -> Job:
    """Suspend ``vps`` within the caller's transaction; the job that pauses the guest."""
    if vps.suspended_reason is not None:
        raise Conflict(
            f"{vps.hostname} is suspended already ({vps.suspended_reason}); "
            "unsuspend it first to give another reason"
        )
    if vps.state == VpsState.DELETING:
        raise Conflict(f"cannot suspend {vps.hostname}: it is being deleted")
    vps.suspended_reason, vps.suspended_at = text, jobs.now()
    vps.suspended_by = audit.one_line(actor, 300)
    _cancel_queued(session, vps)
    return jobs.enqueue(session, "suspend", vps.uuid, vps.host_id, actor=actor, hold=True)


def _cancel_queued(session: Session, vps: Vps) -> None:
    """Fail the VPS's queued customer actions; a password they would set is never set."""
    cancelled = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(
                Job.vps_uuid == vps.uuid,
                Job.state == JobState.QUEUED,
                Job.kind.in_(CANCELLED_KINDS),
            )
            .values(
                state=JobState.FAILED,
                error=f"cancelled: {vps.hostname} was suspended",
                finished_at=jobs.now(),
            )
        ),
    )
    if rowcount(cancelled):
        vps.pending_password = None


def unsuspend(ctx: Context, ref: str, actor: str) -> dict[str, Any]:
    """Lift the suspension; a paused guest is resumed (by a job), a stopped one stays stopped."""
    with audit.audited(ctx, actor, "vps.unsuspend", ref[:300]), ctx.db.session() as s:
        vps = resolve(s, ref)
        job = release(s, vps, actor)
        return {**view(vps), "job": job.uuid if job is not None else None}


def release(session: Session, vps: Vps, actor: str) -> Job | None:
    """Lift ``vps``'s suspension within the caller's transaction; the job that resumes it."""
    if vps.suspended_reason is None:
        raise Conflict(f"{vps.hostname} is not suspended")
    vps.suspended_reason = vps.suspended_at = vps.suspended_by = None
    return resume_held(session, vps, actor)


def resume_held(session: Session, vps: Vps, actor: str) -> Job | None:
    """After a suspension is lifted: the job that resumes a paused guest (None: stopped)."""
    if vps.state == VpsState.SUSPENDED or _hold_pending(session, vps):
        return jobs.enqueue(session, "resume", vps.uuid, vps.host_id, actor=actor, hold=True)
    return None


def _hold_pending(session: Session, vps: Vps) -> bool:
    """True while the job that pauses the guest has not run yet."""
    return (
        session.scalar(
            select(Job.id).where(
                Job.vps_uuid == vps.uuid,
                Job.kind == "suspend",
                Job.state.in_(JobState.UNFINISHED),
            )
        )
        is not None
    )
