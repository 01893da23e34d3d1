"""Asking for something to be done to a VPS: every action is a queued job.

The request checks what it can check at once (the VPS exists and belongs to
the caller, the action fits its state) and records a job; a worker does the
work. Actions that set a new password generate it here, seal it, and return
it this once.

Customers (a request scoped by ``owner_id``) may have one pending action per
VPS: a second one while a job of that VPS is queued or running is refused,
and so is a shutdown wait longer than ``KVMVPS_CUSTOMER_SHUTDOWN_TIMEOUT_MAX``.
The operator may queue actions behind each other, except a second password
change: a reinstall or password reset while another (or the build) is
pending is refused for everyone, so the last password shown is the one that
works.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps import guest, validation
from kvmvps.errors import Conflict, Forbidden, InvalidInput
from kvmvps.models import Image, Job, JobState, Vps, VpsState
from kvmvps.services import Context, audit, credentials, guard, inventory, jobs
from kvmvps.services.vps import resolve

S = VpsState
# action -> the VPS states it may be asked in
ALLOWED: dict[str, tuple[str, ...]] = {
    "start": (S.STOPPED,),
    "shutdown": (S.RUNNING,),
    "destroy": (S.RUNNING, S.SUSPENDED),
    "reboot": (S.RUNNING,),
    "suspend": (S.RUNNING,),
    "resume": (S.SUSPENDED,),
    "reinstall": (S.RUNNING, S.STOPPED, S.SUSPENDED),
    "password_reset": (S.RUNNING,),
    "delete": (S.RUNNING, S.STOPPED, S.SUSPENDED, S.ERROR, S.QUEUED),
    "rescue": (S.RUNNING, S.STOPPED),
    "unrescue": (S.RUNNING, S.STOPPED),
}
ACTIONS = tuple(ALLOWED)
# what a VPS in rescue mode may still be asked: leave it, and power the rescue system
IN_RESCUE = frozenset({"unrescue", "start", "shutdown", "destroy", "reboot"})
# actions that set a new password, and the jobs that still hold one to push
SETS_PASSWORD = ("reinstall", "password_reset", "rescue")
HOLDS_PASSWORD = ("create", "reinstall", "password_reset", "rescue")
OPERATOR_TIMEOUT_MAX = 3600.0
OPERATOR_ONLY = ("suspend", "resume")  # not for customers (an owner_id is given)


@dataclass(frozen=True)
class Requested:
    """A queued action: its job, its VPS, and a new password when it sets one."""

    job: str
    vps: str
    password: str | None = None


def request(
    ctx: Context,
    ref: str,
    action: str,
    *,
    actor: str | None = None,
    owner_id: int | None = None,
    image: str | None = None,
    timeout: float = 60.0,
    force: bool = False,
    drop_backups: bool = False,
) -> Requested:
    """Queue ``action`` for the VPS named ``ref``.

    ``owner_id`` scopes the request to one customer's VPSes and applies the
    customer's limits (one pending action per VPS, the shutdown cap); None is
    an operator's request. A suspended VPS refuses it (see :mod:`guard`).
    Recorded in the audit log as ``vps.<action>`` of ``actor`` (``password_reset``
    as ``vps.password-reset``), refusals too. A delete keeps the VPS's
    backups unless ``drop_backups``.
    """
    name = audit_action(action) if action in ALLOWED else "vps.action"
    with audit.audited(ctx, actor, name, ref) as entry:
        return _request(
            ctx, ref, action, entry, actor or "", owner_id, image, timeout, force, drop_backups
        )


# actions whose CLI command has another name ("vps suspend" is an operator's suspension)
COMMAND_NAMES = {"suspend": "pause"}


def audit_action(action: str) -> str:
    """The audit log's name of an action: the CLI's command path (``vps.pause`` for suspend)."""
    return "vps." + COMMAND_NAMES.get(action, action).replace("_", "-")


audit.declare(*(audit_action(a) for a in ACTIONS))


def _request(
    ctx: Context,
    ref: str,
    action: str,
    entry: audit.Entry,
    actor: str,
    owner_id: int | None,
    image: str | None,
    timeout: float,
    force: bool,
    drop_backups: bool,
) -> Requested:
    customer = owner_id is not None
    if action not in ALLOWED:
        raise InvalidInput(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    limit = ctx.settings.customer_shutdown_timeout_max if customer else OPERATOR_TIMEOUT_MAX
    timeout = validation.seconds(timeout, "timeout", limit)
    with ctx.db.session() as s:
        vps = _locked(s, resolve(s, ref, owner_id))
        entry.target = vps.hostname
        if customer and action in OPERATOR_ONLY:
            raise Forbidden(f"{action} is for operators")
        guard.check_action(vps, action, operator=not customer)
        _check_rescue_mode(vps, action)
        if vps.state not in ALLOWED[action]:
            raise Conflict(f"cannot {action.replace('_', ' ')} {vps.hostname}: it is {vps.state}")
        _refuse_if_pending(s, vps, action, customer)
        params: dict[str, object] = {}
        password = None
        if action == "reinstall" and image:
            if customer:  # customers reinstall only with images the shop offers
                inventory.for_sale(s, Image, image, "image")
            params["image"] = inventory.get_by_name(s, Image, image, "image").name
        gets_password = vps.image.credentials
        if action == "rescue":
            rescue_image = rescue_image_for(s, vps)
            params["image"], gets_password = rescue_image.name, rescue_image.credentials
        if action in SETS_PASSWORD and gets_password:
            password = guest.new_password()
            vps.pending_password = credentials.seal(ctx, password)
        if action == "shutdown":
            params.update(timeout=timeout, force=force)
        if action == "delete":
            vps.state = VpsState.DELETING
            if drop_backups:
                params["drop_backups"] = True
        job = jobs.enqueue(s, action, vps.uuid, vps.host_id, actor=actor, **params)
        return Requested(job=job.uuid, vps=vps.uuid, password=password)


def _check_rescue_mode(vps: Vps, action: str) -> None:
    """:class:`Conflict` for an action that does not fit whether the VPS is in rescue mode."""
    if action == "rescue" and vps.in_rescue:
        raise Conflict(f"{vps.hostname} is in rescue mode already")
    if action == "unrescue" and not vps.in_rescue:
        raise Conflict(f"{vps.hostname} is not in rescue mode")
    if vps.in_rescue and action not in IN_RESCUE:
        raise Conflict(
            f"cannot {guard.LABELS.get(action, action.replace('_', ' '))} {vps.hostname}: "
            "it is in rescue mode; leave rescue mode first (unrescue)"
        )


def rescue_image_for(session: Session, vps: Vps) -> Image:
    """The image VPSes boot in rescue mode: the newest one the operators marked as rescue."""
    image = session.scalar(
        select(Image).where(Image.rescue.is_(True)).order_by(Image.id.desc()).limit(1)
    )
    if image is None:
        raise Conflict(
            f"cannot rescue {vps.hostname}: no rescue image is set up "
            "(operators: kvmvps-admin image edit NAME --rescue)"
        )
    return image


def _locked(session: Session, vps: Vps) -> Vps:
    """The VPS row locked for this transaction, read afresh (two requests queue here).

    On SQLite the write transaction (``BEGIN IMMEDIATE``) already serialises them.
    """
    query = select(Vps).where(Vps.id == vps.id).with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()


def _refuse_if_pending(session: Session, vps: Vps, action: str, customer: bool) -> None:
    """:class:`Conflict` when this request would be a second pending action it may not be."""
    pending = session.scalar(
        select(Job)
        .where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED))
        .order_by(Job.id)
        .limit(1)
    )
    if pending is None:
        return
    what = f"{pending.kind.replace('_', ' ')} (job {pending.uuid[:8]}, {pending.state})"
    if customer:
        raise Conflict(
            f"{vps.hostname} already has an action pending: {what}; try again when it has finished"
        )
    if action in SETS_PASSWORD:
        holder = session.scalar(
            select(Job)
            .where(
                Job.vps_uuid == vps.uuid,
                Job.state.in_(JobState.UNFINISHED),
                Job.kind.in_(HOLDS_PASSWORD),
            )
            .limit(1)
        )
        if holder is not None:
            raise Conflict(
                f"{vps.hostname} has a new password pending: "
                f"{holder.kind.replace('_', ' ')} (job {holder.uuid[:8]}, {holder.state}); "
                "try again when it has finished"
            )
