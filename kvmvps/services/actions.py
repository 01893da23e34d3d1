"""Asking for something to be done to a VPS: every action is a queued job.

The request checks what it can check at once (the VPS exists and belongs to
the caller, the action fits its state) and records a job; a worker does the
work. Actions that set a new password generate it here, seal it, and return
it this once.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmvps import guest
from kvmvps.errors import Conflict, Forbidden, InvalidInput
from kvmvps.models import Image, VpsState
from kvmvps.services import Context, audit, credentials, inventory, jobs
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
}
ACTIONS = tuple(ALLOWED)
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
) -> Requested:
    """Queue ``action`` for the VPS named ``ref`` (of ``owner_id``, a customer, if given).

    Recorded in the audit log as ``vps.<action>`` of ``actor`` (``password_reset``
    as ``vps.password-reset``), refusals too.
    """
    name = audit_action(action) if action in ALLOWED else "vps.action"
    with audit.audited(ctx, actor, name, ref) as entry:
        return _request(ctx, ref, action, entry, actor or "", owner_id, image, timeout, force)


def audit_action(action: str) -> str:
    """The audit log's name of an action: the CLI's command path."""
    return "vps." + action.replace("_", "-")


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
) -> Requested:
    if action not in ALLOWED:
        raise InvalidInput(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if not 0 < timeout <= 3600:
        raise InvalidInput("timeout must be between 0 and 3600 seconds")
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        entry.target = vps.hostname
        if owner_id is not None and action in OPERATOR_ONLY:
            raise Forbidden(f"{action} is for operators")
        if vps.state not in ALLOWED[action]:
            raise Conflict(f"cannot {action.replace('_', ' ')} {vps.hostname}: it is {vps.state}")
        params: dict[str, object] = {}
        password = None
        if action == "reinstall" and image:
            params["image"] = inventory.get_by_name(s, Image, image, "image").name
        if action in ("reinstall", "password_reset") and vps.image.credentials:
            password = guest.new_password()
            vps.pending_password = credentials.seal(ctx, password)
        if action == "shutdown":
            params.update(timeout=timeout, force=force)
        if action == "delete":
            vps.state = VpsState.DELETING
        job = jobs.enqueue(s, action, vps.uuid, vps.host_id, actor=actor, **params)
        return Requested(job=job.uuid, vps=vps.uuid, password=password)
