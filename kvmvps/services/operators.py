"""What only operators do: admin rights, deleting accounts, force deletes, the shop's shelf.

Every function records its own audit entry with the ``actor`` it is given.
An operator can neither take away their own admin right nor delete
themself: some operator must always be left to undo a mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from kvmvps import validation
from kvmvps.db import rowcount
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import ApiToken, Image, Invitation, Job, JobState, Plan, User, Vps, VpsState
from kvmvps.services import Context, audit, jobs
from kvmvps.services.inventory import MAX_PRICE_CENTS, get_by_name
from kvmvps.services.vps import resolve

audit.declare("user.admin", "user.delete", "vps.force-delete", "plan.shelf", "image.shelf")
audit.declare("plan.price")


def _user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id) if 1 <= user_id <= validation.MAX_DB_ID else None
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def set_admin(
    ctx: Context, user_id: int, admin: bool, by_user_id: int, *, actor: str | None = None
) -> User:
    """Make a user an operator, or take the right away; never one's own."""
    with audit.audited(ctx, actor, "user.admin", str(user_id)) as entry, ctx.db.session() as s:
        user = _user(s, user_id)
        entry.target = user.email
        if user.id == by_user_id and not admin:
            raise Conflict("you cannot remove your own admin right; ask another operator")
        if bool(user.is_admin) == bool(admin):
            raise Conflict(f"{user.email} {'is' if admin else 'is not'} an operator already")
        user.is_admin = bool(admin)
        return user


@dataclass(frozen=True)
class UserDeletion:
    """What deleting a user did: removed at once, or their VPSes queued for deletion first."""

    email: str
    removed: bool
    vps_jobs: tuple[str, ...]


def delete_user(
    ctx: Context, user_id: int, by_user_id: int, *, actor: str | None = None
) -> UserDeletion:
    """Delete a user and their VPSes; never oneself.

    A user holding no VPS is removed at once (their tokens too). Otherwise
    they are disabled (sessions ended, tokens revoked) and each VPS is
    force-deleted by a job; once the workers have removed them, deleting
    the user again removes the account.
    """
    with audit.audited(ctx, actor, "user.delete", str(user_id)) as entry, ctx.db.session() as s:
        user = _user(s, user_id)
        entry.target = user.email
        if user.id == by_user_id:
            raise Conflict("you cannot delete your own account")
        uuids = list(s.scalars(select(Vps.uuid).where(Vps.owner_id == user.id)))
        if not uuids:
            s.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
            s.execute(
                update(Invitation).where(Invitation.used_by_id == user.id).values(used_by_id=None)
            )
            s.delete(user)
            return UserDeletion(user.email, True, ())
        user.is_active = False
        user.session_epoch = User.session_epoch + 1
        s.execute(update(ApiToken).where(ApiToken.user_id == user.id).values(revoked=True))
        queued = tuple(_force_delete(s, resolve(s, u), actor or "") for u in uuids)
        return UserDeletion(user.email, False, tuple(j for j in queued if j))


def force_delete(ctx: Context, ref: str, *, actor: str | None = None) -> str:
    """Delete a VPS whatever its state (building, failed, suspended, stuck deleting).

    Its queued jobs are cancelled and a delete job is queued behind the one
    running, if any. :class:`Conflict` when a delete is queued or running already.
    Returns the delete job's id.
    """
    with audit.audited(ctx, actor, "vps.force-delete", ref[:300]) as entry, ctx.db.session() as s:
        vps = resolve(s, ref)
        entry.target = vps.hostname
        job = _force_delete(s, vps, actor or "")
        if job is None:
            raise Conflict(f"{vps.hostname} is being deleted already; wait for that job")
        return job


def _force_delete(session: Session, vps: Vps, actor: str) -> str | None:
    """Cancel the VPS's queued jobs and queue its delete; None when one is pending already."""
    pending = session.scalar(
        select(Job.uuid).where(
            Job.vps_uuid == vps.uuid, Job.kind == "delete", Job.state.in_(JobState.UNFINISHED)
        )
    )
    if pending is not None:
        return None
    cancelled = session.execute(
        update(Job)
        .where(Job.vps_uuid == vps.uuid, Job.state == JobState.QUEUED)
        .values(
            state=JobState.FAILED,
            error=f"cancelled: {vps.hostname} is being deleted by the operators",
            finished_at=jobs.now(),
        )
    )
    if rowcount(cancelled):
        vps.pending_password = None
    vps.state = VpsState.DELETING
    return jobs.enqueue(session, "delete", vps.uuid, vps.host_id, actor=actor, force=True).uuid


# -- the shop's shelf ------------------------------------------------------------
def set_plan_hidden(ctx: Context, name: str, hidden: bool, *, actor: str | None = None) -> Plan:
    """Hide a plan from the shop (no new orders; its VPSes keep running) or show it again."""
    with audit.audited(ctx, actor, "plan.shelf", name[:300]), ctx.db.session() as s:
        plan = get_by_name(s, Plan, name, "plan")
        plan.hidden = bool(hidden)
        return plan


def set_image_hidden(ctx: Context, name: str, hidden: bool, *, actor: str | None = None) -> Image:
    """Hide an image from the shop (no new orders or customer reinstalls) or show it again."""
    with audit.audited(ctx, actor, "image.shelf", name[:300]), ctx.db.session() as s:
        image = get_by_name(s, Image, name, "image")
        image.hidden = bool(hidden)
        return image


def price_cents(text: str) -> int:
    """A price typed as ``12.50`` or ``12``, in cents; InvalidInput otherwise."""
    value = (text or "").strip()
    whole, _, frac = value.partition(".")
    if not whole.isdecimal() or not (frac == "" or (frac.isdecimal() and len(frac) <= 2)):
        raise InvalidInput(f"price {value[:20]!r} is not an amount such as 4.99")
    if len(whole) > 8:
        raise InvalidInput("that price is too large")
    cents = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
    validation.whole_number(cents, "price (cents)", 0, MAX_PRICE_CENTS)
    return cents


def set_plan_price(ctx: Context, name: str, cents: int, *, actor: str | None = None) -> Plan:
    """A plan's monthly price for new and existing customers."""
    with audit.audited(ctx, actor, "plan.price", name[:300]), ctx.db.session() as s:
        validation.whole_number(cents, "price (cents)", 0, MAX_PRICE_CENTS)
        plan = get_by_name(s, Plan, name, "plan")
        plan.price_cents = cents
        return plan


def vps_count(ctx: Context, user_id: int) -> int:
    with ctx.db.reading() as s:
        return s.scalar(select(func.count()).select_from(Vps).where(Vps.owner_id == user_id)) or 0
